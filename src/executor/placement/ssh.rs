//! A host reached by SSH. The remote side mirrors the local state root's layout under its
//! own root (`PIKACI_REMOTE_STATE_ROOT`, default `/var/tmp/pikaci`). Payload bytes never
//! cross the wire: the `.drv` closure is copied there and the payloads are built there,
//! rooted in the remote job directory. What crosses is the source snapshot (once per
//! content), the commands, the logs, and the artifacts coming back.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::{PayloadFile, Probed, RemoteHost};
use crate::tools::command::Cmd;
use crate::tools::log::HostLog;
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

    /// Create every directory a job needs on the remote side, and its links (pairs of a
    /// link and its relative target), with one `sh`, and keep the remote state root
    /// closed to other users there, as the local one is (what a lane leaves in its
    /// artifacts stays there until `gc`).
    pub fn ensure_remote_linux_vm_directories(
        &self,
        local_dirs: &[PathBuf],
        links: &[(PathBuf, PathBuf)],
        log: &HostLog,
    ) -> Result<()> {
        // The directories, `::`, then each link's target and path.
        let script = r#"set -e; r=$0; while [ $# -gt 0 ] && [ "$1" != :: ]; do mkdir -p -- "$1"; shift; done; chmod o-rwx -- "$r"; [ $# -gt 0 ] && shift; while [ $# -gt 1 ]; do ln -sfn -- "$1" "$2"; shift 2; done"#;
        let root = self.remote_state_root.display().to_string();
        let mut argv = vec!["sh".to_string(), "-c".to_string(), script.to_string(), root];
        for dir in local_dirs {
            argv.push(self.path_of(dir)?.display().to_string());
        }
        argv.push("::".to_string());
        for (link, target) in links {
            argv.push(target.display().to_string());
            argv.push(self.path_of(link)?.display().to_string());
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

    /// Copy `.drv`s and their closure (input derivations and sources, not outputs) to
    /// the host, so that they build there. Returns the command, for `reproduce`.
    pub fn send_derivations(&self, nix: &Nix, drvs: &[&str], log: &HostLog) -> Result<String> {
        let ssh = self.ssh()?;
        let to = format!("ssh://{}", self.host);
        let copy = nix.copy_derivation_cmd(drvs, &to).env("NIX_SSHOPTS", ssh.nix_sshopts());
        copy.run(Some(log)).with_context(|| format!("copy `{}` to `{}`", drvs.join("`, `"), self.host))?;
        Ok(copy.display())
    }

    /// Copy store paths (with their closures) from another SSH host's store into this
    /// host's, with Nix's own copying (`nix copy --from ssh://A --to ssh://B`; the bytes
    /// pass through this process, not this machine's store). Returns the command.
    pub fn copy_from(&self, nix: &Nix, source: &RemoteHost, paths: &[String], log: &HostLog) -> Result<String> {
        let ssh = self.ssh()?;
        let (from, to) = (format!("ssh://{}", source.host), format!("ssh://{}", self.host));
        let copy = nix.copy_between_cmd(&from, &to, paths).env("NIX_SSHOPTS", ssh.nix_sshopts());
        copy.run(Some(log)).with_context(|| format!("copy payloads from `{}` to `{}`", source.host, self.host))?;
        Ok(copy.display())
    }

    /// The same command, run on the host through SSH: its program by its file name (the
    /// host's own, on its PATH), its arguments as they are.
    pub fn command_like(&self, cmd: &Cmd) -> Result<Cmd> {
        let argv = cmd.argv();
        let program = Path::new(&argv[0]).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let mut words = vec![program];
        words.extend(argv[1..].iter().map(|a| a.to_string_lossy().into_owned()));
        Ok(self.ssh()?.command(&format!("ssh {}", cmd.label()), &words))
    }

    /// A file under a payload root on the host: no link followed below the root, a
    /// directory or other non-file refused, at most `limit` + 1 bytes read.
    pub fn read_payload_file(&self, root: &str, rel: &str, limit: u64, log: &HostLog) -> Result<PayloadFile> {
        // Exit 4 names the first part of `rel` that is a link; 5 a directory; 6 another
        // non-file; 3 nothing there.
        let script = r#"r=$1; p=$r; old=$IFS; IFS=/; set -f; for part in $2; do p=$p/$part;
            if [ -L "$p" ]; then printf '%s' "${p#"$r"/}"; exit 4; fi; done; IFS=$old
            [ -d "$p" ] && exit 5; [ -e "$p" ] || exit 3; [ -f "$p" ] || exit 6; head -c "$3" -- "$p""#;
        let limit = (limit + 1).to_string();
        let cat =
            self.ssh()?.command("ssh cat", &["sh", "-c", script, "sh", root, rel, &limit]).run_unchecked(Some(log))?;
        match cat.status.code() {
            Some(0) => Ok(PayloadFile::Bytes(cat.stdout)),
            Some(3) => Ok(PayloadFile::Missing),
            Some(4) => Ok(PayloadFile::Link(cat.stdout_str())),
            Some(5) => Ok(PayloadFile::NotRegular { directory: true }),
            Some(6) => Ok(PayloadFile::NotRegular { directory: false }),
            _ => anyhow::bail!("read `{root}/{rel}` on `{}`: {}", self.host, cat.stderr_str().trim()),
        }
    }

    /// [`super::Placement::outputs_released`] on the host, with one SSH call.
    pub fn outputs_released(&self, paths: &[String], log: &HostLog) -> Result<bool> {
        let script = r#"for p; do [ -e "$p" ] && [ ! -e "$p.lock" ] || exit 1; done"#;
        let mut argv = vec!["sh".to_string(), "-c".to_string(), script.to_string(), "sh".to_string()];
        argv.extend(paths.iter().cloned());
        Ok(self.ssh()?.command("ssh test", &argv).run_unchecked(Some(log))?.status.success())
    }

    /// Canonical path and kind of each path, with one SSH call.
    pub fn probe(&self, paths: &[String], log: &HostLog) -> Result<Vec<Probed>> {
        if paths.is_empty() {
            return Ok(Vec::new());
        }
        let ssh = self.ssh()?;
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
