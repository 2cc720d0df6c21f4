//! `pikaci gc`: drop old runs (records, logs, artifacts and their GC roots, so Nix may
//! collect their payloads), snapshots no remaining run uses, and Incus instances left
//! behind by runs that died. A live run is never touched.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::executor::placement::{Placement, remote_state_root};
use crate::executor::runtime::incus;
use crate::gc_pending;
use crate::state::record::RuntimeName;
use crate::state::{RunRecord, RunStatus, StateRoot};
use crate::tools::incus::Incus;

#[derive(Debug, Default)]
pub struct GcReport {
    pub removed_runs: Vec<String>,
    pub kept_runs: usize,
    pub live_runs: Vec<String>,
    pub removed_snapshots: usize,
    pub reaped_instances: Vec<String>,
    pub warnings: Vec<String>,
}

impl fmt::Display for GcReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.removed_runs.len();
        write!(
            f,
            "removed {n} run{} (and {} GC roots), {} snapshot{}, {} instance{}; kept {} run{}",
            if n == 1 { "" } else { "s" },
            if n == 1 { "its" } else { "their" },
            self.removed_snapshots,
            if self.removed_snapshots == 1 { "" } else { "s" },
            self.reaped_instances.len(),
            if self.reaped_instances.len() == 1 { "" } else { "s" },
            self.kept_runs,
            if self.kept_runs == 1 { "" } else { "s" },
        )?;
        if !self.live_runs.is_empty() {
            write!(
                f,
                "; left {} live run{} alone",
                self.live_runs.len(),
                if self.live_runs.len() == 1 { "" } else { "s" }
            )?;
        }
        for w in &self.warnings {
            write!(f, "\nwarning: {w}")?;
        }
        Ok(())
    }
}

pub fn collect(state: &StateRoot, keep: usize) -> Result<GcReport> {
    collect_waiting(state, keep, &|_| {})
}

/// [`collect`], calling `on_wait` once when a starting run holds the state root's lock.
pub fn collect_waiting(state: &StateRoot, keep: usize, on_wait: &dyn Fn(&Path)) -> Result<GcReport> {
    let _lock = state.lock_exclusive_waiting(on_wait)?;
    let mut sweep =
        Sweep { state, report: GcReport::default(), remote_leftovers: BTreeMap::new(), died_on_incus: BTreeSet::new() };
    // Runs that ran on other hosts left job directories (and GC roots) there too; and an
    // earlier gc may have found a host unreachable.
    match gc_pending::load(state) {
        Ok(pending) => sweep.remote_leftovers = pending,
        Err(e) => sweep.report.warnings.push(format!("{e:#}")),
    }
    let ids = state.run_ids()?;
    let cut = ids.len().saturating_sub(keep);
    sweep.remove_runs(&ids[..cut])?;
    let referenced = sweep.read_kept_runs()?;
    sweep.remove_snapshots(&referenced)?;
    remove_remote_leftovers(state, &sweep.remote_leftovers, &mut sweep.report);
    sweep.reap_instances();
    Ok(sweep.report)
}

/// One gc's work and what it found on the way.
struct Sweep<'a> {
    state: &'a StateRoot,
    report: GcReport,
    remote_leftovers: BTreeMap<String, Vec<PathBuf>>,
    /// Hosts (`None`: this machine) where a run died (its record still says running)
    /// while using Incus, or could not delete its instance: if Incus does not answer now,
    /// gc says it could not look. Liveness is asked only of such runs.
    died_on_incus: BTreeSet<Option<String>>,
}

impl<'a> Sweep<'a> {
    fn note_death(&mut self, record: &RunRecord, live: &dyn Fn() -> bool) {
        let not_deleted = || {
            record
                .message
                .iter()
                .chain(record.jobs.iter().filter_map(|j| j.message.as_ref()))
                .any(|m| m.contains(incus::INSTANCE_NOT_DELETED))
        };
        if record.runtime == RuntimeName::Incus && (record.status == RunStatus::Running && !live() || not_deleted()) {
            self.died_on_incus.extend(record.incus_hosts());
        }
    }

