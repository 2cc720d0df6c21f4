//! Reading the state root as the user sees it: the runs listed newest first (a corrupt
//! record listed as such, never hiding the others), a run's record with its liveness
//! applied, and a job's per-test results. `pikaci list`/`status` and the web page read
//! through these same functions, so they cannot disagree.

use anyhow::Result;

use super::StateRoot;
use super::record::{JobRecord, RunRecord, TestsRecord};
use crate::error;

/// One run as `list` shows it: its record as it is now, or why the record cannot be read.
pub enum Listed {
    Run(Box<RunRecord>),
    Corrupt { run_id: String, error: String },
}

impl Listed {
    /// The entry of `list --json` (and of the web page's `/api/runs`).
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Listed::Run(record) => serde_json::json!({
                "run_id": record.run_id,
                "status": record.status,
                "created_at": record.created_at,
                "duration_ms": record.duration_ms,
                "flake": record.flake,
                "runtime": record.runtime,
                "jobs": record.jobs,
            }),
            Listed::Corrupt { run_id, error } => {
                serde_json::json!({ "run_id": run_id, "status": "corrupt", "error": error })
            }
        }
    }
}

/// Every run, newest first, with its effective status. One bad record must not hide the
/// others: it is listed as corrupt, with the reason.
pub fn list_runs(state: &StateRoot) -> Result<Vec<Listed>> {
    let mut ids = state.run_ids()?;
    ids.reverse();
    Ok(ids.into_iter().map(|id| read_listed(state, id)).collect())
}

/// One run as `list` shows it.
pub fn read_listed(state: &StateRoot, id: String) -> Listed {
    match RunRecord::read(&state.run_dir(&id)) {
        Ok(record) => Listed::Run(Box::new(record.effective(state))),
        Err(e) => {
            let why = error::render(&e).lines().next().unwrap_or_default().trim_start_matches("error: ").to_string();
            Listed::Corrupt { run_id: id, error: why }
        }
    }
}

/// The record `status` shows: as written, with the liveness of its process applied.
pub fn status_record(state: &StateRoot, run_id: &str) -> Result<RunRecord> {
    Ok(RunRecord::read(&state.run_dir(run_id))?.effective(state))
}

/// A job's per-test results in full, from its `job.json` (the run record keeps counts).
pub fn job_tests(state: &StateRoot, run_id: &str, job_id: &str) -> Option<TestsRecord> {
    JobRecord::read(&state.job_dir(run_id, job_id)).ok()?.tests
}

/// `status --json` (and the web page's JSON): the run record, each job's `tests` in full.
pub fn status_json(state: &StateRoot, record: &RunRecord) -> Result<serde_json::Value> {
    let mut value = serde_json::to_value(record)?;
    if let Some(jobs) = value.get_mut("jobs").and_then(serde_json::Value::as_array_mut) {
        for (summary, job) in record.jobs.iter().zip(jobs) {
            if summary.tests.is_some()
                && let Some(tests) = job_tests(state, &record.run_id, &summary.job_id)
            {
                job["tests"] = serde_json::to_value(tests)?;
            }
        }
    }
    Ok(value)
}
