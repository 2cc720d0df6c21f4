//! The run's lifecycle: its record is created, its jobs run on a pool of `--jobs`
//! workers, and it ends recorded, whatever happened. A panic in a job is a bug in pikaci:
//! it ends that job as `error` with the panic's message, the run still finishes and is
//! recorded, and the caller gets an internal error (exit 70).

use std::collections::BTreeMap;
use std::fs::File;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use anyhow::{Context, Result};

use super::Reporter;
use super::hosts::Slots;
use super::job;
use super::setup::Setup;
use crate::catalog;
use crate::error;
use crate::handoff::JobPreview;
use crate::plan::PlannedJob;
use crate::signals;
use crate::state::events::Event;
use crate::state::record::{JobSummary, PlannedJobRecord, RUN_SCHEMA_VERSION};
use crate::state::recorder::Recorder;
use crate::state::{self, JobStatus, RunRecord, RunStatus};

pub fn execute(setup: Setup, create_guard: File, reporter: Arc<dyn Reporter>) -> Result<RunRecord> {
    let started = Instant::now();
    let run_id = state::new_run_id();
    let run_dir = setup.choices.state.run_dir(&run_id);
    std::fs::create_dir_all(&run_dir).with_context(|| format!("create `{}`", run_dir.display()))?;
    let run_lock = setup
        .choices
        .state
        .try_lock_run(&run_id)?
        .with_context(|| format!("run `{run_id}` is already locked by another process"))?;
    let recorder = Recorder::create(&run_dir, first_record(&setup, &run_id), reporter.clone())?;
    // The record now refers to the snapshot: gc may run again.
    drop(create_guard);
    announce(&setup, &recorder, &run_id);

    let bugs = run_jobs(&setup, &run_id, &recorder, &reporter);
    // Instances still being deleted, or warmed for jobs that never ran.
    let leftovers: Vec<String> =
        setup.hosts.iter().filter_map(|host| host.runtime.ready()).flat_map(|runtime| runtime.finish()).collect();

    let jobs = recorder.record().jobs;
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for j in &jobs {
        *counts.entry(j.status.as_str().to_string()).or_default() += 1;
    }
    let status = if bugs.is_empty() { RunStatus::from_jobs(&jobs, signals::interrupted()) } else { RunStatus::Error };
    let duration_ms = started.elapsed().as_millis() as u64;
    recorder.update(|r| {
        r.status = status;
        r.finished_at = Some(state::now_rfc3339());
        r.duration_ms = Some(duration_ms);
        if let Some(first) = bugs.first() {
            r.message = Some(format!("internal error (a bug in pikaci): {first}"));
        } else if !leftovers.is_empty() {
            r.message = Some(leftovers.join("; "));
        }
    });
    recorder.emit(Event::RunFinished { run_id: run_id.clone(), status, duration_ms, counts, at: state::now_rfc3339() });
    recorder.free_reserve();
    drop(run_lock);
    match bugs.into_iter().next() {
        Some(bug) => Err(error::internal(format!("run `{run_id}` hit a bug in pikaci: {bug}"))
            .hint(format!("the run is recorded as `error`: `pikaci status {run_id}`"))
            .into()),
        None => Ok(recorder.record()),
    }
}

fn first_record(setup: &Setup, run_id: &str) -> RunRecord {
    let c = &setup.choices;
    let jobs = setup
        .plan
        .iter()
        .map(|p| JobSummary {
            job_id: p.job_id.clone(),
            status: if p.skip_reason.is_some() { JobStatus::Skipped } else { JobStatus::Pending },
            exit_code: None,
            duration_ms: None,
            message: p.skip_reason.clone(),
            tests: None,
            host: None,
        })
        .collect();
    RunRecord {
        schema_version: RUN_SCHEMA_VERSION,
        run_id: run_id.to_string(),
        status: RunStatus::Running,
        created_at: state::now_rfc3339(),
        finished_at: None,
        duration_ms: None,
        pid: std::process::id(),
        pikaci_version: env!("CARGO_PKG_VERSION").to_string(),
        flake: c.flake_label.clone(),
        source_dir: c.source_dir.clone(),
        system: catalog::current_system(),
        nix_version: setup.nix_version.clone(),
        snapshot: c.snapshot.clone(),
        git_rev: c.git_rev.clone(),
        eval_ms: c.eval_ms,
        runtime: setup.runtime_name(),
        image: c.image.clone(),
        remote: setup.remote_names().into_iter().next(),
        remotes: setup.remote_names(),
        parallelism: c.parallelism,
        changed: c.changed.as_ref().map(Into::into),
        rerun_of: c.rerun_of.clone(),
        plan: setup.plan.iter().map(PlannedJobRecord::from).collect(),
        args: c.args.clone(),
        jobs,
        message: None,
    }
}

