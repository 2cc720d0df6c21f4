//! A job on a remote host, reached by SSH. The remote side mirrors the local state root's
//! layout under its own root (`PIKACI_REMOTE_STATE_ROOT`, default `/var/tmp/pikaci`).
//! Payload bytes never cross the wire: the `.drv` closure is copied there and the payloads
//! are built there, rooted in the remote job directory. What crosses is the source
//! snapshot (once per content), the commands, the logs, and the artifacts coming back.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::placement::RemoteHost;
use crate::catalog::Payload;
use crate::catalog::manifest::{
    MANIFEST_PATH, MAX_MANIFEST_BYTES, PayloadManifest, Probed, ResolvedMount, check_manifest_size,
};
use crate::error;
use crate::tools::command::{Cmd, HostLog};
use crate::tools::nix::Nix;
use crate::tools::ssh::Ssh;

impl RemoteHost {
    fn ssh(&self) -> Result<Ssh> {
        Ssh::new(&self.host)
    }

    /// The remote counterpart of a path under the local state root.
    pub fn path_of(&self, local: &Path) -> Result<PathBuf> {
        let rel = local.strip_prefix(&self.local_state_root).with_context(|| {
            format!("`{}` is outside the state root `{}`", local.display(), self.local_state_root.display())
        })?;
        Ok(self.remote_state_root.join(rel))
    }

    /// Create every directory a job needs on the remote side, with one `mkdir -p`, and
    /// keep the remote state root closed to other users there, as the local one is (what
    /// a lane leaves in its artifacts stays there until `gc`).
    pub fn ensure_remote_linux_vm_directories(&self, local_dirs: &[PathBuf], log: &HostLog) -> Result<()> {
        let script = r#"mkdir -p -- "$@" && chmod o-rwx -- "$0""#;
        let root = self.remote_state_root.display().to_string();
        let mut argv = vec!["sh".to_string(), "-c".to_string(), script.to_string(), root];
        for dir in local_dirs {
            argv.push(self.path_of(dir)?.display().to_string());
        }
        self.ssh()?
            .command("ssh mkdir", &argv)
            .run(Some(log))
            .with_context(|| format!("create the job directories on `{}`", self.host))?;
        Ok(())
    }

    /// Make the snapshot available on the remote side. Snapshots are content-addressed, so
    /// one that is there already is the same and is not sent again.
    pub fn ensure_snapshot(&self, snapshot_dir: &Path, log: &HostLog) -> Result<()> {
        let ssh = self.ssh()?;
        let remote_dir = self.path_of(snapshot_dir)?.display().to_string();
        if ssh.command("ssh test", &["test", "-d", &remote_dir]).run(Some(log)).is_ok() {
            return Ok(());
        }
        let tar = tempfile::Builder::new().prefix("pikaci-snapshot-").suffix(".tar").tempfile()?;
        tar_program()?
            .args(["-C"])
            .arg(snapshot_dir)
            .args(["-cf"])
            .arg(tar.path())
            .arg(".")
            .run(Some(log))
            .context("pack the snapshot")?;
        // Unpacked beside its final name and renamed: a half-sent snapshot is never used.
        // `mv -T` refuses to move into a snapshot another run published meanwhile.
        let unpack = r#"set -e; d=$1; t="$d.tmp.$$"; mkdir -p "$t"; tar -C "$t" -xf -; mv -T "$t" "$d" 2>/dev/null || rm -rf "$t""#;
        ssh.command("ssh tar", &["sh", "-c", unpack, "sh", &remote_dir])
            .stdin_file(tar.path())
            .run(Some(log))
            .with_context(|| format!("send the snapshot to `{}`", self.host))?;
        Ok(())
    }

