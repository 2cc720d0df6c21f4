//! Everything decided before a run exists: what to run, where, and on which runtime.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::Result;

use crate::error;
use crate::executor::{Placement, Runtime, RuntimeChoice, placement, select_runtime};
use crate::plan::{ChangedFiles, PlannedJob};
use crate::prepare::SharedBuilds;
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
    pub remote: Option<String>,
    pub image: Option<String>,
    pub parallelism: usize,
    pub rerun_of: Option<String>,
    /// `-- ARGS`: appended to every job's command.
    pub args: Vec<String>,
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
    pub runtime: RuntimeSlot,
    pub placement: Placement,
    pub shared_builds: SharedBuilds,
    /// On a remote placement, the first job sends the snapshot; the others wait for it.
    pub snapshot_sent: OnceLock<Result<(), String>>,
}

impl Setup {
    pub fn new(mut choices: Choices, nix: Nix, plan: Vec<PlannedJob>, version: NixVersion) -> Result<Setup> {
        choices.parallelism = choices.parallelism.max(1);
        let placement = Placement::new(choices.remote.as_deref(), &choices.state.root, &placement::remote_state_root());
        let runtime = runtime_for(&plan, &choices, &placement)?;
        let nix_version = Some(version.text);
        Ok(Setup {
            choices,
            nix,
            nix_version,
            plan,
            runtime,
            placement,
            shared_builds: SharedBuilds::default(),
            snapshot_sent: OnceLock::new(),
        })
    }
}

/// The runtime for a plan. A plan whose jobs are all skipped needs none (CI with only
/// skipped lanes passes without a runtime). A runtime that is not available here still
/// gives a recorded run; asking for something impossible (bwrap on a remote host) is a
/// usage error.
fn runtime_for(plan: &[PlannedJob], choices: &Choices, placement: &Placement) -> Result<RuntimeSlot> {
    if plan.iter().all(|j| j.skip_reason.is_some()) {
        return Ok(RuntimeSlot::NotNeeded);
    }
    match select_runtime(choices.runtime, placement, choices.image.as_deref(), &choices.state.root) {
        Ok(runtime) => Ok(RuntimeSlot::Ready(runtime)),
        Err(e) if error::kind_of(&e) == error::ErrorKind::Infrastructure => Ok(RuntimeSlot::Unavailable {
            asked: choices.runtime,
            why: error::render(&e).trim_start_matches("error: ").to_string(),
        }),
        Err(e) => Err(e),
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
