//! A run, end to end: snapshot -> catalog -> plan -> (per job) prepare -> hand-off ->
//! runtime -> record. Every step reports through [`Event`]s, which the reporter, the
//! `events.jsonl` log and the run record all consume.
//!
//! The catalog is evaluated from the snapshot, not from the work tree: a `path:` flake is
//! copied whole into the store, so evaluating the work tree would copy the state root and
//! build output too, and change the source hash (and so rebuild every payload) on every
//! run. The snapshot holds exactly what the lane will see.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::catalog::{self, Catalog, FlakeSource};
use crate::error;
use crate::executor::{
    self, GuestOutcome, HostContext, JobIo, OutputSink, Placement, Runtime, RuntimeChoice, RuntimeReport, artifacts,
    guest, placement,
};
use crate::plan::{self, ChangedFiles, PlannedJob, Selection};
use crate::prepare;
use crate::signals;
use crate::snapshot::{self, Snapshot};
use crate::state::events::{Event, EventLog};
use crate::state::record::{JobSummary, RunSnapshot, SCHEMA_VERSION};
use crate::state::reserve::Reserve;
use crate::state::{self, JobRecord, JobStatus, RunRecord, RunStatus, StateRoot};
use crate::tools::command::{HostLog, is_interrupted};
use crate::tools::git;
use crate::tools::nix::{self, Nix};

/// Receives every event of a run, and the guest output.
pub trait Reporter: OutputSink {
    fn event(&self, event: &Event);
}

/// What `pikaci run` asks for.
#[derive(Clone, Debug)]
pub struct RunRequest {
    pub flake: FlakeSource,
    pub state: StateRoot,
    pub selection: Selection,
    pub changed_since: Option<String>,
    pub runtime: RuntimeChoice,
    pub remote: Option<String>,
    pub image: Option<String>,
    pub parallelism: usize,
}

/// What `pikaci rerun` asks for.
#[derive(Clone, Debug)]
pub struct RerunRequest {
    pub state: StateRoot,
    pub run_id: String,
    pub failed_only: bool,
    /// Overrides of the recorded choices.
    pub runtime: Option<RuntimeChoice>,
    pub parallelism: Option<usize>,
}

/// Everything decided before the run exists.
struct Setup {
    state: StateRoot,
    nix: Nix,
    flake_label: String,
    source_dir: PathBuf,
    snapshot: RunSnapshot,
    plan: Vec<PlannedJob>,
    changed: Option<ChangedFiles>,
    runtime: Box<dyn Runtime>,
    placement: Placement,
    image: Option<String>,
    remote: Option<String>,
    parallelism: usize,
    rerun_of: Option<String>,
    shared_builds: prepare::SharedBuilds,
    version_reader: Option<VersionReader>,
    nix_version: Option<String>,
    /// On a remote placement, the first job sends the snapshot; the others wait for it.
    snapshot_sent: std::sync::OnceLock<Result<(), String>>,
}

/// Take (or reuse) the snapshot of a flake's source, holding the state root's shared lock
/// so that `gc` cannot remove it before a run refers to it. The lock is returned.
pub fn take_snapshot(flake: &FlakeSource, state: &StateRoot) -> Result<(Snapshot, File)> {
    state.ensure()?;
    let guard = state.lock_shared()?;
    let exclude: Vec<PathBuf> =
        state.root.strip_prefix(&flake.dir).map(|rel| vec![rel.to_path_buf()]).unwrap_or_default();
    let snap = snapshot::take(&flake.dir, &state.snapshots_dir(), &state.snapshot_cache(), &exclude)
        .with_context(|| format!("take a snapshot of `{}`", flake.dir.display()))?;
    Ok((snap, guard))
}

/// Load the catalog of a flake (through its snapshot).
pub fn load_catalog(flake: &FlakeSource, state: &StateRoot) -> Result<Catalog> {
    let nix = Nix::locate()?;
    let (snap, _guard) = take_snapshot(flake, state)?;
    Catalog::load(&nix, &snap.dir, &catalog::current_system(), &flake.label)
}

