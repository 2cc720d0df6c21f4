//! Files written so that a reader never sees half of them.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};

/// Write a file atomically: a temporary file beside it, synced, then renamed over it, so
/// a reader sees the old or the new content and never a torn one.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(dir)
        .with_context(|| format!("create a temporary file in `{}`", dir.display()))?;
    tmp.write_all(bytes).with_context(|| format!("write `{}`", path.display()))?;
    tmp.as_file().sync_data().ok();
    tmp.persist(path).map_err(|e| e.error).with_context(|| format!("replace `{}`", path.display()))?;
    Ok(())
}
