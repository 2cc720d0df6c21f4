//! GC-rooted realization of all the payloads of a job with as few Nix processes as the
//! host allows. `nix-store --realise P1 P2 --add-root LINK --indirect` roots its results
//! as `LINK`, `LINK-<output>`, `LINK-2`, ... (by position), not at the per-payload names a
//! job directory uses. So, on this machine, one call realises everything rooted at
//! temporary links; each output is then rooted at its own link the way Nix itself does it
//! (the link to the store path, and `gcroots/auto/<nix32(sha1(link))>` pointing at the
//! link) and the temporary links are removed. The auto directory and the naming are
//! checked against what that one call made; when they do not match, or the directory is
//! not writable (a multi-user store without root), or the host is remote, each path is
//! realised by its own call, as `nix-store` names it.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use sha1::{Digest, Sha1};

use super::Placement;
use crate::tools::log::HostLog;
use crate::tools::nix::Nix;

/// One path to realise (a `.drv`, or an output path) and where each of its outputs is
/// rooted: `(store path, link)`, the link a local job-directory path. `links[0]` is the
/// link `nix-store --add-root` names for the whole path.
#[derive(Clone, Debug)]
pub struct RootRequest {
    pub path: String,
    pub links: Vec<(String, PathBuf)>,
}

impl Placement {
    /// True when every link already points at its store path and that path exists (a
    /// job whose roots were made before): nothing to realise. Only on this machine.
    pub fn roots_in_place(&self, request: &RootRequest) -> bool {
        self.is_local()
            && request.links.iter().all(|(store_path, link)| {
                std::fs::read_link(link).is_ok_and(|t| t == Path::new(store_path))
                    && Path::new(store_path).exists()
                    && registered(link).is_some_and(|r| r)
            })
    }

    /// Realise every request, each output rooted at its link (see the module doc).
    /// Returns the commands that ran, for the host log.
    pub fn realise_rooted(&self, nix: &Nix, requests: &[RootRequest], log: &HostLog) -> Result<Vec<String>> {
        if requests.is_empty() {
            return Ok(Vec::new());
        }
        if self.is_local() && requests.len() > 1 {
            return realise_batch(self, nix, requests, log);
        }
        realise_each(self, nix, requests, log)
    }

    /// The command that realises `request` alone, rooted at its links, as a user would
    /// type it (for `reproduce`).
    pub fn realise_line(&self, nix: &Nix, request: &RootRequest) -> Result<String> {
        let cmd = nix.realise_cmd(&request.path, &self.host_path(&request.links[0].1)?);
        Ok(match self {
            Placement::Local => cmd.display(),
            Placement::Remote(remote) => remote.command_like(&cmd)?.display(),
        })
    }
}

fn realise_each(placement: &Placement, nix: &Nix, requests: &[RootRequest], log: &HostLog) -> Result<Vec<String>> {
    let mut ran = Vec::new();
    for request in requests {
        let (_, cmd) = placement.realise(nix, &request.path, &request.links[0].1, log)?;
        ran.push(cmd);
    }
    Ok(ran)
}

/// One `nix-store --realise` for all, rooted at `.realise*` in the links' directory, then
/// each output re-rooted at its own link.
fn realise_batch(placement: &Placement, nix: &Nix, requests: &[RootRequest], log: &HostLog) -> Result<Vec<String>> {
    let dir = requests[0].links[0].1.parent().context("a root link has no directory")?;
    let temp = dir.join(".realise");
    let paths: Vec<&str> = requests.iter().map(|r| r.path.as_str()).collect();
    let cmd = nix.realise_many_cmd(&paths, &temp);
    let out = cmd.run(Some(log))?;
    let temp_links: Vec<PathBuf> = out.stdout_str().lines().filter(|l| !l.is_empty()).map(PathBuf::from).collect();
    let mut ran = vec![cmd.display()];
    let adopted = auto_dir_of(&temp).and_then(|auto| {
        requests.iter().flat_map(|r| &r.links).try_for_each(|(store_path, link)| root_at(&auto, store_path, link)).ok()
    });
    if adopted.is_none() {
        log.line("rooting each payload by its own `nix-store --realise` (gcroots/auto is not writable here)");
        ran.extend(realise_each(placement, nix, requests, log)?);
    }
    for link in temp_links {
        unroot(&link);
    }
    Ok(ran)
}

/// The auto-roots directory, found from the temporary root `nix-store` just made: where
/// an entry of the expected name points at it. `None` when it is not there.
fn auto_dir_of(temp_link: &Path) -> Option<PathBuf> {
    let auto = auto_dir();
    let entry = auto.join(auto_name(temp_link));
    (std::fs::read_link(&entry).ok()? == temp_link).then_some(auto)
}

fn auto_dir() -> PathBuf {
    let state = std::env::var_os("NIX_STATE_DIR").filter(|v| !v.is_empty());
    PathBuf::from(state.unwrap_or_else(|| "/nix/var/nix".into())).join("gcroots/auto")
}

/// Whether `link` is registered in the auto-roots directory; `None` when unknown.
fn registered(link: &Path) -> Option<bool> {
    let entry = auto_dir().join(auto_name(link));
    Some(std::fs::read_link(entry).ok()? == link)
}

/// Root `store_path` at `link`: the link (replaced atomically), then its auto entry.
fn root_at(auto: &Path, store_path: &str, link: &Path) -> std::io::Result<()> {
    replace_symlink(Path::new(store_path), link)?;
    replace_symlink(link, &auto.join(auto_name(link)))
}

/// Remove a root link and its auto entry (best effort: a leftover entry whose link is
/// gone is removed by Nix's next garbage collection).
fn unroot(link: &Path) {
    let entry = auto_dir().join(auto_name(link));
    if std::fs::read_link(&entry).is_ok_and(|t| t == link) {
        let _ = std::fs::remove_file(entry);
    }
    let _ = std::fs::remove_file(link);
}

fn replace_symlink(target: &Path, link: &Path) -> std::io::Result<()> {
    let mut temp = link.as_os_str().to_owned();
    temp.push(format!(".tmp-{}", std::process::id()));
    let temp = PathBuf::from(temp);
    let _ = std::fs::remove_file(&temp);
    std::os::unix::fs::symlink(target, &temp)?;
    std::fs::rename(&temp, link).inspect_err(|_| {
        let _ = std::fs::remove_file(&temp);
    })
}

/// The name Nix gives the auto-root entry of `link`: the SHA-1 of the path, in Nix's
/// base-32.
fn auto_name(link: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    nix32(&Sha1::digest(link.as_os_str().as_bytes()))
}

/// Nix's base-32 ("0123456789abcdfghijklmnpqrsvwxyz", last byte first).
fn nix32(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"0123456789abcdfghijklmnpqrsvwxyz";
    let len = (bytes.len() * 8 - 1) / 5 + 1;
    (0..len)
        .rev()
        .map(|n| {
            let (i, j) = (n * 5 / 8, n * 5 % 8);
            let low = bytes[i] as u16 >> j;
            let high = bytes.get(i + 1).map_or(0, |b| (*b as u16) << (8 - j));
            ALPHABET[((low | high) & 0x1f) as usize] as char
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_names_are_nix_s() {
        // Names `nix-store --add-root /tmp/sp/r/L --indirect` (Nix 2.34) gave.
        assert_eq!(auto_name(Path::new("/tmp/sp/r/L")), "rjj85bvqjgcpxxncfff4i8xqdwkfx88d");
        assert_eq!(auto_name(Path::new("/tmp/sp/r/L-dev")), "rcqxj1ml942507k814yn0p9wda2bdzcg");
    }
}
