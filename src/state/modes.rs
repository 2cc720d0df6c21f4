//! One rule for the modes of the state root (`docs/state-root.md`): the root directory
//! is closed to other users (no `o` bits; pikaci removes them at every run), and the files
//! pikaci writes under it, records and logs alike, are `0640`. So a user of the owner's
//! group reads every run the same way, and other users reach nothing: not the records,
//! not the logs, not what a lane left in its artifacts.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::{Context, Result};

/// Records, events and logs.
pub const FILE_MODE: u32 = crate::tools::fs::FILE_MODE;

/// Take every permission of "other" users off the state root directory.
pub fn close_to_others(root: &Path) -> Result<()> {
    let meta = fs::metadata(root).with_context(|| format!("stat the state root `{}`", root.display()))?;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o007 != 0 {
        fs::set_permissions(root, fs::Permissions::from_mode(mode & !0o007))
            .with_context(|| format!("close the state root `{}` to other users (chmod o-rwx)", root.display()))?;
    }
    Ok(())
}
