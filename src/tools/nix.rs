//! Typed calls to `nix` and `nix-store`: `nix eval --json --apply`, and `nix-store --realise`
//! for building, which roots every output of a derivation. Nix 2.18 and newer (what nixpkgs
//! supports); an older Nix is refused with [`Nix::check_supported`].

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::command::{Cmd, CommandFailed};
use crate::error;

/// The Nix installation pikaci talks to.
#[derive(Clone, Debug)]
pub struct Nix {
    nix: PathBuf,
    nix_store: PathBuf,
    /// Read on first use: spawning `nix --version` costs as much as a small evaluation,
    /// and `pikaci lanes` never needs it.
    version: Arc<OnceLock<Result<NixVersion, String>>>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NixVersion {
    /// As printed: `nix (Nix) 2.8.0`.
    pub text: String,
    pub major: u32,
    pub minor: u32,
}

/// The oldest Nix pikaci runs on: nixpkgs' own minimum (its `lib/minfeatures.nix`), so a
/// flake that uses nixpkgs evaluates.
pub const MIN_VERSION: (u32, u32) = (2, 18);

impl NixVersion {
    pub fn is_supported(&self) -> bool {
        (self.major, self.minor) >= MIN_VERSION
    }

    pub fn parse(text: &str) -> Option<NixVersion> {
        let text = text.trim();
        let number = text.split_whitespace().last()?;
        let mut parts = number.split(|c: char| !c.is_ascii_digit());
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        Some(NixVersion { text: text.to_string(), major, minor })
    }
}

static LOCATED: OnceLock<Result<Nix, String>> = OnceLock::new();

impl Nix {
    /// Find `nix` on PATH and read its version, once per process.
    pub fn locate() -> Result<Nix> {
        let located = LOCATED.get_or_init(|| Nix::locate_uncached().map_err(|e| error::render(&e)));
        match located {
            Ok(nix) => Ok(nix.clone()),
            Err(rendered) => Err(error::infra(rendered.trim_start_matches("error: ").to_string()).into()),
        }
    }

    fn locate_uncached() -> Result<Nix> {
        let nix = which::which("nix").map_err(|_| {
            error::infra("`nix` was not found on PATH")
                .hint("install Nix (on Debian 12: `scripts/bootstrap`, or `apt-get install nix-bin`), then run `pikaci doctor`")
        })?;
        let nix_store = nix
            .parent()
            .map(|dir| dir.join("nix-store"))
            .filter(|p| p.exists())
            .or_else(|| which::which("nix-store").ok())
            .ok_or_else(|| error::infra(format!("`nix-store` was not found next to `{}` or on PATH", nix.display())))?;
        Ok(Nix { nix, nix_store, version: Arc::default() })
    }

    /// The version, from `cache` when it was recorded for this very `nix` binary (same
    /// path, size and mtime), else from `nix --version` (and then recorded there).
    pub fn version_cached(&self, cache: &Path) -> Result<NixVersion> {
        use std::os::unix::fs::MetadataExt;
        let key = std::fs::canonicalize(&self.nix).and_then(|p| {
            let m = std::fs::metadata(&p)?;
            Ok(format!("{} {} {}.{}", p.display(), m.size(), m.mtime(), m.mtime_nsec()))
        });
        let Ok(key) = key else { return self.version() };
        let cached: Option<(String, NixVersion)> =
            std::fs::read(cache).ok().and_then(|b| serde_json::from_slice(&b).ok());
        if let Some((k, v)) = cached
            && k == key
        {
            let _ = self.version.set(Ok(v.clone()));
            return Ok(v);
        }
        let version = self.version()?;
        if let Ok(bytes) = serde_json::to_vec(&(key, &version)) {
            let _ = super::fs::atomic_write(cache, &bytes, super::fs::FILE_MODE);
        }
        Ok(version)
    }

    /// An infrastructure error naming the version, the minimum and the fix, for a Nix older
    /// than [`MIN_VERSION`].
    pub fn check_supported(&self, version: &NixVersion) -> Result<()> {
        if version.is_supported() {
            return Ok(());
        }
        let (major, minor) = MIN_VERSION;
        Err(error::infra(format!(
            "`{}` is {}; pikaci needs Nix {major}.{minor} or newer (the oldest nixpkgs evaluates on)",
            self.nix.display(),
            version.text
        ))
        .hint(
            "install a current Nix and put it first on PATH: on Debian 12, `scripts/bootstrap` \
             installs one in /usr/local/bin; elsewhere see https://nixos.org/download",
        )
        .into())
    }

    /// The Nix version (`nix --version`), read once.
    pub fn version(&self) -> Result<NixVersion> {
        let version = self.version.get_or_init(|| {
            let out = Cmd::new("nix --version", &self.nix).arg("--version").run(None).map_err(|e| format!("{e:#}"))?;
            NixVersion::parse(&out.stdout_str())
                .ok_or_else(|| format!("could not read the Nix version from `{}`", out.stdout_str().trim()))
        });
        version.clone().map_err(|e| error::infra(e).into())
    }

