//! Prepare: root every output of a job's payloads as a registered Nix GC root in
//! `jobs/<job>/staged-linux-rust/` (`.gcroot`, `.gcroot-dev`, `.gcroot-2`, ...: see
//! `root_link`; the links named after the payloads, `named_links`, lead there), all with
//! one command (which builds what is missing); read their manifests, and produce the
//! `StagedPayloadMount`s that the runtime gets.

mod builds;
pub mod manifest;
pub mod progress;

pub use builds::RunBuilds;
pub use progress::{BuildOutcome, BuildReport, Progress, Watch};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::catalog::{Lane, Payload};
use crate::executor::Placement;
use crate::handoff::StagedPayloadMount;
use crate::tools::log::HostLog;
use crate::tools::nix::Nix;

use manifest::{PayloadManifest, ResolvedMount};
use progress::{JobBuild, LockWait};

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

/// A job's part in preparing its payloads.
struct Preparing<'a> {
    nix: &'a Nix,
    job_id: &'a str,
    job_dir: &'a Path,
    staged: PathBuf,
    placement: &'a Placement,
    log: &'a HostLog,
    builds: &'a RunBuilds,
    watch: &'a dyn Watch,
}

/// Realize every payload of `lane` on the placement's host, with one command, telling
/// `watch` of their builds and of each one as it is ready. When every output is valid on
/// the host already (the payloads were built before), that command only roots them and
/// asks for their closure; else it is one `nix-store --realise` of all their `.drv`s,
/// which builds what is missing (after waiting for another job of the run that builds
/// the same derivations: [`RunBuilds`]). The first failure is returned, naming the
/// payload and the lane (and, when it was a build, where its log is kept).
pub fn prepare(
    nix: &Nix,
    lane: &Lane,
    job_dir: &Path,
    placement: &Placement,
    log: &HostLog,
    builds: &RunBuilds,
    watch: &dyn Watch,
) -> Result<Prepared> {
    let staged = job_dir.join(STAGED_DIR);
    std::fs::create_dir_all(&staged).with_context(|| format!("create `{}`", staged.display()))?;
    // A job's directory is named after the job (`runs/<run>/jobs/<job>`).
    let job_id = job_dir.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    let job = Preparing { nix, job_id, job_dir, staged, placement, log, builds, watch };
    // Not there when this is a rerun of a run whose derivations were garbage-collected.
    let drvs: Vec<&str> = lane.payloads.iter().map(|p| p.drv_path.as_str()).collect();
    if drvs.is_empty() || !drvs.iter().all(|d| Path::new(d).exists()) {
        return job.root_recorded(lane);
    }
    let sent = placement.send_derivations(nix, &drvs, log).with_context(|| {
        format!("send the derivations of lane `{}`'s payloads to `{}`", lane.id, placement.host_name())
    })?;
    let present = job.present(lane)?;
    if present.iter().all(|p| *p)
        && !builds.busy(job_id, placement, &drvs)
        && let Some(prepared) = job.root_if_valid(lane, &drvs, sent.clone(), None)?
    {
        return Ok(prepared);
    }
    let mut prepared = job.realise_all(lane, &drvs, &present)?;
    prepared.reproduce.splice(0..0, sent);
    Ok(prepared)
}

/// A payload's part of the job's realisation, for its record.
#[derive(Default)]
struct Part {
    /// Its own time in the realisation, without waits.
    own: Duration,
    /// How long it waited for another build of it.
    waited: Duration,
    /// The job of the run that built it, when another one did.
    built_by: Option<String>,
}

