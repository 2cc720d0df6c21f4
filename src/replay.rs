//! A run record read back for `pikaci rerun` is checked before anything is created from
//! it: `run.json` is a file on disk that anyone with write access can edit, and a rerun
//! turns its names into paths (`jobs/<job>/staged-linux-rust/<payload>`, GC-root links,
//! the snapshot bound into the guest). A name with `/` or `..` would put a root-owned link
//! outside the state root.

use anyhow::Result;

use crate::catalog::{MAX_TIMEOUT_SECS, validate_id};
use crate::error;
use crate::state::{RunRecord, StateRoot};
use crate::tools::nix::parse_store_path;

/// Every name and path of `record` that a rerun uses, checked against the rules pikaci
/// wrote it by.
pub fn check_record(record: &RunRecord, run_id: &str, state: &StateRoot) -> Result<()> {
    let bad = |why: String| -> anyhow::Error {
        error::config(format!("run `{run_id}` cannot be replayed: its `run.json` {why}"))
            .hint("the record was edited or damaged; start a new run with `pikaci run`")
            .into()
    };
    if record.run_id != run_id {
        return Err(bad(format!("names another run, `{}`", record.run_id)));
    }
    let dir = &record.snapshot.dir;
    let same = |a: &std::path::Path, b: &std::path::Path| match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    };
    let snapshot_ok = is_plain_name(&record.snapshot.id)
        && dir.file_name().is_some_and(|n| n == record.snapshot.id.as_str())
        && dir.parent().is_some_and(|parent| same(parent, &state.snapshots_dir()));
    if !snapshot_ok {
        return Err(bad(format!(
            "names a snapshot outside the state root's `snapshots/`: `{}`",
            record.snapshot.dir.display()
        )));
    }
    if let Some(host) = &record.remote {
        crate::tools::ssh::parse_host(host)
            .map_err(|why| bad(format!("names a remote host that is not one: {why}")))?;
    }
    for job in &record.plan {
        let lane = &job.lane;
        for (what, name) in [("job id", &job.job_id), ("lane id", &lane.id)] {
            validate_id(name).map_err(|why| bad(format!("has a {what} `{name}` that {why}")))?;
        }
        if lane.timeout_secs == 0 || lane.timeout_secs > MAX_TIMEOUT_SECS {
            return Err(bad(format!("gives lane `{}` a timeout of {}s", lane.id, lane.timeout_secs)));
        }
        for payload in &lane.payloads {
            validate_id(&payload.name)
                .map_err(|why| bad(format!("has a payload name `{}` that {why}", payload.name)))?;
            let store_paths = std::iter::once(&payload.drv_path).chain(payload.outputs.values());
            if let Some(p) = store_paths.into_iter().find(|p| parse_store_path(p).is_none()) {
                return Err(bad(format!("gives payload `{}` a path that is not a store path: `{p}`", payload.name)));
            }
            if let Some(output) = payload.outputs.keys().find(|o| validate_id(o).is_err()) {
                return Err(bad(format!("gives payload `{}` an output named `{output}`", payload.name)));
            }
        }
    }
    Ok(())
}

fn is_plain_name(name: &str) -> bool {
    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}