fn announce(setup: &Setup, recorder: &Recorder, run_id: &str) {
    recorder.emit(Event::RunStarted {
        run_id: run_id.to_string(),
        at: state::now_rfc3339(),
        flake: setup.choices.flake_label.clone(),
        runtime: setup.runtime_name().as_str().to_string(),
        snapshot: setup.choices.snapshot.id.clone(),
        jobs: setup.plan.iter().map(|p| p.job_id.clone()).collect(),
        rerun_of: setup.choices.rerun_of.clone(),
        eval_ms: setup.choices.eval_ms,
    });
    for job in setup.plan.iter().filter(|p| p.skip_reason.is_some()) {
        recorder.emit(Event::JobFinished {
            run_id: run_id.to_string(),
            job_id: job.job_id.clone(),
            status: JobStatus::Skipped,
            exit_code: None,
            duration_ms: None,
            message: job.skip_reason.clone(),
            at: state::now_rfc3339(),
        });
    }
}

/// Run every job that is not skipped on `--jobs` workers, each job on a slot of a host.
/// Returns the messages of the panics that ended jobs (bugs), each already recorded on
/// its job.
fn run_jobs(setup: &Setup, run_id: &str, recorder: &Recorder, reporter: &Arc<dyn Reporter>) -> Vec<String> {
    let queue: Vec<&PlannedJob> = setup.plan.iter().filter(|p| p.skip_reason.is_none()).collect();
    let next = AtomicUsize::new(0);
    let bugs = Mutex::new(Vec::new());
    let slots = Slots::new(&setup.hosts);
    let workers = setup.choices.parallelism.min(queue.len()).min(slots.total()).max(1);
    // Each job's directory and host log, made once: when the runtime gets ready for it
    // ahead of time (the next job of each worker), or when it starts.
    let previews: Vec<OnceLock<Result<JobPreview, String>>> = queue.iter().map(|_| OnceLock::new()).collect();
    let preview = |i: usize| {
        previews[i].get_or_init(|| job::preview(setup, run_id, queue[i]).map_err(|e| format!("{e:#}"))).as_ref()
    };
    // Warming ahead needs to know the job's host: with one host only.
    let warm = |i: usize| {
        if let ([host], true) = (setup.hosts.as_slice(), i < queue.len())
            && let Some(runtime) = host.runtime.ready()
            && !signals::interrupted()
            && let Ok(job) = preview(i)
        {
            runtime.warm(job);
        }
    };
    (0..workers).for_each(warm);
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some(planned) = queue.get(i) else { break };
                    warm(i + workers);
                    let summary = if signals::interrupted() {
                        not_started(planned)
                    } else {
                        match slots.acquire(&setup.hosts) {
                            Err(why) => job::record_no_host(setup, run_id, planned, recorder, &why),
                            Ok(h) => {
                                let summary = run_on(setup, h, run_id, planned, preview(i), recorder, reporter, &bugs);
                                let summary = check_host(setup, &slots, h, run_id, planned, summary);
                                slots.release(h);
                                summary
                            }
                        }
                    };
                    recorder.finish_job(summary);
                }
            });
        }
    });
    bugs.into_inner().unwrap_or_else(|p| p.into_inner())
}

#[allow(clippy::too_many_arguments)]
fn run_on(
    setup: &Setup,
    h: usize,
    run_id: &str,
    planned: &PlannedJob,
    preview: Result<&JobPreview, &String>,
    recorder: &Recorder,
    reporter: &Arc<dyn Reporter>,
    bugs: &Mutex<Vec<String>>,
) -> JobSummary {
    let host = &setup.hosts[h];
    let attempt = std::panic::catch_unwind(AssertUnwindSafe(|| {
        job::run_job(setup, host, run_id, planned, preview.map_err(Clone::clone), recorder, reporter)
    }));
    attempt.unwrap_or_else(|payload| {
        let bug = error::panic_message(payload.as_ref());
        bugs.lock().unwrap_or_else(|p| p.into_inner()).push(bug.clone());
        job::record_bug(setup, run_id, planned, recorder, &bug)
    })
}

/// A job that ended in `error` on a remote host of a run of several hosts: does the host
/// still answer? One that does not is taken out of the run (its queued jobs go to the
/// others), and the job's message names it.
fn check_host(
    setup: &Setup,
    slots: &Slots,
    h: usize,
    run_id: &str,
    planned: &PlannedJob,
    summary: JobSummary,
) -> JobSummary {
    let host = &setup.hosts[h];
    if summary.status != JobStatus::Error || setup.hosts.len() < 2 || signals::interrupted() {
        return summary;
    }
    let failed = if slots.is_out(h) {
        Some("it was taken out of the run".to_string())
    } else {
        match host.runtime.ready().map(|r| r.check_host()) {
            Some(Err(e)) => {
                let why = error::render(&e).trim_start_matches("error: ").to_string();
                if slots.take_out(h, &why) {
                    eprintln!("pikaci: host `{}` failed and is taken out of the run: {why}", host.name);
                }
                Some(why)
            }
            _ => None,
        }
    };
    match failed {
        Some(why) => job::amend_message(
            setup,
            run_id,
            planned,
            summary,
            &format!("host `{}` failed and was taken out of the run ({why})", host.name),
        ),
        None => summary,
    }
}

fn not_started(planned: &PlannedJob) -> JobSummary {
    JobSummary {
        job_id: planned.job_id.clone(),
        status: JobStatus::Interrupted,
        exit_code: None,
        duration_ms: None,
        message: Some("not started: the run was interrupted".into()),
        tests: None,
        host: None,
    }
}