    /// A `nix` call with flakes enabled whatever the host's nix.conf says.
    fn nix(&self, label: &str) -> Cmd {
        Cmd::new(label, &self.nix).args(["--extra-experimental-features", "nix-command flakes"])
    }

    /// `nix eval --json <installable> --apply <fn>`: one evaluation, nothing built.
    pub fn eval_json_apply(&self, installable: &str, apply: &str) -> Result<serde_json::Value> {
        let out = self.nix("nix eval").args(["eval", "--json", installable, "--apply", apply]).run(None)?;
        serde_json::from_slice(&out.stdout)
            .with_context(|| format!("parse the JSON printed by `nix eval {installable}`"))
    }

    /// `nix eval --json <installable> --apply <fn>`, its output as printed (for a caller
    /// that reads it in its own way, or keeps it).
    pub fn eval_apply_output(&self, installable: &str, apply: &str) -> Result<Vec<u8>> {
        Ok(self.nix("nix eval").args(["eval", "--json", installable, "--apply", apply]).run(None)?.stdout)
    }

    /// The command that realizes `paths` (`.drv`s, or output paths) with every output
    /// registered as an indirect GC root named after `root`, by position ([`root_name`]:
    /// `root`, `root-<output>`, `root-2`, `root-2-<output>`, ...). Returned unrun so that
    /// job records can show it.
    pub fn realise_cmd(&self, paths: &[&str], root: &Path) -> Cmd {
        // Its own process group: on Ctrl-C pikaci sends it SIGTERM, and it stops its
        // builder (SIGKILL would leave the builder running, re-parented to PID 1).
        Cmd::new("nix-store --realise", &self.nix_store)
            .arg("--realise")
            .args(paths)
            .arg("--add-root")
            .arg(root)
            .arg("--indirect")
            .own_process_group()
    }

    /// Root the outputs of `drvs` at `root` as [`Nix::realise_cmd`] names them, and
    /// print the store closure of those outputs, with one process, when every output is
    /// valid already: nothing is built (`max-jobs 0`, no remote builders) or fetched
    /// (`substitute false`), so that it fails, fast, when one is not. (`--force-realise`
    /// of a `.drv` with `--use-output` realises it and queries its outputs; the roots are
    /// registered one argument at a time, so a failure leaves those of the arguments
    /// before it, with the names a realisation gives them.)
    pub fn root_valid_cmd(&self, drvs: &[&str], root: &Path) -> Cmd {
        Cmd::new("nix-store --query --requisites --force-realise", &self.nix_store)
            .args(["--query", "--requisites", "--use-output", "--force-realise", "--add-root"])
            .arg(root)
            .arg("--indirect")
            .args(["--option", "max-jobs", "0", "--option", "builders", "", "--option", "substitute", "false"])
            .args(drvs)
    }

    /// `nix copy --derivation --to <store> <drv>...`: the `.drv`s and their closures (the
    /// input derivations and sources), not the outputs, so that the other store builds
    /// them.
    pub fn copy_derivation_cmd(&self, drvs: &[&str], to: &str) -> Cmd {
        self.nix("nix copy").args(["copy", "--derivation", "--to", to]).args(drvs)
    }

    /// `nix copy --from <store> --to <store> <paths>`: store paths and their closures from
    /// one store to another (through this process; this machine's store is not used).
    pub fn copy_between_cmd(&self, from: &str, to: &str, paths: &[String]) -> Cmd {
        self.nix("nix copy").args(["copy", "--from", from, "--to", to]).args(paths)
    }

    /// `nix-store --check-validity <paths>`: exits 0 when every path is valid in the store.
    pub fn check_validity_cmd(&self, paths: &[String]) -> Cmd {
        Cmd::new("nix-store --check-validity", &self.nix_store).arg("--check-validity").args(paths)
    }

    /// `nix-store --query --requisites PATH...`: the store closure of the paths, with
    /// one call for all of them; unrun (a placement runs it on its host).
    pub fn requisites_cmd(&self, paths: &[&str]) -> Cmd {
        Cmd::new("nix-store --query --requisites", &self.nix_store).args(["--query", "--requisites"]).args(paths)
    }