    /// Build a payload on the remote host: copy its `.drv` closure there (`nix copy`), then
    /// realize it there with every output rooted at the remote counterpart of `root`.
    /// Returns the remote root links and the commands, for the job record.
    pub fn realise(
        &self,
        nix: &Nix,
        payload: &Payload,
        root: &Path,
        log: &HostLog,
    ) -> Result<(Vec<PathBuf>, Vec<String>)> {
        let ssh = self.ssh()?;
        let remote_root = self.path_of(root)?;
        let mut reproduce = Vec::new();
        // `nix-store --realise` there, with the same argv as here but the remote root.
        let realise = |path: &str, link: &Path, reproduce: &mut Vec<String>| -> Result<Vec<PathBuf>> {
            let argv = nix.realise_cmd(path, link).argv();
            let mut words: Vec<String> = vec!["nix-store".into()];
            words.extend(argv[1..].iter().map(|a| a.to_string_lossy().into_owned()));
            let cmd = ssh.command("ssh nix-store --realise", &words);
            reproduce.push(cmd.display());
            let out = cmd.run(Some(log))?;
            Ok(out.stdout_str().lines().filter(|l| !l.is_empty()).map(PathBuf::from).collect())
        };
        let roots = if Path::new(&payload.drv_path).exists() {
            let to = format!("ssh://{}", self.host);
            let copy = nix.copy_derivation_cmd(&payload.drv_path, &to).env("NIX_SSHOPTS", ssh.nix_sshopts());
            reproduce.push(copy.display());
            copy.run(Some(log)).with_context(|| format!("copy `{}` to `{}`", payload.drv_path, self.host))?;
            realise(&payload.drv_path, &remote_root, &mut reproduce)?
        } else {
            // The .drv is gone here (a rerun of an old run): the outputs are still valid
            // there while that run's remote roots hold them.
            let mut roots = Vec::new();
            for (output, path) in &payload.outputs {
                let link = if output == "out" {
                    remote_root.clone()
                } else {
                    PathBuf::from(format!("{}-{output}", remote_root.display()))
                };
                roots.extend(realise(path, &link, &mut reproduce)?);
            }
            roots
        };
        Ok((roots, reproduce))
    }

    /// Read and validate a payload's manifest on the remote host. Extra mounts come back
    /// under the local `link`, which placement maps to the remote job directory.
    pub fn load_manifest(
        &self,
        root: &str,
        link: &Path,
        name: &str,
        log: &HostLog,
    ) -> Result<Option<(PayloadManifest, Vec<ResolvedMount>)>> {
        let ssh = self.ssh()?;
        let file = format!("{root}/{MANIFEST_PATH}");
        // No link is followed (`share`, `share/pikaci`, the file), a directory is refused,
        // and at most one byte more than the limit is read.
        let script = r#"for p in "$1" "${1%/*}" "${1%/*/*}"; do [ -L "$p" ] && exit 4; done
            [ -d "$1" ] && exit 5; [ -f "$1" ] || exit 3; head -c "$2" -- "$1""#;
        let limit = (MAX_MANIFEST_BYTES + 1).to_string();
        let cat = ssh.command("ssh cat", &["sh", "-c", script, "sh", &file, &limit]).run_unchecked(Some(log))?;
        let label = format!("{}:{file}", self.host);
        let refuse = |why: &str| {
            error::config(format!("payload `{name}`: invalid `{MANIFEST_PATH}`: {why}"))
                .hint(format!("fix the derivation that writes `{label}`"))
        };
        match cat.status.code() {
            Some(0) => {}
            Some(3) => return Ok(None),
            Some(4) => return Err(refuse("a part of its path is a symbolic link, and links are not followed").into()),
            Some(5) => return Err(refuse("it is a directory; it must be a JSON file").into()),
            _ => anyhow::bail!("read `{file}` on `{}`: {}", self.host, cat.stderr_str().trim()),
        }
        check_manifest_size(cat.stdout.len() as u64, name, &label)?;
        let manifest = PayloadManifest::parse(&cat.stdout, name, &label)?;
        let paths: Vec<String> = manifest.paths().iter().map(|rel| format!("{root}/{rel}")).collect();
        let probed = if paths.is_empty() { Vec::new() } else { self.probe(&ssh, &paths, log)? };
        let mounts = manifest.resolve(name, &label, Path::new(root), link, &probed)?;
        Ok(Some((manifest, mounts)))
    }

