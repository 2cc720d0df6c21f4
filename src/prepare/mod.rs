//! Prepare: realize each payload of a job into `jobs/<job>/staged-linux-rust/<payload>` as
//! a registered Nix GC root (every output of a multi-output derivation is rooted), read
//! its manifest, and produce the `StagedPayloadMount`s that the runtime gets.

pub mod manifest;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex};
use std::time::Instant;

use anyhow::{Context, Result};

use crate::catalog::{Lane, Payload};
use crate::executor::Placement;
use crate::executor::placement::RootRequest;
use crate::handoff::StagedPayloadMount;
use crate::tools::command::CommandFailed;
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
}

/// Lets the jobs of a run share builds: the first job to need a derivation builds it,
/// the others wait for that and then only add their own roots. (Two `nix-store --realise`
/// of one derivation at once would make the second wait on Nix's lock, whose poll
/// interval is 5 seconds.)
#[derive(Debug, Default)]
pub struct SharedBuilds {
    /// Path -> whether its first realization has finished (either way).
    started: Mutex<HashMap<String, bool>>,
    finished: Condvar,
}

impl SharedBuilds {
    /// Realise `requests`: in one call those no other job is realising now, then, once
    /// the others' calls have finished, the rest in a second call (now only rooting).
    fn realise(
        &self,
        requests: Vec<RootRequest>,
        realise: impl Fn(&[RootRequest]) -> Result<Vec<String>>,
    ) -> Result<Vec<String>> {
        let (mut mine, mut theirs): (Vec<RootRequest>, Vec<RootRequest>) = (Vec::new(), Vec::new());
        {
            let mut started = self.started.lock().unwrap_or_else(|p| p.into_inner());
            for request in requests {
                match started.get(&request.path) {
                    // Another job is realising it now.
                    Some(false) => theirs.push(request),
                    // Realised before: only the roots to add.
                    Some(true) => mine.push(request),
                    None => {
                        started.insert(request.path.clone(), false);
                        mine.push(request);
                    }
                }
            }
        }
        let result = realise(&mine);
        {
            let mut started = self.started.lock().unwrap_or_else(|p| p.into_inner());
            for r in &mine {
                started.insert(r.path.clone(), true);
            }
        }
        self.finished.notify_all();
        let mut ran = result?;
        if !theirs.is_empty() {
            let mut started = self.started.lock().unwrap_or_else(|p| p.into_inner());
            while theirs.iter().any(|r| !started[&r.path]) {
                started = self.finished.wait(started).unwrap_or_else(|p| p.into_inner());
            }
            drop(started);
            ran.extend(realise(&theirs)?);
        }
        Ok(ran)
    }
}

