//! Prepare: root every output of a job's payloads as a registered Nix GC root in
//! `jobs/<job>/staged-linux-rust/` (`.gcroot`, `.gcroot-dev`, `.gcroot-2`, ...: see
//! `root_link`; the links named after the payloads, `named_links`, lead there): all
//! with one command when they are valid already, else by realizing each payload; read
//! their manifests, and produce the `StagedPayloadMount`s that the runtime gets.

mod across_hosts;
pub mod manifest;
pub mod progress;

pub use across_hosts::RunBuilds;
pub use progress::{BuildOutcome, BuildReport, Progress, Watch};

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::catalog::{Lane, Payload};
use crate::executor::Placement;
use crate::handoff::StagedPayloadMount;
use crate::tools::log::HostLog;
use crate::tools::nix::Nix;

use manifest::{PayloadManifest, ResolvedMount};
use progress::{LockWait, PayloadBuild};

/// The directory, inside a job directory, that holds the payload roots.
pub const STAGED_DIR: &str = "staged-linux-rust";

/// One payload, realized on the job's host.
#[derive(Clone, Debug)]
pub struct PreparedPayload {
    pub name: String,
    pub drv_path: String,
    /// Output name -> store path.
    pub outputs: BTreeMap<String, String>,
    /// The GC-root links, on the job's host.
    pub roots: Vec<PathBuf>,
    /// The store path mounted at `/pikaci/payloads/<name>`.
    pub mounted: String,
    /// This job's own work: the realisation and the manifest, without the time it
    /// waited for another build of the same derivation.
    pub duration_ms: u64,
    /// The job of the run that built the derivation, when it was not this one.
    pub built_by: Option<String>,
    /// How long this job waited for another build of it: another job's, or another
    /// process's that held Nix's lock.
    pub waited_ms: Option<u64>,
    pub manifest: Option<PayloadManifest>,
    pub extra_mounts: Vec<ResolvedMount>,
}

#[derive(Debug, Default)]
pub struct Prepared {
    pub payloads: Vec<PreparedPayload>,
    pub mounts: Vec<StagedPayloadMount>,
    pub extra_mounts: Vec<ResolvedMount>,
    /// The realization commands, for the job record's `reproduce`.
    pub reproduce: Vec<String>,
    /// The store closure of every payload output, in the store of the job's host: all of
    /// `/nix/store` the guest gets to see.
    pub store_closure: Option<Vec<PathBuf>>,
}

/// Lets the jobs of a run share builds: the first job to need a derivation builds it,
/// the others wait for that and then only add their own roots. (Two `nix-store --realise`
/// of one derivation at once would make the second wait on Nix's lock, whose poll
/// interval is 5 seconds.) Each cell holds the job that built it.
#[derive(Debug, Default)]
pub struct SharedBuilds {
    cells: Mutex<HashMap<String, Arc<OnceLock<String>>>>,
}

impl SharedBuilds {
    /// The derivation's cell, and whether another thread had asked for it already.
    fn cell(&self, key: &str) -> (Arc<OnceLock<String>>, bool) {
        let mut cells = self.cells.lock().unwrap_or_else(|p| p.into_inner());
        let asked_before = cells.contains_key(key);
        (cells.entry(key.to_string()).or_default().clone(), asked_before)
    }

    /// Whether another job of the run is realizing one of `keys` now.
    fn busy(&self, keys: &[&str]) -> bool {
        let cells = self.cells.lock().unwrap_or_else(|p| p.into_inner());
        keys.iter().any(|key| cells.get(*key).is_some_and(|cell| cell.get().is_none()))
    }

