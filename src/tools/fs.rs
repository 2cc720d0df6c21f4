//! Files written so that a reader never sees half of them.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::{Context, Result};

/// The mode of the files pikaci writes under a state root (`docs/state-root.md`): its
/// owner's group reads them, other users nothing.
pub const FILE_MODE: u32 = 0o640;

/// Write a file atomically: a temporary file beside it, given `mode`, synced, then renamed
/// over it, so a reader sees the old or the new content and never a torn one.
pub fn atomic_write(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(dir)
        .with_context(|| format!("create a temporary file in `{}`", dir.display()))?;
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod `{}`", path.display()))?;
    tmp.write_all(bytes).with_context(|| format!("write `{}`", path.display()))?;
    tmp.as_file().sync_data().ok();
    tmp.persist(path).map_err(|e| e.error).with_context(|| format!("replace `{}`", path.display()))?;
    Ok(())
}