pub fn run(req: RunRequest, reporter: Arc<dyn Reporter>) -> Result<RunRecord> {
    let nix = Nix::locate()?;
    let version_reader = read_version_meanwhile(&nix, &req.state);
    let (snap, guard) = take_snapshot(&req.flake, &req.state)?;
    let catalog = Catalog::load(&nix, &snap.dir, &catalog::current_system(), &req.flake.label)?;
    let changed = match &req.changed_since {
        Some(rev) => {
            if !git::is_work_tree(&req.flake.dir) {
                return Err(error::usage(format!(
                    "`--changed-since {rev}` needs a git work tree; `{}` is not in one",
                    req.flake.dir.display()
                ))
                .into());
            }
            Some(ChangedFiles { since: rev.clone(), files: git::changed_files(&req.flake.dir, rev)? })
        }
        None => None,
    };
    let plan = plan::plan(&catalog, &req.selection, changed.as_ref())?;
    let placement = Placement::new(req.remote.as_deref(), &req.state.root, &placement::remote_state_root());
    let runtime = runtime_for(&plan, req.runtime, &placement, req.image.as_deref())?;
    let setup = Setup {
        state: req.state,
        nix,
        flake_label: req.flake.label,
        source_dir: req.flake.dir,
        snapshot: RunSnapshot { id: snap.id, dir: snap.dir, files: snap.files },
        plan,
        changed,
        runtime,
        placement,
        image: req.image,
        remote: req.remote,
        parallelism: req.parallelism.max(1),
        rerun_of: None,
        shared_builds: Default::default(),
        version_reader: Some(version_reader),
        nix_version: None,
        snapshot_sent: Default::default(),
    };
    execute(setup, guard, reporter)
}

pub fn rerun(req: RerunRequest, reporter: Arc<dyn Reporter>) -> Result<RunRecord> {
    let nix = Nix::locate()?;
    let version_reader = read_version_meanwhile(&nix, &req.state);
    let old = RunRecord::read(&req.state.run_dir(&req.run_id))?;
    crate::replay::check_record(&old, &req.run_id, &req.state)?;
    req.state.ensure()?;
    let guard = req.state.lock_shared()?;
    if !old.snapshot.dir.is_dir() {
        return Err(error::config(format!(
            "run `{}` cannot be replayed: its snapshot `{}` is gone",
            old.run_id,
            old.snapshot.dir.display()
        ))
        .hint("start a new run with `pikaci run`")
        .into());
    }
    let plan: Vec<PlannedJob> = if req.failed_only {
        old.plan
            .iter()
            .filter(|p| {
                old.job(&p.job_id).is_some_and(|j| {
                    matches!(
                        j.status,
                        JobStatus::Failed | JobStatus::TimedOut | JobStatus::Error | JobStatus::Interrupted
                    )
                })
            })
            .cloned()
            .collect()
    } else {
        old.plan.clone()
    };
    if plan.is_empty() {
        return Err(error::usage(format!("run `{}` has no failed jobs to rerun", old.run_id))
            .hint(format!("`pikaci rerun {}` replays all of its jobs", old.run_id))
            .into());
    }
    let choice = match req.runtime {
        Some(choice) => choice,
        None => match old.runtime.as_str() {
            "incus" => RuntimeChoice::Incus,
            "bwrap" => RuntimeChoice::Bwrap,
            _ => RuntimeChoice::Auto,
        },
    };
    let placement = Placement::new(old.remote.as_deref(), &req.state.root, &placement::remote_state_root());
    let runtime = runtime_for(&plan, choice, &placement, old.image.as_deref())?;
    let setup = Setup {
        state: req.state,
        nix,
        flake_label: old.flake.clone(),
        source_dir: old.source_dir.clone(),
        snapshot: old.snapshot.clone(),
        plan,
        changed: old.changed.clone(),
        runtime,
        placement,
        image: old.image.clone(),
        remote: old.remote.clone(),
        parallelism: req.parallelism.unwrap_or(old.parallelism).max(1),
        rerun_of: Some(old.run_id.clone()),
        shared_builds: Default::default(),
        version_reader: Some(version_reader),
        nix_version: None,
        snapshot_sent: Default::default(),
    };
    execute(setup, guard, reporter)
}

