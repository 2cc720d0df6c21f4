//! Running the guest command from the host, the same way for every runtime: stdout and
//! stderr merged, streamed live to the user (in batches of lines) and raw to `guest.log`; the
//! timeout and Ctrl-C enforced here, on the host side, by killing the runtime's client
//! process (bwrap's PID namespace or `incus exec` then takes the whole guest tree down).

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::ExitStatusExt;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::{GuestOutcome, JobIo};
use crate::error;
use crate::executor::lines::{LineBatch, LineSplitter};
use crate::tools::command::{Cmd, Supervised, spawn_error, supervise};

/// How long to wait for the last output after the process exited (a grandchild that
/// escaped the sandbox could hold the pipe open forever).
const DRAIN_GRACE: Duration = Duration::from_secs(2);

pub fn run_guest(cmd: &Cmd, job_id: &str, timeout: Duration, io: &JobIo) -> Result<GuestOutcome> {
    let started = Instant::now();
    // The catalog bounds a lane's timeout; a deadline past the clock's range is none at all.
    let deadline = started.checked_add(timeout);
    let (reader, writer) = std::io::pipe().context("create the guest output pipe")?;
    let handle = {
        // stdout goes to the pipe first, then stderr joins it (duct applies the outer
        // redirection first). The expression, and with it our copy of the write end, is
        // dropped at the end of this block so that EOF arrives when the guest exits.
        // In a process group of its own, so that Ctrl-C at the terminal reaches only
        // pikaci, which records the interruption and then stops the runtime's client.
        let expr = cmd.expression().stderr_to_stdout().stdout_file(writer).unchecked().before_spawn(|c| {
            std::os::unix::process::CommandExt::process_group(c, 0);
            Ok(())
        });
        expr.start().map_err(|e| spawn_error(cmd.label(), cmd.program(), e))?
    };
    io.host_log.line(&format!("$ {}", cmd.display()));

    let done_rx = spawn_reader(reader, job_id, io)?;

    let outcome = match supervise(&handle, cmd.label(), deadline, true)? {
        Supervised::Exited(status) => match (status.code(), status.signal()) {
            (Some(code), _) => GuestOutcome::Exited(code),
            (None, Some(sig)) => GuestOutcome::Signaled(sig),
            (None, None) => GuestOutcome::Exited(-1),
        },
        Supervised::Interrupted => {
            let _ = handle.kill();
            let _ = handle.wait();
            io.host_log.line("interrupted: killed the guest command");
            GuestOutcome::Interrupted
        }
        Supervised::TimedOut => {
            let _ = handle.kill();
            let _ = handle.wait();
            io.host_log.line(&format!("timed out after {}s: killed the guest command", timeout.as_secs()));
            GuestOutcome::TimedOut
        }
    };
    let write_error = match done_rx.recv_timeout(DRAIN_GRACE) {
        Ok(e) => e,
        Err(_) => {
            io.host_log.line("guest output was still open after the command ended; stopped reading it");
            None
        }
    };
    io.host_log.line(&format!("guest command: {outcome:?} after {:.3}s", started.elapsed().as_secs_f64()));
    if let Some(e) = write_error {
        io.host_log.line(&format!("`{}` could not be written: {e}", io.guest_log.display()));
        return Err(error::infra(format!(
            "the command ended ({}), but its output could not be written to `{}`: {e}",
            outcome.describe(),
            io.guest_log.display()
        ))
        .hint("free space under the state root (`pikaci gc`), then rerun")
        .into());
    }
    Ok(outcome)
}

/// How much of the guest's output one read takes at most, and how much the pipe holds: the
/// guest writes on while pikaci shows what it read, and when pikaci falls behind, the next
/// read takes all that piled up (one write to `guest.log`, one batch for the view) instead
/// of 64 KiB at a time.
const READ_SIZE: usize = 1 << 20;

/// Make the pipe hold [`READ_SIZE`] bytes instead of the kernel's 64 KiB. Best effort: past
/// `/proc/sys/fs/pipe-max-size` the pipe keeps its size and only the reads are smaller.
fn enlarge(pipe: &std::io::PipeReader) {
    use std::os::fd::AsRawFd;
    // SAFETY: fcntl(2) on a descriptor this function borrows; no memory is involved.
    unsafe { libc::fcntl(pipe.as_raw_fd(), libc::F_SETPIPE_SZ, READ_SIZE as libc::c_int) };
}

