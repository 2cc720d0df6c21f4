//! Everything decided before a run exists: what to run, where, and on which runtime.

use std::path::{Path, PathBuf};

use anyhow::Result;

use super::hosts::{Host, hosts_for};
use super::hosts_file::HostsFile;
use crate::executor::{Runtime, RuntimeChoice};
use crate::plan::{ChangedFiles, PlannedJob};
use crate::prepare::RunBuilds;
use crate::state::StateRoot;
use crate::state::record::{RunSnapshot, RuntimeName};
use crate::tools::nix::{Nix, NixVersion};

/// What `run` and `rerun` decide alike: the user's choices, or the recorded ones.
pub struct Choices {
    pub state: StateRoot,
    pub flake_label: String,
    pub source_dir: PathBuf,
    pub snapshot: RunSnapshot,
    pub changed: Option<ChangedFiles>,
    pub runtime: RuntimeChoice,
    /// `--remote`, repeated: SSH hosts, or hosts the hosts file declares.
    pub remotes: Vec<String>,
    /// The hosts file (`--hosts FILE`, or `pikaci.toml` beside the flake).
    pub hosts_file: HostsFile,
    pub image: Option<String>,
    pub parallelism: usize,
    pub rerun_of: Option<String>,
    /// `-- ARGS`: appended to every job's command.
    pub args: Vec<String>,
    /// The git commit of the work tree, when it is one.
    pub git_rev: Option<String>,
    /// How long the flake's evaluation took (`None` for a rerun: nothing is evaluated).
    pub eval_ms: Option<u64>,
}

/// The runtime a run got, or why it has none.
pub enum RuntimeSlot {
    Ready(Box<dyn Runtime>),
    /// Every job was skipped: nothing needs a runtime.
    NotNeeded,
    /// The runtime could not be had here (Incus' daemon down, bwrap missing): every job
    /// that would run ends in `error` with the reason, and the run is still recorded.
    Unavailable {
        asked: RuntimeChoice,
        why: String,
    },
}

impl RuntimeSlot {
    pub fn ready(&self) -> Option<&dyn Runtime> {
        match self {
            RuntimeSlot::Ready(runtime) => Some(runtime.as_ref()),
            _ => None,
        }
    }

    pub fn name(&self) -> RuntimeName {
        match self {
            RuntimeSlot::Ready(runtime) => RuntimeName::parse(runtime.name()),
            RuntimeSlot::NotNeeded => RuntimeName::None,
            RuntimeSlot::Unavailable { asked, .. } => match asked {
                RuntimeChoice::Auto => RuntimeName::Auto,
                RuntimeChoice::Incus => RuntimeName::Incus,
                RuntimeChoice::Bwrap => RuntimeName::Bwrap,
            },
        }
    }
}

pub struct Setup {
    pub choices: Choices,
    pub nix: Nix,
    pub nix_version: Option<String>,
    pub plan: Vec<PlannedJob>,
    /// Where jobs run: this machine, or the SSH hosts (an Incus cluster's members).
    pub hosts: Vec<Host>,
    /// Which host built each payload of the run: the others receive it from there.
    pub run_builds: RunBuilds,
}

impl Setup {
    pub fn new(mut choices: Choices, nix: Nix, plan: Vec<PlannedJob>, version: NixVersion) -> Result<Setup> {
        choices.parallelism = choices.parallelism.max(1);
        let hosts = hosts_for(&plan, &choices, &choices.hosts_file)?;
        let nix_version = Some(version.text);
        Ok(Setup { choices, nix, nix_version, plan, hosts, run_builds: RunBuilds::default() })
    }

    /// The runtime the run records: the first host's that is ready, else the first's.
    pub fn runtime_name(&self) -> RuntimeName {
        let ready = self.hosts.iter().find(|h| h.runtime.ready().is_some());
        ready.or(self.hosts.first()).map(|h| h.runtime.name()).unwrap_or(RuntimeName::None)
    }

    /// The SSH hosts of the run, as recorded (`remotes`).
    pub fn remote_names(&self) -> Vec<String> {
        self.hosts.iter().filter(|h| !h.placement.is_local()).map(|h| h.name.clone()).collect()
    }
}

pub type VersionReader = std::thread::JoinHandle<Result<NixVersion>>;

/// A Nix older than the oldest supported is refused before anything is evaluated, and the
/// run records the version: read it (from the state root's cache, normally) while the
/// snapshot is taken.
pub fn read_version_meanwhile(nix: &Nix, state: &StateRoot) -> VersionReader {
    let nix = nix.clone();
    let cache = state.root.join("nix-version.json");
    std::thread::spawn(move || {
        let version = if cache.parent().is_some_and(Path::is_dir) { nix.version_cached(&cache) } else { nix.version() };
        version.and_then(|v| nix.check_supported(&v).map(|()| v))
    })
}

pub fn join_version(reader: VersionReader) -> Result<NixVersion> {
    reader.join().unwrap_or_else(|_| Err(anyhow::anyhow!("the thread reading the Nix version panicked")))
}
