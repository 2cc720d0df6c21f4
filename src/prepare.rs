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
use crate::executor::StagedPayloadMount;
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
                    let realized = realize(nix, payload, staged, log, shared)
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
        prepared.mounts.push(StagedPayloadMount {
            local_mount_path: staged.join(main_root_name(&payload)),
            device_prefix: payload.name.clone(),
        });
        prepared.extra_mounts.extend(payload.extra_mounts.iter().cloned());
        prepared.reproduce.extend(reproduce);
        prepared.payloads.push(payload);
    }
    Ok(prepared)
}

/// The link name of the mounted output: `<payload>` for `out`, `<payload>-<output>` else
/// (the names `nix-store --add-root` gives).
fn main_root_name(payload: &RealizedPayload) -> String {
    let main = payload.outputs.iter().find(|(_, path)| **path == payload.mounted).map(|(name, _)| name.as_str());
    match main {
        Some("out") | None => payload.name.clone(),
        Some(other) => format!("{}-{other}", payload.name),
    }
}

fn realize(
    nix: &Nix,
    payload: &Payload,
    staged: &Path,
    log: &HostLog,
    shared: &SharedBuilds,
) -> Result<(RealizedPayload, Vec<String>)> {
    let started = Instant::now();
    let root = staged.join(&payload.name);
    let mut reproduce = Vec::new();
    let mut roots: Vec<PathBuf> = Vec::new();
    if Path::new(&payload.drv_path).exists() {
        let cmd = nix.realise_cmd(&payload.drv_path, &root);
        reproduce.push(cmd.display());
        roots = shared.once(&payload.drv_path, || nix.realise(&payload.drv_path, &root, Some(log)))?;
    } else {
        // The .drv was garbage-collected (a rerun of an old run): the outputs are still
        // valid while that run's roots hold them, so root them directly.
        log.line(&format!("`{}` is gone; rooting the recorded outputs instead", payload.drv_path));
        for (output, path) in &payload.outputs {
            let link = if output == "out" { root.clone() } else { staged.join(format!("{}-{output}", payload.name)) };
            let cmd = nix.realise_cmd(path, &link);
            reproduce.push(cmd.display());
            roots.extend(nix.realise(path, &link, Some(log)).with_context(|| {
                format!("`{}` was garbage-collected and its output `{path}` is no longer valid", payload.drv_path)
            })?);
        }
    }
    let (_, mounted) = payload.main_output().context("payload has no outputs")?;
    let manifest = PayloadManifest::load(Path::new(mounted), &payload.name)?;
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