impl Preparing<'_> {
    /// Whether each payload's outputs are (likely) valid on the host already, as cheaply
    /// as can be: here, each one's outputs exist (no process); on an SSH host, one
    /// `nix-store --check-validity` of them all says it for all.
    fn present(&self, lane: &Lane) -> Result<Vec<bool>> {
        let outputs = |p: &Payload| p.outputs.values().cloned().collect::<Vec<String>>();
        if self.placement.is_local() {
            return lane.payloads.iter().map(|p| self.placement.all_present(self.nix, &outputs(p), self.log)).collect();
        }
        let all: Vec<String> = lane.payloads.iter().flat_map(outputs).collect();
        let valid = self.placement.all_valid(self.nix, &all, self.log)?;
        Ok(vec![valid; lane.payloads.len()])
    }

    /// When every output of the payloads is valid on the host already, root them all with
    /// one command and realize none. That command fails at once when an output is not
    /// valid and nobody builds it; while another process builds one, Nix makes it wait
    /// for that build's lock (so it is not run while another job of the run builds one).
    /// `sent`: the command that sent the `.drv`s to the host; `claim`: when the job
    /// waited for other jobs' builds of them, who built what.
    fn root_if_valid(
        &self,
        lane: &Lane,
        drvs: &[&str],
        sent: Option<String>,
        claim: Option<&builds::Claim>,
    ) -> Result<Option<Prepared>> {
        let (nix, placement, log) = (self.nix, self.placement, self.log);
        let (started, mut lock) = (Instant::now(), LockWait::default());
        let root = root_link(&self.staged, 0, "out");
        let Some((closure, shown)) = placement.root_valid(nix, drvs, &root, log, &mut lock)? else { return Ok(None) };
        log.line("every payload output was valid already: all rooted with one command, none realized");
        let own = started.elapsed().saturating_sub(lock.total());
        let parts = lane
            .payloads
            .iter()
            .map(|p| {
                let mut part = Part { own, waited: lock.total(), built_by: None };
                if let Some(claim) = claim {
                    part.built_by = claim.built_by.get(&p.drv_path).cloned();
                    part.waited += claim.waited_on(&p.drv_path);
                }
                part
            })
            .collect();
        let reproduce = sent.into_iter().chain([shown]).collect();
        self.rooted(lane, parts, Some(closure), reproduce).map(Some)
    }

    /// Realize every payload with one `nix-store --realise` of all their `.drv`s, once no
    /// other job of the run builds one of them in its way; the outputs another SSH host
    /// of the run built are received from there first. `present`: which payloads'
    /// outputs were there already (those are not claimed).
    fn realise_all(&self, lane: &Lane, drvs: &[&str], present: &[bool]) -> Result<Prepared> {
        let (nix, placement, log) = (self.nix, self.placement, self.log);
        let to_build: Vec<&str> = drvs.iter().zip(present).filter(|(_, p)| !**p).map(|(d, _)| *d).collect();
        let released = |drv: &str, at: &Placement| {
            let outputs = lane.payloads.iter().filter(|p| p.drv_path == drv).flat_map(|p| p.outputs.values());
            at.outputs_released(&outputs.cloned().collect::<Vec<_>>(), log)
        };
        let mut claim = self.builds.claim(self.job_id, placement, (drvs, &to_build), &released, log);
        // Other jobs of the run built all that was missing, here: only rooting is left.
        if claim.nothing_to_build()
            && let Some(prepared) = self.root_if_valid(lane, drvs, None, Some(&claim))?
        {
            return Ok(prepared);
        }
        let mut reproduce = Vec::new();
        reproduce.extend(self.receive(lane, &claim.receive)?);
        let started = Instant::now();
        let tell = |drv: &str| self.builds.built(drv, self.job_id, placement);
        let mut build = JobBuild::new(&lane.payloads, self.job_dir, self.watch).telling(&tell);
        let root = root_link(&self.staged, 0, "out");
        let realised = placement.realise(nix, drvs, &root, log, &mut build);
        let failed = build.failed();
        let finished = build.finish(realised.as_ref().err());
        let ended = Instant::now();
        claim.succeeded = realised.is_ok();
        let shown = realised.with_context(|| match failed {
            Some(i) => format!("realize payload `{}` of lane `{}`", lane.payloads[i].name, lane.id),
            None => format!("realize the payloads of lane `{}`", lane.id),
        })?;
        reproduce.push(shown);
        let parts = lane
            .payloads
            .iter()
            .zip(finished)
            .map(|(payload, done)| {
                // A payload the realisation built nothing for was there as it started.
                let until = if done.worked { done.ready.unwrap_or(ended) } else { started };
                Part {
                    own: until.saturating_duration_since(started).saturating_sub(done.lock_wait),
                    waited: done.lock_wait + claim.waited_on(&payload.drv_path),
                    built_by: claim.built_by.get(&payload.drv_path).cloned(),
                }
            })
            .collect();
        drop(claim);
        self.rooted(lane, parts, None, reproduce)
    }

    /// Receive, from the SSH hosts of the run that built them, the outputs of the
    /// derivations in `from` (host, `.drv`). A copy that fails is logged: the realisation
    /// then builds them here. Returns the copy commands.
    fn receive(&self, lane: &Lane, from: &[(Placement, String)]) -> Result<Vec<String>> {
        let mut sources: Vec<&Placement> = from.iter().map(|(p, _)| p).collect();
        sources.dedup();
        let mut commands = Vec::new();
        for source in sources {
            let outputs: Vec<String> = lane
                .payloads
                .iter()
                .filter(|p| from.iter().any(|(s, d)| s == source && *d == p.drv_path))
                .flat_map(|p| p.outputs.values().cloned())
                .collect();
            self.log.line(&format!(
                "payload outputs were built on `{}` in this run: received from there",
                source.host_name()
            ));
            match self.placement.receive_from(self.nix, source, &outputs, self.log) {
                Ok(cmd) => {
                    commands.extend(cmd);
                    // Valid here now: a job waiting on this host for them may go on.
                    for (_, drv) in from.iter().filter(|(s, _)| s == source) {
                        self.builds.built(drv, self.job_id, self.placement);
                    }
                }
                Err(e) if crate::tools::command::is_interrupted(&e) => return Err(e),
                Err(e) => self.log.line(&format!("receiving them failed, building here instead: {e:#}")),
            }
        }
        Ok(commands)
    }

    /// The `.drv`s are gone (a rerun of a run whose derivations were garbage-collected):
    /// root the recorded outputs, which stay valid while that run's roots hold them.
    fn root_recorded(&self, lane: &Lane) -> Result<Prepared> {
        let (nix, placement, log, staged) = (self.nix, self.placement, self.log, &self.staged);
        log.line("the payloads' derivations are not all here: their recorded outputs are rooted instead");
        let mut build = JobBuild::new(&lane.payloads, self.job_dir, self.watch);
        let (mut reproduce, mut parts) = (Vec::new(), Vec::new());
        let mut result = Ok(());
        for (index, payload) in lane.payloads.iter().enumerate() {
            let started = Instant::now();
            for (output, path) in &payload.outputs {
                let link = root_link(staged, index, output);
                match placement.realise(nix, &[path.as_str()], &link, log, &mut build) {
                    Ok(cmd) => reproduce.push(cmd),
                    Err(e) => {
                        result = Err(e).with_context(|| {
                            format!(
                                "realize payload `{}` of lane `{}`: `{}` was garbage-collected and its output `{path}` is no longer valid",
                                payload.name, lane.id, payload.drv_path
                            )
                        });
                        break;
                    }
                }
            }
            if result.is_err() {
                break;
            }
            parts.push(Part { own: started.elapsed(), ..Part::default() });
        }
        build.finish(result.as_ref().err());
        result?;
        self.rooted(lane, parts, None, reproduce)
    }

    /// Every payload is rooted: read each one's manifest, in parallel, and (unless
    /// `closure` is known already) ask for the store closure of their outputs meanwhile.
    fn rooted(
        &self,
        lane: &Lane,
        parts: Vec<Part>,
        closure: Option<Vec<PathBuf>>,
        reproduce: Vec<String>,
    ) -> Result<Prepared> {
        let (placement, nix, log) = (self.placement, self.nix, self.log);
        let outputs: Vec<&str> = lane.payloads.iter().flat_map(|p| p.outputs.values().map(String::as_str)).collect();
        let (results, asked) = std::thread::scope(|scope| {
            let asked = closure.is_none().then(|| scope.spawn(|| placement.requisites(nix, &outputs, log)));
            let handles: Vec<_> = lane
                .payloads
                .iter()
                .zip(parts)
                .enumerate()
                .map(|(i, (payload, part))| {
                    scope.spawn(move || {
                        let described = self
                            .describe(i, payload, part)
                            .with_context(|| format!("realize payload `{}` of lane `{}`", payload.name, lane.id))?;
                        self.watch.realized(&described);
                        Ok(described)
                    })
                })
                .collect();
            let results: Vec<Result<PreparedPayload>> = handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|_| Err(anyhow::anyhow!("payload manifest thread panicked"))))
                .collect();
            (results, asked.map(|h| h.join().unwrap_or_else(|_| Err(anyhow::anyhow!("closure query panicked")))))
        });
        let mut prepared = self.collect(lane, results)?;
        prepared.reproduce = reproduce;
        let closure = match (closure, asked) {
            (Some(closure), _) => closure,
            (None, Some(asked)) => asked
                .with_context(|| format!("find the store closure of the payloads on `{}`", placement.host_name()))?,
            (None, None) => Vec::new(),
        };
        log.line(&format!("store closure of the payloads: {} paths", closure.len()));
        prepared.store_closure = Some(closure);
        Ok(prepared)
    }

    /// The payloads, in the lane's order, with their mounts: the first failure, if any.
    fn collect(&self, lane: &Lane, results: Vec<Result<PreparedPayload>>) -> Result<Prepared> {
        let mut prepared = Prepared::default();
        for result in results {
            let payload = result?;
            let main =
                payload.outputs.iter().find(|(_, path)| **path == payload.mounted).map(|(name, _)| name.as_str());
            prepared.mounts.push(StagedPayloadMount {
                local_mount_path: named_link(&self.staged, &payload.name, main.unwrap_or("out")),
                device_prefix: payload.name.clone(),
            });
            prepared.extra_mounts.extend(payload.extra_mounts.iter().cloned());
            prepared.payloads.push(payload);
        }
        manifest::check_mounts_apart(&prepared.extra_mounts, &lane.id)?;
        Ok(prepared)
    }

    /// A rooted payload: its manifest read, its record made.
    fn describe(&self, index: usize, payload: &Payload, part: Part) -> Result<PreparedPayload> {
        let started = Instant::now();
        // `out` first, as a realisation prints them.
        let mut names: Vec<&String> = payload.outputs.keys().collect();
        names.sort_by_key(|o| *o != "out");
        let roots = names.iter().map(|o| self.placement.host_path(&root_link(&self.staged, index, o)));
        let roots = roots.collect::<Result<Vec<_>>>()?;
        let (main, mounted) = payload.main_output().context("payload has no outputs")?;
        let link = root_link(&self.staged, index, main);
        let (manifest, extra_mounts) =
            match PayloadManifest::load(self.placement, mounted, &link, &payload.name, self.log)? {
                Some((m, mounts)) => (Some(m), mounts),
                None => (None, Vec::new()),
            };
        // Told only of a wait long enough to read: a job that found the other done
        // already did not wait for a build of it (most often there was none).
        let waited = part.waited >= Duration::from_millis(10);
        Ok(PreparedPayload {
            name: payload.name.clone(),
            drv_path: payload.drv_path.clone(),
            outputs: payload.outputs.clone(),
            roots,
            mounted: mounted.to_string(),
            duration_ms: (part.own + started.elapsed()).as_millis() as u64,
            built_by: part.built_by.filter(|job| waited && job != self.job_id),
            waited_ms: waited.then_some(part.waited.as_millis() as u64),
            manifest,
            extra_mounts,
        })
    }
}

/// The GC-root link of output `output` of the job's payload at `index` (in the lane's
/// order): the name a `nix-store --realise` of every payload's `.drv`, in that order,
/// `--add-root <staged>/.gcroot` gives it: `.gcroot`, `.gcroot-dev`, `.gcroot-2`,
/// `.gcroot-2-dev`, ... ([`crate::tools::nix::root_name`]). Whichever way a payload is
/// rooted (with the others, or its recorded outputs one by one), its roots have these
/// names; [`named_links`] give them the payloads' names.
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
