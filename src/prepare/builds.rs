//! The derivations the jobs of a run build, and where: so that a derivation is built once
//! per run, not once per job or per host. A job claims the derivations it will build
//! before its realisation and waits, first, for those another job is building in its
//! way: on the same host (else Nix's lock would make it wait, polling every 5 seconds),
//! or on another SSH host (whose outputs it then receives with Nix's own copying, `nix
//! copy --from ssh://A --to ssh://B`, rather than build them again). This machine and an
//! SSH host build independently. A job claims all it needs at once, or nothing, so that
//! two jobs never wait for each other.
//!
//! A job's realisation builds all its payloads, but a job that needs only one of them
//! (crane's `workspace-deps`, shared by lanes whose `workspace-build`s differ) need not
//! wait for the whole realisation: the builder says when that derivation is built
//! ([`RunBuilds::built`], from its structured log), and the waiting job goes on once Nix
//! has released the outputs where they were built (the caller's `released`: each output
//! exists and its `.lock` file is gone, which Nix deletes after registering it, and
//! which can be after the `Build` activity stopped); from another SSH host, it then
//! receives them.

use std::collections::{HashMap, HashSet};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::executor::Placement;
use crate::tools::log::HostLog;

/// Who builds and who built each derivation of the run.
#[derive(Debug, Default)]
pub struct RunBuilds {
    table: Mutex<HashMap<String, Entry>>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct Entry {
    /// Jobs building it now, and where.
    building: Vec<(String, Placement)>,
    /// Where it was built in this run, and by which job.
    built: Vec<(Placement, String)>,
}

/// Whether a build of a derivation on `a` is in the way of a job on `b` that needs it.
fn in_the_way(a: &Placement, b: &Placement) -> bool {
    a == b || (!a.is_local() && !b.is_local())
}

/// A job's hold on the derivations it builds, released (and, when it built them, recorded
/// as built) when dropped.
pub struct Claim<'a> {
    builds: &'a RunBuilds,
    job: String,
    placement: Placement,
    claimed: Vec<String>,
    /// The realisation that the claim was for succeeded.
    pub succeeded: bool,
    /// The job of the run that built a derivation, when it was another one.
    pub built_by: HashMap<String, String>,
    /// Derivations built on another SSH host of the run: their outputs can be received
    /// from there.
    pub receive: Vec<(Placement, String)>,
    /// The derivations this job waited for, and how long it waited.
    waited_for: HashSet<String>,
    waited: Duration,
}

impl RunBuilds {
    fn table(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether another job is building one of `drvs` in the way of `job` on `placement`.
    pub fn busy(&self, job: &str, placement: &Placement, drvs: &[&str]) -> bool {
        let table = self.table();
        drvs.iter().any(|d| blocker(&table, d, job, placement).is_some())
    }

    /// Wait until no other job builds one of `needed` in the way of `job` on
    /// `placement`, then claim those of `to_build` that were not built on that host in
    /// this run. Says in `log` whom it waits for. `released`: whether Nix has released
    /// the outputs of a derivation on the host where another job said it built it (it is
    /// asked without the table's lock: over SSH it takes a round trip).
    pub fn claim(
        &self,
        job: &str,
        placement: &Placement,
        (needed, to_build): (&[&str], &[&str]),
        released: &dyn Fn(&str, &Placement) -> bool,
        log: &HostLog,
    ) -> Claim<'_> {
        let asked = Instant::now();
        let (mut table, waited_for) = self.wait_for_others(job, placement, needed, released, log);
        let mut claim = Claim {
            builds: self,
            job: job.to_string(),
            placement: placement.clone(),
            claimed: Vec::new(),
            succeeded: false,
            built_by: HashMap::new(),
            receive: Vec::new(),
            waited: if waited_for.is_empty() { Duration::ZERO } else { asked.elapsed() },
            waited_for,
        };
        for drv in needed {
            let entry = table.entry(drv.to_string()).or_default();
            if let Some((_, builder)) = entry.built.iter().find(|(p, _)| p == placement) {
                claim.built_by.insert(drv.to_string(), builder.clone());
                continue;
            }
            if !to_build.contains(drv) {
                continue;
            }
            if let Some((source, builder)) = entry.built.iter().find(|(p, _)| in_the_way(p, placement)) {
                claim.receive.push((source.clone(), drv.to_string()));
                claim.built_by.insert(drv.to_string(), builder.clone());
            }
            entry.building.push((job.to_string(), placement.clone()));
            claim.claimed.push(drv.to_string());
        }
        claim
    }
}

