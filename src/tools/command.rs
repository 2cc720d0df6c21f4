//! The one layer through which pikaci runs external programs: an argv (never a string
//! pasted into a shell), run with duct, interruptible by Ctrl-C, logged with its duration
//! to the job's `host.log`, and failing with "`nix build` failed (exit 1): <stderr tail>".

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::log::HostLog;
use crate::signals;

/// How many stderr lines an error message carries.
const ERROR_TAIL_LINES: usize = 12;
/// The mode of the logs pikaci writes: the same as its records (`docs/state-root.md`).
pub const LOG_MODE: u32 = super::fs::FILE_MODE;
/// How often a running command checks for Ctrl-C.
const INTERRUPT_POLL: Duration = Duration::from_millis(50);

/// An external command: a label for messages (`nix eval`, `incus exec`), a program and
/// its argv.
#[derive(Clone, Debug)]
pub struct Cmd {
    label: String,
    program: PathBuf,
    args: Vec<OsString>,
    dir: Option<PathBuf>,
    env: Vec<(OsString, OsString)>,
    /// Start from an empty environment instead of pikaci's.
    env_clear: bool,
    stdin: Stdin,
    /// Where stdout goes instead of being captured.
    stdout_file: Option<PathBuf>,
    /// Killed, and an error, when it runs longer.
    time_limit: Option<Duration>,
    /// Whether Ctrl-C kills it (see [`Cmd::uninterruptible`]).
    interruptible: bool,
    /// Started in a process group of its own (see [`Cmd::own_process_group`]).
    own_group: bool,
}

#[derive(Clone, Debug)]
enum Stdin {
    Null,
    Bytes(Vec<u8>),
    File(PathBuf),
}

/// What a finished command gave back.
#[derive(Debug)]
pub struct CmdOutput {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub duration: Duration,
}

impl CmdOutput {
    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    pub fn stderr_str(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
    /// The non-empty lines of stdout, as paths (what `nix-store` prints).
    pub fn stdout_paths(&self) -> Vec<PathBuf> {
        self.stdout_str().lines().filter(|l| !l.is_empty()).map(PathBuf::from).collect()
    }
}

/// A command that ran and exited non-zero (or was killed by a signal).
#[derive(Debug)]
pub struct CommandFailed {
    pub label: String,
    pub code: Option<i32>,
    pub stderr: String,
}

impl CommandFailed {
    pub fn stderr_tail(&self) -> String {
        tail_lines(&self.stderr, ERROR_TAIL_LINES)
    }
}

impl fmt::Display for CommandFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let code = match self.code {
            Some(code) => format!("exit {code}"),
            None => "killed by a signal".to_string(),
        };
        let tail = self.stderr_tail();
        if tail.is_empty() {
            write!(f, "`{}` failed ({code})", self.label)
        } else {
            write!(f, "`{}` failed ({code}): {tail}", self.label)
        }
    }
}

impl std::error::Error for CommandFailed {}

/// The user pressed Ctrl-C (or pikaci got SIGTERM) while a command ran; the command was
/// killed.
#[derive(Debug)]
pub struct Interrupted;

impl fmt::Display for Interrupted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("interrupted")
    }
}

impl std::error::Error for Interrupted {}

/// A command ran past its [`Cmd::time_limit`] and was killed.
#[derive(Debug)]
pub struct TimeLimitExceeded {
    pub label: String,
    pub limit: Duration,
}

