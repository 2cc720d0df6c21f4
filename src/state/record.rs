//! `run.json` and `job.json`: versioned, written atomically, read tolerantly (a corrupt
//! record is an error that names the file, never a panic).
//!
//! These are the on-disk formats, with types of their own: the catalog's `Lane` or the
//! plan's `PlannedJob` may change without moving a byte of what is recorded (the run
//! module converts). Each file has its own version.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::atomic_write;
use crate::error;

/// The version of `run.json` this pikaci writes and reads.
pub const RUN_SCHEMA_VERSION: u32 = 1;
/// The version of `job.json` this pikaci writes and reads.
pub const JOB_SCHEMA_VERSION: u32 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Running,
    Passed,
    Failed,
    /// Ctrl-C, SIGTERM, or the pikaci process died (seen when its lock is free).
    Interrupted,
    /// Infrastructure failure: nix or the runtime failed before a command ran.
    Error,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Pending,
    Preparing,
    Running,
    Passed,
    /// The command exited non-zero, or a payload failed to build.
    Failed,
    TimedOut,
    Skipped,
    Interrupted,
    Error,
}

impl JobStatus {
    pub fn is_final(self) -> bool {
        !matches!(self, JobStatus::Pending | JobStatus::Preparing | JobStatus::Running)
    }
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Pending => "pending",
            JobStatus::Preparing => "preparing",
            JobStatus::Running => "running",
            JobStatus::Passed => "passed",
            JobStatus::Failed => "failed",
            JobStatus::TimedOut => "timed_out",
            JobStatus::Skipped => "skipped",
            JobStatus::Interrupted => "interrupted",
            JobStatus::Error => "error",
        }
    }
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Passed => "passed",
            RunStatus::Failed => "failed",
            RunStatus::Interrupted => "interrupted",
            RunStatus::Error => "error",
        }
    }

    pub fn exit_code(self) -> i32 {
        match self {
            RunStatus::Passed => crate::error::exit::SUCCESS,
            RunStatus::Failed => crate::error::exit::JOB_FAILED,
            RunStatus::Error => crate::error::exit::INFRASTRUCTURE,
            RunStatus::Interrupted | RunStatus::Running => crate::error::exit::INTERRUPTED,
        }
    }
}

/// The record of a run: what was asked, the plan (enough to replay it), and each job's
/// outcome.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRecord {
    pub schema_version: u32,
    pub run_id: String,
    pub status: RunStatus,
    pub created_at: String,
    #[serde(default)]
    pub finished_at: Option<String>,
    #[serde(default)]
    pub duration_ms: Option<u64>,
    pub pid: u32,
    pub pikaci_version: String,
    /// The flake as the user named it.
    pub flake: String,
    pub source_dir: PathBuf,
    pub system: String,
    #[serde(default)]
    pub nix_version: Option<String>,
    pub snapshot: RunSnapshot,
    /// The git commit the work tree had checked out when the run took its snapshot
    /// (the snapshot also holds what was not committed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git_rev: Option<String>,
    /// How long the flake's evaluation took, in milliseconds (reading a cached catalog
    /// is quick); absent for a rerun and in older records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_ms: Option<u64>,
    pub runtime: RuntimeName,
    #[serde(default)]
    pub image: Option<String>,
    /// The first host of the run (`remotes[0]`), kept for the readers of older records.
    #[serde(default)]
    pub remote: Option<String>,
    /// Every SSH host the run was given (`--remote`, repeated), in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remotes: Vec<String>,
    pub parallelism: usize,
    #[serde(default)]
    pub changed: Option<ChangedRecord>,
    #[serde(default)]
    pub rerun_of: Option<String>,
    pub plan: Vec<PlannedJobRecord>,
    /// `pikaci run ... -- ARGS`: appended to every job's command, in this run only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    pub jobs: Vec<JobSummary>,
    #[serde(default)]
    pub message: Option<String>,
}

/// The runtime a run used, as recorded. `none` when every job was skipped; `auto` when
/// no runtime could be had (the jobs are then `error`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuntimeName {
    Incus,
    Bwrap,
    Auto,
    None,
    /// Written by a newer pikaci.
    #[serde(other)]
    Unknown,
}