impl RunBuilds {
    /// Wait until no other job builds one of `needed` in the way of `job` on `placement`
    /// (see [`RunBuilds::claim`]). Returns the table, locked, and the derivations it
    /// waited for.
    fn wait_for_others(
        &self,
        job: &str,
        placement: &Placement,
        needed: &[&str],
        released: &dyn Fn(&str, &Placement) -> bool,
        log: &HostLog,
    ) -> (MutexGuard<'_, HashMap<String, Entry>>, HashSet<String>) {
        let (mut waited_for, mut seen_released) = (HashSet::new(), HashSet::new());
        // How long to wait before asking again whether outputs were released: from 10 ms
        // here (200 ms over SSH), doubling up to 1 s (4 s), should a release be slow (a
        // build that said it was built and was not, e.g. a fetch that failed).
        let mut polls = 0u32;
        let mut table = self.table();
        loop {
            // In the way: building it, unless it said it built it and Nix has released
            // the outputs since (`releasing`: said so, not seen released yet).
            let (mut releasing, mut building) = (Vec::new(), Vec::new());
            for drv in needed {
                let Some((other, there)) = blocker(&table, drv, job, placement) else { continue };
                if waited_for.insert(drv.to_string()) {
                    let host = there.host_name();
                    log.line(&format!("waits for job `{other}`, which builds `{drv}` on `{host}`"));
                }
                match said_built(&table, drv, &other) {
                    Some(_) if seen_released.contains(*drv) => {}
                    Some(at) => releasing.push((*drv, at)),
                    None => building.push(*drv),
                }
            }
            if releasing.is_empty() && building.is_empty() {
                break;
            }
            if releasing.is_empty() {
                table = self.changed.wait(table).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            drop(table);
            let mut poll = Duration::ZERO;
            for (drv, at) in releasing {
                if released(drv, &at) {
                    seen_released.insert(drv.to_string());
                } else {
                    let (first, most) = if at.is_local() { (10, 1_000) } else { (200, 4_000) };
                    let wait = Duration::from_millis((first << polls.min(10)).min(most));
                    poll = poll.max(wait);
                }
            }
            if !poll.is_zero() {
                polls += 1;
                std::thread::sleep(poll);
            }
            table = self.table();
        }
        (table, waited_for)
    }
}

impl Claim<'_> {
    /// How long the job waited for another job's build of `drv` (zero when it did not).
    pub fn waited_on(&self, drv: &str) -> Duration {
        if self.waited_for.contains(drv) { self.waited } else { Duration::ZERO }
    }

    /// Whether the job claimed nothing: other jobs of the run built, on this host, all
    /// it needs that was not there.
    pub fn nothing_to_build(&self) -> bool {
        self.claimed.is_empty()
    }
}

impl RunBuilds {
    /// `job`, whose realisation on `placement` goes on, has built `drv` (its `Build`
    /// activity stopped without a failure, or its outputs were fetched or received): a
    /// job waiting for it may go on once its outputs are released there.
    pub fn built(&self, drv: &str, job: &str, placement: &Placement) {
        let mut table = self.table();
        let entry = table.entry(drv.to_string()).or_default();
        if !entry.built.iter().any(|(p, j)| p == placement && j == job) {
            entry.built.push((placement.clone(), job.to_string()));
        }
        drop(table);
        self.changed.notify_all();
    }
}

/// Where `job`, which still builds `drv`, said it built it.
fn said_built(table: &HashMap<String, Entry>, drv: &str, job: &str) -> Option<Placement> {
    let entry = table.get(drv)?;
    entry.built.iter().find(|(_, j)| j == job).map(|(p, _)| p.clone())
}

