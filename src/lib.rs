//! pikaci: a local-first CI runner for Rust workspaces built with Nix.
//!
//! The pipeline, one module per step, data flowing one way (`docs/architecture.md`):
//! [`snapshot`] -> [`catalog`] (one `nix eval`, cached) -> [`plan`] -> [`prepare`]
//! (`nix-store --realise`, GC-rooted) -> [`handoff`] (`Vec<StagedPayloadMount>`) ->
//! [`executor`] (placement: local | ssh; runtime: incus | bwrap) -> record ([`state`]).
//! [`run`] drives it; [`cli`] is the command line; [`tools`] is the ground floor (one typed
//! layer per external program).

pub mod catalog;
pub mod cli;
pub mod doctor;
pub mod error;
pub mod executor;
pub mod gc;
pub mod gc_pending;
pub mod handoff;
pub mod plan;
pub mod prepare;
pub mod replay;
pub mod results;
pub mod run;
pub mod serve;
pub mod signals;
pub mod snapshot;
pub mod state;
pub mod tools;