impl fmt::Display for TimeLimitExceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}` did not finish within {}s", self.label, self.limit.as_secs())
    }
}

impl std::error::Error for TimeLimitExceeded {}

/// True when the error (anywhere in its chain) is an interruption.
pub fn is_interrupted(err: &anyhow::Error) -> bool {
    err.chain().any(|e| e.is::<Interrupted>())
}

impl Cmd {
    pub fn new(label: impl Into<String>, program: impl Into<PathBuf>) -> Self {
        Cmd {
            label: label.into(),
            program: program.into(),
            args: Vec::new(),
            dir: None,
            env: Vec::new(),
            env_clear: false,
            stdin: Stdin::Null,
            stdout_file: None,
            time_limit: None,
            interruptible: true,
            own_group: false,
        }
    }

    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args.extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    pub fn dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.dir = Some(dir.into());
        self
    }

    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.env.push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    /// Start the program with only the variables given with [`Cmd::env`], none of
    /// pikaci's own (a sandbox's PID 1 must not carry the host's secrets).
    pub fn env_clear(mut self) -> Self {
        self.env_clear = true;
        self
    }

    pub fn stdin_bytes(mut self, bytes: impl Into<Vec<u8>>) -> Self {
        self.stdin = Stdin::Bytes(bytes.into());
        self
    }

    /// Read stdin from a file (a tar to unpack on the far side of SSH).
    pub fn stdin_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.stdin = Stdin::File(path.into());
        self
    }

    /// Write stdout to a file instead of capturing it (a tar coming back over SSH).
    pub fn stdout_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.stdout_file = Some(path.into());
        self
    }

    /// Kill the command, and fail with [`TimeLimitExceeded`], when it runs longer.
    pub fn time_limit(mut self, limit: Duration) -> Self {
        self.time_limit = Some(limit);
        self
    }

    /// Let Ctrl-C not stop it: for calls that change a daemon's state, where killing the
    /// client would not stop the operation, only lose track of it.
    pub fn uninterruptible(mut self) -> Self {
        self.interruptible = false;
        self
    }

    /// Start it in a process group of its own: Ctrl-C at the terminal (SIGINT to the
    /// foreground group) then reaches only pikaci, which stops the command itself, and
    /// stops it gently (SIGTERM to the group, SIGKILL after [`TERM_GRACE`]) so that it
    /// can end what it started (`nix-store` kills its builder).
    pub fn own_process_group(mut self) -> Self {
        self.own_group = true;
        self
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    pub fn program(&self) -> &Path {
        &self.program
    }

    /// The full argv, program first.
    pub fn argv(&self) -> Vec<OsString> {
        std::iter::once(self.program.clone().into_os_string()).chain(self.args.iter().cloned()).collect()
    }

    /// The command as a line a user can paste into a shell.
    pub fn display(&self) -> String {
        let clear = self.env_clear.then(|| "env -i".to_string());
        let mut words: Vec<String> = clear
            .into_iter()
            .chain(
                self.env.iter().map(|(k, v)| format!("{}={}", k.to_string_lossy(), shell_quote(&v.to_string_lossy()))),
            )
            .collect();
        words.extend(self.argv().iter().map(|a| shell_quote(&a.to_string_lossy())));
        words.join(" ")
    }

    /// The duct expression, stdin closed unless bytes were given; output not redirected.
    pub fn expression(&self) -> duct::Expression {
        let mut expr = duct::cmd(&self.program, &self.args);
        if let Some(dir) = &self.dir {
            expr = expr.dir(dir);
        }
        if self.env_clear {
            expr = expr.full_env(self.env.iter().cloned());
        } else {
            for (k, v) in &self.env {
                expr = expr.env(k, v);
            }
        }
        if self.own_group {
            expr = expr.before_spawn(|c| {
                std::os::unix::process::CommandExt::process_group(c, 0);
                Ok(())
            });
        }
        match &self.stdin {
            Stdin::Null => expr.stdin_null(),
            Stdin::Bytes(bytes) => expr.stdin_bytes(bytes.clone()),
            Stdin::File(path) => expr.stdin_path(path),
        }
    }

    /// Start it and let it go on without pikaci: in a process group of its own (Ctrl-C
    /// at the terminal does not reach it), output discarded, never waited for. For work
    /// that is to outlive the run that starts it.
    pub fn spawn_detached(&self) -> Result<()> {
        let expr = self.expression().before_spawn(|c| {
            std::os::unix::process::CommandExt::process_group(c, 0);
            Ok(())
        });
        expr.stdout_null().stderr_null().start().map_err(|e| spawn_error(&self.label, &self.program, e))?;
        Ok(())
    }

    /// Run to completion; a non-zero exit is an error ([`CommandFailed`]).
    pub fn run(&self, log: Option<&HostLog>) -> Result<CmdOutput> {
        let out = self.run_unchecked(log)?;
        if !out.status.success() {
            return Err(
                CommandFailed { label: self.label.clone(), code: out.status.code(), stderr: out.stderr_str() }.into()
            );
        }
        Ok(out)
    }

    /// Run to completion and return the output whatever the exit status.
    pub fn run_unchecked(&self, log: Option<&HostLog>) -> Result<CmdOutput> {
        let started = Instant::now();
        let expr = match &self.stdout_file {
            Some(path) => self.expression().stdout_path(path),
            None => self.expression().stdout_capture(),
        };
        let handle =
            expr.stderr_capture().unchecked().start().map_err(|e| spawn_error(&self.label, &self.program, e))?;
        self.wait(&handle, started, log)?;
        // Finished: taking the output moves it out of the handle instead of copying it.
        let output = handle.into_output().with_context(|| format!("wait for `{}`", self.label))?;
        let out = CmdOutput {
            status: output.status,
            stdout: output.stdout,
            stderr: output.stderr,
            duration: started.elapsed(),
        };
        if let Some(log) = log {
            log.command(self, &out);
        }
        Ok(out)
    }

    /// Run to completion whatever the exit status, handing each line of stderr to
    /// `on_line` while the command runs (and [`StderrLine::Quiet`] after a quarter of a
    /// second without any). The output's `stderr` is empty, and the host log gets only
    /// an interruption or a time limit: the caller, who makes sense of stderr, logs the
    /// command ([`HostLog::command`]). Ctrl-C and the time limit stop it as they stop
    /// [`Cmd::run`].
    pub fn run_streaming(
        &self,
        on_line: &mut (dyn FnMut(StderrLine<'_>) + Send),
        log: Option<&HostLog>,
    ) -> Result<CmdOutput> {
        let started = Instant::now();
        let (reader, writer) = std::io::pipe().with_context(|| format!("create a pipe for `{}`", self.label))?;
        let handle = {
            // The expression, and with it our copy of the pipe's write end, is dropped at
            // the end of this block, so that the reader sees the end when the command exits.
            let expr = match &self.stdout_file {
                Some(path) => self.expression().stdout_path(path),
                None => self.expression().stdout_capture(),
            };
            expr.stderr_file(writer).unchecked().start().map_err(|e| spawn_error(&self.label, &self.program, e))?
        };
        let stop = AtomicBool::new(false);
        std::thread::scope(|scope| {
            let reading = scope.spawn(|| read_lines(reader, &stop, on_line));
            let waited = self.wait(&handle, started, log);
            // The last lines: until the pipe closes, or for DRAIN_GRACE when something the
            // command started holds it open.
            let drained = Instant::now() + DRAIN_GRACE;
            while !reading.is_finished() && Instant::now() < drained {
                std::thread::sleep(Duration::from_millis(10));
            }
            stop.store(true, Ordering::SeqCst);
            let _ = reading.join();
            waited?;
            let output = handle.into_output().with_context(|| format!("wait for `{}`", self.label))?;
            Ok(CmdOutput {
                status: output.status,
                stdout: output.stdout,
                stderr: Vec::new(),
                duration: started.elapsed(),
            })
        })
    }

    /// Wait for a started command; stop it and fail on Ctrl-C or at its time limit.
    fn wait(&self, handle: &duct::Handle, started: Instant, log: Option<&HostLog>) -> Result<()> {
        let deadline = self.time_limit.and_then(|limit| started.checked_add(limit));
        match supervise(handle, &self.label, deadline, self.interruptible)? {
            Supervised::Exited(_) => {}
            Supervised::Interrupted => {
                self.stop(handle);
                if let Some(log) = log {
                    log.line(&format!("interrupted: {}", self.display()));
                }
                return Err(Interrupted.into());
            }
            Supervised::TimedOut => {
                let _ = handle.kill();
                let _ = handle.wait();
                let limit = self.time_limit.unwrap_or_default();
                if let Some(log) = log {
                    log.line(&format!("gave up after {}s: {}", limit.as_secs(), self.display()));
                }
                return Err(TimeLimitExceeded { label: self.label.clone(), limit }.into());
            }
        }
        if self.interruptible && signals::interrupted() {
            // It ended on the same Ctrl-C (a group that got the signal too): that is an
            // interruption, not a failure of the command.
            if let Some(log) = log {
                log.line(&format!("interrupted: {}", self.display()));
            }
            return Err(Interrupted.into());
        }
        Ok(())
    }
}

/// What [`Cmd::run_streaming`] hands over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StderrLine<'a> {
    /// One line, without its newline (invalid UTF-8 replaced).
    Line(&'a str),
    /// Nothing came for [`QUIET`].
    Quiet,
}

/// How long stderr is quiet before [`StderrLine::Quiet`].
pub const QUIET: Duration = Duration::from_millis(250);
/// How long to wait for the last of stderr after the command exited.
const DRAIN_GRACE: Duration = Duration::from_secs(2);
/// A longer line is handed over in pieces of this length.
const MAX_STDERR_LINE: usize = 1024 * 1024;

/// Read `reader` line by line until it ends or `stop` is set (checked between polls).
fn read_lines(mut reader: std::io::PipeReader, stop: &AtomicBool, on_line: &mut (dyn FnMut(StderrLine<'_>) + Send)) {
    use std::io::Read;
    use std::os::fd::AsRawFd;
    let mut buf = vec![0u8; 64 * 1024];
    let mut pending: Vec<u8> = Vec::new();
    let mut heard = Instant::now();
    while !stop.load(Ordering::SeqCst) {
        let mut pfd = libc::pollfd { fd: reader.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd, alive for the duration of the call.
        let ready = unsafe { libc::poll(&mut pfd, 1, INTERRUPT_POLL.as_millis() as libc::c_int) };
        if ready <= 0 {
            if ready < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
                break;
            }
            if heard.elapsed() >= QUIET {
                on_line(StderrLine::Quiet);
                heard = Instant::now();
            }
            continue;
        }
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        heard = Instant::now();
        let scanned = pending.len();
        pending.extend_from_slice(&buf[..n]);
        let mut start = 0;
        let mut from = scanned;
        while let Some(pos) = pending[from..].iter().position(|b| *b == b'\n').map(|p| from + p) {
            on_line(StderrLine::Line(&String::from_utf8_lossy(&pending[start..pos])));
            start = pos + 1;
            from = start;
        }
        pending.drain(..start);
        if pending.len() >= MAX_STDERR_LINE {
            on_line(StderrLine::Line(&String::from_utf8_lossy(&pending)));
            pending.clear();
        }
    }
    if !pending.is_empty() {
        on_line(StderrLine::Line(&String::from_utf8_lossy(&pending)));
    }
}

/// How a supervised command ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Supervised {
    Exited(ExitStatus),
    /// Still running at its deadline (not stopped yet: the caller decides how).
    TimedOut,
    /// Still running when Ctrl-C or SIGTERM came (not stopped yet).
    Interrupted,
}

/// Wait for a started command until it exits, its `deadline` passes, or (when
/// `interruptible`) pikaci is interrupted. The one wait loop of pikaci: every external
/// command, the guest's included, is waited for here; the caller stops what is left.
pub fn supervise(
    handle: &duct::Handle,
    label: &str,
    deadline: Option<Instant>,
    interruptible: bool,
) -> Result<Supervised> {
    loop {
        let step = deadline.map_or(INTERRUPT_POLL, |d| INTERRUPT_POLL.min(d.saturating_duration_since(Instant::now())));
        if let Some(out) = handle.wait_timeout(step).with_context(|| format!("wait for `{label}`"))? {
            return Ok(Supervised::Exited(out.status));
        }
        if interruptible && signals::interrupted() {
            return Ok(Supervised::Interrupted);
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Ok(Supervised::TimedOut);
        }
    }
}

impl Cmd {
    /// Stop a running command: its whole process group, gently first, when it has one of
    /// its own; else the process.
    pub fn stop(&self, handle: &duct::Handle) {
        if self.own_group {
            stop_group(handle);
        } else {
            let _ = handle.kill();
        }
        let _ = handle.wait();
    }
}

/// How long a process group gets to end after SIGTERM before SIGKILL.
pub const TERM_GRACE: Duration = Duration::from_secs(10);

fn stop_group(handle: &duct::Handle) {
    let signal_group = |sig: libc::c_int| {
        for pid in handle.pids() {
            // SAFETY: kill(2) with a negative pid signals that process group; no memory
            // is involved.
            unsafe { libc::kill(-(pid as libc::pid_t), sig) };
        }
    };
    signal_group(libc::SIGTERM);
    let deadline = Instant::now() + TERM_GRACE;
    while Instant::now() < deadline {
        if matches!(handle.wait_timeout(INTERRUPT_POLL), Ok(Some(_))) {
            // The leader is gone; what is left of its group goes now.
            signal_group(libc::SIGKILL);
            return;
        }
    }
    signal_group(libc::SIGKILL);
}

/// "`incus` is not installed" is a clearer message than "No such file or directory".
pub fn spawn_error(label: &str, program: &Path, err: std::io::Error) -> anyhow::Error {
    if err.kind() == std::io::ErrorKind::NotFound {
        anyhow::Error::new(
            crate::error::infra(format!("`{label}` could not start: `{}` was not found", program.display()))
                .hint("run `pikaci doctor` to see what is missing and how to install it"),
        )
    } else {
        anyhow::Error::new(err).context(format!("start `{label}` ({})", program.display()))
    }
}

/// The last `n` non-empty lines of a text, joined by newlines.
pub fn tail_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let start = lines.len().saturating_sub(n);
    lines[start..].join("\n")
}

/// Quote one word for a POSIX shell: bare if it is plainly safe, else single-quoted with
/// embedded single quotes escaped. The only quoting helper in pikaci.
pub fn shell_quote(word: &str) -> String {
    let safe = !word.is_empty()
        && word.chars().all(|c| {
            c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/' | ':' | '=' | '+' | ',' | '@' | '%')
        });
    if safe { word.to_string() } else { format!("'{}'", word.replace('\'', r"'\''")) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("abc/d-e.f"), "abc/d-e.f");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote("$(rm -rf /)"), "'$(rm -rf /)'");
    }

    #[test]
    fn tail_keeps_last_nonempty_lines() {
        assert_eq!(tail_lines("a\n\nb\nc\n\n", 2), "b\nc");
    }

    #[test]
    fn failure_message_names_call_and_tail() {
        let out = Cmd::new("sh -c", "/bin/sh").args(["-c", "echo one >&2; echo two >&2; exit 4"]).run(None);
        let err = out.unwrap_err();
        assert_eq!(err.to_string(), "`sh -c` failed (exit 4): one\ntwo");
    }

    #[test]
    fn time_limit_kills_and_says_so() {
        let started = Instant::now();
        let err =
            Cmd::new("sleep", "/bin/sh").args(["-c", "exec sleep 30"]).time_limit(Duration::from_millis(200)).run(None);
        let err = err.unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(err.is::<TimeLimitExceeded>());
        assert_eq!(err.to_string(), "`sleep` did not finish within 0s");
    }

    fn streamed(cmd: &Cmd) -> (Result<CmdOutput>, Vec<String>) {
        let mut heard = Vec::new();
        let mut on_line = |line: StderrLine<'_>| match line {
            StderrLine::Line(l) => heard.push(l.to_string()),
            StderrLine::Quiet => heard.push("(quiet)".to_string()),
        };
        let out = cmd.run_streaming(&mut on_line, None);
        (out, heard)
    }

    #[test]
    fn stderr_streams_line_by_line_with_quiet_between() {
        let cmd =
            Cmd::new("sh -c", "/bin/sh").args(["-c", "echo out; echo one >&2; sleep 0.6; printf 'two\\nlast' >&2"]);
        let (out, heard) = streamed(&cmd);
        let out = out.unwrap();
        assert_eq!(out.stdout_str(), "out\n");
        assert!(out.stderr.is_empty());
        let lines: Vec<&str> = heard.iter().map(String::as_str).filter(|l| *l != "(quiet)").collect();
        assert_eq!(lines, ["one", "two", "last"]);
        let one = heard.iter().position(|l| l == "one").unwrap();
        assert_eq!(heard[one + 1], "(quiet)", "{heard:?}");
    }

    #[test]
    fn a_streamed_command_keeps_its_time_limit() {
        let started = Instant::now();
        let cmd = Cmd::new("sleep", "/bin/sh")
            .args(["-c", "echo begun >&2; exec sleep 30"])
            .time_limit(Duration::from_millis(300));
        let (out, heard) = streamed(&cmd);
        assert!(out.unwrap_err().is::<TimeLimitExceeded>());
        assert_eq!(heard.first().map(String::as_str), Some("begun"));
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn a_grandchild_holding_stderr_does_not_hold_the_caller() {
        // The shell exits at once; the `sleep` it left behind keeps stderr's pipe open.
        // (Its stdout goes elsewhere: duct waits for the end of a captured stdout.)
        let started = Instant::now();
        let cmd = Cmd::new("sh -c", "/bin/sh").args(["-c", "sleep 30 >/dev/null & echo left >&2"]);
        let (out, heard) = streamed(&cmd);
        assert!(out.unwrap().status.success());
        assert_eq!(heard.first().map(String::as_str), Some("left"));
        assert!(started.elapsed() < DRAIN_GRACE + Duration::from_secs(2), "{:?}", started.elapsed());
    }

    #[test]
    fn missing_program_is_infrastructure_with_hint() {
        let err = Cmd::new("frob", "/nonexistent/frob").run(None).unwrap_err();
        assert_eq!(crate::error::kind_of(&err), crate::error::ErrorKind::Infrastructure);
        assert!(crate::error::render(&err).contains("hint: run `pikaci doctor`"), "{}", crate::error::render(&err));
    }
}