    /// Run `realise` for the claim's derivation; while another thread runs the first one,
    /// wait for it (the claim notes whom, and how long). Unless `valid` says that the
    /// outputs are in the store already: then there is nothing to build and nothing to
    /// wait for (rooting valid outputs takes no lock), which `valid` checks only when
    /// the other thread's realisation is still going.
    fn once<T>(&self, claim: &Claim, valid: impl Fn() -> bool, realise: impl Fn() -> T) -> T {
        let (cell, asked_before) = self.cell(claim.key);
        if asked_before && cell.get().is_none() && valid() {
            return realise();
        }
        let mut first = None;
        let asked = Instant::now();
        let builder = cell.get_or_init(|| {
            first = Some(realise());
            claim.job.to_string()
        });
        first.unwrap_or_else(|| {
            claim.waited_for(Some(builder), asked);
            realise()
        })
    }
}

/// One job's claim on a derivation of the run: which job asks, and when another job (or
/// another payload of its own) built the derivation meanwhile, which one and how long
/// this one waited (Nix's lock on a path another process builds included). A payload's
/// duration is its own work: the wait is not in it.
pub struct Claim<'a> {
    pub key: &'a str,
    pub job: &'a str,
    waited: Cell<Duration>,
    built_by: RefCell<Option<String>>,
}

impl<'a> Claim<'a> {
    pub fn new(key: &'a str, job: &'a str) -> Claim<'a> {
        Claim { key, job, waited: Cell::default(), built_by: RefCell::default() }
    }

    /// This job waited since `since` for `builder`'s build (`None`: a build that failed).
    pub fn waited_for(&self, builder: Option<&str>, since: Instant) {
        self.waited.set(self.waited.get() + since.elapsed());
        if let Some(job) = builder.filter(|b| *b != self.job) {
            *self.built_by.borrow_mut() = Some(job.to_string());
        }
    }
}

/// A job's part in preparing its payloads.
struct Preparing<'a> {
    nix: &'a Nix,
    job_id: &'a str,
    job_dir: &'a Path,
    staged: PathBuf,
    placement: &'a Placement,
    log: &'a HostLog,
    shared: &'a SharedBuilds,
    across: &'a RunBuilds,
    watch: &'a dyn Watch,
    /// Every payload's `.drv` is on the host already (sent there at the start).
    drvs_sent: bool,
}

/// Realize every payload of `lane`, telling `watch` of their builds and of each one as it
/// is ready. When every output is valid on the host already (the payloads were built
/// before), one command roots them all and no payload is realized; else each payload is
/// realized, in parallel. The first failure is returned, naming the payload and the lane
/// (and, when it was a build, where its log is kept).
pub fn prepare(
    nix: &Nix,
    lane: &Lane,
    job_dir: &Path,
    placement: &Placement,
    log: &HostLog,
    (shared, across): (&SharedBuilds, &RunBuilds),
    watch: &dyn Watch,
) -> Result<Prepared> {
    let staged = job_dir.join(STAGED_DIR);
    std::fs::create_dir_all(&staged).with_context(|| format!("create `{}`", staged.display()))?;
    // A job's directory is named after the job (`runs/<run>/jobs/<job>`).
    let job_id = job_dir.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    // Not there when this is a rerun of a run whose derivations were garbage-collected.
    let drvs: Vec<&str> = lane.payloads.iter().map(|p| p.drv_path.as_str()).collect();
    let drvs_here = !drvs.is_empty() && drvs.iter().all(|d| Path::new(d).exists());
    let mut sent = None;
    if drvs_here {
        sent = placement.send_derivations(nix, &drvs, log).with_context(|| {
            format!("send the derivations of lane `{}`'s payloads to `{}`", lane.id, placement.host_name())
        })?;
    }
    let job = Preparing { nix, job_id, job_dir, staged, placement, log, shared, across, watch, drvs_sent: drvs_here };
    if drvs_here {
        if let Some(prepared) = job.root_if_valid(lane, &drvs, sent.clone())? {
            return Ok(prepared);
        }
        log.line("not every payload output is valid yet: each payload is realized");
    }
    let mut prepared = job.realize_each(lane, !drvs_here)?;
    prepared.reproduce.splice(0..0, sent);
    Ok(prepared)
}

/// One payload realized on the job's host: its description, the commands that did it.
type Realized = (PreparedPayload, Vec<String>);