/// Realize every payload of `lane` with one `nix-store --realise` (none when the roots are
/// in place already), then read their manifests in parallel. `on_realized` is called as
/// each one is ready. A failure names the payload and the lane.
pub fn prepare(
    nix: &Nix,
    lane: &Lane,
    job_dir: &Path,
    placement: &Placement,
    log: &HostLog,
    shared: &SharedBuilds,
    on_realized: &(dyn Fn(&PreparedPayload) + Sync),
) -> Result<Prepared> {
    let started = Instant::now();
    let staged = job_dir.join(STAGED_DIR);
    std::fs::create_dir_all(&staged).with_context(|| format!("create `{}`", staged.display()))?;
    let mut prepared = Prepared::default();
    let mut requests = Vec::new();
    for payload in &lane.payloads {
        for request in root_requests(payload, &staged, log) {
            if request.path == payload.drv_path {
                let sent = placement.send_derivation(nix, &payload.drv_path, log);
                prepared.reproduce.extend(sent.with_context(|| failed_payload(payload, lane))?);
            }
            prepared.reproduce.push(placement.realise_line(nix, &request)?);
            requests.push(request);
        }
    }
    let pending: Vec<RootRequest> = requests.iter().filter(|r| !placement.roots_in_place(r)).cloned().collect();
    shared
        .realise(pending, |batch| placement.realise_rooted(nix, batch, log))
        .map_err(|err| name_failed_payloads(err, lane))?;
    let results: Vec<Result<PreparedPayload>> = std::thread::scope(|scope| {
        let handles: Vec<_> = lane
            .payloads
            .iter()
            .map(|payload| {
                let staged = &staged;
                scope.spawn(move || {
                    let realized = load_payload(payload, staged, placement, log, started)
                        .with_context(|| failed_payload(payload, lane))?;
                    on_realized(&realized);
                    Ok(realized)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(anyhow::anyhow!("payload realization thread panicked"))))
            .collect()
    });
    for result in results {
        let payload = result?;
        let main = payload.outputs.iter().find(|(_, path)| **path == payload.mounted).map(|(name, _)| name.as_str());
        prepared.mounts.push(StagedPayloadMount {
            local_mount_path: root_link(&staged, &payload.name, main.unwrap_or("out")),
            device_prefix: payload.name.clone(),
        });
        prepared.extra_mounts.extend(payload.extra_mounts.iter().cloned());
        prepared.payloads.push(payload);
    }
    Ok(prepared)
}

fn failed_payload(payload: &Payload, lane: &Lane) -> String {
    format!("realize payload `{}` of lane `{}`", payload.name, lane.id)
}

/// A failed realization of several payloads at once names the ones whose builder Nix
/// says failed (`Cannot build '…'`, `builder for '…'`), else the ones its message
/// mentions, else all of them.
fn name_failed_payloads(err: anyhow::Error, lane: &Lane) -> anyhow::Error {
    let stderr: String =
        err.chain().filter_map(|e| e.downcast_ref::<CommandFailed>()).map(|f| f.stderr.clone()).collect();
    let builders: String =
        stderr.lines().filter(|l| l.contains("Cannot build '") || l.contains("builder for '")).collect();
    let mentioned_in = |text: &str| -> Vec<&Payload> {
        let mentions =
            |p: &&Payload| text.contains(&p.drv_path) || p.outputs.values().any(|o| text.contains(o.as_str()));
        lane.payloads.iter().filter(mentions).collect()
    };
    let mut named = mentioned_in(&builders);
    if named.is_empty() {
        named = mentioned_in(&stderr);
    }
    if named.is_empty() {
        named = lane.payloads.iter().collect();
    }
    let names: Vec<String> = named.iter().map(|p| format!("`{}`", p.name)).collect();
    let s = if names.len() == 1 { "" } else { "s" };
    err.context(format!("realize payload{s} {} of lane `{}`", names.join(", "), lane.id))
}

/// The GC-root link of one output of a payload: `<payload>` for `out`,
/// `<payload>-<output>` for the others (the names `nix-store --add-root` gives).
fn root_link(staged: &Path, payload: &str, output: &str) -> PathBuf {
    if output == "out" { staged.join(payload) } else { staged.join(format!("{payload}-{output}")) }
}

/// What realizes one payload, the same way for every host: its `.drv` with every output
/// rooted; or, when the `.drv` was garbage-collected here (a rerun of an old run), its
/// recorded outputs, which stay valid while that run's roots hold them.
fn root_requests(payload: &Payload, staged: &Path, log: &HostLog) -> Vec<RootRequest> {
    let link = |output: &str| root_link(staged, &payload.name, output);
    if Path::new(&payload.drv_path).exists() {
        // `links[0]` is the name `--add-root` takes: the `out` link.
        let mut links: Vec<_> = payload.outputs.iter().map(|(o, path)| (path.clone(), link(o))).collect();
        links.sort_by_key(|(_, l)| *l != link("out"));
        return vec![RootRequest { path: payload.drv_path.clone(), links }];
    }
    log.line(&format!("`{}` is gone; rooting the recorded outputs instead", payload.drv_path));
    let request = |(output, path): (&String, &String)| RootRequest {
        path: path.clone(),
        links: vec![(path.clone(), link(output))],
    };
    payload.outputs.iter().map(request).collect()
}

/// A payload realized and rooted: its manifest, read on the host.
fn load_payload(
    payload: &Payload,
    staged: &Path,
    placement: &Placement,
    log: &HostLog,
    started: Instant,
) -> Result<PreparedPayload> {
    let (main, mounted) = payload.main_output().context("payload has no outputs")?;
    let link = root_link(staged, &payload.name, main);
    let (manifest, extra_mounts) = match PayloadManifest::load(placement, mounted, &link, &payload.name, log)? {
        Some((m, mounts)) => (Some(m), mounts),
        None => (None, Vec::new()),
    };
    Ok(PreparedPayload {
        name: payload.name.clone(),
        drv_path: payload.drv_path.clone(),
        outputs: payload.outputs.clone(),
        roots: payload
            .outputs
            .keys()
            .map(|o| placement.host_path(&root_link(staged, &payload.name, o)))
            .collect::<Result<_>>()?,
        mounted: mounted.to_string(),
        duration_ms: started.elapsed().as_millis() as u64,
        manifest,
        extra_mounts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_two_jobs_share_is_realised_by_one_and_only_rooted_by_the_other_after_it() {
        let shared = SharedBuilds::default();
        let calls = Mutex::new(Vec::<Vec<String>>::new());
        let request = |p: &str| RootRequest { path: p.to_string(), links: Vec::new() };
        let barrier = std::sync::Barrier::new(2);
        std::thread::scope(|scope| {
            for own in ["a", "b"] {
                let (shared, calls, barrier) = (&shared, &calls, &barrier);
                scope.spawn(move || {
                    barrier.wait();
                    let realise = |batch: &[RootRequest]| {
                        calls.lock().unwrap().push(batch.iter().map(|r| r.path.clone()).collect());
                        std::thread::sleep(std::time::Duration::from_millis(100));
                        Ok(Vec::new())
                    };
                    shared.realise(vec![request("common"), request(own)], realise).unwrap();
                });
            }
        });
        let calls = calls.into_inner().unwrap();
        // One job's first call has both; the other's has only its own, and then, once
        // that first call is over, a call for the shared path alone.
        assert_eq!(calls.len(), 3, "{calls:?}");
        let with_common: Vec<usize> = (0..3).filter(|i| calls[*i].contains(&"common".to_string())).collect();
        assert_eq!(with_common.len(), 2, "{calls:?}");
        assert_eq!(calls[with_common[0]].len(), 2, "{calls:?}");
        assert_eq!(calls[with_common[1]], ["common"], "{calls:?}");
        assert_eq!(with_common[1], 2, "the second call for it comes last: {calls:?}");
    }
}