    fn remove_runs(&mut self, ids: &[String]) -> Result<()> {
        let state = self.state;
        for id in ids {
            // Holding the run's lock while deleting: a run cannot start under the same id.
            let Some(_run_lock) = state.try_lock_run(id)? else {
                self.report.live_runs.push(id.clone());
                continue;
            };
            let dir = state.run_dir(id);
            if let Ok(record) = RunRecord::read(&dir) {
                self.note_death(&record, &|| false);
                for host in record.remote_hosts() {
                    self.remote_leftovers.entry(host).or_default().push(dir.clone());
                }
            }
            std::fs::remove_dir_all(&dir).with_context(|| format!("remove run `{}`", dir.display()))?;
            self.report.removed_runs.push(id.clone());
        }
        Ok(())
    }

    /// The snapshots the kept runs refer to.
    fn read_kept_runs(&mut self) -> Result<HashSet<String>> {
        let state = self.state;
        let remaining = state.run_ids()?;
        self.report.kept_runs = remaining.len();
        let mut referenced = HashSet::new();
        for id in &remaining {
            match RunRecord::read(&state.run_dir(id)) {
                Ok(r) => {
                    self.note_death(&r, &|| state.run_is_live(id));
                    for host in r.remote_hosts() {
                        self.remote_leftovers.entry(host).or_default();
                    }
                    referenced.insert(r.snapshot.id);
                }
                Err(e) => self.report.warnings.push(format!("run `{id}`: {e:#}; its snapshot may have been removed")),
            }
        }
        Ok(referenced)
    }

    fn remove_snapshots(&mut self, referenced: &HashSet<String>) -> Result<()> {
        let Ok(entries) = std::fs::read_dir(self.state.snapshots_dir()) else { return Ok(()) };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            // `.tmp-*` are copies that a crashed run never published (a live one would
            // hold the shared lock we excluded).
            if !referenced.contains(&name) {
                std::fs::remove_dir_all(entry.path())
                    .with_context(|| format!("remove snapshot `{}`", entry.path().display()))?;
                self.report.removed_snapshots += 1;
                for dirs in self.remote_leftovers.values_mut() {
                    dirs.push(entry.path());
                }
            }
        }
        Ok(())
    }

    /// Instances that runs which died left behind, here and on every host runs used.
    fn reap_instances(&mut self) {
        let state = self.state;
        match incus::reap_orphans(state) {
            Ok(Some(reaped)) => self.report.reaped_instances = reaped,
            Ok(None) if self.died_on_incus.contains(&None) => self.report.warnings.push(
                "a run that died while using Incus, or could not delete its instance, may have left an instance, and \
                 Incus does not answer on this machine, so none was looked for; run `pikaci gc` again once incusd runs"
                    .into(),
            ),
            Ok(None) => {}
            Err(e) => self.report.warnings.push(format!("could not look for leftover Incus instances: {e:#}")),
        }
        for host in self.remote_leftovers.keys() {
            let placement = Placement::new(Some(host), &state.root, &remote_state_root());
            let reaped = Incus::locate(placement.ssh_host()).and_then(|incus| incus::reap_orphans_with(&incus, state));
            match reaped {
                Ok(Some(reaped)) => {
                    self.report.reaped_instances.extend(reaped.into_iter().map(|name| format!("{host}:{name}")))
                }
                Ok(None) if self.died_on_incus.contains(&Some(host.clone())) => self.report.warnings.push(format!(
                    "a run that died while using Incus on `{host}`, or could not delete its instance there, may have \
                     left an instance there, and Incus does not answer on `{host}`, so none was looked for"
                )),
                Ok(None) => {}
                Err(e) => {
                    self.report.warnings.push(format!("could not look for leftover Incus instances on `{host}`: {e:#}"))
                }
            }
        }
    }
}

/// Remove, on each remote host, what runs left there; what could not be removed (an
/// unreachable host) is kept for the next gc.
fn remove_remote_leftovers(state: &StateRoot, leftovers: &gc_pending::Leftovers, report: &mut GcReport) {
    let mut still_pending = gc_pending::Leftovers::new();
    for (host, dirs) in leftovers {
        if let Placement::Remote(remote) = Placement::new(Some(host), &state.root, &remote_state_root())
            && let Err(e) = remote.remove(dirs)
        {
            report.warnings.push(format!(
                "{e:#}; kept in `{}`, the next `pikaci gc` tries again",
                state.root.join(gc_pending::FILE).display()
            ));
            still_pending.insert(host.clone(), dirs.clone());
        }
    }
    if let Err(e) = gc_pending::store(state, &still_pending) {
        report.warnings.push(format!("{e:#}"));
    }
}