    /// Canonical path and kind of each path, with one SSH call.
    fn probe(&self, ssh: &Ssh, paths: &[String], log: &HostLog) -> Result<Vec<Probed>> {
        let script = r#"for p; do if r=$(readlink -e -- "$p"); then if [ -f "$r" ]; then echo "f $r"; else echo "d $r"; fi; else echo -; fi; done"#;
        let mut argv = vec!["sh".to_string(), "-c".to_string(), script.to_string(), "sh".to_string()];
        argv.extend(paths.iter().cloned());
        let out = ssh.command("ssh readlink", &argv).run(Some(log))?;
        Ok(parse_probe(&out.stdout_str()))
    }

    /// Bring the remote artifacts directory's content into the local one.
    pub fn download_artifacts(&self, local_dir: &Path, log: &HostLog) -> Result<()> {
        let remote_dir = self.path_of(local_dir)?.display().to_string();
        let tar = tempfile::Builder::new().prefix("pikaci-artifacts-").suffix(".tar").tempfile()?;
        self.ssh()?
            .command("ssh tar", &["tar", "-C", &remote_dir, "-cf", "-", "."])
            .stdout_file(tar.path())
            .run(Some(log))
            .with_context(|| format!("fetch the artifacts from `{}`", self.host))?;
        tar_program()?
            .arg("-C")
            .arg(local_dir)
            .arg("-xf")
            .arg(tar.path())
            .run(Some(log))
            .context("unpack the artifacts")?;
        Ok(())
    }

    /// Remove run directories (and with them their GC roots) and snapshots on the remote
    /// side, with one call.
    pub fn remove(&self, local_paths: &[PathBuf]) -> Result<()> {
        if local_paths.is_empty() {
            return Ok(());
        }
        let mut argv = vec!["rm".to_string(), "-rf".to_string(), "--".to_string()];
        for p in local_paths {
            argv.push(self.path_of(p)?.display().to_string());
        }
        self.ssh()?
            .command("ssh rm", &argv)
            .run(None)
            .with_context(|| format!("remove old runs on `{}`", self.host))?;
        Ok(())
    }
}

fn tar_program() -> Result<Cmd> {
    let tar =
        which::which("tar").map_err(|_| crate::error::infra("`tar` was not found on PATH").hint("install tar"))?;
    Ok(Cmd::new("tar", tar))
}

fn parse_probe(out: &str) -> Vec<Probed> {
    out.lines()
        .map(|l| match l.split_once(' ') {
            Some(("f", p)) => Some((PathBuf::from(p), true)),
            Some(("d", p)) => Some((PathBuf::from(p), false)),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn remote() -> RemoteHost {
        RemoteHost {
            host: "ci@builder".into(),
            local_state_root: "/home/me/proj/.pikaci".into(),
            remote_state_root: "/var/tmp/pikaci".into(),
        }
    }

    #[test]
    fn remote_paths_mirror_the_state_root() {
        let r = remote();
        assert_eq!(
            r.path_of(Path::new("/home/me/proj/.pikaci/runs/r1/jobs/unit/artifacts")).unwrap(),
            Path::new("/var/tmp/pikaci/runs/r1/jobs/unit/artifacts")
        );
        assert!(r.path_of(Path::new("/etc/passwd")).is_err());
    }

    #[test]
    fn probe_output() {
        let probed = parse_probe("f /nix/store/a-x/bin/run\n-\nd /nix/store/a-x/share\n");
        assert_eq!(probed[0], Some(("/nix/store/a-x/bin/run".into(), true)));
        assert_eq!(probed[1], None);
        assert_eq!(probed[2], Some(("/nix/store/a-x/share".into(), false)));
    }
}
