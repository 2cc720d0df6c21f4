//! One job's lifecycle: its directory and logs, the placement's preparation (snapshot,
//! directories), prepare (payloads realized as GC roots), the hand-off to the runtime,
//! the artifacts back, and its record. Every outcome, pikaci's own failures included,
//! becomes the job's summary and its `job.json`: a job is never lost.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::Reporter;
use super::hosts::Host;
use super::setup::{RuntimeSlot, Setup};
use crate::error;
use crate::executor::{GuestOutcome, JobIo, OutputSink, RuntimeReport, artifacts};
use crate::handoff::{self as guest, HostContext, JobPreview};
use crate::plan::PlannedJob;
use crate::prepare::{self, BuildOutcome, BuildReport, Prepared, PreparedPayload, Watch};
use crate::results::junit::read_junit_dir;
use crate::state::events::{BuildStatus, Event};
use crate::state::record::{JOB_SCHEMA_VERSION, JobSummary, LaneRecord, RealizedPayload, TestsRecord};
use crate::state::recorder::Recorder;
use crate::state::{self, JobRecord, JobStatus};
use crate::tools::command::is_interrupted;
use crate::tools::log::HostLog;
use crate::tools::nix;

/// Why a job ended before its command did: the status it gets, and the error.
struct JobError {
    status: JobStatus,
    error: anyhow::Error,
}

impl JobError {
    /// pikaci or the host failed (an interruption stays an interruption).
    fn infra(error: anyhow::Error) -> JobError {
        let status = if is_interrupted(&error) { JobStatus::Interrupted } else { JobStatus::Error };
        JobError { status, error }
    }
}

/// The context one job runs in.
struct JobScope<'a> {
    setup: &'a Setup,
    host: &'a Host,
    run_id: &'a str,
    planned: &'a PlannedJob,
    recorder: &'a Recorder,
    reporter: &'a Arc<dyn Reporter>,
    job_dir: PathBuf,
    /// The job's directory and `host.log`, made when the job was warmed or now.
    preview: Result<&'a JobPreview, String>,
}

/// Prepare and run one job; return its summary (its `job.json` is written).
pub fn run_job(
    setup: &Setup,
    host: &Host,
    run_id: &str,
    planned: &PlannedJob,
    preview: Result<&JobPreview, String>,
    recorder: &Recorder,
    reporter: &Arc<dyn Reporter>,
) -> JobSummary {
    let started = Instant::now();
    let job_dir = setup.choices.state.job_dir(run_id, &planned.job_id);
    let scope = JobScope { setup, host, run_id, planned, recorder, reporter, job_dir, preview };
    let mut job = new_record(setup, Some(host), run_id, planned);
    recorder.emit(Event::JobStarted {
        run_id: run_id.to_string(),
        job_id: planned.job_id.clone(),
        at: state::now_rfc3339(),
    });
    recorder.set_job_status(&planned.job_id, JobStatus::Preparing);
    #[cfg(debug_assertions)]
    debug_panic_trigger(&planned.job_id);

    let (status, exit_code, message) = match scope.run(&mut job) {
        Ok(outcome) => judge(outcome, planned.lane.timeout_secs),
        Err(JobError { status, error }) => (status, None, Some(one_line(&error))),
    };
    finish_record(recorder, &scope.job_dir, &mut job, status, exit_code, message, started.elapsed())
}

/// A test-only fault: with `PIKACI_DEBUG_PANIC_IN_JOB=<job id>`, a debug build panics in
/// that job, so that the handling of a bug is tested for real. Release builds ignore it.
#[cfg(debug_assertions)]
fn debug_panic_trigger(job_id: &str) {
    if std::env::var("PIKACI_DEBUG_PANIC_IN_JOB").is_ok_and(|j| j == job_id) {
        panic!("test-only panic in job `{job_id}` (PIKACI_DEBUG_PANIC_IN_JOB)");
    }
}

