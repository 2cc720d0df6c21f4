//! Prepare: realize each payload of a job into `jobs/<job>/staged-linux-rust/<payload>` as
//! a registered Nix GC root (every output of a multi-output derivation is rooted), read
//! its manifest, and produce the `StagedPayloadMount`s that the runtime gets.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use anyhow::{Context, Result};

use crate::catalog::Lane;
use crate::catalog::Payload;
use crate::catalog::manifest::{PayloadManifest, ResolvedMount};
use crate::executor::{Placement, StagedPayloadMount};
use crate::state::record::RealizedPayload;
use crate::tools::command::HostLog;
use crate::tools::nix::Nix;

/// The directory, inside a job directory, that holds the payload roots.
pub const STAGED_DIR: &str = "staged-linux-rust";

#[derive(Debug, Default)]
pub struct Prepared {
    pub payloads: Vec<RealizedPayload>,
    pub mounts: Vec<StagedPayloadMount>,
    pub extra_mounts: Vec<ResolvedMount>,
    /// The realization commands, for the job record's `reproduce`.
    pub reproduce: Vec<String>,
    /// The store closure of every payload output, when the job runs on this machine:
    /// all of `/nix/store` the guest gets to see.
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
    shared: &SharedBuilds,
    on_realized: &(dyn Fn(&RealizedPayload) + Sync),
) -> Result<Prepared> {
    let staged = job_dir.join(STAGED_DIR);
    std::fs::create_dir_all(&staged).with_context(|| format!("create `{}`", staged.display()))?;
    let results: Vec<Result<(RealizedPayload, Vec<String>)>> = std::thread::scope(|scope| {
        let handles: Vec<_> = lane
            .payloads
            .iter()
            .map(|payload| {
                let staged = &staged;
                scope.spawn(move || {
                    let realized = realize(nix, payload, staged, placement, log, shared)
                        .with_context(|| format!("realize payload `{}` of lane `{}`", payload.name, lane.id))?;
                    on_realized(&realized.0);
                    Ok(realized)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(anyhow::anyhow!("payload realization thread panicked"))))
            .collect()
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
    crate::catalog::manifest::check_mounts_apart(&prepared.extra_mounts, &lane.id)?;
    if placement.is_local() {
        let outputs: Vec<&str> =
            prepared.payloads.iter().flat_map(|p| p.outputs.values().map(String::as_str)).collect();
        let closure = nix.requisites(&outputs, Some(log)).context("find the store closure of the payloads")?;
        log.line(&format!("store closure of the payloads: {} paths", closure.len()));
        prepared.store_closure = Some(closure);
    }
    Ok(prepared)
}

/// The GC-root link of one output of a payload: `<payload>` for `out`,
/// `<payload>-<output>` for the others (the names `nix-store --add-root` gives).
fn root_link(staged: &Path, payload: &str, output: &str) -> PathBuf {
    if output == "out" { staged.join(payload) } else { staged.join(format!("{payload}-{output}")) }
}

fn realize(
    nix: &Nix,
    payload: &Payload,
    staged: &Path,
    placement: &Placement,
    log: &HostLog,
    shared: &SharedBuilds,
) -> Result<(RealizedPayload, Vec<String>)> {
    let started = Instant::now();
    let root = staged.join(&payload.name);
    let (main, mounted) = payload.main_output().context("payload has no outputs")?;
    let link = root_link(staged, &payload.name, main);
    let (roots, reproduce, manifest) = match placement {
        Placement::Local => {
            let (roots, reproduce) = shared.once(&payload.drv_path, || realize_here(nix, payload, staged, log))?;
            (roots, reproduce, PayloadManifest::load(Path::new(mounted), &link, &payload.name)?)
        }
        Placement::Remote(remote) => {
            let (roots, reproduce) = shared.once(&payload.drv_path, || remote.realise(nix, payload, &root, log))?;
            (roots, reproduce, remote.load_manifest(mounted, &link, &payload.name, log)?)
        }
    };
    let (manifest, extra_mounts) = match manifest {
        Some((m, mounts)) => (Some(m), mounts),
        None => (None, Vec::new()),
    };
    let realized = RealizedPayload {
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

/// Realize on this machine: the `.drv` with every output rooted, or, when the `.drv` was
/// garbage-collected (a rerun of an old run), the recorded outputs, which stay valid while
/// that run's roots hold them.
fn realize_here(nix: &Nix, payload: &Payload, staged: &Path, log: &HostLog) -> Result<(Vec<PathBuf>, Vec<String>)> {
    if Path::new(&payload.drv_path).exists() {
        let root = root_link(staged, &payload.name, "out");
        let cmd = nix.realise_cmd(&payload.drv_path, &root);
        return Ok((nix.realise(&payload.drv_path, &root, Some(log))?, vec![cmd.display()]));
    }
    log.line(&format!("`{}` is gone; rooting the recorded outputs instead", payload.drv_path));
    let (mut roots, mut reproduce) = (Vec::new(), Vec::new());
    for (output, path) in &payload.outputs {
        let link = root_link(staged, &payload.name, output);
        reproduce.push(nix.realise_cmd(path, &link).display());
        roots.extend(nix.realise(path, &link, Some(log)).with_context(|| {
            format!("`{}` was garbage-collected and its output `{path}` is no longer valid", payload.drv_path)
        })?);
    }
    Ok((roots, reproduce))
}