/// The run records the Nix version: read it (from the state root's cache, normally)
/// while the snapshot and catalog are made.
fn read_version_meanwhile(nix: &Nix, state: &StateRoot) -> VersionReader {
    let nix = nix.clone();
    let cache = state.root.join("nix-version.json");
    std::thread::spawn(move || {
        let version = if cache.parent().is_some_and(Path::is_dir) { nix.version_cached(&cache) } else { nix.version() };
        version.ok().map(|v| v.text)
    })
}

type VersionReader = std::thread::JoinHandle<Option<String>>;

/// The runtime for a plan. A plan whose jobs are all skipped needs none (CI with only
/// skipped lanes passes without a runtime). A runtime that is not available here (Incus'
/// daemon down, bwrap missing) still gives a recorded run, whose jobs end in `error` with
/// the reason; asking for something impossible (bwrap on a remote host) is a usage error.
fn runtime_for(
    plan: &[PlannedJob],
    choice: RuntimeChoice,
    placement: &Placement,
    image: Option<&str>,
) -> Result<Box<dyn Runtime>> {
    if plan.iter().all(|j| j.skip_reason.is_some()) {
        return Ok(Box::new(Unavailable { name: "none", why: "every job was skipped".into() }));
    }
    match executor::select_runtime(choice, placement, image) {
        Ok(runtime) => Ok(runtime),
        Err(e) if error::kind_of(&e) == error::ErrorKind::Infrastructure => {
            let name = match choice {
                RuntimeChoice::Auto => "auto",
                RuntimeChoice::Incus => "incus",
                RuntimeChoice::Bwrap => "bwrap",
            };
            Ok(Box::new(Unavailable { name, why: error::render(&e).trim_start_matches("error: ").to_string() }))
        }
        Err(e) => Err(e),
    }
}

/// Stands in for a runtime that could not be had; every job that reaches it fails with
/// the reason, before anything is built for it.
struct Unavailable {
    name: &'static str,
    why: String,
}

impl Runtime for Unavailable {
    fn name(&self) -> &'static str {
        self.name
    }
    fn unavailable(&self) -> Option<&str> {
        Some(&self.why)
    }
    fn run(&self, _: &HostContext, _: &JobIo, _: &mut RuntimeReport) -> Result<GuestOutcome> {
        Err(error::infra(self.why.clone()).into())
    }
}

/// The run in progress: its record (rewritten on every change), event log and reporter.
struct Recorder {
    run_dir: PathBuf,
    record: Mutex<RunRecord>,
    events: EventLog,
    reporter: Arc<dyn Reporter>,
    /// Room for the records when a lane fills the disk.
    reserve: Reserve,
}

impl Recorder {
    fn emit(&self, event: Event) {
        // events.jsonl is the run's history; failing to append is reported, not fatal.
        if let Err(e) = self.events.append(&event) {
            eprintln!("pikaci: warning: {e:#}");
        }
        self.reporter.event(&event);
    }

    fn update(&self, f: impl FnOnce(&mut RunRecord)) {
        let mut record = self.record.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut record);
        if let Err(e) = self.reserve.write_or_free(|| record.write(&self.run_dir)) {
            eprintln!("pikaci: warning: {e:#}");
        }
    }

    fn finish_job(&self, summary: JobSummary) {
        let event = Event::JobFinished {
            run_id: self.record.lock().unwrap_or_else(|p| p.into_inner()).run_id.clone(),
            job_id: summary.job_id.clone(),
            status: summary.status,
            exit_code: summary.exit_code,
            duration_ms: summary.duration_ms,
            message: summary.message.clone(),
            at: state::now_rfc3339(),
        };
        self.update(|r| {
            if let Some(slot) = r.jobs.iter_mut().find(|j| j.job_id == summary.job_id) {
                *slot = summary;
            }
        });
        self.emit(event);
    }
}

