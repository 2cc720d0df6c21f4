//! One error type with a kind that decides the exit code, and an optional hint that says
//! how to fix it. Errors travel as `anyhow::Error`; a [`Classified`] anywhere in the chain
//! gives the kind, so `.context(...)` can be added freely on the way up.

use std::fmt;

/// What went wrong, from the user's point of view. Decides the exit code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// Bad command line, unknown lane, unknown run id (exit 2).
    Usage,
    /// Invalid flake output, invalid lane, corrupt record, bad payload manifest (exit 2).
    Config,
    /// nix, the runtime, or the host failed before the lane's command ran (exit 3).
    Infrastructure,
    /// A bug in pikaci (exit 3, with a request to report it).
    Internal,
}

impl ErrorKind {
    pub fn exit_code(self) -> i32 {
        match self {
            ErrorKind::Usage | ErrorKind::Config => crate::exit::USAGE_OR_CONFIG,
            ErrorKind::Infrastructure | ErrorKind::Internal => crate::exit::INFRASTRUCTURE,
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
