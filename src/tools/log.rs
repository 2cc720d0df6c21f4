//! The host log: where the external commands of a job are written down.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context, Result};

use super::command::{Cmd, CmdOutput};

/// A log of host-side work (a job's `host.log`): every external command with its duration
/// and outcome, plus pikaci's own notes, each line stamped with the time since it opened. Cheap to clone; writes are serialized.
#[derive(Clone, Debug)]
pub struct HostLog {
    inner: Arc<Mutex<HostLogInner>>,
}

#[derive(Debug)]
struct HostLogInner {
    file: File,
    started: Instant,
}

impl HostLog {
    pub fn create(path: &Path) -> Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(super::command::LOG_MODE)
            .open(path)
            .with_context(|| format!("open host log `{}`", path.display()))?;
        Ok(HostLog { inner: Arc::new(Mutex::new(HostLogInner { file, started: Instant::now() })) })
    }

    pub fn line(&self, text: &str) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let at = inner.started.elapsed().as_secs_f64();
        // The log is best effort: a full disk must not turn a passing job into a failure.
        let _ = writeln!(inner.file, "[{at:8.3}s] {text}");
    }

    pub(super) fn command(&self, cmd: &Cmd, out: &CmdOutput) {
        let status = match out.status.code() {
            Some(code) => format!("exit {code}"),
            None => "killed".to_string(),
        };
        self.line(&format!("$ {}  ({status}, {:.3}s)", cmd.display(), out.duration.as_secs_f64()));
        if !out.status.success() {
            let stderr = out.stderr_str();
            let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            for l in stderr.lines().filter(|l| !l.trim().is_empty()) {
                let _ = writeln!(inner.file, "    | {l}");
            }
        }
    }
}