    /// The command's executable, for `doctor`.
    pub fn program(&self) -> &Path {
        &self.nix
    }
}

/// The GC root `nix-store --realise ARG... --add-root ROOT` makes for output `output` of
/// its argument at `position` (0-based), a `.drv`: `ROOT` for the first argument's `out`,
/// `ROOT-<n>` for the n-th one's (n from 2), and `-<output>` after that for any other
/// output (Nix 2.34, checked by running it). A single output path as the only argument
/// is rooted as `ROOT` itself.
pub fn root_name(root: &Path, position: usize, output: &str) -> PathBuf {
    let mut name = root.as_os_str().to_owned();
    if position > 0 {
        name.push(format!("-{}", position + 1));
    }
    if output != "out" {
        name.push(format!("-{output}"));
    }
    PathBuf::from(name)
}

/// True when a `nix-store --realise` failure is a builder that failed (the lane's code is
/// broken: a failed job), not Nix itself failing (infrastructure).
pub fn is_build_failure(err: &anyhow::Error) -> bool {
    err.chain().filter_map(|e| e.downcast_ref::<CommandFailed>()).any(|f| build_failed(&f.stderr))
}

/// Nix's words for a builder that failed: up to 2.2x "builder for '…' failed with exit code
/// 1", "dependencies couldn't be built"; later "Cannot build '…'. Reason: builder failed with
/// exit code 1" (or "due to signal 9"), "Reason: 1 dependency failed".
fn build_failed(stderr: &str) -> bool {
    stderr.contains("builder for")
        && (stderr.contains("failed with exit code") || stderr.contains("failed due to signal"))
        || stderr.contains("dependencies couldn't be built")
        || stderr.contains("build of ") && stderr.contains(" failed")
        || stderr.contains("Reason: builder failed with exit code")
        || stderr.contains("Reason: builder failed due to signal")
        || stderr.contains("Reason: ")
            && (stderr.contains(" dependency failed") || stderr.contains(" dependencies failed"))
}

/// A store path's `<hash>-<name>` parts, or None when `path` is not a store path.
pub fn parse_store_path(path: &str) -> Option<(&str, &str)> {
    let base = path.strip_prefix("/nix/store/")?;
    if base.contains('/') {
        return None;
    }
    let (hash, name) = base.split_once('-')?;
    let nix32 = |c: char| c.is_ascii_digit() || (c.is_ascii_lowercase() && !matches!(c, 'e' | 'o' | 'u' | 't'));
    (hash.len() == 32 && hash.chars().all(nix32) && !name.is_empty()).then_some((hash, name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_names_follow_the_position_then_the_output() {
        let root = Path::new("/j/staged/payload");
        let names: Vec<PathBuf> = [(0, "out"), (0, "dev"), (1, "out"), (2, "out"), (2, "lib")]
            .iter()
            .map(|(i, o)| root_name(root, *i, o))
            .collect();
        let expected = ["payload", "payload-dev", "payload-2", "payload-3", "payload-3-lib"];
        assert_eq!(names, expected.map(|n| Path::new("/j/staged").join(n)));
    }

    #[test]
    fn versions_of_old_and_new_nix() {
        let v = NixVersion::parse("nix (Nix) 2.8.0\n").unwrap();
        assert_eq!((v.major, v.minor), (2, 8));
        let v = NixVersion::parse("nix (Nix) 2.24.10").unwrap();
        assert_eq!((v.major, v.minor), (2, 24));
        let v = NixVersion::parse("nix (Determinate Nix 3.6.2) 2.29.0").unwrap();
        assert_eq!((v.major, v.minor), (2, 29));
        assert!(NixVersion::parse("garbage").is_none());
    }

    #[test]
    fn nix_2_18_is_the_oldest_supported() {
        let supported = |text| NixVersion::parse(text).unwrap().is_supported();
        assert!(!supported("nix (Nix) 2.8.0"));
        assert!(!supported("nix (Nix) 2.17.1"));
        assert!(supported("nix (Nix) 2.18.0"));
        assert!(supported("nix (Nix) 2.34.8"));
        assert!(supported("nix (Nix) 3.0.0"));
    }

    #[test]
    fn build_failures_in_the_words_of_old_and_new_nix() {
        for failed in [
            "error: builder for '/nix/store/x-a.drv' failed with exit code 1;",
            "error: 1 dependencies couldn't be built",
            "error: Cannot build '/nix/store/x-a.drv'.\n       Reason: builder failed with exit code 3.",
            "error: Cannot build '/nix/store/x-a.drv'.\n       Reason: builder failed due to signal 9 (Killed).",
            "error: Cannot build '/nix/store/x-g.drv'.\n       Reason: 1 dependency failed.",
        ] {
            assert!(build_failed(failed), "{failed}");
        }
        for infra in [
            "error: opening lock file '/nix/var/nix/db/big-lock': Permission denied",
            "error: cannot connect to socket at '/nix/var/nix/daemon-socket/socket'",
        ] {
            assert!(!build_failed(infra), "{infra}");
        }
    }

    #[test]
    fn store_paths() {
        assert_eq!(
            parse_store_path("/nix/store/8imc8yv6f303hr832cgk5agj05l7fpz3-multi"),
            Some(("8imc8yv6f303hr832cgk5agj05l7fpz3", "multi"))
        );
        assert_eq!(parse_store_path("/nix/store/8imc8yv6f303hr832cgk5agj05l7fpz3-multi.drv").unwrap().1, "multi.drv");
        assert!(parse_store_path("/nix/store/short-x").is_none());
        assert!(parse_store_path("/nix/store/8imc8yv6f303hr832cgk5agj05l7fpz3-multi/bin").is_none());
        assert!(parse_store_path("/tmp/8imc8yv6f303hr832cgk5agj05l7fpz3-multi").is_none());
        // 'e', 'o', 'u', 't' are not in Nix's base-32 alphabet.
        assert!(parse_store_path("/nix/store/eimc8yv6f303hr832cgk5agj05l7fpz3-multi").is_none());
    }
}
