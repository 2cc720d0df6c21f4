//! A run, end to end: snapshot -> catalog -> plan -> (per job) prepare -> hand-off ->
//! runtime -> record. `run` and `rerun` each decide a [`Setup`] (what to run, where, on
//! which runtime); [`scheduler`] runs its jobs on a pool of workers, and [`job`] is one
//! job's lifecycle. Every step reports through events, which the reporter, the
//! `events.jsonl` log and the run record all consume ([`crate::state::recorder`]).
//!
//! The catalog is evaluated from the snapshot, not from the work tree: a `path:` flake is
//! copied whole into the store, so evaluating the work tree would copy the state root and
//! build output too, and change the source hash (and so rebuild every payload) on every
//! run. The snapshot holds exactly what the lane will see.

mod hosts;
mod hosts_file;
mod job;
mod records;
mod scheduler;
mod setup;

use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};

use crate::catalog::{self, Catalog, CatalogCache, FlakeSource};
use crate::error;
use crate::executor::{OutputSink, RuntimeChoice};
use crate::plan::{self, ChangedFiles, PlannedJob, Selection};
use crate::snapshot::{self, Snapshot};
use crate::state::record::{RunSnapshot, RuntimeName};
use crate::state::recorder::EventSink;
use crate::state::{JobRecord, RunRecord, StateRoot};
use crate::tools::git;
use crate::tools::nix::Nix;

use setup::Setup;

/// Receives every event of a run, and the guest output.
pub trait Reporter: OutputSink + EventSink {}

impl<T: OutputSink + EventSink> Reporter for T {}