impl std::fmt::Display for RuntimeName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl RuntimeName {
    pub fn parse(name: &str) -> RuntimeName {
        serde_json::from_value(serde_json::Value::String(name.to_string())).unwrap_or(RuntimeName::Unknown)
    }
    pub fn as_str(self) -> &'static str {
        match self {
            RuntimeName::Incus => "incus",
            RuntimeName::Bwrap => "bwrap",
            RuntimeName::Auto => "auto",
            RuntimeName::None => "none",
            RuntimeName::Unknown => "unknown",
        }
    }
}

/// A lane as the run recorded it: enough to replay the job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaneRecord {
    pub id: String,
    pub description: String,
    pub kind: String,
    pub payloads: Vec<PayloadRecord>,
    pub command: Vec<String>,
    pub paths: Vec<String>,
    pub timeout_secs: u64,
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub image: Option<String>,
    /// Added after version 1 was first written: absent in older records.
    #[serde(default)]
    pub retries: u32,
    #[serde(default = "one")]
    pub shards: u32,
    #[serde(default)]
    pub test_filter: bool,
}

fn one() -> u32 {
    1
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PayloadRecord {
    pub name: String,
    pub drv_path: String,
    /// Output name -> store path.
    pub outputs: BTreeMap<String, String>,
}

/// One job of the plan: its lane, and why it did not run if it did not.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedJobRecord {
    pub job_id: String,
    pub lane: LaneRecord,
    #[serde(default)]
    pub skip_reason: Option<String>,
    /// `k/N` for a job of a lane with `shards = N`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<String>,
    /// Arguments for this job only (a `rerun --failed`'s test filter).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_args: Vec<String>,
}

/// Per-test results of a job, from the JUnit files its command wrote under
/// `/pikaci/artifacts/junit/`. Flaky tests (failed, then passed on a retry) count as
/// passed and as flaky.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestsRecord {
    pub passed: u64,
    pub failed: u64,
    pub skipped: u64,
    pub flaky: u64,
    /// The failed tests, at most 1,000, each with the first lines of its output.
    #[serde(default)]
    pub failures: Vec<TestFailureRecord>,
    /// The names of the flaky tests.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub flaky_tests: Vec<String>,
    /// The JUnit says tests failed, but the command exited 0.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub inconsistent: bool,
    /// Files that could not be read, or were refused (too large, a symlink, malformed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestFailureRecord {
    /// The test's own name (`alpha::tests::fails_one`), the form a filter takes back.
    pub name: String,
    pub suite: String,
    pub message: String,
    /// The first lines of its output.
    pub output: String,
}

/// A job's test counts, as `run.json` keeps them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestCounts {
    pub passed: u64,
    pub failed: u64,
    pub skipped: u64,
    pub flaky: u64,
}

impl TestsRecord {
    pub fn counts(&self) -> TestCounts {
        TestCounts { passed: self.passed, failed: self.failed, skipped: self.skipped, flaky: self.flaky }
    }
}

/// Files changed since a rev, as `--changed-since` found them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangedRecord {
    pub since: String,
    pub files: Vec<String>,
}

/// A payload's manifest, as it was read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestRecord {
    pub schema_version: u32,
    pub kind: String,
    #[serde(default)]
    pub entrypoints: Vec<String>,
    #[serde(default)]
    pub mounts: Vec<ManifestMountRecord>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestMountRecord {
    pub path: String,
    pub guest_path: String,
}

