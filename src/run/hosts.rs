//! The hosts of a run and their slots. Each host has its own placement, its own runtime
//! (an Incus runtime connects per host), its slots, its builds shared between its jobs
//! and its copy of the snapshot. A job takes a slot on the host with the most free slots;
//! `--jobs` caps the run as a whole. A host that fails is taken out of the run: the jobs
//! still queued go to the others.
//!
//! An SSH host whose Incus is a cluster member stands for the whole cluster: each online
//! member becomes a host of the run, reached over SSH at its member name (or the address
//! the hosts file maps it to), and its instances are created on it (`incus init --target`),
//! where its snapshot and payloads are.

use std::sync::{Condvar, Mutex, OnceLock};

use anyhow::Result;

use super::hosts_file::HostsFile;
use super::setup::{Choices, RuntimeSlot};
use crate::error;
use crate::executor::runtime::incus::{IncusRuntime, PoolSettings};
use crate::executor::{Placement, RuntimeChoice, placement, select_runtime};
use crate::plan::PlannedJob;
use crate::tools::incus::Incus;

/// One host of a run.
pub struct Host {
    /// As recorded in each job's `host`: `localhost`, or the SSH destination.
    pub name: String,
    pub placement: Placement,
    pub runtime: RuntimeSlot,
    pub slots: usize,
    /// On a remote host, the first job sends the snapshot; the others wait for it.
    pub snapshot_sent: OnceLock<Result<(), String>>,
}

impl Host {
    fn new(name: &str, placement: Placement, runtime: RuntimeSlot, slots: usize) -> Host {
        Host { name: name.to_string(), placement, runtime, slots: slots.max(1), snapshot_sent: OnceLock::new() }
    }
}

/// The hosts for a run: this machine, or each `--remote` (a cluster expanded to its
/// members).
pub fn hosts_for(plan: &[PlannedJob], choices: &Choices, file: &HostsFile) -> Result<Vec<Host>> {
    let needed = !plan.iter().all(|j| j.skip_reason.is_some());
    let remote_root = placement::remote_state_root();
    let names: Vec<&str> = choices.remotes.iter().map(String::as_str).collect();
    let local = || -> Result<Host> {
        let runtime = runtime_for(needed, choices, &Placement::Local, None)?;
        Ok(Host::new("localhost", Placement::Local, runtime, choices.parallelism))
    };
    if names.is_empty() {
        return Ok(vec![local()?]);
    }
    let mut hosts = Vec::new();
    for name in names {
        let declared = file.host(name);
        if declared.is_none() && placement::ssh_host_is_local(Some(name)) {
            hosts.push(local()?);
            continue;
        }
        let ssh = declared.map(|d| d.ssh.clone()).unwrap_or_else(|| name.to_string());
        let slots = declared.and_then(|d| d.slots).unwrap_or(choices.parallelism);
        let placement = Placement::new(Some(&ssh), &choices.state.root, &remote_root);
        let clustered = needed && choices.runtime != RuntimeChoice::Bwrap && !placement.is_local();
        let members = if clustered { cluster_members(&ssh) } else { vec![] };
        if members.is_empty() {
            let runtime = runtime_for(needed, choices, &placement, None)?;
            let name = if placement.is_local() { "localhost" } else { ssh.as_str() };
            hosts.push(Host::new(name, placement, runtime, slots));
            continue;
        }
        for member in members {
            let address = declared.and_then(|d| d.members.get(&member).cloned()).unwrap_or_else(|| member.clone());
            let placement = Placement::new(Some(&address), &choices.state.root, &remote_root);
            let runtime = runtime_for(needed, choices, &placement, Some(&member))?;
            hosts.push(Host::new(&address, placement, runtime, slots));
        }
    }
    // A rerun names every member of a cluster, and each stands for them all.
    let mut seen = std::collections::BTreeSet::new();
    hosts.retain(|h| seen.insert(h.name.clone()));
    Ok(hosts)
}

/// The online members of the cluster `ssh`'s Incus belongs to; none when it is not
/// clustered or does not answer (the runtime's own connection then says why).
fn cluster_members(ssh: &str) -> Vec<String> {
    let Ok(incus) = Incus::locate(Some(ssh)) else { return Vec::new() };
    match incus.cluster_members() {
        Ok(members) => {
            members.into_iter().filter(|m| m.status.eq_ignore_ascii_case("online")).map(|m| m.server_name).collect()
        }
        Err(_) => Vec::new(),
    }
}

/// The runtime of one host. A plan whose jobs are all skipped needs none. A runtime that
/// is not available there still gives a recorded run; asking for something impossible
/// (bwrap on a remote host) is a usage error.
fn runtime_for(needed: bool, choices: &Choices, placement: &Placement, member: Option<&str>) -> Result<RuntimeSlot> {
    if !needed {
        return Ok(RuntimeSlot::NotNeeded);
    }
    let image = choices.image.as_deref();
    let pool = PoolSettings::from_env(choices.parallelism)?;
    let connected = match member {
        Some(member) => IncusRuntime::connect_member(placement, Some(member), image, &choices.state.root)
            .map(|r| Box::new(r) as Box<dyn crate::executor::Runtime>),
        None => select_runtime(choices.runtime, placement, image, &choices.state.root, pool),
    };
    match connected {
        Ok(runtime) => Ok(RuntimeSlot::Ready(runtime)),
        Err(e) if error::kind_of(&e) == error::ErrorKind::Infrastructure => Ok(RuntimeSlot::Unavailable {
            asked: choices.runtime,
            why: error::render(&e).trim_start_matches("error: ").to_string(),
        }),
        Err(e) => Err(e),
    }
}

