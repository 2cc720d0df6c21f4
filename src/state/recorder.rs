//! The run in progress: its record (rewritten atomically on every change), its event log,
//! and whoever listens to its events (the reporter). Every change to a run goes through
//! here, so `run.json`, `events.jsonl` and the user's screen cannot disagree.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::Result;

use super::events::{Event, EventLog};
use super::record::{JobStatus, JobSummary, RunRecord};
use super::reserve::Reserve;

/// Receives every event of a run as it happens.
pub trait EventSink: Send + Sync {
    fn event(&self, event: &Event);
}

pub struct Recorder {
    run_dir: PathBuf,
    record: Mutex<RunRecord>,
    events: EventLog,
    sink: Arc<dyn EventSink>,
    /// Room for the records when a lane fills the disk.
    reserve: Reserve,
}

impl Recorder {
    /// Write the first record of a run and open its event log.
    pub fn create(run_dir: &Path, record: RunRecord, sink: Arc<dyn EventSink>) -> Result<Recorder> {
        record.write(run_dir)?;
        Ok(Recorder {
            run_dir: run_dir.to_path_buf(),
            events: EventLog::create(run_dir)?,
            record: Mutex::new(record),
            sink,
            reserve: Reserve::create(run_dir),
        })
    }

    pub fn run_id(&self) -> String {
        self.lock().run_id.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RunRecord> {
        self.record.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn emit(&self, event: Event) {
        // events.jsonl is the run's history; failing to append is reported, not fatal.
        if let Err(e) = self.events.append(&event) {
            eprintln!("pikaci: warning: {e:#}");
        }
        self.sink.event(&event);
    }

    /// Change the record and write it.
    pub fn update(&self, f: impl FnOnce(&mut RunRecord)) {
        let mut record = self.lock();
        f(&mut record);
        if let Err(e) = self.reserve.write_or_free(|| record.write(&self.run_dir)) {
            eprintln!("pikaci: warning: {e:#}");
        }
    }

    pub fn set_job_status(&self, job_id: &str, status: JobStatus) {
        self.update(|r| {
            if let Some(j) = r.jobs.iter_mut().find(|j| j.job_id == job_id) {
                j.status = status;
            }
        });
    }

    /// Record a job's outcome, then announce it.
    pub fn finish_job(&self, summary: JobSummary) {
        let event = Event::JobFinished {
            run_id: self.run_id(),
            job_id: summary.job_id.clone(),
            status: summary.status,
            exit_code: summary.exit_code,
            duration_ms: summary.duration_ms,
            message: summary.message.clone(),
            at: super::now_rfc3339(),
        };
        self.update(|r| {
            if let Some(slot) = r.jobs.iter_mut().find(|j| j.job_id == summary.job_id) {
                *slot = summary;
            }
        });
        self.emit(event);
    }

    /// Write a record (a job's) that must not be lost to a full disk: the reserve is
    /// freed for it when the disk is full.
    pub fn write_or_free(&self, write: impl Fn() -> Result<()>) -> Result<()> {
        self.reserve.write_or_free(write)
    }

    /// The run is over: give back the space reserved for its records.
    pub fn free_reserve(&self) {
        self.reserve.free();
    }

    /// The record as it is now.
    pub fn record(&self) -> RunRecord {
        self.lock().clone()
    }
}
