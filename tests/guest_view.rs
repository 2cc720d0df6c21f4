//! One suite, two runtimes: bubblewrap and Incus must give a lane the same guest view
//! (design.md, "Hand-off"), the same exit codes and the same timeout behaviour.

mod common;

use common::*;

/// Every line `ci/check-view.sh` prints when the view is right.
const CHECKS: &[&str] = &[
    "ok: cwd is /workspace",
    "ok: snapshot is visible",
    "ok: /workspace is read-only",
    "ok: the state root is not in the snapshot",
    "ok: payload workspace-deps is visible",
    "ok: payload workspace-deps is read-only",
    "ok: payload workspace-build is visible",
    "ok: payload workspace-build is read-only",
    "ok: payload extra is visible",
    "ok: payload extra is read-only",
    "ok: /nix/store is read-only",
    "ok: a store-closure binary runs",
    "ok: the manifest mount is visible",
    "ok: /pikaci/artifacts is writable",
    "ok: HOME is writable",
    "ok: TMPDIR is writable",
    "ok: the lane's env is set",
    "ok: PIKACI_JOB is the job",
    "ok: PIKACI_LANE is the lane",
    "ok: PIKACI_RUNTIME names the runtime",
    "ok: PIKACI_ARTIFACTS is set",
    "stderr line",
    "VIEW OK",
];

fn require(runtime: &str) {
    require_nix();
    match runtime {
        "bwrap" => require_bwrap(),
        "incus" => require_incus(),
        other => panic!("no runtime {other}"),
    }
}

fn guest_view(runtime: &str) {
    require(runtime);
    let dir = copy_fixture(&fixture_path("lanes"));
    let out = run_in(dir.path(), &["run", "view", "--runtime", runtime]);
    assert_eq!(out.code, 0, "{out:?}");
    let run = only_run(dir.path());
    assert_eq!(read_json(&run.join("run.json"))["runtime"], runtime);
    let log = std::fs::read_to_string(run.join("jobs/view/guest.log")).unwrap();
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines, CHECKS, "guest view on {runtime}");
    // What the lane left in /pikaci/artifacts is in the job's artifacts directory.
    assert_eq!(std::fs::read_to_string(run.join("jobs/view/artifacts/kept.txt")).unwrap(), "kept\n");
    // The guest knows which runtime it runs on.
    assert_eq!(std::fs::read_to_string(run.join("jobs/view/artifacts/runtime.txt")).unwrap(), format!("{runtime}\n"));
    // And it streamed live to the user.
    assert!(out.stdout.contains("[view] VIEW OK"), "{}", out.stdout);
}

fn exit_code_and_timeout(runtime: &str) {
    require(runtime);
    let dir = copy_fixture(&fixture_path("lanes"));
    let out = run_in(dir.path(), &["run", "fail", "slow", "--runtime", runtime, "--output", "json"]);
    assert_eq!(out.code, 1, "{out:?}");
    let record = out.json();
    let fail = record["jobs"].as_array().unwrap().iter().find(|j| j["job_id"] == "fail").unwrap();
    assert_eq!(fail["status"], "failed");
    assert_eq!(fail["exit_code"], 7);
    assert_eq!(job_status(&record, "slow"), "timed_out");
    let slow_ms = record["jobs"].as_array().unwrap().iter().find(|j| j["job_id"] == "slow").unwrap()["duration_ms"]
        .as_u64()
        .unwrap();
    assert!(slow_ms < 20_000, "timeout of 2 s took {slow_ms} ms on {runtime}");
}

#[test]
fn bwrap_gives_the_guest_view() {
    guest_view("bwrap");
}

#[test]
fn incus_gives_the_guest_view() {
    guest_view("incus");
}

#[test]
fn bwrap_keeps_exit_codes_and_enforces_timeouts() {
    exit_code_and_timeout("bwrap");
}

#[test]
fn incus_keeps_exit_codes_and_enforces_timeouts() {
    exit_code_and_timeout("incus");
}
