//! One error type with a kind that decides the exit code, and an optional hint that says
//! how to fix it. Errors travel as `anyhow::Error`; a [`Classified`] anywhere in the chain
//! gives the kind, so `.context(...)` can be added freely on the way up.

use std::fmt;

/// The exit codes, documented in `docs/exit-codes.md`.
pub mod exit {
    /// Every job passed or was skipped.
    pub const SUCCESS: i32 = 0;
    /// A job failed (its command, or its payload build) or timed out.
    pub const JOB_FAILED: i32 = 1;
    /// Usage or configuration error: bad arguments, unknown lane or run, invalid flake output.
    pub const USAGE_OR_CONFIG: i32 = 2;
    /// Infrastructure error: nix or the runtime failed before the lane's command ran.
    pub const INFRASTRUCTURE: i32 = 3;
    /// The run was interrupted (Ctrl-C or SIGTERM); 128 + SIGINT, as shells report it.
    pub const INTERRUPTED: i32 = 130;
    /// A bug in pikaci: an internal error or a panic (EX_SOFTWARE of sysexits.h).
    pub const INTERNAL: i32 = 70;
}

/// What went wrong, from the user's point of view. Decides the exit code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// Bad command line, unknown lane, unknown run id (exit 2).
    Usage,
    /// Invalid flake output, invalid lane, corrupt record, bad payload manifest (exit 2).
    Config,
    /// nix, the runtime, or the host failed before the lane's command ran (exit 3).
    Infrastructure,
    /// A bug in pikaci (exit 70, with a request to report it).
    Internal,
}

impl ErrorKind {
    pub fn exit_code(self) -> i32 {
        match self {
            ErrorKind::Usage | ErrorKind::Config => exit::USAGE_OR_CONFIG,
            ErrorKind::Infrastructure => exit::INFRASTRUCTURE,
            ErrorKind::Internal => exit::INTERNAL,
        }
    }
}

/// A classified error: the message, its kind, and a hint.
#[derive(Debug)]
pub struct Classified {
    pub kind: ErrorKind,
    pub message: String,
    pub hint: Option<String>,
}

impl fmt::Display for Classified {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Classified {}

impl Classified {
    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

pub fn usage(message: impl Into<String>) -> Classified {
    Classified { kind: ErrorKind::Usage, message: message.into(), hint: None }
}

pub fn config(message: impl Into<String>) -> Classified {
    Classified { kind: ErrorKind::Config, message: message.into(), hint: None }
}

pub fn infra(message: impl Into<String>) -> Classified {
    Classified { kind: ErrorKind::Infrastructure, message: message.into(), hint: None }
}

/// A bug in pikaci.
pub fn internal(message: impl Into<String>) -> Classified {
    Classified { kind: ErrorKind::Internal, message: message.into(), hint: None }
}

/// The message of a caught panic, with where it happened when the panic hook saw it.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    let text = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_string());
    match LAST_PANIC_LOCATION.with(|l| l.borrow_mut().take()) {
        Some(location) => format!("{text} (at {location})"),
        None => text,
    }
}

thread_local! {
    static LAST_PANIC_LOCATION: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// Replace Rust's panic report (a thread name, a backtrace hint) with nothing: the place
/// that catches the panic records it and says, in one line, that it is a bug. The hook
/// keeps where it happened for [`panic_message`].
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let location = info.location().map(|l| format!("{}:{}", l.file(), l.line()));
        LAST_PANIC_LOCATION.with(|l| *l.borrow_mut() = location);
    }));
}

/// The first classified error in the chain, outermost first.
pub fn classification(err: &anyhow::Error) -> Option<&Classified> {
    err.chain().find_map(|e| e.downcast_ref::<Classified>())
}

/// The kind of an error: classified errors carry theirs; I/O and other unclassified
/// errors are infrastructure (the host failed us), never a user mistake.
pub fn kind_of(err: &anyhow::Error) -> ErrorKind {
    classification(err).map(|c| c.kind).unwrap_or(ErrorKind::Infrastructure)
}

/// Render an error for the terminal: `error: outer: inner: ...`, then `hint: ...`.
pub fn render(err: &anyhow::Error) -> String {
    let mut out = String::from("error: ");
    let parts: Vec<String> = err.chain().map(|e| e.to_string()).collect();
    // anyhow chains often repeat the inner message inside the outer one; drop repeats.
    let mut shown: Vec<&str> = Vec::new();
    for part in &parts {
        if !shown.iter().any(|s| s.contains(part.as_str())) {
            shown.push(part);
        }
    }
    out.push_str(&shown.join(": "));
    if let Some(hint) = classification(err).and_then(|c| c.hint.as_deref()) {
        out.push_str("\nhint: ");
        out.push_str(hint);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn kind_survives_context() {
        let err: anyhow::Result<()> = Err(config("lane `x` is invalid").hint("fix it").into());
        let err = err.context("load catalog").unwrap_err();
        assert_eq!(kind_of(&err), ErrorKind::Config);
        assert_eq!(render(&err), "error: load catalog: lane `x` is invalid\nhint: fix it");
    }

    #[test]
    fn unclassified_is_infrastructure() {
        let err = anyhow::anyhow!("disk on fire");
        assert_eq!(kind_of(&err), ErrorKind::Infrastructure);
        assert_eq!(kind_of(&err).exit_code(), 3);
    }
}