fn execute(mut setup: Setup, create_guard: File, reporter: Arc<dyn Reporter>) -> Result<RunRecord> {
    let started = Instant::now();
    setup.nix_version = setup.version_reader.take().and_then(|h| h.join().ok()).flatten();
    let run_id = state::new_run_id();
    let run_dir = setup.state.run_dir(&run_id);
    std::fs::create_dir_all(&run_dir).with_context(|| format!("create `{}`", run_dir.display()))?;
    let run_lock = setup
        .state
        .try_lock_run(&run_id)?
        .with_context(|| format!("run `{run_id}` is already locked by another process"))?;
    let jobs: Vec<JobSummary> = setup
        .plan
        .iter()
        .map(|p| JobSummary {
            job_id: p.job_id.clone(),
            status: if p.skip_reason.is_some() { JobStatus::Skipped } else { JobStatus::Pending },
            exit_code: None,
            duration_ms: None,
            message: p.skip_reason.clone(),
        })
        .collect();
    let record = RunRecord {
        schema_version: SCHEMA_VERSION,
        run_id: run_id.clone(),
        status: RunStatus::Running,
        created_at: state::now_rfc3339(),
        finished_at: None,
        duration_ms: None,
        pid: std::process::id(),
        pikaci_version: env!("CARGO_PKG_VERSION").to_string(),
        flake: setup.flake_label.clone(),
        source_dir: setup.source_dir.clone(),
        system: catalog::current_system(),
        nix_version: setup.nix_version.clone(),
        snapshot: setup.snapshot.clone(),
        runtime: setup.runtime.name().to_string(),
        image: setup.image.clone(),
        remote: setup.remote.clone(),
        parallelism: setup.parallelism,
        changed: setup.changed.clone(),
        rerun_of: setup.rerun_of.clone(),
        plan: setup.plan.clone(),
        jobs,
        message: None,
    };
    record.write(&run_dir)?;
    // The record now refers to the snapshot: gc may run again.
    drop(create_guard);

    let recorder = Recorder {
        run_dir: run_dir.clone(),
        record: Mutex::new(record),
        events: EventLog::create(&run_dir)?,
        reporter,
        reserve: Reserve::create(&run_dir),
    };
    recorder.emit(Event::RunStarted {
        run_id: run_id.clone(),
        at: state::now_rfc3339(),
        flake: setup.flake_label.clone(),
        runtime: setup.runtime.name().to_string(),
        snapshot: setup.snapshot.id.clone(),
        jobs: setup.plan.iter().map(|p| p.job_id.clone()).collect(),
        rerun_of: setup.rerun_of.clone(),
    });
    for job in setup.plan.iter().filter(|p| p.skip_reason.is_some()) {
        recorder.emit(Event::JobFinished {
            run_id: run_id.clone(),
            job_id: job.job_id.clone(),
            status: JobStatus::Skipped,
            exit_code: None,
            duration_ms: None,
            message: job.skip_reason.clone(),
            at: state::now_rfc3339(),
        });
    }

    let queue: Vec<&PlannedJob> = setup.plan.iter().filter(|p| p.skip_reason.is_none()).collect();
    let next = AtomicUsize::new(0);
    let workers = setup.parallelism.min(queue.len()).max(1);
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some(job) = queue.get(i) else { break };
                    let summary = if signals::interrupted() {
                        JobSummary {
                            job_id: job.job_id.clone(),
                            status: JobStatus::Interrupted,
                            exit_code: None,
                            duration_ms: None,
                            message: Some("not started: the run was interrupted".into()),
                        }
                    } else {
                        run_job(&setup, &run_id, job, &recorder)
                    };
                    recorder.finish_job(summary);
                }
            });
        }
    });

    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    let final_record = {
        let record = recorder.record.lock().unwrap_or_else(|p| p.into_inner());
        for j in &record.jobs {
            *counts.entry(j.status.as_str().to_string()).or_default() += 1;
        }
        record.clone()
    };
    let has = |s: JobStatus| final_record.jobs.iter().any(|j| j.status == s);
    let status = if signals::interrupted() || has(JobStatus::Interrupted) {
        RunStatus::Interrupted
    } else if has(JobStatus::Error) {
        RunStatus::Error
    } else if has(JobStatus::Failed) || has(JobStatus::TimedOut) {
        RunStatus::Failed
    } else {
        RunStatus::Passed
    };
    let duration_ms = started.elapsed().as_millis() as u64;
    recorder.update(|r| {
        r.status = status;
        r.finished_at = Some(state::now_rfc3339());
        r.duration_ms = Some(duration_ms);
    });
    recorder.emit(Event::RunFinished { run_id: run_id.clone(), status, duration_ms, counts, at: state::now_rfc3339() });
    recorder.reserve.free();
    drop(run_lock);
    let record = recorder.record.into_inner().unwrap_or_else(|p| p.into_inner());
    Ok(record)
}

