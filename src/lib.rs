//! pikaci: a local-first CI runner for Rust workspaces built with Nix.
//!
//! The pipeline, one module per step:
//! [`snapshot`] -> [`catalog`] (one `nix eval`) -> [`plan`] -> [`prepare`] (`nix-store
//! --realise`, GC-rooted) -> hand-off ([`executor::StagedPayloadMount`]) ->
//! [`executor::placement`] -> runtime ([`executor::incus`] | [`executor::bwrap`]) ->
//! record ([`state`]). [`runner`] drives it; [`cli`] is the command line.

pub mod catalog;
pub mod cli;
pub mod doctor;
pub mod error;
pub mod executor;
pub mod exit;
pub mod gc;
pub mod gc_pending;
pub mod plan;
pub mod prepare;
pub mod replay;
pub mod runner;
pub mod signals;
pub mod snapshot;
pub mod state;
pub mod tools;