impl Preparing<'_> {
    /// When every output of the payloads is valid on the host already, root them all with
    /// one command and realize none. That command fails at once when an output is not
    /// valid and nobody builds it; but while another process builds it, Nix makes it
    /// wait for that build's lock. So it runs only when every output is there, and no
    /// other job of the run is realizing one of them (that wait is the realisations',
    /// which tell it). `sent`: the command that sent the `.drv`s to the host.
    fn root_if_valid(&self, lane: &Lane, drvs: &[&str], sent: Option<String>) -> Result<Option<Prepared>> {
        let (nix, placement, log) = (self.nix, self.placement, self.log);
        let outputs: Vec<String> = lane.payloads.iter().flat_map(|p| p.outputs.values().cloned()).collect();
        if !placement.all_present(nix, &outputs, log)? || self.shared.busy(drvs) {
            return Ok(None);
        }
        let (started, mut lock) = (Instant::now(), LockWait::default());
        let root = root_link(&self.staged, 0, "out");
        let Some((closure, shown)) = placement.root_valid(nix, drvs, &root, log, &mut lock)? else { return Ok(None) };
        log.line("every payload output was valid already: all rooted with one command, none realized");
        let reproduce = sent.into_iter().chain([shown]).collect();
        self.rooted(lane, started, lock.total(), closure, reproduce).map(Some)
    }

    /// Realize each payload, in parallel, then ask for the closure. `early`: ask for the
    /// closure at the same time, in case every output is valid already.
    fn realize_each(&self, lane: &Lane, early: bool) -> Result<Prepared> {
        let (placement, nix, log) = (self.placement, self.nix, self.log);
        let outputs: Vec<&str> = lane.payloads.iter().flat_map(|p| p.outputs.values().map(String::as_str)).collect();
        let order = BuildOrder::of(&lane.payloads);
        let (results, early_closure) = std::thread::scope(|scope| {
            // The closure of outputs that are valid already (a payload built before) does
            // not depend on the realisation: asked for at the same time, it leaves the
            // critical path. When an output is not valid yet the query fails, and is asked
            // again below.
            let early = early.then(|| scope.spawn(|| placement.requisites(nix, &outputs, log).ok()));
            let handles: Vec<_> = lane
                .payloads
                .iter()
                .enumerate()
                .map(|(i, payload)| {
                    let order = &order;
                    scope.spawn(move || {
                        order.wait_for_inputs(i, &lane.payloads, log);
                        let realized = self
                            .realize(i, payload)
                            .with_context(|| format!("realize payload `{}` of lane `{}`", payload.name, lane.id));
                        order.done(i);
                        let realized = realized?;
                        self.watch.realized(&realized.0);
                        Ok(realized)
                    })
                })
                .collect();
            let results: Vec<Result<Realized>> = handles.into_iter().map(joined).collect();
            (results, early.and_then(|h| h.join().ok().flatten()))
        });
        let mut prepared = self.collect(lane, results)?;
        let closure = match early_closure {
            Some(closure) => closure,
            None => {
                log.line("the payloads' outputs were not all valid before their realisation: closure asked now");
                placement
                    .requisites(nix, &outputs, log)
                    .with_context(|| format!("find the store closure of the payloads on `{}`", placement.host_name()))?
            }
        };
        log.line(&format!("store closure of the payloads: {} paths", closure.len()));
        prepared.store_closure = Some(closure);
        Ok(prepared)
    }

    /// Every payload's outputs were valid, and are rooted as a realisation of them all
    /// would have (`closure`: theirs): read each one's manifest, in parallel.
    /// `waited`: for another process's build of one of them (Nix's lock), which is not
    /// this job's work.
    fn rooted(
        &self,
        lane: &Lane,
        started: Instant,
        waited: Duration,
        closure: Vec<PathBuf>,
        reproduce: Vec<String>,
    ) -> Result<Prepared> {
        let results = std::thread::scope(|scope| {
            let handles: Vec<_> = lane
                .payloads
                .iter()
                .enumerate()
                .map(|(i, payload)| {
                    scope.spawn(move || {
                        // `out` first, as a realisation prints them.
                        let mut names: Vec<&String> = payload.outputs.keys().collect();
                        names.sort_by_key(|o| *o != "out");
                        let roots = names.iter().map(|o| self.placement.host_path(&root_link(&self.staged, i, o)));
                        let roots = roots.collect::<Result<Vec<_>>>()?;
                        let claim = Claim::new(&payload.drv_path, self.job_id);
                        claim.waited.set(waited);
                        let described = self
                            .describe(i, payload, roots, started, claim)
                            .with_context(|| format!("realize payload `{}` of lane `{}`", payload.name, lane.id))?;
                        self.watch.realized(&described);
                        Ok((described, Vec::new()))
                    })
                })
                .collect();
            handles.into_iter().map(joined).collect::<Vec<Result<Realized>>>()
        });
        let mut prepared = self.collect(lane, results)?;
        prepared.reproduce = reproduce;
        self.log.line(&format!("store closure of the payloads: {} paths", closure.len()));
        prepared.store_closure = Some(closure);
        Ok(prepared)
    }

    /// The payloads, in the lane's order, with their mounts: the first failure, if any.
    fn collect(&self, lane: &Lane, results: Vec<Result<Realized>>) -> Result<Prepared> {
        let mut prepared = Prepared::default();
        for result in results {
            let (payload, reproduce) = result?;
            let main =
                payload.outputs.iter().find(|(_, path)| **path == payload.mounted).map(|(name, _)| name.as_str());
            prepared.mounts.push(StagedPayloadMount {
                local_mount_path: named_link(&self.staged, &payload.name, main.unwrap_or("out")),
                device_prefix: payload.name.clone(),
            });
            prepared.extra_mounts.extend(payload.extra_mounts.iter().cloned());
            prepared.reproduce.extend(reproduce);
            prepared.payloads.push(payload);
        }
        manifest::check_mounts_apart(&prepared.extra_mounts, &lane.id)?;
        Ok(prepared)
    }
}