/// What is known of a job before it runs, with its directory and `host.log` made: the
/// runtime may get ready for it ahead of time.
pub fn preview(setup: &Setup, run_id: &str, planned: &PlannedJob) -> Result<JobPreview> {
    let job_dir = setup.choices.state.job_dir(run_id, &planned.job_id);
    let artifacts_dir = job_dir.join("artifacts");
    std::fs::create_dir_all(&artifacts_dir).with_context(|| format!("create `{}`", artifacts_dir.display()))?;
    Ok(JobPreview {
        run_id: run_id.to_string(),
        job_id: planned.job_id.clone(),
        host_log: HostLog::create(&job_dir.join("host.log"))?,
        job_dir,
        snapshot_dir: setup.choices.snapshot.dir.clone(),
        artifacts_dir,
        image: planned.lane.image.clone().or_else(|| setup.choices.image.clone()),
    })
}

/// A job ended by a panic (a bug): recorded as `error` with the panic's message.
pub fn record_bug(setup: &Setup, run_id: &str, planned: &PlannedJob, recorder: &Recorder, bug: &str) -> JobSummary {
    let job_dir = setup.choices.state.job_dir(run_id, &planned.job_id);
    let mut job = JobRecord::read(&job_dir).unwrap_or_else(|_| new_record(setup, None, run_id, planned));
    let message = Some(format!("internal error (a bug in pikaci): {bug}"));
    finish_record(recorder, &job_dir, &mut job, JobStatus::Error, None, message, Duration::ZERO)
}

/// A job that found no host left in the run: recorded as `error` with the hosts' reasons.
pub fn record_no_host(setup: &Setup, run_id: &str, planned: &PlannedJob, recorder: &Recorder, why: &str) -> JobSummary {
    let job_dir = setup.choices.state.job_dir(run_id, &planned.job_id);
    let mut job = new_record(setup, None, run_id, planned);
    finish_record(recorder, &job_dir, &mut job, JobStatus::Error, None, Some(why.to_string()), Duration::ZERO)
}

/// Put `why` before the message of a job that ended already (its record and summary).
pub fn amend_message(setup: &Setup, run_id: &str, planned: &PlannedJob, summary: JobSummary, why: &str) -> JobSummary {
    let job_dir = setup.choices.state.job_dir(run_id, &planned.job_id);
    let message = match &summary.message {
        Some(m) => format!("{why}: {m}"),
        None => why.to_string(),
    };
    if let Ok(mut job) = JobRecord::read(&job_dir) {
        job.message = Some(message.clone());
        if let Err(e) = job.write(&job_dir) {
            eprintln!("pikaci: warning: could not write the record of job `{}`: {e:#}", job.job_id);
        }
    }
    JobSummary { message: Some(message), ..summary }
}

fn new_record(setup: &Setup, host: Option<&Host>, run_id: &str, planned: &PlannedJob) -> JobRecord {
    JobRecord {
        schema_version: JOB_SCHEMA_VERSION,
        run_id: run_id.to_string(),
        job_id: planned.job_id.clone(),
        lane: LaneRecord::from(&planned.lane),
        status: JobStatus::Preparing,
        started_at: Some(state::now_rfc3339()),
        finished_at: None,
        duration_ms: None,
        exit_code: None,
        message: None,
        runtime: host.map(|h| h.runtime.name()).unwrap_or_else(|| setup.runtime_name()),
        nix_version: setup.nix_version.clone(),
        payloads: Vec::new(),
        instance: None,
        reproduce: Vec::new(),
        tests: None,
        host: host.map(|h| h.name.clone()),
    }
}

fn finish_record(
    recorder: &Recorder,
    job_dir: &Path,
    job: &mut JobRecord,
    status: JobStatus,
    exit_code: Option<i32>,
    message: Option<String>,
    took: Duration,
) -> JobSummary {
    job.status = status;
    job.exit_code = exit_code;
    job.message = message.clone();
    job.finished_at = Some(state::now_rfc3339());
    let duration_ms = if took.is_zero() { job.duration_ms } else { Some(took.as_millis() as u64) };
    job.duration_ms = duration_ms;
    let write = || std::fs::create_dir_all(job_dir).map_err(anyhow::Error::from).and_then(|_| job.write(job_dir));
    if let Err(e) = recorder.write_or_free(write) {
        eprintln!("pikaci: warning: could not write the record of job `{}`: {e:#}", job.job_id);
    }
    let tests = job.tests.as_ref().map(TestsRecord::counts);
    JobSummary { job_id: job.job_id.clone(), status, exit_code, duration_ms, message, tests, host: job.host.clone() }
}

