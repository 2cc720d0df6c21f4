//! Lifecycle events: the one stream that `events.jsonl`, `--output jsonl` and the human
//! reporter all consume. One JSON object per line, each with `schema_version` and `event`.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Mutex;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::record::{JobStatus, RunStatus};

/// The version of the event lines (`events.jsonl`, `--output jsonl`).
pub const EVENTS_SCHEMA_VERSION: u32 = 1;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    RunStarted {
        run_id: String,
        at: String,
        flake: String,
        runtime: String,
        snapshot: String,
        jobs: Vec<String>,
        #[serde(default)]
        rerun_of: Option<String>,
        /// How long the flake's evaluation took (a cached catalog: reading it); absent
        /// for a rerun, which replays a recorded plan.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        eval_ms: Option<u64>,
    },
    JobStarted {
        run_id: String,
        job_id: String,
        at: String,
    },
    PayloadRealized {
        run_id: String,
        job_id: String,
        payload: String,
        store_path: String,
        outputs: BTreeMap<String, String>,
        /// This job's own work (its build, its roots, the manifest), without the time it
        /// waited for another job's build of the same derivation.
        duration_ms: u64,
        /// The job of this run that built the derivation, when another one did.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        built_by: Option<String>,
        /// How long this job waited for that build, or for Nix's lock on a path another
        /// process built.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        waited_ms: Option<u64>,
        at: String,
    },
    /// Nix started building (or fetching) something for a payload of this job; its log
    /// is kept in `log`.
    PayloadBuildStarted {
        run_id: String,
        job_id: String,
        payload: String,
        drv_path: String,
        log: String,
        at: String,
    },
    /// Where a payload's build is: at once when a derivation's build starts or ends, and
    /// at most once a second for a new line of a build's log.
    PayloadBuildProgress {
        run_id: String,
        job_id: String,
        payload: String,
        /// Derivations built, of how many (0 until Nix knows).
        done: u64,
        total: u64,
        /// The names of the derivations building now.
        building: Vec<String>,
        /// Store paths being fetched from a binary cache now.
        #[serde(default)]
        fetching: u64,
        /// Waiting for another build of a path it needs (Nix's lock).
        #[serde(default)]
        waiting: bool,
        /// The latest line of a build's log, `<derivation name>> <line>`.
        #[serde(default)]
        line: Option<String>,
        elapsed_ms: u64,
        at: String,
    },
    PayloadBuildFinished {
        run_id: String,
        job_id: String,
        payload: String,
        status: BuildStatus,
        /// How many derivations were built.
        built: u64,
        duration_ms: u64,
        log: String,
        at: String,
    },
    JobFinished {
        run_id: String,
        job_id: String,
        status: JobStatus,
        #[serde(default)]
        exit_code: Option<i32>,
        #[serde(default)]
        duration_ms: Option<u64>,
        #[serde(default)]
        message: Option<String>,
        at: String,
    },
    /// The per-test results of a job, read from its JUnit files after its command.
    TestResults {
        run_id: String,
        job_id: String,
        /// The job's lane (the shards of a lane add up under it).
        #[serde(default)]
        lane: String,
        passed: u64,
        failed: u64,
        skipped: u64,
        flaky: u64,
        /// At most 20 names; `failed` counts them all.
        failed_tests: Vec<String>,
        #[serde(default)]
        flaky_tests: Vec<String>,
        at: String,
    },
    RunFinished {
        run_id: String,
        status: RunStatus,
        duration_ms: u64,
        counts: BTreeMap<String, usize>,
        at: String,
    },
}

/// How a payload's build ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BuildStatus {
    Built,
    Failed,
    Interrupted,
}

impl BuildStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            BuildStatus::Built => "built",
            BuildStatus::Failed => "failed",
            BuildStatus::Interrupted => "interrupted",
        }
    }
}

#[derive(Serialize)]
struct Line<'a> {
    schema_version: u32,
    #[serde(flatten)]
    event: &'a Event,
}

/// One event as a JSON line (no trailing newline).
pub fn to_line(event: &Event) -> String {
    serde_json::to_string(&Line { schema_version: EVENTS_SCHEMA_VERSION, event }).unwrap_or_default()
}

/// `events.jsonl`, appended one line per event and flushed, so `logs --follow` and other
/// readers see events as they happen.
#[derive(Debug)]
pub struct EventLog {
    file: Mutex<File>,
}

impl EventLog {
    pub fn create(run_dir: &Path) -> Result<EventLog> {
        let path = run_dir.join("events.jsonl");
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(super::modes::FILE_MODE)
            .open(&path)
            .with_context(|| format!("open `{}`", path.display()))?;
        Ok(EventLog { file: Mutex::new(file) })
    }

    pub fn append(&self, event: &Event) -> Result<()> {
        let mut line = to_line(event);
        line.push('\n');
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        file.write_all(line.as_bytes()).context("append to events.jsonl")?;
        Ok(())
    }
}

/// Read `events.jsonl`; lines that do not parse (a newer pikaci's events, a torn last
/// line) are skipped.
pub fn read(run_dir: &Path) -> Vec<Event> {
    std::fs::read_to_string(run_dir.join("events.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_carry_version_and_event_name_and_round_trip() {
        let e = Event::JobStarted { run_id: "r".into(), job_id: "unit".into(), at: "t".into() };
        let line = to_line(&e);
        assert_eq!(line, r#"{"schema_version":1,"event":"job_started","run_id":"r","job_id":"unit","at":"t"}"#);
        let back: Event = serde_json::from_str(&line).unwrap();
        assert_eq!(back, e);
    }
}