/// A payload thread's result; a panic is an error.
fn joined(handle: std::thread::ScopedJoinHandle<'_, Result<Realized>>) -> Result<Realized> {
    handle.join().unwrap_or_else(|_| Err(anyhow::anyhow!("payload realization thread panicked")))
}

/// The order of a job's payload builds. Payloads are realized in parallel, but one whose
/// derivation takes another's as an input (crane's `workspace-build` takes
/// `workspace-deps`) first waits for that one: realized at once, both would build the
/// input, and the second `nix-store` would wait on Nix's lock, which it polls every 5
/// seconds. Read from the `.drv` files (an input derivation is named in its user's
/// text), so it costs no process; a `.drv` that is not here orders nothing.
struct BuildOrder {
    inputs: Vec<Vec<usize>>,
    done: Vec<(Mutex<bool>, std::sync::Condvar)>,
}

impl BuildOrder {
    fn of(payloads: &[Payload]) -> BuildOrder {
        let inputs = payloads
            .iter()
            .map(|payload| {
                let Ok(text) = std::fs::read_to_string(&payload.drv_path) else { return Vec::new() };
                let named = |other: &Payload| {
                    other.drv_path != payload.drv_path && text.contains(&format!("\"{}\"", other.drv_path))
                };
                payloads.iter().enumerate().filter(|(_, other)| named(other)).map(|(j, _)| j).collect()
            })
            .collect();
        BuildOrder { inputs, done: payloads.iter().map(|_| Default::default()).collect() }
    }

    /// Wait until the payloads whose derivations payload `i` takes as inputs are realized
    /// (or failed: its own realisation then says why).
    fn wait_for_inputs(&self, i: usize, payloads: &[Payload], log: &HostLog) {
        for &j in &self.inputs[i] {
            let (lock, ready) = &self.done[j];
            let mut done = lock.lock().unwrap_or_else(|p| p.into_inner());
            if !*done {
                log.line(&format!(
                    "payload `{}` waits for payload `{}`, whose derivation it builds on",
                    payloads[i].name, payloads[j].name
                ));
            }
            while !*done {
                done = ready.wait(done).unwrap_or_else(|p| p.into_inner());
            }
        }
    }