/// The free slots of each host, and the hosts taken out of the run.
pub struct Slots {
    state: Mutex<SlotState>,
    freed: Condvar,
}

struct SlotState {
    free: Vec<usize>,
    /// Why each host was taken out, if it was.
    out: Vec<Option<String>>,
}

impl Slots {
    /// A host whose runtime could not be had is out from the start, unless every host is
    /// (then each job is recorded with its host's reason).
    pub fn new(hosts: &[Host]) -> Slots {
        let unavailable = |h: &Host| match &h.runtime {
            RuntimeSlot::Unavailable { why, .. } => Some(why.clone()),
            _ => None,
        };
        let mut out: Vec<Option<String>> = hosts.iter().map(unavailable).collect();
        if out.iter().all(Option::is_some) {
            out = vec![None; hosts.len()];
        }
        Slots {
            state: Mutex::new(SlotState { free: hosts.iter().map(|h| h.slots).collect(), out }),
            freed: Condvar::new(),
        }
    }

    /// How many jobs can run at once on the hosts that are in.
    pub fn total(&self) -> usize {
        let state = self.lock();
        state.free.iter().zip(&state.out).filter(|(_, out)| out.is_none()).map(|(f, _)| f).sum()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SlotState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A slot on the host that is in and has the most free slots (the first on a tie);
    /// waits while every one is busy. `Err` with the reasons when every host is out.
    pub fn acquire(&self, hosts: &[Host]) -> Result<usize, String> {
        let mut state = self.lock();
        loop {
            let best = (0..state.free.len())
                .filter(|&i| state.out[i].is_none() && state.free[i] > 0)
                .max_by_key(|&i| (state.free[i], std::cmp::Reverse(i)));
            if let Some(i) = best {
                state.free[i] -= 1;
                return Ok(i);
            }
            if state.out.iter().all(Option::is_some) {
                let why: Vec<String> = state
                    .out
                    .iter()
                    .zip(hosts)
                    .map(|(why, h)| format!("`{}`: {}", h.name, why.as_deref().unwrap_or("")))
                    .collect();
                return Err(format!("no host is left in the run: {}", why.join("; ")));
            }
            state = self.freed.wait(state).unwrap_or_else(|p| p.into_inner());
        }
    }

    pub fn release(&self, host: usize) {
        self.lock().free[host] += 1;
        self.freed.notify_all();
    }

    /// Take a host out of the run; returns false when it was out already.
    pub fn take_out(&self, host: usize, why: &str) -> bool {
        let mut state = self.lock();
        let first = state.out[host].is_none();
        if first {
            state.out[host] = Some(why.to_string());
        }
        drop(state);
        self.freed.notify_all();
        first
    }

    pub fn is_out(&self, host: usize) -> bool {
        self.lock().out[host].is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(name: &str, slots: usize) -> Host {
        Host::new(name, Placement::Local, RuntimeSlot::NotNeeded, slots)
    }

    #[test]
    fn a_job_takes_the_host_with_the_most_free_slots() {
        let hosts = [host("a", 2), host("b", 3)];
        let slots = Slots::new(&hosts);
        assert_eq!(slots.total(), 5);
        let taken: Vec<usize> = (0..5).map(|_| slots.acquire(&hosts).unwrap()).collect();
        assert_eq!(taken, [1, 0, 1, 0, 1], "b first (3 free), then alternating, the first on a tie");
        slots.release(0);
        assert_eq!(slots.acquire(&hosts), Ok(0));
    }

    #[test]
    fn a_host_taken_out_gets_no_more_jobs_and_none_left_is_an_error_naming_them() {
        let hosts = [host("a", 1), host("b", 1)];
        let slots = Slots::new(&hosts);
        assert!(slots.take_out(0, "ssh: connection refused"));
        assert!(!slots.take_out(0, "again"), "taken out once");
        assert_eq!(slots.total(), 1);
        assert_eq!(slots.acquire(&hosts), Ok(1));
        slots.release(1);
        slots.take_out(1, "incusd down");
        let err = slots.acquire(&hosts).unwrap_err();
        assert!(err.contains("`a`: ssh: connection refused") && err.contains("`b`: incusd down"), "{err}");
    }

    #[test]
    fn hosts_without_a_runtime_are_out_unless_all_are() {
        let unavailable = |name: &str| {
            let why = format!("{name} does not answer");
            Host::new(name, Placement::Local, RuntimeSlot::Unavailable { asked: RuntimeChoice::Incus, why }, 1)
        };
        let hosts = [unavailable("a"), host("b", 1)];
        assert_eq!(Slots::new(&hosts).acquire(&hosts), Ok(1));
        let hosts = [unavailable("a"), unavailable("b")];
        let slots = Slots::new(&hosts);
        assert_eq!(slots.total(), 2, "every job then records its host's reason");
    }
}