/// Prepare and run one job; every outcome, including pikaci's own failures, becomes the
/// job's summary (and its `job.json`), never a lost job.
fn run_job(setup: &Setup, run_id: &str, planned: &PlannedJob, recorder: &Recorder) -> JobSummary {
    let started = Instant::now();
    let job_id = &planned.job_id;
    let job_dir = setup.state.job_dir(run_id, job_id);
    let mut job = JobRecord {
        schema_version: SCHEMA_VERSION,
        run_id: run_id.to_string(),
        job_id: job_id.clone(),
        lane: planned.lane.clone(),
        status: JobStatus::Preparing,
        started_at: Some(state::now_rfc3339()),
        finished_at: None,
        duration_ms: None,
        exit_code: None,
        message: None,
        runtime: setup.runtime.name().to_string(),
        nix_version: setup.nix_version.clone(),
        payloads: Vec::new(),
        instance: None,
        reproduce: Vec::new(),
    };
    recorder.emit(Event::JobStarted { run_id: run_id.to_string(), job_id: job_id.clone(), at: state::now_rfc3339() });
    recorder.update(|r| {
        if let Some(j) = r.jobs.iter_mut().find(|j| &j.job_id == job_id) {
            j.status = JobStatus::Preparing;
        }
    });

    let (status, exit_code, message) = match run_job_inner(setup, run_id, planned, &job_dir, &mut job, recorder) {
        Ok(outcome) => match outcome {
            GuestOutcome::Exited(0) => (JobStatus::Passed, Some(0), None),
            GuestOutcome::Exited(code) => (JobStatus::Failed, Some(code), Some(format!("command exited with {code}"))),
            GuestOutcome::Signaled(sig) => {
                (JobStatus::Failed, None, Some(format!("command was killed by signal {sig}")))
            }
            GuestOutcome::TimedOut => {
                (JobStatus::TimedOut, None, Some(format!("timed out after {}s", planned.lane.timeout_secs)))
            }
            GuestOutcome::Interrupted => (JobStatus::Interrupted, None, Some("interrupted".to_string())),
        },
        Err(JobError { status, error }) => {
            (status, None, Some(error::render(&error).trim_start_matches("error: ").to_string()))
        }
    };
    job.status = status;
    job.exit_code = exit_code;
    job.message = message.clone();
    job.finished_at = Some(state::now_rfc3339());
    let duration_ms = started.elapsed().as_millis() as u64;
    job.duration_ms = Some(duration_ms);
    let write = || std::fs::create_dir_all(&job_dir).map_err(anyhow::Error::from).and_then(|_| job.write(&job_dir));
    if let Err(e) = recorder.reserve.write_or_free(write) {
        eprintln!("pikaci: warning: could not write the record of job `{job_id}`: {e:#}");
    }
    JobSummary { job_id: job_id.clone(), status, exit_code, duration_ms: Some(duration_ms), message }
}

struct JobError {
    status: JobStatus,
    error: anyhow::Error,
}