/// How the command's end maps to the job's status.
fn judge(outcome: GuestOutcome, timeout_secs: u64) -> (JobStatus, Option<i32>, Option<String>) {
    match outcome {
        GuestOutcome::Exited(0) => (JobStatus::Passed, Some(0), None),
        GuestOutcome::Exited(code) => (JobStatus::Failed, Some(code), Some(format!("command exited with {code}"))),
        GuestOutcome::Signaled(sig) => (JobStatus::Failed, None, Some(format!("command was killed by signal {sig}"))),
        GuestOutcome::TimedOut => (JobStatus::TimedOut, None, Some(format!("timed out after {timeout_secs}s"))),
        GuestOutcome::Interrupted => (JobStatus::Interrupted, None, Some("interrupted".to_string())),
    }
}

fn one_line(error: &anyhow::Error) -> String {
    error::render(error).trim_start_matches("error: ").to_string()
}

impl JobScope<'_> {
    fn run(&self, job: &mut JobRecord) -> Result<GuestOutcome, JobError> {
        let preview = self.preview.clone().map_err(|e| JobError::infra(anyhow::anyhow!(e)))?;
        let (artifacts_dir, host_log) = (preview.artifacts_dir.clone(), preview.host_log.clone());
        job.write(&self.job_dir).map_err(JobError::infra)?;
        host_log
            .line(&format!("job `{}` of run `{}`, lane `{}`", self.planned.job_id, self.run_id, self.planned.lane.id));
        let runtime = match &self.host.runtime {
            RuntimeSlot::Ready(runtime) => runtime,
            RuntimeSlot::Unavailable { why, .. } => {
                host_log.line(&format!("runtime unavailable: {why}"));
                return Err(JobError::infra(error::infra(why.clone()).into()));
            }
            RuntimeSlot::NotNeeded => unreachable!("a job that runs has a runtime slot"),
        };
        let prepared = self
            .place(&artifacts_dir, &host_log)
            .map_err(JobError::infra)
            .and_then(|()| self.prepare(&host_log))
            .map_err(|e| self.abandon(runtime.as_ref(), e))?;
        job.payloads = prepared.payloads.iter().map(RealizedPayload::from).collect();
        job.reproduce = prepared.reproduce.clone();
        job.status = JobStatus::Running;
        job.write(&self.job_dir).map_err(JobError::infra)?;
        self.recorder.set_job_status(&self.planned.job_id, JobStatus::Running);

        let ctx = self.host_context(prepared, artifacts_dir, runtime.name());
        let io = JobIo {
            host_log: host_log.clone(),
            guest_log: self.job_dir.join("guest.log"),
            output: self.reporter.clone() as Arc<dyn OutputSink>,
        };
        let mut report = RuntimeReport::default();
        let outcome = runtime.run(&ctx, &io, &mut report);
        let safe = artifacts::sanitize(&ctx.artifacts_dir, &host_log);
        job.instance = report.instance;
        job.reproduce.extend(report.reproduce);
        let outcome = outcome.map_err(|error| {
            host_log.line(&format!("runtime failed: {error:#}"));
            JobError::infra(error)
        })?;
        self.host
            .placement
            .fetch_artifacts(&ctx.artifacts_dir, &host_log)
            .map_err(|e| JobError::infra(e.context("the command ran, but its artifacts could not be fetched")))?;
        if !self.host.placement.is_local() {
            // What came back through the tar is made safe too.
            artifacts::sanitize(&ctx.artifacts_dir, &host_log).map_err(JobError::infra)?;
        }
        safe.map_err(|e| {
            JobError::infra(e.context("the command ran, but its artifacts could not be made safe to keep"))
        })?;
        job.tests = self.test_results(&ctx.artifacts_dir, outcome, &host_log);
        Ok(outcome)
    }

    /// The job's per-test results, when its command wrote JUnit under
    /// `/pikaci/artifacts/junit/`; announced as a `test_results` event.
    fn test_results(&self, artifacts_dir: &Path, outcome: GuestOutcome, host_log: &HostLog) -> Option<TestsRecord> {
        let dir = artifacts_dir.join("junit");
        if !dir.is_dir() {
            return None;
        }
        let report = read_junit_dir(&dir);
        for warning in &report.warnings {
            host_log.line(&format!("junit: {warning}"));
        }
        let mut tests = match &report.results {
            Some(results) => TestsRecord::from(results),
            None if report.warnings.is_empty() => return None,
            None => TestsRecord::default(),
        };
        tests.warnings = report.warnings;
        tests.inconsistent = tests.failed > 0 && outcome == GuestOutcome::Exited(0);
        if tests.inconsistent {
            host_log.line(&format!("junit: {} test(s) failed, but the command exited 0", tests.failed));
        }
        self.recorder.emit(Event::TestResults {
            run_id: self.run_id.to_string(),
            job_id: self.planned.job_id.clone(),
            lane: self.planned.lane.id.clone(),
            passed: tests.passed,
            failed: tests.failed,
            skipped: tests.skipped,
            flaky: tests.flaky,
            failed_tests: tests.failures.iter().take(20).map(|f| f.name.clone()).collect(),
            flaky_tests: tests.flaky_tests.clone(),
            at: state::now_rfc3339(),
        });
        Some(tests)
    }

    /// Get the job's host ready: the snapshot there (sent once per run), and the job's
    /// directories created with one call.
    fn place(&self, artifacts_dir: &Path, host_log: &HostLog) -> Result<()> {
        let placement = &self.host.placement;
        if !placement.is_local() {
            host_log.line(&format!(
                "placement: `{}`, job directory `{}`",
                placement.host_name(),
                placement.host_path(&self.job_dir)?.display()
            ));
        }
        let snapshot = &self.setup.choices.snapshot.dir;
        let sent = self
            .host
            .snapshot_sent
            .get_or_init(|| placement.ensure_snapshot(snapshot, host_log).map_err(|e| format!("{e:#}")));
        sent.clone().map_err(|e| anyhow::anyhow!(e))?;
        let dirs = [self.job_dir.clone(), self.job_dir.join(prepare::STAGED_DIR), artifacts_dir.to_path_buf()];
        let links = prepare::named_links(&self.job_dir, &self.planned.lane);
        placement.ensure_job_directories(&dirs, &links, host_log)
    }

    /// The job will not reach its runtime: let the runtime drop what it got ready for it.
    /// An interruption the runtime saw while getting ready says more (it names the
    /// instance) than the job's own.
    fn abandon(&self, runtime: &dyn crate::executor::Runtime, error: JobError) -> JobError {
        let interrupted = error.status == JobStatus::Interrupted;
        match self.preview.as_ref().ok().and_then(|p| runtime.abandon(p, interrupted)) {
            Some(warm) if interrupted => JobError::infra(warm),
            _ => error,
        }
    }

    fn prepare(&self, host_log: &HostLog) -> Result<Prepared, JobError> {
        let watch = JobWatch { scope: self, host_log };
        let setup = self.setup;
        prepare::prepare(
            &setup.nix,
            &self.planned.lane,
            &self.job_dir,
            &self.host.placement,
            host_log,
            &setup.run_builds,
            &watch,
        )
        .map_err(|error| {
            host_log.line(&format!("prepare failed: {error:#}"));
            let status = if is_interrupted(&error) {
                JobStatus::Interrupted
            } else if nix::is_build_failure(&error) || error::kind_of(&error) == error::ErrorKind::Config {
                // The lane's own code or payload is broken (a compile error, a bad
                // manifest): the job failed. Anything else is infrastructure.
                JobStatus::Failed
            } else {
                JobStatus::Error
            };
            JobError { status, error }
        })
    }

    fn event_ids(&self) -> (String, String) {
        (self.run_id.to_string(), self.planned.job_id.clone())
    }

    fn host_context(&self, prepared: Prepared, artifacts_dir: PathBuf, runtime: &str) -> HostContext {
        let (planned, setup) = (self.planned, self.setup);
        let mut env = guest::environment(self.run_id, &planned.job_id, &planned.lane.env);
        env.insert("PIKACI_LANE".into(), planned.lane.id.clone());
        env.insert("PIKACI_RUNTIME".into(), runtime.to_string());
        if let Some(shard) = planned.shard {
            env.insert("PIKACI_SHARD".into(), shard.label());
        }
        // The lane's command, then the run's `-- ARGS`, then this job's own (a filter).
        let mut command = planned.lane.command.clone();
        command.extend(setup.choices.args.iter().cloned());
        command.extend(planned.extra_args.iter().cloned());
        HostContext {
            run_id: self.run_id.to_string(),
            job_id: planned.job_id.clone(),
            job_dir: self.job_dir.clone(),
            snapshot_dir: setup.choices.snapshot.dir.clone(),
            artifacts_dir,
            command,
            env,
            timeout: Duration::from_secs(planned.lane.timeout_secs),
            image: planned.lane.image.clone().or_else(|| setup.choices.image.clone()),
            staged_payload_mounts: prepared.mounts,
            extra_mounts: prepared.extra_mounts,
            store_closure: prepared.store_closure,
        }
    }
}