/// A manifest mount, resolved: its source through the job's payload link.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountRecord {
    pub source: PathBuf,
    pub guest_path: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunSnapshot {
    pub id: String,
    pub dir: PathBuf,
    pub files: usize,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSummary {
    pub job_id: String,
    pub status: JobStatus,
    #[serde(default)]
    pub exit_code: Option<i32>,
    #[serde(default)]
    pub duration_ms: Option<u64>,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tests: Option<TestCounts>,
    /// The host the job ran on (`localhost`, an SSH host, a cluster member's address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

/// One job in full: its lane, the realized payloads, and how to reproduce it by hand.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRecord {
    pub schema_version: u32,
    pub run_id: String,
    pub job_id: String,
    pub lane: LaneRecord,
    pub status: JobStatus,
    #[serde(default)]
    pub started_at: Option<String>,
    #[serde(default)]
    pub finished_at: Option<String>,
    #[serde(default)]
    pub duration_ms: Option<u64>,
    #[serde(default)]
    pub exit_code: Option<i32>,
    #[serde(default)]
    pub message: Option<String>,
    pub runtime: RuntimeName,
    #[serde(default)]
    pub nix_version: Option<String>,
    #[serde(default)]
    pub payloads: Vec<RealizedPayload>,
    /// The Incus instance, for the incus runtime.
    #[serde(default)]
    pub instance: Option<String>,
    /// Shell lines that redo the job by hand: the realizations, then the runtime call.
    #[serde(default)]
    pub reproduce: Vec<String>,
    /// Absent when the job wrote no JUnit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tests: Option<TestsRecord>,
    /// The host the job ran on; absent in records of older versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RealizedPayload {
    pub name: String,
    pub drv_path: String,
    /// Output name -> store path.
    pub outputs: BTreeMap<String, String>,
    /// The GC-root links in the job directory.
    pub roots: Vec<PathBuf>,
    /// The store path mounted at `/pikaci/payloads/<name>`.
    pub mounted: String,
    /// This job's own work, without the time it waited for another build of it.
    pub duration_ms: u64,
    /// The job of the run that built the derivation, when another one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub built_by: Option<String>,
    /// How long it waited for another build of it (another job's, or Nix's lock).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waited_ms: Option<u64>,
    #[serde(default)]
    pub manifest: Option<ManifestRecord>,
    #[serde(default)]
    pub extra_mounts: Vec<MountRecord>,
}

impl RunRecord {
    /// The SSH hosts of the run: `remotes`, or the one `remote` of an older record.
    pub fn remote_hosts(&self) -> Vec<String> {
        if self.remotes.is_empty() { self.remote.iter().cloned().collect() } else { self.remotes.clone() }
    }

    /// Where the run's Incus instances were: each SSH host, or this machine (`None`).
    pub fn incus_hosts(&self) -> Vec<Option<String>> {
        let hosts = self.remote_hosts();
        if hosts.is_empty() { vec![None] } else { hosts.into_iter().map(Some).collect() }
    }

    pub fn path(run_dir: &Path) -> PathBuf {
        run_dir.join("run.json")
    }

    pub fn write(&self, run_dir: &Path) -> Result<()> {
        write_json(&RunRecord::path(run_dir), self)
    }

    pub fn read(run_dir: &Path) -> Result<RunRecord> {
        read_json(&RunRecord::path(run_dir), "run record", RUN_SCHEMA_VERSION)
    }

    pub fn job(&self, job_id: &str) -> Option<&JobSummary> {
        self.jobs.iter().find(|j| j.job_id == job_id)
    }
}

impl JobRecord {
    pub fn path(job_dir: &Path) -> PathBuf {
        job_dir.join("job.json")
    }

    pub fn write(&self, job_dir: &Path) -> Result<()> {
        write_json(&JobRecord::path(job_dir), self)
    }

    pub fn read(job_dir: &Path) -> Result<JobRecord> {
        read_json(&JobRecord::path(job_dir), "job record", JOB_SCHEMA_VERSION)
    }
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let mut bytes = serde_json::to_vec_pretty(value)?;
    bytes.push(b'\n');
    atomic_write(path, &bytes)
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path, what: &str, supported: u32) -> Result<T> {
    let bytes = std::fs::read(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            anyhow::Error::new(error::config(format!("the {what} `{}` is missing", path.display())))
        } else {
            anyhow::Error::new(e).context(format!("read `{}`", path.display()))
        }
    })?;
    let version = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|v| v.get("schema_version").and_then(|s| s.as_u64()));
    if let Some(v) = version
        && v > supported as u64
    {
        return Err(error::config(format!(
            "the {what} `{}` has schema version {v}; this pikaci reads version {supported}",
            path.display()
        ))
        .hint("use the pikaci that wrote it, or a newer one")
        .into());
    }
    serde_json::from_slice(&bytes).map_err(|e| {
        error::config(format!("the {what} `{}` is corrupt: {e}", path.display()))
            .hint("`pikaci gc` can remove the run; its logs stay readable until then")
            .into()
    })
}
