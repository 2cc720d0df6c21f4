//! The hand-off from prepare to the executor: the realized payloads as
//! [`StagedPayloadMount`]s, the manifest mounts inside them, and the [`HostContext`] a
//! runtime receives. Runtime-neutral: nothing here names Incus or bubblewrap.
//!
//! The guest view, defined here once and the same for every runtime:
//!
//! | guest path                          | what                         | access    |
//! |-------------------------------------|------------------------------|-----------|
//! | `/workspace`                        | the source snapshot          | read-only |
//! | `/pikaci/payloads/<device_prefix>`  | each staged payload          | read-only |
//! | `/nix/store`                        | the payloads' store closure  | read-only |
//! | `/pikaci/artifacts`                 | kept in `jobs/<job>/artifacts` | writable |
//! | `$HOME`, `$TMPDIR`                  | scratch                      | writable, discarded |

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::tools::log::HostLog;

/// One realized payload, as the runtime receives it: the job-directory link that holds
/// the payload (a GC root) and the name it is exposed under.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StagedPayloadMount {
    /// `jobs/<job>/staged-linux-rust/<device_prefix>`.
    pub local_mount_path: PathBuf,
    /// `workspace-deps`, `workspace-build`, ...: the guest path
    /// `/pikaci/payloads/<device_prefix>` and the Incus device name derive from it.
    pub device_prefix: String,
}

/// A sub-path of a staged payload that its manifest exposes at a guest path of its own,
/// read-only. `source` is reached through the payload's job-directory link, so it maps
/// to the host that runs the job like every other job path.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExtraMount {
    pub source: PathBuf,
    pub guest_path: String,
}

/// What is known of a job before its payloads are realized: enough for a runtime to get
/// ready for it ahead of time (Incus starts its instance meanwhile).
#[derive(Clone, Debug)]
pub struct JobPreview {
    pub run_id: String,
    pub job_id: String,
    pub job_dir: PathBuf,
    pub snapshot_dir: PathBuf,
    pub artifacts_dir: PathBuf,
    pub image: Option<String>,
    /// The job's `host.log`, which the runtime's work ahead of time goes to as well.
    pub host_log: HostLog,
}

/// Everything a runtime needs to run one job. Payloads reach a runtime only through
/// `staged_payload_mounts` (and the manifest mounts inside them); a runtime iterates them
/// and never names a payload itself.
#[derive(Clone, Debug)]
pub struct HostContext {
    pub run_id: String,
    pub job_id: String,
    pub job_dir: PathBuf,
    /// The source snapshot, mounted read-only at `/workspace`.
    pub snapshot_dir: PathBuf,
    /// Mounted writable at `/pikaci/artifacts`; what the lane leaves there is kept.
    pub artifacts_dir: PathBuf,
    pub command: Vec<String>,
    /// The whole guest environment (pikaci's variables, then the lane's `env`).
    pub env: BTreeMap<String, String>,
    pub timeout: Duration,
    /// The base image the lane asks for, where the runtime has images (Incus); `None`
    /// is the runtime's default.
    pub image: Option<String>,
    pub staged_payload_mounts: Vec<StagedPayloadMount>,
    /// Sub-paths of the staged payloads that their manifests expose elsewhere.
    pub extra_mounts: Vec<ExtraMount>,
    /// The store paths the guest may see (the payloads' closure); `None`: the whole store.
    pub store_closure: Option<Vec<PathBuf>>,
}

pub const WORKSPACE: &str = "/workspace";
pub const PAYLOADS: &str = "/pikaci/payloads";
pub const ARTIFACTS: &str = "/pikaci/artifacts";
pub const HOME: &str = "/pikaci/home";
pub const TMPDIR: &str = "/tmp";
pub const NIX_STORE: &str = "/nix/store";
pub const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

pub fn payload_path(device_prefix: &str) -> String {
    format!("{PAYLOADS}/{device_prefix}")
}

/// The guest environment: pikaci's variables, then the lane's `env` on top.
pub fn environment(run_id: &str, job_id: &str, lane_env: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut env: BTreeMap<String, String> = [
        ("PATH", PATH),
        ("HOME", HOME),
        ("TMPDIR", TMPDIR),
        ("LANG", "C.UTF-8"),
        ("CI", "true"),
        ("PIKACI", "1"),
        ("PIKACI_RUN_ID", run_id),
        ("PIKACI_JOB", job_id),
        ("PIKACI_WORKSPACE", WORKSPACE),
        ("PIKACI_PAYLOADS", PAYLOADS),
        ("PIKACI_ARTIFACTS", ARTIFACTS),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    env.extend(lane_env.iter().map(|(k, v)| (k.clone(), v.clone())));
    env
}
