//! The executor: a job's [`HostContext`] (the hand-off from prepare), where it runs
//! ([`placement`]) and what isolates it (a [`Runtime`]: [`incus`] or [`bwrap`]). Both
//! runtimes give the same guest view ([`guest`]).

pub mod artifacts;
pub mod bwrap;
pub mod guest;
pub mod incus;
pub mod lines;
pub mod placement;
pub mod process;
pub mod remote;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::catalog::manifest::ResolvedMount;
use crate::error;
use crate::tools::command::HostLog;

pub use placement::Placement;

/// One realized payload, as the runtime receives it: the job-directory link that holds
/// the payload (a GC root) and the name it is exposed under.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StagedPayloadMount {
    /// `jobs/<job>/staged-linux-rust/<device_prefix>`.
    pub local_mount_path: PathBuf,
    /// `workspace-deps`, `workspace-build`, ...: the guest path
    /// `/pikaci/payloads/<device_prefix>` and the Incus device name derive from it.
    pub device_prefix: String,
}

/// Everything a runtime needs to run one job. Payloads reach a runtime only through
/// `staged_payload_mounts`; a runtime iterates it and never names a payload itself.
#[derive(Clone, Debug)]
pub struct HostContext {
    pub run_id: String,
    pub job_id: String,
    /// The state root the run belongs to (Incus tags instances with it, for `gc`).
    pub state_root: PathBuf,
    pub job_dir: PathBuf,
    /// The source snapshot, mounted read-only at `/workspace`.
    pub snapshot_dir: PathBuf,
    /// Mounted writable at `/pikaci/artifacts`; what the lane leaves there is kept.
    pub artifacts_dir: PathBuf,
    pub command: Vec<String>,
    /// The whole guest environment (pikaci's variables, then the lane's `env`).
    pub env: BTreeMap<String, String>,
    pub timeout: Duration,
    /// The Incus image (the lane's `runtime.image`, `--image`, or the default).
    pub image: Option<String>,
    pub staged_payload_mounts: Vec<StagedPayloadMount>,
    /// Extra read-only mounts declared by payload manifests.
    pub extra_mounts: Vec<ResolvedMount>,
    /// The store paths the guest may see (the payloads' closure); `None`: the whole store.
    pub store_closure: Option<Vec<PathBuf>>,
    pub placement: Placement,
}

/// How the lane's command ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestOutcome {
    Exited(i32),
    Signaled(i32),
    TimedOut,
    Interrupted,
}

impl GuestOutcome {
    /// How it ended, in words, for messages.
    pub fn describe(&self) -> String {
        match self {
            GuestOutcome::Exited(code) => format!("exit {code}"),
            GuestOutcome::Signaled(sig) => format!("killed by signal {sig}"),
            GuestOutcome::TimedOut => "timed out".into(),
            GuestOutcome::Interrupted => "interrupted".into(),
        }
    }
}

/// Receives the guest's output, line by line, as it comes.
pub trait OutputSink: Send + Sync {
    fn guest_line(&self, job_id: &str, line: &[u8]);
    /// The lines of one read of the guest's output were given: show them now.
    fn flush(&self) {}
}

/// A job's logs and output stream.
#[derive(Clone)]
pub struct JobIo {
    pub host_log: HostLog,
    pub guest_log: PathBuf,
    pub output: Arc<dyn OutputSink>,
}

/// What the runtime did, for the job record.
#[derive(Clone, Debug, Default)]
pub struct RuntimeReport {
    /// The Incus instance, when there was one.
    pub instance: Option<String>,
    /// Shell lines that redo the runtime's part by hand.
    pub reproduce: Vec<String>,
}

/// An isolation backend. `run` returns how the command ended; an `Err` means the runtime
/// itself failed (an infrastructure error), and the runtime has cleaned up after itself.
pub trait Runtime: Send + Sync {
    fn name(&self) -> &'static str;
    /// Why this runtime cannot run anything, when it stands in for one that is missing.
    fn unavailable(&self) -> Option<&str> {
        None
    }
    fn run(&self, ctx: &HostContext, io: &JobIo, report: &mut RuntimeReport) -> Result<GuestOutcome>;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum RuntimeChoice {
    Auto,
    Incus,
    Bwrap,
}

/// Pick the runtime: `auto` is Incus when its client is on PATH and the daemon answers,
/// else bubblewrap, else an error that says what to install.
pub fn select_runtime(choice: RuntimeChoice, placement: &Placement, image: Option<&str>) -> Result<Box<dyn Runtime>> {
    match choice {
        RuntimeChoice::Incus => Ok(Box::new(incus::IncusRuntime::connect(placement, image)?)),
        RuntimeChoice::Bwrap => {
            if !placement.is_local() {
                return Err(error::usage("the bwrap runtime runs jobs on this machine only")
                    .hint("use `--runtime incus` with `--remote`")
                    .into());
            }
            Ok(Box::new(bwrap::BwrapRuntime::locate()?))
        }
        RuntimeChoice::Auto => {
            let incus_err = match incus::IncusRuntime::connect(placement, image) {
                Ok(rt) => return Ok(Box::new(rt)),
                Err(e) => e,
            };
            if !placement.is_local() {
                return Err(incus_err.context("`--remote` needs the incus runtime on the remote host"));
            }
            match bwrap::BwrapRuntime::locate() {
                Ok(rt) => Ok(Box::new(rt)),
                Err(_) => Err(error::infra("no runtime is available: Incus does not answer and `bwrap` is not on PATH")
                    .hint("install bubblewrap (`apt-get install bubblewrap`), or Incus (`scripts/bootstrap`); `pikaci doctor` checks both")
                    .into()),
            }
        }
    }
}
