//! Placement: where a job runs, and the one owner of every path and file operation on
//! that host. Locally, or on a host reached by SSH ([`ssh`]). A host named `localhost`,
//! `127.0.0.1` or `::1` (or no host) is this machine, and pikaci talks to it directly,
//! without SSH. Callers ask the placement (map a path, create the job's directories,
//! realize a store path, read a payload file, fetch artifacts, remove directories) and
//! never branch on local-versus-remote themselves.

mod ssh;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::tools::command::Cmd;
use crate::tools::log::HostLog;
use crate::tools::nix::Nix;
use crate::tools::nix_log::{BuildWatch, LOG_FORMAT_ARGS, run_realise};

use crate::handoff::StagedPayloadMount;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Placement {
    Local,
    Remote(RemoteHost),
}

/// A remote host and the directory there that mirrors the local state root's `runs/`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteHost {
    /// As given to `ssh` (`user@host`, an alias from `~/.ssh/config`).
    pub host: String,
    /// The local state root, whose layout the remote side mirrors.
    pub local_state_root: PathBuf,
    /// Where the remote side keeps its job directories.
    pub remote_state_root: PathBuf,
}

/// Where a remote host keeps job directories and snapshots, mirroring the local state
/// root's layout: `PIKACI_REMOTE_STATE_ROOT`, default `/var/tmp/pikaci`.
pub fn remote_state_root() -> PathBuf {
    std::env::var_os("PIKACI_REMOTE_STATE_ROOT")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/pikaci"))
}

/// True for the names of this machine, and for no host at all.
pub fn ssh_host_is_local(host: Option<&str>) -> bool {
    match host {
        None => true,
        Some(h) => {
            let h = h.rsplit('@').next().unwrap_or(h);
            matches!(h.trim_matches(|c| c == '[' || c == ']'), "" | "localhost" | "127.0.0.1" | "::1")
        }
    }
}

impl Placement {
    pub fn new(remote: Option<&str>, local_state_root: &Path, remote_state_root: &Path) -> Placement {
        match remote {
            Some(host) if !ssh_host_is_local(Some(host)) => Placement::Remote(RemoteHost {
                host: host.to_string(),
                local_state_root: local_state_root.to_path_buf(),
                remote_state_root: remote_state_root.to_path_buf(),
            }),
            _ => Placement::Local,
        }
    }

    pub fn is_local(&self) -> bool {
        matches!(self, Placement::Local)
    }

    /// The path on the placement's host that corresponds to a local job-directory path.
    pub fn host_path(&self, local: &Path) -> Result<PathBuf> {
        match self {
            Placement::Local => Ok(local.to_path_buf()),
            Placement::Remote(remote) => remote.path_of(local),
        }
    }

    /// What a device or bind mount names for a local job path, on the host that runs the
    /// job. Here: the path resolved (a GC-root link to its store path; a bind or disk
    /// device must name the real directory). On an SSH host: the same path under the
    /// remote state root, not resolved here, since it exists only there. The one place
    /// this rule lives.
    pub fn device_source(&self, local: &Path) -> Result<PathBuf> {
        match self {
            Placement::Local => local.canonicalize().with_context(|| format!("`{}` does not exist", local.display())),
            Placement::Remote(remote) => remote.path_of(local),
        }
    }

    /// The SSH destination, or `None` for this machine.
    pub fn ssh_host(&self) -> Option<&str> {
        match self {
            Placement::Local => None,
            Placement::Remote(remote) => Some(&remote.host),
        }
    }

    /// The host's name for messages and records: `localhost`, or the SSH destination.
    pub fn host_name(&self) -> &str {
        match self {
            Placement::Local => "localhost",
            Placement::Remote(remote) => &remote.host,
        }
    }