fn run_job_inner(
    setup: &Setup,
    run_id: &str,
    planned: &PlannedJob,
    job_dir: &Path,
    job: &mut JobRecord,
    recorder: &Recorder,
) -> Result<GuestOutcome, JobError> {
    let infra = |error: anyhow::Error| JobError {
        status: if is_interrupted(&error) { JobStatus::Interrupted } else { JobStatus::Error },
        error,
    };
    let artifacts_dir = job_dir.join("artifacts");
    std::fs::create_dir_all(&artifacts_dir)
        .with_context(|| format!("create `{}`", artifacts_dir.display()))
        .map_err(infra)?;
    let host_log = HostLog::create(&job_dir.join("host.log")).map_err(infra)?;
    job.write(job_dir).map_err(infra)?;
    host_log.line(&format!("job `{}` of run `{run_id}`, lane `{}`", planned.job_id, planned.lane.id));
    if let Some(why) = setup.runtime.unavailable() {
        host_log.line(&format!("runtime unavailable: {why}"));
        return Err(infra(error::infra(why.to_string()).into()));
    }
    if let Placement::Remote(remote) = &setup.placement {
        host_log.line(&format!(
            "placement: `{}`, job directory `{}`",
            remote.host,
            remote.path_of(job_dir).map_err(infra)?.display()
        ));
        let sent = setup
            .snapshot_sent
            .get_or_init(|| remote.ensure_snapshot(&setup.snapshot.dir, &host_log).map_err(|e| format!("{e:#}")));
        sent.clone().map_err(|e| infra(anyhow::anyhow!(e)))?;
        let dirs = [job_dir.to_path_buf(), job_dir.join(prepare::STAGED_DIR), artifacts_dir.clone()];
        remote.ensure_remote_linux_vm_directories(&dirs, &host_log).map_err(infra)?;
    }

    let job_id = planned.job_id.clone();
    let on_realized = |p: &crate::state::record::RealizedPayload| {
        host_log.line(&format!("payload `{}` realized: {}", p.name, p.mounted));
        recorder.emit(Event::PayloadRealized {
            run_id: run_id.to_string(),
            job_id: job_id.clone(),
            payload: p.name.clone(),
            store_path: p.mounted.clone(),
            outputs: p.outputs.clone(),
            duration_ms: p.duration_ms,
            at: state::now_rfc3339(),
        });
    };
    let prepared = match prepare::prepare(
        &setup.nix,
        &planned.lane,
        job_dir,
        &setup.placement,
        &host_log,
        &setup.shared_builds,
        &on_realized,
    ) {
        Ok(p) => p,
        Err(error) => {
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
            return Err(JobError { status, error });
        }
    };
    job.payloads = prepared.payloads.clone();
    job.reproduce = prepared.reproduce.clone();
    job.status = JobStatus::Running;
    job.write(job_dir).map_err(infra)?;
    recorder.update(|r| {
        if let Some(j) = r.jobs.iter_mut().find(|j| j.job_id == planned.job_id) {
            j.status = JobStatus::Running;
        }
    });

    let ctx = HostContext {
        run_id: run_id.to_string(),
        job_id: planned.job_id.clone(),
        state_root: setup.state.root.clone(),
        job_dir: job_dir.to_path_buf(),
        snapshot_dir: setup.snapshot.dir.clone(),
        artifacts_dir,
        command: planned.lane.command.clone(),
        env: guest::environment(run_id, &planned.job_id, &planned.lane.env),
        timeout: Duration::from_secs(planned.lane.timeout_secs),
        image: planned.lane.image.clone().or_else(|| setup.image.clone()),
        staged_payload_mounts: prepared.mounts,
        extra_mounts: prepared.extra_mounts,
        store_closure: prepared.store_closure,
        placement: setup.placement.clone(),
    };
    let io = JobIo {
        host_log: host_log.clone(),
        guest_log: job_dir.join("guest.log"),
        output: recorder.reporter.clone() as Arc<dyn OutputSink>,
    };
    let mut report = RuntimeReport::default();
    let outcome = setup.runtime.run(&ctx, &io, &mut report);
    let safe = artifacts::sanitize(&ctx.artifacts_dir, &host_log);
    job.instance = report.instance;
    job.reproduce.extend(report.reproduce);
    let outcome = outcome.map_err(|error| {
        host_log.line(&format!("runtime failed: {error:#}"));
        infra(error)
    })?;
    if let Placement::Remote(remote) = &setup.placement {
        remote
            .download_artifacts(&ctx.artifacts_dir, &host_log)
            .map_err(|e| infra(e.context("the command ran, but its artifacts could not be fetched")))?;
        artifacts::sanitize(&ctx.artifacts_dir, &host_log).map_err(infra)?;
    }
    safe.map_err(|e| infra(e.context("the command ran, but its artifacts could not be made safe to keep")))?;
    Ok(outcome)
}
