//! The exit codes, documented in `docs/exit-codes.md`.

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