/// Read the guest's output until it ends: raw into `guest.log`, one write per read, and
/// split into lines for the live view, handed over in batches (one per read, or more
/// when a read holds very many lines). Memory stays bounded whatever the output's shape:
/// the read buffer, a line's start (at most [`crate::executor::lines::MAX_LINE`]) and a
/// batch. The receiver gets, at the end, the first error writing `guest.log`.
fn spawn_reader(
    mut reader: std::io::PipeReader,
    job_id: &str,
    io: &JobIo,
) -> Result<mpsc::Receiver<Option<std::io::Error>>> {
    let mut guest_log = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(crate::tools::command::LOG_MODE)
        .open(&io.guest_log)
        .with_context(|| format!("open `{}`", io.guest_log.display()))?;
    enlarge(&reader);
    let output = io.output.clone();
    let job = job_id.to_string();
    // The reader sends, when the output ends, the first error writing `guest.log` (a full
    // disk): the log is then incomplete, and the job says so.
    let (done_tx, done_rx) = mpsc::channel::<Option<std::io::Error>>();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; READ_SIZE];
        let mut lines = LineSplitter::default();
        let mut view = View { output, job, batch: LineBatch::default() };
        let mut write_error = None;
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            };
            if write_error.is_none()
                && let Err(e) = guest_log.write_all(&buf[..n])
            {
                write_error = Some(e);
            }
            lines.push(&buf[..n], &mut |line| view.line(line));
            view.show();
        }
        lines.finish(&mut |line| view.line(line));
        view.show();
        if let (None, Err(e)) = (&write_error, guest_log.flush()) {
            write_error = Some(e);
        }
        let _ = done_tx.send(write_error);
    });
    Ok(done_rx)
}

/// The live view's side of the reader: lines gathered into a batch, shown a batch at a time.
struct View {
    output: std::sync::Arc<dyn crate::executor::OutputSink>,
    job: String,
    batch: LineBatch,
}

impl View {
    fn line(&mut self, line: &[u8]) {
        self.batch.push(line);
        if self.batch.is_full() {
            self.show();
        }
    }

    fn show(&mut self) {
        if !self.batch.is_empty() {
            self.output.guest_lines(&self.job, &self.batch);
            self.batch.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::executor::OutputSink;
    use crate::tools::log::HostLog;
    use std::sync::{Arc, Mutex};

    #[derive(Default)]
    struct Lines(Mutex<Vec<String>>);
    impl OutputSink for Lines {
        fn guest_lines(&self, job_id: &str, lines: &LineBatch) {
            let mut seen = self.0.lock().unwrap();
            seen.extend(lines.iter().map(|line| format!("{job_id}: {}", String::from_utf8_lossy(line))));
        }
    }

    fn io(dir: &std::path::Path, lines: Arc<Lines>) -> JobIo {
        JobIo {
            host_log: HostLog::create(&dir.join("host.log")).unwrap(),
            guest_log: dir.join("guest.log"),
            output: lines,
        }
    }

    #[test]
    fn streams_both_streams_in_order_and_keeps_exit_code() {
        let dir = tempfile::tempdir().unwrap();
        let lines = Arc::new(Lines::default());
        let cmd = Cmd::new("sh", "/bin/sh").args(["-c", "echo out; echo err >&2; printf tail; exit 7"]);
        let outcome = run_guest(&cmd, "j", Duration::from_secs(10), &io(dir.path(), lines.clone())).unwrap();
        assert_eq!(outcome, GuestOutcome::Exited(7));
        assert_eq!(*lines.0.lock().unwrap(), ["j: out", "j: err", "j: tail"]);
        assert_eq!(std::fs::read_to_string(dir.path().join("guest.log")).unwrap(), "out\nerr\ntail");
    }

    #[test]
    fn a_timeout_past_the_clock_range_does_not_overflow() {
        let dir = tempfile::tempdir().unwrap();
        let cmd = Cmd::new("true", "/bin/sh").args(["-c", "exit 0"]);
        let outcome = run_guest(&cmd, "j", Duration::MAX, &io(dir.path(), Arc::new(Lines::default()))).unwrap();
        assert_eq!(outcome, GuestOutcome::Exited(0));
    }

    #[test]
    fn timeout_kills() {
        let dir = tempfile::tempdir().unwrap();
        let cmd = Cmd::new("sleep", "/bin/sh").args(["-c", "exec sleep 30"]);
        let t = Instant::now();
        let outcome =
            run_guest(&cmd, "j", Duration::from_millis(300), &io(dir.path(), Arc::new(Lines::default()))).unwrap();
        assert_eq!(outcome, GuestOutcome::TimedOut);
        assert!(t.elapsed() < Duration::from_secs(5));
        assert!(std::fs::read_to_string(dir.path().join("host.log")).unwrap().contains("timed out after 0s"));
    }
}