/// What `pikaci run` asks for.
#[derive(Clone, Debug)]
pub struct RunRequest {
    pub flake: FlakeSource,
    pub state: StateRoot,
    pub selection: Selection,
    pub changed_since: Option<String>,
    pub runtime: RuntimeChoice,
    /// `--remote`, repeated.
    pub remotes: Vec<String>,
    /// `--hosts FILE`; else `pikaci.toml` beside the flake, if there is one.
    pub hosts_file: Option<PathBuf>,
    pub image: Option<String>,
    pub parallelism: usize,
    /// `-- ARGS`: appended to the command of each job, in this run only.
    pub args: Vec<String>,
    /// Evaluate the flake even when its catalog is cached.
    pub refresh: bool,
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

/// Load the catalog of a flake (through its snapshot; cached, see [`catalog::cache`]).
pub fn load_catalog(flake: &FlakeSource, state: &StateRoot, refresh: bool) -> Result<Catalog> {
    let nix = Nix::locate()?;
    let version = setup::read_version_meanwhile(&nix, state);
    let (snap, _guard) = take_snapshot(flake, state)?;
    let version = setup::join_version(version)?;
    catalog_of(&nix, state, &snap, &version.text, &flake.label, refresh)
}

fn catalog_of(
    nix: &Nix,
    state: &StateRoot,
    snap: &Snapshot,
    version: &str,
    label: &str,
    refresh: bool,
) -> Result<Catalog> {
    let cache = CatalogCache { dir: state.root.join("catalog-cache") };
    Catalog::load_cached(nix, &cache, (&snap.dir, &snap.id), version, label, refresh)
}

pub fn run(req: RunRequest, reporter: Arc<dyn Reporter>) -> Result<RunRecord> {
    if req.remotes.is_empty() && req.runtime != RuntimeChoice::Bwrap {
        // Jobs run here, perhaps on Incus: its daemon is asked while the snapshot is taken
        // and the flake evaluated.
        crate::executor::runtime::incus::probe_local_early();
    }
    let nix = Nix::locate()?;
    let version = setup::read_version_meanwhile(&nix, &req.state);
    let (snap, guard) = take_snapshot(&req.flake, &req.state)?;
    let version = setup::join_version(version)?;
    let evaluating = std::time::Instant::now();
    let catalog = catalog_of(&nix, &req.state, &snap, &version.text, &req.flake.label, req.refresh)?;
    let eval_ms = Some(evaluating.elapsed().as_millis() as u64);
    let changed = match &req.changed_since {
        Some(rev) => Some(changed_files(&req.flake, rev)?),
        None => None,
    };
    let plan = plan::plan(&catalog, &req.selection, changed.as_ref())?;
    let hosts_file = hosts_file::HostsFile::load(req.hosts_file.as_deref(), &req.flake.dir)?;
    let git_rev = git::head_revision(&req.flake.dir);
    let setup = Setup::new(
        setup::Choices {
            state: req.state,
            flake_label: req.flake.label,
            source_dir: req.flake.dir,
            snapshot: RunSnapshot { id: snap.id, dir: snap.dir, files: snap.files },
            changed,
            runtime: req.runtime,
            remotes: req.remotes,
            hosts_file,
            image: req.image,
            parallelism: req.parallelism,
            rerun_of: None,
            args: req.args,
            git_rev,
            eval_ms,
        },
        nix,
        plan,
        version,
    )?;
    crate::executor::runtime::incus::end_early_probe();
    scheduler::execute(setup, guard, reporter)
}

/// For `rerun --failed`: when the job recorded its failed tests and its lane declares
/// `testFilterArgs`, run only those tests (a shard's failed tests then run in one job);
/// otherwise the whole job runs again.
fn filter_failed_tests(nix: &Nix, state: &StateRoot, old: &RunRecord, job: &mut PlannedJob) {
    if !job.lane.test_filter {
        return;
    }
    let Ok(record) = JobRecord::read(&state.job_dir(&old.run_id, &job.job_id)) else { return };
    let Some(tests) = record.tests.filter(|t| t.failed > 0 && t.failures.len() as u64 == t.failed) else { return };
    let mut names: Vec<String> = tests.failures.into_iter().map(|f| f.name).collect();
    names.sort();
    names.dedup();
    match catalog::filter::evaluate(nix, &old.snapshot.dir, &old.system, &job.lane.id, &names) {
        Ok(args) => {
            job.extra_args = args;
            job.shard = None;
        }
        Err(e) => eprintln!(
            "pikaci: warning: job `{}` runs whole: its lane's `testFilterArgs` failed: {}",
            job.job_id,
            error::render(&e).trim_start_matches("error: ")
        ),
    }
}

fn changed_files(flake: &FlakeSource, rev: &str) -> Result<ChangedFiles> {
    if !git::is_work_tree(&flake.dir) {
        return Err(error::usage(format!(
            "`--changed-since {rev}` needs a git work tree; `{}` is not in one",
            flake.dir.display()
        ))
        .into());
    }
    Ok(ChangedFiles { since: rev.to_string(), files: git::changed_files(&flake.dir, rev)? })
}

pub fn rerun(req: RerunRequest, reporter: Arc<dyn Reporter>) -> Result<RunRecord> {
    let nix = Nix::locate()?;
    let version = setup::read_version_meanwhile(&nix, &req.state);
    // Read as it is now: the jobs of a run whose process died are interrupted, and so
    // among the failed ones.
    let old = RunRecord::read(&req.state.run_dir(&req.run_id))?.effective(&req.state);
    crate::replay::check_record(&old, &req.run_id, &req.state)?;
    req.state.ensure()?;
    let guard = req.state.lock_shared()?;
    let version = setup::join_version(version)?;
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
        let mut plan: Vec<PlannedJob> = old.jobs_to_rerun().into_iter().map(PlannedJob::from).collect();
        for job in &mut plan {
            filter_failed_tests(&nix, &req.state, &old, job);
        }
        plan
    } else {
        old.plan.iter().map(PlannedJob::from).collect()
    };
    if plan.is_empty() {
        return Err(error::usage(format!("run `{}` has no failed jobs to rerun", old.run_id))
            .hint(format!("`pikaci rerun {}` replays all of its jobs", old.run_id))
            .into());
    }
    let runtime = req.runtime.unwrap_or(match old.runtime {
        RuntimeName::Incus => RuntimeChoice::Incus,
        RuntimeName::Bwrap => RuntimeChoice::Bwrap,
        RuntimeName::Auto | RuntimeName::None | RuntimeName::Unknown => RuntimeChoice::Auto,
    });
    let setup = Setup::new(
        setup::Choices {
            state: req.state,
            flake_label: old.flake.clone(),
            source_dir: old.source_dir.clone(),
            snapshot: old.snapshot.clone(),
            changed: old.changed.as_ref().map(ChangedFiles::from),
            runtime,
            remotes: old.remote_hosts(),
            hosts_file: hosts_file::HostsFile::load(None, &old.source_dir).unwrap_or_default(),
            image: old.image.clone(),
            parallelism: req.parallelism.unwrap_or(old.parallelism),
            rerun_of: Some(old.run_id.clone()),
            args: old.args.clone(),
            git_rev: old.git_rev.clone(),
            eval_ms: None,
        },
        nix,
        plan,
        version,
    )?;
    scheduler::execute(setup, guard, reporter)
}