    fn done(&self, i: usize) {
        let (lock, ready) = &self.done[i];
        *lock.lock().unwrap_or_else(|p| p.into_inner()) = true;
        ready.notify_all();
    }
}

/// The GC-root link of output `output` of the job's payload at `index` (in the lane's
/// order): the name a `nix-store --realise` of every payload's `.drv`, in that order,
/// `--add-root <staged>/.gcroot` gives it: `.gcroot`, `.gcroot-dev`, `.gcroot-2`,
/// `.gcroot-2-dev`, ... ([`crate::tools::nix::root_name`]). Whichever way a payload is
/// rooted (with the others, alone, or its recorded outputs one by one), its roots have
/// these names; [`named_links`] give them the payloads' names.
fn root_link(staged: &Path, index: usize, output: &str) -> PathBuf {
    crate::tools::nix::root_name(&staged.join(ROOT_BASE), index, output)
}

/// The base name of a job's GC-root links, in its `staged-linux-rust/`: hidden, and
/// never a payload's name (those start with a letter or digit).
const ROOT_BASE: &str = ".gcroot";

/// The link named after a payload's output, `<payload>` for `out` and
/// `<payload>-<output>` for the others, in the job's `staged-linux-rust/`: what the
/// runtime mounts (`StagedPayloadMount::local_mount_path`).
fn named_link(staged: &Path, payload: &str, output: &str) -> PathBuf {
    if output == "out" { staged.join(payload) } else { staged.join(format!("{payload}-{output}")) }
}

/// The links the job directory has before its payloads are rooted: each payload
/// output's [`named_link`], pointing (relatively, in the same directory) at its GC root
/// ([`root_link`]), which the rooting then makes. Pairs of (link, target).
pub fn named_links(job_dir: &Path, lane: &Lane) -> Vec<(PathBuf, PathBuf)> {
    let staged = job_dir.join(STAGED_DIR);
    let mut links = Vec::new();
    for (index, payload) in lane.payloads.iter().enumerate() {
        for output in payload.outputs.keys() {
            let root = root_link(&staged, index, output);
            let target = PathBuf::from(root.file_name().unwrap_or_default());
            links.push((named_link(&staged, &payload.name, output), target));
        }
    }
    links
}

