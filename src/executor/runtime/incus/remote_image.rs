//! An image tarball sent to an SSH host for `pikaci image import --remote HOST`: written
//! into a fresh temporary directory there, removed again when done.

use std::path::Path;

use anyhow::{Context, Result};

use crate::tools::ssh::Ssh;

pub struct SentTarball {
    ssh: Ssh,
    dir: String,
    /// The tarball's path on the host.
    pub path: String,
}

impl SentTarball {
    pub fn send(host: &str, tarball: &Path) -> Result<SentTarball> {
        let ssh = Ssh::new(host)?;
        let name = tarball.file_name().map_or_else(|| "image.tar".into(), |n| n.to_string_lossy().into_owned());
        // The file name keeps its extension, by which `incus image import` may know it.
        let script = r#"set -e; d=$(mktemp -d "${TMPDIR:-/tmp}/pikaci-image.XXXXXX"); cat > "$d/$1"; echo "$d""#;
        let out = ssh
            .command("ssh cat", &["sh", "-c", script, "sh", &name])
            .stdin_file(tarball)
            .run(None)
            .with_context(|| format!("send `{}` to `{host}`", tarball.display()))?;
        let dir = out.stdout_str().trim().to_string();
        anyhow::ensure!(dir.starts_with('/'), "`{host}` named no temporary directory for the image: {dir:?}");
        let path = format!("{dir}/{name}");
        Ok(SentTarball { ssh, dir, path })
    }
}

impl Drop for SentTarball {
    fn drop(&mut self) {
        let _ = self.ssh.command("ssh rm", &["rm", "-rf", "--", &self.dir]).run(None);
    }
}