    /// Create the job's directories on the host, and its `links` (pairs of a link and
    /// its target, relative to the link's directory): locally with file system calls,
    /// remotely with one `sh` over SSH.
    pub fn ensure_job_directories(
        &self,
        local_dirs: &[PathBuf],
        links: &[(PathBuf, PathBuf)],
        log: &HostLog,
    ) -> Result<()> {
        match self {
            Placement::Local => {
                for dir in local_dirs {
                    std::fs::create_dir_all(dir).with_context(|| format!("create `{}`", dir.display()))?;
                }
                for (link, target) in links {
                    let _ = std::fs::remove_file(link);
                    std::os::unix::fs::symlink(target, link)
                        .with_context(|| format!("link `{}` to `{}`", link.display(), target.display()))?;
                }
                Ok(())
            }
            Placement::Remote(remote) => remote.ensure_remote_linux_vm_directories(local_dirs, links, log),
        }
    }

    /// Make the snapshot available on the host (it is here already on this machine).
    pub fn ensure_snapshot(&self, snapshot_dir: &Path, log: &HostLog) -> Result<()> {
        match self {
            Placement::Local => Ok(()),
            Placement::Remote(remote) => remote.ensure_snapshot(snapshot_dir, log),
        }
    }

    /// Make `.drv`s of this machine's store buildable on the host: nothing here; on an
    /// SSH host, their closure is copied there (one `nix copy --derivation`). Returns the
    /// command, for the job's `reproduce` lines.
    pub fn send_derivations(&self, nix: &Nix, drvs: &[&str], log: &HostLog) -> Result<Option<String>> {
        match self {
            Placement::Local => Ok(None),
            Placement::Remote(remote) => remote.send_derivations(nix, drvs, log).map(Some),
        }
    }

    /// `nix-store --realise PATH... --add-root ROOT --indirect` on the host, with `root` (a
    /// local job-directory path) mapped to the host: builds what is missing (each
    /// derivation once, in Nix's order) and roots every output with the names
    /// [`Nix::realise_cmd`] gives them. Run with Nix's structured log, which `watch` hears
    /// as it comes (over SSH too: the same command runs there and its stderr comes back).
    /// Returns the command as a user would type it (without the structured log), for
    /// `reproduce`.
    pub fn realise(
        &self,
        nix: &Nix,
        paths: &[&str],
        root: &Path,
        log: &HostLog,
        watch: &mut dyn BuildWatch,
    ) -> Result<String> {
        let host_root = self.host_path(root)?;
        let shown = self.on_host(nix.realise_cmd(paths, &host_root))?;
        let cmd = self.on_host(nix.realise_cmd(paths, &host_root).args(LOG_FORMAT_ARGS))?;
        run_realise(&cmd, log, watch)?;
        Ok(shown.display())
    }

    /// When every output of `drvs` is valid in the host's store: all of them rooted at
    /// `root` (a local job-directory path, mapped to the host) with the names
    /// [`Nix::realise_cmd`] gives them, and their store closure, with one command
    /// that can neither build nor fetch ([`Nix::root_valid_cmd`]). `None` when one is not
    /// valid (or the command failed otherwise: a realisation then says why). Run with
    /// Nix's structured log, which `watch` hears: an output another process is building
    /// makes it wait for Nix's lock. Returns the closure and the equivalent `nix-store
    /// --realise` as a user would type it, for `reproduce`.
    pub fn root_valid(
        &self,
        nix: &Nix,
        drvs: &[&str],
        root: &Path,
        log: &HostLog,
        watch: &mut dyn BuildWatch,
    ) -> Result<Option<(Vec<PathBuf>, String)>> {
        let host_root = self.host_path(root)?;
        let cmd = self.on_host(nix.root_valid_cmd(drvs, &host_root).args(LOG_FORMAT_ARGS))?;
        let out = match run_realise(&cmd, log, watch) {
            Ok(out) => out,
            Err(e) if crate::tools::command::is_interrupted(&e) => return Err(e),
            Err(_) => return Ok(None),
        };
        let shown = self.on_host(nix.realise_cmd(drvs, &host_root))?.display();
        Ok(Some((out.stdout_paths(), shown)))
    }