/// What a job hears of its payloads becomes its events (and lines of its `host.log`).
struct JobWatch<'a> {
    scope: &'a JobScope<'a>,
    host_log: &'a HostLog,
}

impl Watch for JobWatch<'_> {
    fn realized(&self, p: &PreparedPayload) {
        let shared = p.built_by.as_deref().map(|job| format!(" (built by job `{job}`)")).unwrap_or_default();
        self.host_log.line(&format!("payload `{}` realized: {}{shared}", p.name, p.mounted));
        let (run_id, job_id) = self.scope.event_ids();
        self.scope.recorder.emit(Event::PayloadRealized {
            run_id,
            job_id,
            payload: p.name.clone(),
            store_path: p.mounted.clone(),
            outputs: p.outputs.clone(),
            duration_ms: p.duration_ms,
            built_by: p.built_by.clone(),
            waited_ms: p.waited_ms,
            at: state::now_rfc3339(),
        });
    }

    fn build(&self, payload: &str, report: BuildReport<'_>) {
        let (run_id, job_id) = self.scope.event_ids();
        let (payload, at) = (payload.to_string(), state::now_rfc3339());
        let event = match report {
            BuildReport::Started { drv_path, log } => {
                self.host_log.line(&format!("payload `{payload}` builds; its log: `{}`", log.display()));
                let (drv_path, log) = (drv_path.to_string(), log.display().to_string());
                Event::PayloadBuildStarted { run_id, job_id, payload, drv_path, log, at }
            }
            BuildReport::Progress(p) => Event::PayloadBuildProgress {
                run_id,
                job_id,
                payload,
                done: p.done,
                total: p.total,
                building: p.building.clone(),
                fetching: p.fetching,
                waiting: p.waiting,
                line: p.line.clone(),
                elapsed_ms: p.elapsed.as_millis() as u64,
                at,
            },
            BuildReport::Finished { outcome, built, duration, log } => {
                let status = match outcome {
                    BuildOutcome::Built => BuildStatus::Built,
                    BuildOutcome::Failed => BuildStatus::Failed,
                    BuildOutcome::Interrupted => BuildStatus::Interrupted,
                };
                self.host_log.line(&format!(
                    "payload `{payload}`: build {} after {:.3}s, {built} derivation(s) built",
                    status.as_str(),
                    duration.as_secs_f64()
                ));
                let (duration_ms, log) = (duration.as_millis() as u64, log.display().to_string());
                Event::PayloadBuildFinished { run_id, job_id, payload, status, built, duration_ms, log, at }
            }
        };
        self.scope.recorder.emit(event);
    }
}
