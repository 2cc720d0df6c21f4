//! Room kept for the records on a full disk. A lane can fill the filesystem of the state
//! root with its output (or artifacts); the run's record must still be written, or the
//! run would later show as `interrupted`. Each run keeps a small file of zeros
//! (`runs/<run>/.reserve`); the first record write that fails for lack of space removes it
//! and tries again.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::Result;

/// Enough for a run record with many jobs, and their job records.
pub const RESERVE_BYTES: usize = 1024 * 1024;

#[derive(Debug)]
pub struct Reserve {
    path: Mutex<Option<PathBuf>>,
}

impl Reserve {
    /// Set the room aside in `run_dir`. Best effort: without it (a disk already full), the
    /// run goes on and the records are written while there is room.
    pub fn create(run_dir: &Path) -> Reserve {
        let path = run_dir.join(".reserve");
        let made = std::fs::File::create(&path).and_then(|mut f| {
            f.write_all(&vec![0u8; RESERVE_BYTES])?;
            f.sync_data()
        });
        if made.is_err() {
            let _ = std::fs::remove_file(&path);
        }
        Reserve { path: Mutex::new(made.ok().map(|_| path)) }
    }

    /// Run `write`; if it failed for lack of space and the room is still set aside, free it
    /// and run `write` once more.
    pub fn write_or_free<T>(&self, write: impl Fn() -> Result<T>) -> Result<T> {
        match write() {
            Err(e) if is_disk_full(&e) && self.free() => write(),
            other => other,
        }
    }

    /// Give the room back (at the end of the run); true when there was some.
    pub fn free(&self) -> bool {
        let taken = self.path.lock().unwrap_or_else(|p| p.into_inner()).take();
        taken.is_some_and(|p| std::fs::remove_file(p).is_ok())
    }
}

pub fn is_disk_full(err: &anyhow::Error) -> bool {
    err.chain()
        .filter_map(|e| e.downcast_ref::<std::io::Error>())
        .any(|e| e.kind() == std::io::ErrorKind::StorageFull || e.kind() == std::io::ErrorKind::QuotaExceeded)
}
