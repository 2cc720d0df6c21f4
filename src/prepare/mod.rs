//! Prepare: realize each payload of a job into `jobs/<job>/staged-linux-rust/<payload>` as
//! a registered Nix GC root (every output of a multi-output derivation is rooted), read
//! its manifest, and produce the `StagedPayloadMount`s that the runtime gets.

mod across_hosts;
pub mod manifest;

pub use across_hosts::RunBuilds;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use anyhow::{Context, Result};

use crate::catalog::{Lane, Payload};
use crate::executor::Placement;
use crate::handoff::StagedPayloadMount;
use crate::tools::log::HostLog;
use crate::tools::nix::Nix;
use manifest::{PayloadManifest, ResolvedMount};

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
    pub duration_ms: u64,
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
/// interval is 5 seconds.)
#[derive(Debug, Default)]
pub struct SharedBuilds {
    cells: Mutex<HashMap<String, Arc<OnceLock<()>>>>,
}

impl SharedBuilds {
    fn cell(&self, key: &str) -> Arc<OnceLock<()>> {
        let mut cells = self.cells.lock().unwrap_or_else(|p| p.into_inner());
        cells.entry(key.to_string()).or_default().clone()
    }

    /// Run `realise` for `key`; while another thread runs the first one, wait for it.
    fn once<T>(&self, key: &str, realise: impl Fn() -> T) -> T {
        let cell = self.cell(key);
        let mut first = None;
        cell.get_or_init(|| first = Some(realise()));
        first.unwrap_or_else(realise)
    }
}

/// Realize every payload of `lane`, in parallel. `on_realized` is called as each one is
/// ready. The first failure is returned, naming the payload and the lane.
pub fn prepare(
    nix: &Nix,
    lane: &Lane,
    job_dir: &Path,
    placement: &Placement,
    log: &HostLog,
    (shared, across): (&SharedBuilds, &RunBuilds),
    on_realized: &(dyn Fn(&PreparedPayload) + Sync),
) -> Result<Prepared> {
    let staged = job_dir.join(STAGED_DIR);
    std::fs::create_dir_all(&staged).with_context(|| format!("create `{}`", staged.display()))?;
    let outputs: Vec<&str> = lane.payloads.iter().flat_map(|p| p.outputs.values().map(String::as_str)).collect();
    let (results, early_closure) = std::thread::scope(|scope| {
        // The closure of outputs that are valid already (a payload built before) does not
        // depend on the realisation: asked for at the same time, it leaves the critical
        // path. When an output is not valid yet the query fails, and is asked again below.
        let early = scope.spawn(|| placement.requisites(nix, &outputs, log).ok());
        let handles: Vec<_> = lane
            .payloads
            .iter()
            .map(|payload| {
                let staged = &staged;
                scope.spawn(move || {
                    let realized = realize(nix, payload, staged, placement, log, (shared, across))
                        .with_context(|| format!("realize payload `{}` of lane `{}`", payload.name, lane.id))?;
                    on_realized(&realized.0);
                    Ok(realized)
                })
            })
            .collect();
        let results: Vec<Result<(PreparedPayload, Vec<String>)>> = handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(anyhow::anyhow!("payload realization thread panicked"))))
            .collect();
        (results, early.join().ok().flatten())
    });
    let mut prepared = Prepared::default();
    for result in results {
        let (payload, reproduce) = result?;
        let main = payload.outputs.iter().find(|(_, path)| **path == payload.mounted).map(|(name, _)| name.as_str());
        prepared.mounts.push(StagedPayloadMount {
            local_mount_path: root_link(&staged, &payload.name, main.unwrap_or("out")),
            device_prefix: payload.name.clone(),
        });
        prepared.extra_mounts.extend(payload.extra_mounts.iter().cloned());
        prepared.reproduce.extend(reproduce);
        prepared.payloads.push(payload);
    }
    manifest::check_mounts_apart(&prepared.extra_mounts, &lane.id)?;
    let closure = match early_closure {
        Some(closure) => closure,
        None => {
            log.line("the payloads' outputs were not all valid before their realisation: closure asked again");
            placement
                .requisites(nix, &outputs, log)
                .with_context(|| format!("find the store closure of the payloads on `{}`", placement.host_name()))?
        }
    };
    log.line(&format!("store closure of the payloads: {} paths", closure.len()));
    prepared.store_closure = Some(closure);
    Ok(prepared)
}

/// The GC-root link of one output of a payload: `<payload>` for `out`,
/// `<payload>-<output>` for the others (the names `nix-store --add-root` gives).
fn root_link(staged: &Path, payload: &str, output: &str) -> PathBuf {
    if output == "out" { staged.join(payload) } else { staged.join(format!("{payload}-{output}")) }
}

/// Realize one payload on the placement's host, the same way for every host: the `.drv`
/// (sent there first, when the host is not this machine) with every output rooted; or,
/// when the `.drv` was garbage-collected here (a rerun of an old run), the recorded
/// outputs, which stay valid while that run's roots hold them. Then its manifest.
fn realize(
    nix: &Nix,
    payload: &Payload,
    staged: &Path,
    placement: &Placement,
    log: &HostLog,
    (shared, across): (&SharedBuilds, &RunBuilds),
) -> Result<(PreparedPayload, Vec<String>)> {
    let started = Instant::now();
    let (main, mounted) = payload.main_output().context("payload has no outputs")?;
    let link = root_link(staged, &payload.name, main);
    let outputs: Vec<String> = payload.outputs.values().cloned().collect();
    let realise = || realise_roots(nix, payload, staged, placement, log);
    let (roots, reproduce) = shared
        .once(&payload.drv_path, || across.realise(&payload.drv_path, nix, placement, &outputs, log, &realise))?;
    let (manifest, extra_mounts) = match PayloadManifest::load(placement, mounted, &link, &payload.name, log)? {
        Some((m, mounts)) => (Some(m), mounts),
        None => (None, Vec::new()),
    };
    let realized = PreparedPayload {
        name: payload.name.clone(),
        drv_path: payload.drv_path.clone(),
        outputs: payload.outputs.clone(),
        roots,
        mounted: mounted.to_string(),
        duration_ms: started.elapsed().as_millis() as u64,
        manifest,
        extra_mounts,
    };
    Ok((realized, reproduce))
}

fn realise_roots(
    nix: &Nix,
    payload: &Payload,
    staged: &Path,
    placement: &Placement,
    log: &HostLog,
) -> Result<(Vec<PathBuf>, Vec<String>)> {
    let mut reproduce = Vec::new();
    if Path::new(&payload.drv_path).exists() {
        reproduce.extend(placement.send_derivation(nix, &payload.drv_path, log)?);
        let (roots, cmd) = placement.realise(nix, &payload.drv_path, &root_link(staged, &payload.name, "out"), log)?;
        reproduce.push(cmd);
        return Ok((roots, reproduce));
    }
    log.line(&format!("`{}` is gone; rooting the recorded outputs instead", payload.drv_path));
    let mut roots = Vec::new();
    for (output, path) in &payload.outputs {
        let (more, cmd) =
            placement.realise(nix, path, &root_link(staged, &payload.name, output), log).with_context(|| {
                format!("`{}` was garbage-collected and its output `{path}` is no longer valid", payload.drv_path)
            })?;
        roots.extend(more);
        reproduce.push(cmd);
    }
    Ok((roots, reproduce))
}