/// The job, other than `job`, that builds `drv` in the way of `placement`, and where.
fn blocker(table: &HashMap<String, Entry>, drv: &str, job: &str, placement: &Placement) -> Option<(String, Placement)> {
    let entry = table.get(drv)?;
    entry.building.iter().find(|(j, p)| j != job && in_the_way(p, placement)).cloned()
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        let mut table = self.builds.table();
        for drv in &self.claimed {
            let entry = table.entry(drv.clone()).or_default();
            entry.building.retain(|(j, p)| !(*j == self.job && *p == self.placement));
            let said = entry.built.iter().any(|(p, j)| *p == self.placement && *j == self.job);
            if self.succeeded && !said {
                entry.built.push((self.placement.clone(), self.job.clone()));
            }
        }
        drop(table);
        self.builds.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Barrier;

    fn log() -> HostLog {
        HostLog::create(std::path::Path::new("/dev/null")).unwrap()
    }

    #[test]
    fn a_job_waits_for_another_jobs_build_then_finds_it_built() {
        let builds = RunBuilds::default();
        let here = Placement::Local;
        let started = Barrier::new(2);
        std::thread::scope(|scope| {
            scope.spawn(|| {
                let mut claim =
                    builds.claim("a", &here, (&["x.drv", "y.drv"], &["x.drv", "y.drv"]), &|_, _| false, &log());
                started.wait();
                std::thread::sleep(Duration::from_millis(300));
                claim.succeeded = true;
            });
            started.wait();
            let claim = builds.claim("b", &here, (&["y.drv"], &["y.drv"]), &|_, _| false, &log());
            assert!(claim.waited >= Duration::from_millis(200), "{:?}", claim.waited);
            assert_eq!(claim.built_by.get("y.drv").map(String::as_str), Some("a"));
            assert!(claim.claimed.is_empty(), "built by `a` on this host: nothing to claim");
        });
    }

    #[test]
    fn a_failed_build_is_claimed_again_and_claims_never_deadlock() {
        let builds = RunBuilds::default();
        let here = Placement::Local;
        drop(builds.claim("a", &here, (&["x.drv"], &["x.drv"]), &|_, _| false, &log()));
        let claim = builds.claim("b", &here, (&["x.drv"], &["x.drv"]), &|_, _| false, &log());
        assert!(claim.built_by.is_empty());
        assert_eq!(claim.claimed, ["x.drv"]);
        drop(claim);
        // Jobs needing the same derivations in opposite orders: each claims all or nothing.
        std::thread::scope(|scope| {
            for (job, needed) in [("c", ["p.drv", "q.drv"]), ("d", ["q.drv", "p.drv"])] {
                let (builds, here) = (&builds, &here);
                scope.spawn(move || {
                    for _ in 0..50 {
                        let mut claim = builds.claim(job, here, (&needed, &needed), &|_, _| false, &log());
                        std::thread::sleep(Duration::from_millis(1));
                        claim.succeeded = false;
                    }
                });
            }
        });
    }

    #[test]
    fn valid_outputs_are_not_claimed_but_another_build_of_them_is_waited_for() {
        let builds = RunBuilds::default();
        let here = Placement::Local;
        let claim = builds.claim("a", &here, (&["x.drv", "y.drv"], &["y.drv"]), &|_, _| false, &log());
        assert_eq!(claim.claimed, ["y.drv"]);
        assert!(!builds.busy("b", &here, &["x.drv"]));
        assert!(builds.busy("b", &here, &["y.drv"]));
        assert!(!builds.busy("a", &here, &["y.drv"]), "a job is not in its own way");
    }

    #[test]
    fn a_derivation_built_inside_another_jobs_realisation_is_not_waited_for_once_released() {
        let builds = RunBuilds::default();
        let here = Placement::Local;
        let released = std::sync::atomic::AtomicBool::new(false);
        let started = Barrier::new(2);
        std::thread::scope(|scope| {
            scope.spawn(|| {
                let mut claim =
                    builds.claim("a", &here, (&["deps.drv", "a.drv"], &["deps.drv", "a.drv"]), &|_, _| false, &log());
                started.wait();
                std::thread::sleep(Duration::from_millis(100));
                builds.built("deps.drv", "a", &here);
                std::thread::sleep(Duration::from_millis(100));
                released.store(true, std::sync::atomic::Ordering::SeqCst);
                // `a` builds `a.drv` for a long while yet.
                std::thread::sleep(Duration::from_millis(2000));
                claim.succeeded = true;
            });
            started.wait();
            let asked = Instant::now();
            let is_released =
                |d: &str, _: &Placement| d == "deps.drv" && released.load(std::sync::atomic::Ordering::SeqCst);
            let claim =
                builds.claim("b", &here, (&["deps.drv", "b.drv"], &["deps.drv", "b.drv"]), &is_released, &log());
            let took = asked.elapsed();
            assert!(took >= Duration::from_millis(150) && took < Duration::from_millis(1500), "{took:?}");
            assert_eq!(claim.built_by.get("deps.drv").map(String::as_str), Some("a"));
            assert_eq!(claim.claimed, ["b.drv"]);
        });
    }
}
