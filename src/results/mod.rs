//! Per-test results a lane reports: JUnit XML files it writes under `/pikaci/artifacts/junit/`
//! (docs/lanes.md, "Per-test results"), read from a job's artifacts after its command.
//!
//! Pure: no process, no state. Reading is bounded and never fails a job: a file that cannot
//! be read or parsed becomes a warning.

pub mod junit;

pub use junit::{JunitReport, TestFailure, TestResults, parse_junit, read_junit_dir};
