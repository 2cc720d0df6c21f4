//! Runtimes: what isolates a job. [`incus`] (a container per job, here or on an SSH host)
//! and [`bwrap`] (a bubblewrap sandbox on this machine). Both receive the same
//! [`HostContext`] and give the same guest view ([`crate::handoff`]); [`process`] runs the
//! guest command for both.

pub mod bwrap;
pub mod incus;
pub mod process;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::error;
use crate::tools::log::HostLog;

use super::Placement;
use super::lines::LineBatch;
use crate::handoff::{HostContext, JobPreview};

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

/// Receives the guest's output as it comes, in batches of whole lines (what one read of
/// it gave): a sink shows a batch at once, with one lock and one write, not line by line.
pub trait OutputSink: Send + Sync {
    fn guest_lines(&self, job_id: &str, lines: &LineBatch);
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
    /// Whether the host still answers (its daemon, through SSH for a remote one). A job
    /// that ended in an infrastructure error asks; a host that fails is taken out of the run.
    fn check_host(&self) -> Result<()> {
        Ok(())
    }
    /// Get ready, in the background, for a job that will run soon (Incus creates and
    /// starts its instance while the payloads are realized). Nothing by default.
    fn warm(&self, _job: &JobPreview) {}
    /// The job will not reach [`Runtime::run`]: drop what was got ready for it, in the
    /// background. When the job was `interrupted`, wait for that instead and return the
    /// warm-up's own interruption, which says more (it names the instance).
    fn abandon(&self, _job: &JobPreview, _interrupted: bool) -> Option<anyhow::Error> {
        None
    }
    /// The run is over: wait for the work left in the background (deleting instances)
    /// and remove what was warmed for jobs that never ran. Returns what could not be
    /// cleaned up, for the run's record.
    fn finish(&self) -> Vec<String> {
        Vec::new()
    }
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
pub fn select_runtime(
    choice: RuntimeChoice,
    placement: &Placement,
    image: Option<&str>,
    state_root: &Path,
    pool: incus::PoolSettings,
) -> Result<Box<dyn Runtime>> {
    let incus = || incus::IncusRuntime::connect(placement, image, state_root).map(|r| r.with_pool(state_root, pool));
    match choice {
        RuntimeChoice::Incus => Ok(Box::new(incus()?)),
        RuntimeChoice::Bwrap => {
            if !placement.is_local() {
                return Err(error::usage("the bwrap runtime runs jobs on this machine only")
                    .hint("use `--runtime incus` with `--remote`")
                    .into());
            }
            Ok(Box::new(bwrap::BwrapRuntime::locate()?))
        }
        RuntimeChoice::Auto => {
            let incus_err = match incus() {
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
