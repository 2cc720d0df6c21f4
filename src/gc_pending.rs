//! What `pikaci gc` could not remove on a remote host (unreachable at the time): kept in
//! `<state root>/remote-leftovers.json`, host -> the local counterparts of the remote
//! paths (run directories with their GC roots, snapshots), and retried by every later gc.
//! Without it, a gc that removes the local runs would orphan their remote directories
//! for good.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::state::{StateRoot, atomic_write};

pub const FILE: &str = "remote-leftovers.json";

pub type Leftovers = BTreeMap<String, Vec<PathBuf>>;

fn path(state: &StateRoot) -> PathBuf {
    state.root.join(FILE)
}

/// What earlier gcs left to do; nothing when there is no file.
pub fn load(state: &StateRoot) -> Result<Leftovers> {
    let file = path(state);
    match std::fs::read(&file) {
        Ok(bytes) => {
            let pending: Leftovers =
                serde_json::from_slice(&bytes).with_context(|| format!("read `{}`", file.display()))?;
            // Only paths under this state root: the file is data, not instructions.
            Ok(pending
                .into_iter()
                .filter(|(host, _)| crate::tools::ssh::parse_host(host).is_ok())
                .map(|(host, paths)| (host, paths.into_iter().filter(|p| is_inside(p, &state.root)).collect()))
                .collect())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Leftovers::new()),
        Err(e) => Err(anyhow::Error::new(e).context(format!("read `{}`", file.display()))),
    }
}

/// Keep what is still to do (or remove the file when nothing is).
pub fn store(state: &StateRoot, pending: &Leftovers) -> Result<()> {
    let file = path(state);
    if pending.values().all(Vec::is_empty) {
        return match std::fs::remove_file(&file) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(anyhow::Error::new(e).context(format!("remove `{}`", file.display())))
            }
            _ => Ok(()),
        };
    }
    let mut bytes = serde_json::to_vec_pretty(pending)?;
    bytes.push(b'\n');
    atomic_write(&file, &bytes)
}

fn is_inside(path: &Path, root: &Path) -> bool {
    path.starts_with(root) && !path.components().any(|c| matches!(c, std::path::Component::ParentDir))
}
