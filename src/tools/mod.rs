//! One small typed layer per external program, all built on [`command::Cmd`].

pub mod command;
pub mod git;
pub mod incus;
pub mod nix;
pub mod ssh;
