//! The guest view, the same for every runtime:
//!
//! | guest path                          | what                         | access    |
//! |-------------------------------------|------------------------------|-----------|
//! | `/workspace`                        | the source snapshot          | read-only |
//! | `/pikaci/payloads/<device_prefix>`  | each staged payload          | read-only |
//! | `/nix/store`                        | the payloads' closure (bwrap), the host store (Incus) | read-only |
//! | `/pikaci/artifacts`                 | kept in `jobs/<job>/artifacts` | writable |
//! | `$HOME`, `$TMPDIR`                  | scratch                      | writable, discarded |

use std::collections::BTreeMap;

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