impl Preparing<'_> {
    /// Realize one payload on the placement's host, the same way for every host: the
    /// `.drv` (sent there first, when the host is not this machine) with every output
    /// rooted; or, when the `.drv` was garbage-collected here (a rerun of an old run), the
    /// recorded outputs, which stay valid while that run's roots hold them. Then its
    /// manifest.
    fn realize(&self, index: usize, payload: &Payload) -> Result<Realized> {
        let started = Instant::now();
        let outputs: Vec<String> = payload.outputs.values().cloned().collect();
        let claim = Claim::new(&payload.drv_path, self.job_id);
        let realise = || self.realise_roots(index, payload, &claim);
        let (nix, placement, log) = (self.nix, self.placement, self.log);
        let (roots, reproduce) = self.shared.once(
            &claim,
            || placement.all_valid(nix, &outputs, log).unwrap_or(false),
            || self.across.realise(&claim, nix, placement, &outputs, log, &realise),
        )?;
        Ok((self.describe(index, payload, roots, started, claim)?, reproduce))
    }

    /// A payload rooted as `roots` since `started`: its manifest read, its record made.
    fn describe(
        &self,
        index: usize,
        payload: &Payload,
        roots: Vec<PathBuf>,
        started: Instant,
        claim: Claim,
    ) -> Result<PreparedPayload> {
        let (main, mounted) = payload.main_output().context("payload has no outputs")?;
        let link = root_link(&self.staged, index, main);
        let (manifest, extra_mounts) =
            match PayloadManifest::load(self.placement, mounted, &link, &payload.name, self.log)? {
                Some((m, mounts)) => (Some(m), mounts),
                None => (None, Vec::new()),
            };
        let waited = claim.waited.get();
        Ok(PreparedPayload {
            name: payload.name.clone(),
            drv_path: payload.drv_path.clone(),
            outputs: payload.outputs.clone(),
            roots,
            mounted: mounted.to_string(),
            duration_ms: started.elapsed().saturating_sub(waited).as_millis() as u64,
            // Told only of a wait long enough to read: a job that found the other done
            // already did not wait for a build of it (most often there was none).
            built_by: claim.built_by.into_inner().filter(|_| waited >= Duration::from_millis(10)),
            waited_ms: (waited >= Duration::from_millis(10)).then_some(waited.as_millis() as u64),
            manifest,
            extra_mounts,
        })
    }

    /// This job's own realisation of a payload, watched: its build log kept, its progress
    /// told.
    fn realise_roots(&self, index: usize, payload: &Payload, claim: &Claim) -> Result<(Vec<PathBuf>, Vec<String>)> {
        let mut build = PayloadBuild::new(&payload.name, &payload.drv_path, self.job_dir, self.watch);
        let result = self.realise_watched(index, payload, &mut build);
        let lock_wait = build.finish(result.as_ref().err());
        claim.waited.set(claim.waited.get() + lock_wait);
        result
    }

    fn realise_watched(
        &self,
        index: usize,
        payload: &Payload,
        build: &mut PayloadBuild,
    ) -> Result<(Vec<PathBuf>, Vec<String>)> {
        let (nix, placement, log, staged) = (self.nix, self.placement, self.log, &self.staged);
        let mut reproduce = Vec::new();
        if Path::new(&payload.drv_path).exists() {
            if !self.drvs_sent {
                reproduce.extend(placement.send_derivations(nix, &[payload.drv_path.as_str()], log)?);
            }
            let link = root_link(staged, index, "out");
            let (roots, cmd) = placement.realise(nix, &payload.drv_path, &link, log, build)?;
            reproduce.push(cmd);
            return Ok((roots, reproduce));
        }
        log.line(&format!("`{}` is gone; rooting the recorded outputs instead", payload.drv_path));
        let mut roots = Vec::new();
        for (output, path) in &payload.outputs {
            let link = root_link(staged, index, output);
            let (more, cmd) = placement.realise(nix, path, &link, log, build).with_context(|| {
                format!("`{}` was garbage-collected and its output `{path}` is no longer valid", payload.drv_path)
            })?;
            roots.extend(more);
            reproduce.push(cmd);
        }
        Ok((roots, reproduce))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Barrier;

    /// Job `a` realizes a derivation (for 400 ms); job `b` asks for it meanwhile. Returns
    /// how long `b` took, and the job it says built it.
    fn second_asks_while_first_realizes(valid: bool) -> (Duration, Option<String>) {
        let shared = SharedBuilds::default();
        let started = Barrier::new(2);
        std::thread::scope(|scope| {
            scope.spawn(|| {
                let claim = Claim::new("x.drv", "a");
                shared.once(
                    &claim,
                    || false,
                    || {
                        started.wait();
                        std::thread::sleep(Duration::from_millis(400));
                    },
                );
            });
            started.wait();
            let claim = Claim::new("x.drv", "b");
            let asked = Instant::now();
            shared.once(&claim, || valid, || ());
            (asked.elapsed(), claim.built_by.into_inner())
        })
    }

    #[test]
    fn a_job_waits_for_another_jobs_build_unless_the_outputs_are_valid_already() {
        let (took, built_by) = second_asks_while_first_realizes(false);
        assert!(took >= Duration::from_millis(300), "waited {took:?}");
        assert_eq!(built_by.as_deref(), Some("a"));
        let (took, built_by) = second_asks_while_first_realizes(true);
        assert!(took < Duration::from_millis(300), "waited {took:?} for outputs that were valid");
        assert_eq!(built_by, None);
    }
}