    /// Whether every one of `paths` is likely valid in the host's store, as cheaply as can
    /// be: here, that each exists (no process; a path that exists without being valid is
    /// what a build that is running without Nix's sandbox, or one that was killed, left);
    /// on an SSH host, [`Placement::all_valid`].
    pub fn all_present(&self, nix: &Nix, paths: &[String], log: &HostLog) -> Result<bool> {
        match self {
            Placement::Local => Ok(paths.iter().all(|p| Path::new(p).symlink_metadata().is_ok())),
            Placement::Remote(_) => self.all_valid(nix, paths, log),
        }
    }

    /// Whether Nix is done with `paths` on the host, as cheaply as can be: each exists, and
    /// its `.lock` file, which Nix deletes once it has registered the path and released
    /// its lock, is gone (here, no process; on an SSH host, one `sh`). `false` when that
    /// cannot be told.
    pub fn outputs_released(&self, paths: &[String], log: &HostLog) -> bool {
        match self {
            Placement::Local => {
                paths.iter().all(|p| Path::new(p).exists() && !Path::new(&format!("{p}.lock")).exists())
            }
            Placement::Remote(remote) => remote.outputs_released(paths, log).unwrap_or(false),
        }
    }

    /// Whether every one of `paths` is valid in the host's store (`nix-store
    /// --check-validity`, there).
    pub fn all_valid(&self, nix: &Nix, paths: &[String], log: &HostLog) -> Result<bool> {
        Ok(self.on_host(nix.check_validity_cmd(paths))?.run_unchecked(Some(log))?.status.success())
    }

    /// The store closure of `paths` in the host's store (`nix-store --query --requisites`,
    /// there): what a job's guest gets to see of `/nix/store`.
    pub fn requisites(&self, nix: &Nix, paths: &[&str], log: &HostLog) -> Result<Vec<PathBuf>> {
        Ok(self.on_host(nix.requisites_cmd(paths))?.run(Some(log))?.stdout_paths())
    }

    /// A command of this machine's tools, to run on the host: as it is here; through SSH,
    /// by its program's name, on an SSH host.
    fn on_host(&self, cmd: Cmd) -> Result<Cmd> {
        match self {
            Placement::Local => Ok(cmd),
            Placement::Remote(remote) => remote.command_like(&cmd),
        }
    }

    /// When this host lacks `paths` and `source` (another SSH host) has them: copy them
    /// here with Nix's own copying. Returns the command when something was sent; nothing
    /// is sent when the paths are valid here already, or either host is this machine.
    pub fn receive_from(
        &self,
        nix: &Nix,
        source: &Placement,
        paths: &[String],
        log: &HostLog,
    ) -> Result<Option<String>> {
        let (Placement::Remote(here), Placement::Remote(there)) = (self, source) else { return Ok(None) };
        if here == there {
            return Ok(None);
        }
        if self.all_valid(nix, paths, log)? {
            log.line(&format!("payload outputs are valid on `{}` already: not sent", here.host));
            return Ok(None);
        }
        here.copy_from(nix, there, paths, log).map(Some)
    }

    /// A file under a realized payload `root` on the host, read without following a link
    /// anywhere below the root, and at most `limit` + 1 bytes of it (so that a caller sees
    /// that it is too large).
    pub fn read_payload_file(&self, root: &str, rel: &str, limit: u64, log: &HostLog) -> Result<PayloadFile> {
        match self {
            Placement::Local => read_payload_file_here(Path::new(root), rel, limit),
            Placement::Remote(remote) => remote.read_payload_file(root, rel, limit, log),
        }
    }

    /// What each path is on the host: its canonical path and whether it is a regular
    /// file, or `None` when it does not exist.
    pub fn probe(&self, paths: &[String], log: &HostLog) -> Result<Vec<Probed>> {
        match self {
            Placement::Local => {
                Ok(paths.iter().map(|p| Path::new(p).canonicalize().ok().map(|c| (c.clone(), c.is_file()))).collect())
            }
            Placement::Remote(remote) => remote.probe(paths, log),
        }
    }

    /// Bring the job's artifacts to this machine (they are here already locally).
    pub fn fetch_artifacts(&self, local_dir: &Path, log: &HostLog) -> Result<()> {
        match self {
            Placement::Local => Ok(()),
            Placement::Remote(remote) => remote.download_artifacts(local_dir, log),
        }
    }
}

