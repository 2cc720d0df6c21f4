//! Reaping: the instances left behind by runs that died (`pikaci gc`, and `pikaci doctor`'s
//! count of them). Quiet when Incus is not installed: it is optional when bubblewrap works.

use std::path::Path;

use anyhow::{Result, bail};

use super::incus_failure;
use super::naming::{TAG_RUN, TAG_STATE_ROOT};
use crate::state::StateRoot;
use crate::tools::incus::{Incus, InstanceInfo, LIFECYCLE_TIMEOUT, Wait};

/// Delete the instances that runs of this state root created and that no live run
/// owns any more (the run's process died, or the run was removed). Returns their
/// names, or `None` when Incus is absent or its daemon does not answer (nothing could
/// be looked for; the caller knows whether that matters). Instances of other state
/// roots, of live runs, and instances pikaci did not tag are never touched. The warm
/// pool of the state root on that daemon ([`super::pool`]) is emptied too: its
/// instances are among the names returned.
pub fn reap_orphans(state: &StateRoot) -> Result<Option<Vec<String>>> {
    let Ok(incus) = Incus::local() else { return Ok(None) };
    reap_orphans_with(&incus, state)
}

/// [`reap_orphans`] on the daemon `incus` talks to (this machine's, or a remote host's
/// through SSH).
pub fn reap_orphans_with(incus: &Incus, state: &StateRoot) -> Result<Option<Vec<String>>> {
    if incus.server().is_err() {
        return Ok(None);
    }
    let instances = incus.instances(None)?;
    let mut doomed: Vec<String> = orphans_among(&instances, state).into_iter().map(|i| i.name).collect();
    // And the warm pool of the state root on that daemon.
    doomed.extend(super::pool::leftovers(incus, &instances, &state.root, &canonical_tag(&state.root)));
    let mut reaped = Vec::new();
    let mut failed = Vec::new();
    for name in doomed {
        match incus.run(&incus.delete_cmd(&name), None, Wait::ToCompletion(LIFECYCLE_TIMEOUT)) {
            Ok(_) => reaped.push(name),
            Err(e) if crate::tools::incus::is_not_found(&e) => reaped.push(name),
            Err(e) => failed.push(format!("`{name}`: {}", incus_failure(&e))),
        }
    }
    if !failed.is_empty() {
        let removed = if reaped.is_empty() { String::new() } else { format!(" (removed {})", reaped.join(", ")) };
        bail!("could not delete {} leftover instance(s){removed}: {}", failed.len(), failed.join("; "));
    }
    Ok(Some(reaped))
}

/// Instances tagged with this state root whose run is not live.
pub fn orphans(incus: &Incus, state: &StateRoot) -> Result<Vec<InstanceInfo>> {
    Ok(orphans_among(&incus.instances(None)?, state))
}

/// [`orphans`] among instances listed already.
fn orphans_among(instances: &[InstanceInfo], state: &StateRoot) -> Vec<InstanceInfo> {
    let root = canonical_tag(&state.root);
    instances
        .iter()
        .filter(|i| i.config.get(TAG_STATE_ROOT).is_some_and(|r| *r == root))
        .filter(|i| match i.config.get(TAG_RUN) {
            Some(run) if is_plain_name(run) => !(state.run_dir(run).is_dir() && state.run_is_live(run)),
            // A run tag that is not a run id was not written by pikaci: leave it alone.
            _ => false,
        })
        .cloned()
        .collect()
}

/// The state root as the instances' tag names it.
pub(super) fn canonical_tag(root: &Path) -> String {
    root.canonicalize().unwrap_or_else(|_| root.to_path_buf()).to_string_lossy().into_owned()
}

/// A run id that is a single path component (a tag must not steer `run_is_live`, which
/// creates a lock file, outside the state root).
fn is_plain_name(run: &str) -> bool {
    !run.is_empty()
        && !run.starts_with('.')
        && run.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_tags_must_be_plain_names() {
        assert!(is_plain_name("20261121-163300-123-9f3a"));
        for bad in ["", "..", "../x", "a/b", ".hidden", "a b"] {
            assert!(!is_plain_name(bad), "{bad:?}");
        }
    }
}
