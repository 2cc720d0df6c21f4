//! The state root: every run's records, logs, artifacts and GC roots, plus the shared
//! source snapshots. Layout in `docs/state-root.md`.
//!
//! Locking: a running run holds an exclusive lock on `runs/<run>/lock` for its whole
//! life, so a run whose process died is recognised (its lock is free) and `gc` skips live
//! runs without waiting for them. The root `lock` is taken shared while a run is being
//! created (snapshot taken, record written) and exclusively by `gc`, so `gc` never deletes
//! a snapshot that a starting run is about to use.

pub mod events;
pub mod modes;
pub mod query;
pub mod record;
pub mod recorder;
pub mod reserve;
mod status;

use std::fs::{self, File, OpenOptions};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::error;

pub use record::{JobRecord, JobStatus, RunRecord, RunStatus};

#[derive(Clone, Debug)]
pub struct StateRoot {
    pub root: PathBuf,
}

impl StateRoot {
    /// `--state-root` / `PIKACI_STATE_ROOT` when given, else `.pikaci` beside the flake,
    /// else `.pikaci` in the current directory.
    pub fn resolve(explicit: Option<&Path>, flake_dir: Option<&Path>) -> Result<StateRoot> {
        let cwd = std::env::current_dir().context("read the current directory")?;
        let root = match (explicit, flake_dir) {
            (Some(p), _) => cwd.join(p),
            (None, Some(dir)) => dir.join(".pikaci"),
            (None, None) => cwd.ancestors().find(|d| d.join("flake.nix").is_file()).unwrap_or(&cwd).join(".pikaci"),
        };
        Ok(StateRoot { root })
    }

    pub fn runs_dir(&self) -> PathBuf {
        self.root.join("runs")
    }
    pub fn run_dir(&self, run_id: &str) -> PathBuf {
        self.runs_dir().join(run_id)
    }
    pub fn job_dir(&self, run_id: &str, job_id: &str) -> PathBuf {
        self.run_dir(run_id).join("jobs").join(job_id)
    }
    pub fn snapshots_dir(&self) -> PathBuf {
        self.root.join("snapshots")
    }
    pub fn snapshot_cache(&self) -> PathBuf {
        self.root.join("snapshot-cache")
    }

    /// Create the state root, and keep it closed to other users (see [`modes`]).
    pub fn ensure(&self) -> Result<()> {
        fs::create_dir_all(self.runs_dir())
            .with_context(|| format!("create the state root `{}`", self.root.display()))?;
        modes::close_to_others(&self.root)
    }

    fn root_lock_file(&self) -> Result<File> {
        self.ensure()?;
        let path = self.root.join("lock");
        OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("open `{}`", path.display()))
    }

    /// Held while a run is being created; blocks only while `gc` runs.
    pub fn lock_shared(&self) -> Result<File> {
        let file = self.root_lock_file()?;
        file.lock_shared().with_context(|| format!("lock `{}`", self.root.join("lock").display()))?;
        Ok(file)
    }

    /// Held by `gc`. While a run is being created (its flake evaluated), `on_wait` is
    /// called once, to say what gc waits for; Ctrl-C stops the wait ([`Interrupted`]).
    ///
    /// [`Interrupted`]: crate::tools::command::Interrupted
    pub fn lock_exclusive_waiting(&self, on_wait: &dyn Fn(&Path)) -> Result<File> {
        let file = self.root_lock_file()?;
        let path = self.root.join("lock");
        let mut said = false;
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(file),
                Err(fs::TryLockError::WouldBlock) => {}
                Err(fs::TryLockError::Error(e)) => {
                    return Err(anyhow::Error::new(e).context(format!("lock `{}`", path.display())));
                }
            }
            if crate::signals::interrupted() {
                return Err(crate::tools::command::Interrupted.into());
            }
            if !said {
                on_wait(&path);
                said = true;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    /// Held by `gc`.
    pub fn lock_exclusive(&self) -> Result<File> {
        let file = self.root_lock_file()?;
        file.lock().with_context(|| format!("lock `{}`", self.root.join("lock").display()))?;
        Ok(file)
    }

    /// Every run id, oldest first (run ids sort by time).
    pub fn run_ids(&self) -> Result<Vec<String>> {
        let dir = self.runs_dir();
        let mut ids = Vec::new();
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ids),
            Err(e) => return Err(anyhow::Error::new(e).context(format!("read `{}`", dir.display()))),
        };
        for entry in entries {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                ids.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        ids.sort();
        Ok(ids)
    }

    /// A run id as the user typed it: in full, `latest`, or a unique prefix.
    pub fn find_run(&self, spec: &str) -> Result<String> {
        let ids = self.run_ids()?;
        if spec == "latest" || spec == "last" {
            return ids.last().cloned().ok_or_else(|| {
                error::usage(format!("no runs in `{}`", self.root.display()))
                    .hint("start one with `pikaci run`, or point `--state-root` at another state root")
                    .into()
            });
        }
        if ids.iter().any(|id| id == spec) {
            return Ok(spec.to_string());
        }
        let matches: Vec<&String> = ids.iter().filter(|id| id.starts_with(spec)).collect();
        match matches.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(error::usage(format!("unknown run `{spec}` in `{}`", self.root.display()))
                .hint("`pikaci list` shows the runs; `latest` names the newest")
                .into()),
            many => Err(error::usage(format!("run `{spec}` is ambiguous: {} runs start with it", many.len()))
                .hint("type more of the run id")
                .into()),
        }
    }

    /// Take the run's liveness lock. None when another process holds it (the run is live).
    pub fn try_lock_run(&self, run_id: &str) -> Result<Option<File>> {
        let path = self.run_dir(run_id).join("lock");
        let file = match OpenOptions::new().create(true).truncate(false).write(true).open(&path) {
            Ok(f) => f,
            // A reader that may not write (`pikaci serve` as a read-only service) can still
            // probe the lock: flock works on a file opened for reading.
            Err(e) if matches!(e.kind(), ErrorKind::PermissionDenied | ErrorKind::ReadOnlyFilesystem) => {
                File::open(&path).with_context(|| format!("open `{}`", path.display()))?
            }
            Err(e) => return Err(anyhow::Error::new(e).context(format!("open `{}`", path.display()))),
        };
        match file.try_lock() {
            Ok(()) => Ok(Some(file)),
            Err(fs::TryLockError::WouldBlock) => Ok(None),
            Err(fs::TryLockError::Error(e)) => Err(anyhow::Error::new(e).context(format!("lock `{}`", path.display()))),
        }
    }

    /// Whether a process is running the run now.
    pub fn run_is_live(&self, run_id: &str) -> bool {
        matches!(self.try_lock_run(run_id), Ok(None))
    }
}