/// What [`Placement::read_payload_file`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum PayloadFile {
    Missing,
    /// This part of the path (relative to the root) is a symbolic link.
    Link(String),
    NotRegular {
        directory: bool,
    },
    Bytes(Vec<u8>),
}

fn read_payload_file_here(root: &Path, rel: &str, limit: u64) -> Result<PayloadFile> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let mut at = root.to_path_buf();
    for part in Path::new(rel).components() {
        at.push(part);
        match at.symlink_metadata() {
            Ok(m) if m.file_type().is_symlink() => {
                return Ok(PayloadFile::Link(at.strip_prefix(root).unwrap_or(&at).display().to_string()));
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(PayloadFile::Missing),
            Err(e) => return Err(anyhow::Error::new(e).context(format!("read `{}`", at.display()))),
        }
    }
    // O_NOFOLLOW against a link swapped in since the check; O_NONBLOCK against a FIFO.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(&at)
        .with_context(|| format!("open `{}`", at.display()))?;
    let meta = file.metadata().with_context(|| format!("stat `{}`", at.display()))?;
    if !meta.is_file() {
        return Ok(PayloadFile::NotRegular { directory: meta.is_dir() });
    }
    let mut bytes = Vec::new();
    file.take(limit + 1).read_to_end(&mut bytes).with_context(|| format!("read `{}`", at.display()))?;
    Ok(PayloadFile::Bytes(bytes))
}

/// What a path turned out to be on the host: its canonical path and whether it is a
/// regular file; `None` when it does not exist.
pub type Probed = Option<(PathBuf, bool)>;

/// The source of a payload's mount on the host that runs the job: see
/// [`Placement::device_source`].
pub fn staged_payload_source_root(mount: &StagedPayloadMount, placement: &Placement) -> Result<PathBuf> {
    placement.device_source(&mount.local_mount_path).with_context(|| {
        format!("resolve staged payload `{}` at `{}`", mount.device_prefix, mount.local_mount_path.display())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_names() {
        for h in [None, Some("localhost"), Some("127.0.0.1"), Some("::1"), Some("[::1]"), Some("ci@localhost")] {
            assert!(ssh_host_is_local(h), "{h:?}");
        }
        for h in ["build-host", "10.0.0.2", "ci@builder", "localhost.example.org"] {
            assert!(!ssh_host_is_local(Some(h)), "{h}");
        }
    }

    #[test]
    fn localhost_mount_source_is_the_canonical_store_path() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("store-path");
        std::fs::create_dir(&target).unwrap();
        let link = dir.path().join("jobs/unit/staged-linux-rust/workspace-build");
        std::fs::create_dir_all(link.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let mount = StagedPayloadMount { local_mount_path: link, device_prefix: "workspace-build".into() };
        let placement = Placement::new(Some("localhost"), dir.path(), Path::new("/srv/pikaci"));
        assert_eq!(staged_payload_source_root(&mount, &placement).unwrap(), target.canonicalize().unwrap());
    }

    #[test]
    fn remote_mount_source_is_the_remote_job_path_untouched() {
        let local_root = Path::new("/home/me/proj/.pikaci");
        let mount = StagedPayloadMount {
            local_mount_path: local_root.join("runs/r1/jobs/unit/staged-linux-rust/workspace-deps"),
            device_prefix: "workspace-deps".into(),
        };
        let placement = Placement::new(Some("ci@builder"), local_root, Path::new("/var/lib/pikaci/remote"));
        assert_eq!(
            staged_payload_source_root(&mount, &placement).unwrap(),
            Path::new("/var/lib/pikaci/remote/runs/r1/jobs/unit/staged-linux-rust/workspace-deps")
        );
    }

    #[test]
    fn missing_local_payload_is_an_error_naming_it() {
        let mount =
            StagedPayloadMount { local_mount_path: "/nonexistent/x".into(), device_prefix: "workspace-deps".into() };
        let err = staged_payload_source_root(&mount, &Placement::Local).unwrap_err();
        assert!(err.to_string().contains("resolve staged payload `workspace-deps`"), "{err}");
    }
}
