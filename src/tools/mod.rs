//! One small typed layer per external program, all built on [`command::Cmd`].

pub mod command;
pub mod drv;
pub mod fs;
pub mod git;
pub mod incus;
pub mod incus_socket;
pub mod log;
pub mod nix;
pub mod nix_log;
pub mod ssh;
pub mod url;