/// Write a file atomically with the state root's file mode ([`modes::FILE_MODE`]).
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<()> {
    crate::tools::fs::atomic_write(path, bytes, modes::FILE_MODE)
}

/// A new run id: UTC time to the millisecond, then 4 random hex digits, e.g.
/// `20261121-163300-123-9f3a`. Sorts by time; safe in paths and Incus names.
pub fn new_run_id() -> String {
    let now = jiff::Timestamp::now();
    let stamp = now.strftime("%Y%m%d-%H%M%S").to_string();
    let millis = now.subsec_millisecond();
    let mut seed = [0u8; 2];
    if let Ok(mut f) = File::open("/dev/urandom") {
        use std::io::Read;
        let _ = f.read_exact(&mut seed);
    }
    format!("{stamp}-{millis:03}-{:02x}{:02x}", seed[0], seed[1])
}

/// Now, as RFC 3339 UTC.
pub fn now_rfc3339() -> String {
    jiff::Timestamp::now().round(jiff::Unit::Millisecond).map(|t| t.to_string()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_ids_sort_by_time_and_are_name_safe() {
        let a = new_run_id();
        std::thread::sleep(std::time::Duration::from_millis(5));
        let b = new_run_id();
        assert!(a < b, "{a} !< {b}");
        assert_eq!(a.len(), 24, "{a}");
        assert!(a.chars().all(|c| c.is_ascii_digit() || c == '-' || c.is_ascii_hexdigit()));
    }

    #[test]
    fn find_run_by_prefix_and_latest() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateRoot { root: dir.path().to_path_buf() };
        for id in ["20261121-100000-000-aaaa", "20261121-110000-000-bbbb", "20261121-110000-500-cccc"] {
            fs::create_dir_all(state.run_dir(id)).unwrap();
        }
        assert_eq!(state.find_run("latest").unwrap(), "20261121-110000-500-cccc");
        assert_eq!(state.find_run("20261121-10").unwrap(), "20261121-100000-000-aaaa");
        assert!(error::render(&state.find_run("20261121-11").unwrap_err()).contains("ambiguous"));
        let err = state.find_run("nope").unwrap_err();
        assert_eq!(error::kind_of(&err), error::ErrorKind::Usage);
    }

    #[test]
    fn run_lock_tells_live_from_dead() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateRoot { root: dir.path().to_path_buf() };
        fs::create_dir_all(state.run_dir("r")).unwrap();
        let held = state.try_lock_run("r").unwrap().expect("free at first");
        assert!(state.run_is_live("r"));
        drop(held);
        assert!(!state.run_is_live("r"));
    }
}
