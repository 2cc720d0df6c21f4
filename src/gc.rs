//! `pikaci gc`: drop old runs (records, logs, artifacts and their GC roots, so Nix may
//! collect their payloads), snapshots no remaining run uses, and Incus instances left
//! behind by runs that died. A live run is never touched.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt;
use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::executor::placement::{Placement, remote_state_root};
use crate::executor::runtime::incus;
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
    let _lock = state.lock_exclusive()?;
    let mut report = GcReport::default();
    let ids = state.run_ids()?;
    let cut = ids.len().saturating_sub(keep);
    // Runs that ran on other hosts left job directories (and GC roots) there too.
    let mut remote_leftovers: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    // A run that died (its record still says running) while using Incus, here (`None`) or
    // on a host, may have left an instance: if Incus does not answer now, gc says it could
    // not look. Liveness is asked only of such runs.
    let mut died_on_incus: BTreeSet<Option<String>> = BTreeSet::new();
    let mut note_death = |record: &RunRecord, live: &dyn Fn() -> bool| {
        if record.runtime == RuntimeName::Incus && record.status == RunStatus::Running && !live() {
            died_on_incus.extend(record.incus_hosts());
        }
    };
    for id in &ids[..cut] {
        // Holding the run's lock while deleting: a run cannot start under the same id.
        let Some(_run_lock) = state.try_lock_run(id)? else {
            report.live_runs.push(id.clone());
            continue;
        };
        let dir = state.run_dir(id);
        if let Ok(record) = RunRecord::read(&dir) {
            note_death(&record, &|| false);
            for host in record.remote_hosts() {
                remote_leftovers.entry(host).or_default().push(dir.clone());
            }
        }
        std::fs::remove_dir_all(&dir).with_context(|| format!("remove run `{}`", dir.display()))?;
        report.removed_runs.push(id.clone());
    }
    let remaining = state.run_ids()?;
    report.kept_runs = remaining.len();

    let mut referenced = HashSet::new();
    for id in &remaining {
        match RunRecord::read(&state.run_dir(id)) {
            Ok(r) => {
                note_death(&r, &|| state.run_is_live(id));
                for host in r.remote_hosts() {
                    remote_leftovers.entry(host).or_default();
                }
                referenced.insert(r.snapshot.id);
            }
            Err(e) => report.warnings.push(format!("run `{id}`: {e:#}; its snapshot may have been removed")),
        }
    }
    let snapshots = state.snapshots_dir();
    if let Ok(entries) = std::fs::read_dir(&snapshots) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            // `.tmp-*` are copies that a crashed run never published (a live one would
            // hold the shared lock we excluded).
            if !referenced.contains(&name) {
                std::fs::remove_dir_all(entry.path())
                    .with_context(|| format!("remove snapshot `{}`", entry.path().display()))?;
                report.removed_snapshots += 1;
                for dirs in remote_leftovers.values_mut() {
                    dirs.push(entry.path());
                }
            }
        }
    }

    for (host, dirs) in &remote_leftovers {
        if let Placement::Remote(remote) = Placement::new(Some(host), &state.root, &remote_state_root())
            && let Err(e) = remote.remove(dirs)
        {
            report.warnings.push(format!("{e:#}"));
        }
    }

    match incus::reap_orphans(state) {
        Ok(Some(reaped)) => report.reaped_instances = reaped,
        Ok(None) if died_on_incus.contains(&None) => report.warnings.push(
            "a run that died while using Incus may have left an instance, and Incus does not answer on this \
             machine, so none was looked for; run `pikaci gc` again once incusd runs"
                .into(),
        ),
        Ok(None) => {}
        Err(e) => report.warnings.push(format!("could not look for leftover Incus instances: {e:#}")),
    }
    // Runs on other hosts may have left instances there, too.
    for host in remote_leftovers.keys() {
        let placement = Placement::new(Some(host), &state.root, &remote_state_root());
        let reaped = Incus::locate(placement.ssh_host()).and_then(|incus| incus::reap_orphans_with(&incus, state));
        match reaped {
            Ok(Some(reaped)) => report.reaped_instances.extend(reaped.into_iter().map(|name| format!("{host}:{name}"))),
            Ok(None) if died_on_incus.contains(&Some(host.clone())) => report.warnings.push(format!(
                "a run that died while using Incus on `{host}` may have left an instance there, and Incus does not \
                 answer on `{host}`, so none was looked for"
            )),
            Ok(None) => {}
            Err(e) => report.warnings.push(format!("could not look for leftover Incus instances on `{host}`: {e:#}")),
        }
    }
    Ok(report)
}
