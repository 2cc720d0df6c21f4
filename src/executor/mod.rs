//! The executor: where a job runs ([`placement`]: this machine or an SSH host, which owns
//! every path on it) and what isolates it ([`runtime`]: Incus or bubblewrap). It receives
//! a job as the [`crate::handoff::HostContext`] and knows nothing of lanes or the catalog.

pub mod artifacts;
pub mod lines;
pub mod placement;
pub mod runtime;

pub use lines::LineBatch;
pub use placement::Placement;
pub use runtime::{GuestOutcome, JobIo, OutputSink, Runtime, RuntimeChoice, RuntimeReport, select_runtime};
