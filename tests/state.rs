//! The state root: inspecting runs, corrupt records, runs that die or are interrupted,
//! garbage collection and reruns.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn fixture() -> tempfile::TempDir {
    require_nix();
    require_bwrap();
    copy_fixture(&fixture_path("lanes"))
}

fn spawn_run(dir: &Path, lanes: &[&str]) -> Child {
    pikaci()
        .arg("run")
        .args(lanes)
        .args(["--runtime", "bwrap", "--flake"])
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Wait until the `slow` lane's guest has printed `started`; return its run directory.
fn wait_until_slow_runs(dir: &Path) -> PathBuf {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(run) = std::fs::read_dir(dir.join(".pikaci/runs")).ok().and_then(|mut r| r.next()) {
            let run = run.unwrap().path();
            if std::fs::read_to_string(run.join("jobs/slow/guest.log")).is_ok_and(|l| l.contains("started")) {
                return run;
            }
        }
        assert!(Instant::now() < deadline, "the slow lane never started");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn signal(child: &Child, sig: &str) {
    let ok = std::process::Command::new("kill").args([sig, &child.id().to_string()]).status().unwrap().success();
    assert!(ok);
}

#[test]
fn list_status_and_logs_show_a_finished_run() {
    let dir = fixture();
    let out = run_in(dir.path(), &["run", "fail", "view", "--runtime", "bwrap"]);
    assert_eq!(out.code, 1);
    let run_id = only_run(dir.path()).file_name().unwrap().to_string_lossy().into_owned();

    let list = run_in(dir.path(), &["list"]);
    assert_eq!(list.code, 0);
    assert!(
        list.stdout.lines().nth(1).unwrap().starts_with(&format!("{run_id}  failed  1 failed, 1 passed")),
        "{}",
        list.stdout
    );
    let list = run_in(dir.path(), &["list", "--json"]).json();
    assert_eq!(list[0]["run_id"], run_id.as_str());

    let status = run_in(dir.path(), &["status", "latest"]);
    assert_eq!(status.code, 1, "status exits as the run did");
    assert!(status.stdout.contains(&format!("run {run_id}: failed")), "{}", status.stdout);
    assert!(status.stdout.contains("failed       fail exit 7"), "{}", status.stdout);
    let status = run_in(dir.path(), &["status", &run_id[..15], "--json"]).json();
    assert_eq!(status["run_id"], run_id.as_str());

    let logs = run_in(dir.path(), &["logs", &run_id, "--job", "fail"]);
    assert_eq!(logs.code, 0);
    assert_eq!(logs.stdout, "failing with 7\n");
    let all = run_in(dir.path(), &["logs", &run_id]);
    assert!(all.stdout.contains("==> fail: guest.log <==") && all.stdout.contains("VIEW OK"), "{}", all.stdout);
    let host = run_in(dir.path(), &["logs", &run_id, "--job", "view", "--host"]);
    assert!(host.stdout.contains("nix-store --realise"), "{}", host.stdout);

    let bad_job = run_in(dir.path(), &["logs", &run_id, "--job", "nope"]);
    assert_eq!(bad_job.code, 2);
    assert!(
        bad_job.stderr.contains("has no job `nope`") && bad_job.stderr.contains("its jobs are: fail, view"),
        "{}",
        bad_job.stderr
    );
    let bad_run = run_in(dir.path(), &["status", "19990101"]);
    assert_eq!(bad_run.code, 2);
    assert!(bad_run.stderr.contains("unknown run `19990101`"), "{}", bad_run.stderr);
}

#[test]
fn a_corrupt_run_record_is_reported_and_the_other_runs_stay_readable() {
    let dir = fixture();
    assert_eq!(run_in(dir.path(), &["run", "view", "--runtime", "bwrap"]).code, 0);
    assert_eq!(run_in(dir.path(), &["run", "view", "--runtime", "bwrap"]).code, 0);
    let runs = dir.path().join(".pikaci/runs");
    let mut ids: Vec<String> =
        std::fs::read_dir(&runs).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    ids.sort();
    std::fs::write(runs.join(&ids[0]).join("run.json"), "{\"schema_version\": 1, \"run_id\": ").unwrap();

    let status = run_in(dir.path(), &["status", &ids[0]]);
    assert_eq!(status.code, 2, "{status:?}");
    assert!(status.stderr.contains("is corrupt"), "{}", status.stderr);
    assert!(!status.stderr.contains("panicked"));
    let list = run_in(dir.path(), &["list"]);
    assert_eq!(list.code, 0, "{list:?}");
    assert!(list.stdout.contains(&format!("{}  corrupt", ids[0])), "{}", list.stdout);
    assert!(list.stdout.contains(&format!("{}  passed", ids[1])), "{}", list.stdout);
    // Its logs are still there.
    let logs = run_in(dir.path(), &["logs", &ids[1], "--job", "view"]);
    assert!(logs.stdout.contains("VIEW OK"));
    // And the damaged run's logs stay readable, as the hint says.
    let logs = run_in(dir.path(), &["logs", &ids[0]]);
    assert_eq!(logs.code, 0, "{logs:?}");
    assert!(logs.stdout.contains("VIEW OK"), "{logs:?}");
    assert!(logs.stderr.contains("showing the logs found under `jobs/`"), "{}", logs.stderr);
    let logs = run_in(dir.path(), &["logs", &ids[0], "--job", "view", "--host"]);
    assert_eq!(logs.code, 0, "{logs:?}");
}

#[test]
fn a_run_whose_process_died_shows_as_interrupted() {
    let dir = fixture();
    let mut child = spawn_run(dir.path(), &["slow"]);
    let run = wait_until_slow_runs(dir.path());
    signal(&child, "-KILL");
    child.wait().unwrap();
    // The sandbox dies with its parent.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sandboxes_of(dir.path()).is_empty() {
        assert!(Instant::now() < deadline, "sandbox outlived pikaci");
        std::thread::sleep(Duration::from_millis(50));
    }
    let on_disk = read_json(&run.join("run.json"));
    assert_eq!(on_disk["status"], "running", "the record was left as the process died");
    let status = run_in(dir.path(), &["status", "latest", "--json"]).json();
    assert_eq!(status["status"], "interrupted");
    assert_eq!(job_status(&status, "slow"), "interrupted");
    let list = run_in(dir.path(), &["list"]);
    assert!(list.stdout.contains("interrupted"), "{}", list.stdout);
}

#[test]
fn ctrl_c_records_the_run_as_interrupted_and_removes_the_sandbox() {
    let dir = fixture();
    let mut child = spawn_run(dir.path(), &["slow", "view"]);
    let run = wait_until_slow_runs(dir.path());
    assert!(!sandboxes_of(dir.path()).is_empty(), "the sandbox runs before Ctrl-C");
    signal(&child, "-INT");
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    assert!(sandboxes_of(dir.path()).is_empty());
    let record = read_json(&run.join("run.json"));
    assert_eq!(record["status"], "interrupted");
    assert_eq!(job_status(&record, "slow"), "interrupted");
    let events = std::fs::read_to_string(run.join("events.jsonl")).unwrap();
    assert!(events.lines().last().unwrap().contains("\"event\":\"run_finished\""), "{events}");
}

#[test]
fn logs_follow_prints_until_the_run_ends() {
    let dir = fixture();
    let mut child = spawn_run(dir.path(), &["slow"]);
    let run = wait_until_slow_runs(dir.path());
    let run_id = run.file_name().unwrap().to_string_lossy().into_owned();
    let follow = run_in(dir.path(), &["logs", &run_id, "--job", "slow", "--follow"]);
    // It returned because the run ended (the lane times out after 2 s), not before: the
    // record is final by the time `--follow` stops.
    assert_eq!(read_json(&run.join("run.json"))["status"], "failed");
    assert_eq!(follow.code, 0, "{follow:?}");
    assert_eq!(follow.stdout, "started\n");
    child.wait().unwrap();
}

fn runs(dir: &Path) -> Vec<String> {
    let mut ids: Vec<String> = std::fs::read_dir(dir.join(".pikaci/runs"))
        .map(|r| r.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    ids.sort();
    ids
}

#[test]
fn gc_keeps_the_newest_runs_and_releases_the_others_roots_and_snapshots() {
    let dir = fixture();
    for i in 0..3 {
        std::fs::write(dir.path().join("marker.txt"), format!("marker-content {i}")).unwrap();
        assert_eq!(run_in(dir.path(), &["run", "fail", "--runtime", "bwrap"]).code, 1);
    }
    let before = runs(dir.path());
    assert_eq!(before.len(), 3);
    let old_links: Vec<PathBuf> = before[..2]
        .iter()
        .map(|id| dir.path().join(".pikaci/runs").join(id).join("jobs/fail/staged-linux-rust/.gcroot-2"))
        .collect();
    assert!(old_links.iter().all(|l| l.exists()));
    assert_eq!(std::fs::read_dir(dir.path().join(".pikaci/snapshots")).unwrap().count(), 3);

    let out = run_in(dir.path(), &["gc", "--keep", "1"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.starts_with("removed 2 runs (and their GC roots), 2 snapshots"), "{}", out.stdout);
    assert_eq!(runs(dir.path()), before[2..]);
    assert_eq!(std::fs::read_dir(dir.path().join(".pikaci/snapshots")).unwrap().count(), 1);
    // The roots Nix knew about are gone with their links: Nix no longer lists them.
    let roots = std::process::Command::new("nix-store").args(["--gc", "--print-roots"]).output().unwrap();
    let roots = String::from_utf8_lossy(&roots.stdout);
    for link in &old_links {
        assert!(!roots.contains(&*link.to_string_lossy()), "{} is still a root", link.display());
    }
    let kept = dir.path().join(".pikaci/runs").join(&before[2]).join("jobs/fail/staged-linux-rust/.gcroot-2");
    assert!(roots.contains(&*kept.to_string_lossy()), "the kept run's root must stay");
    // The kept run can still be replayed.
    assert_eq!(run_in(dir.path(), &["rerun", "latest"]).code, 1);
}

#[test]
fn gc_never_removes_a_live_run() {
    let dir = fixture();
    let mut child = spawn_run(dir.path(), &["slow"]);
    let run = wait_until_slow_runs(dir.path());
    let out = run_in(dir.path(), &["gc", "--keep", "0"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("left 1 live run alone"), "{}", out.stdout);
    assert!(run.join("run.json").exists());
    assert_eq!(child.wait().unwrap().code(), Some(1), "the run finished normally (timed out)");
    let out = run_in(dir.path(), &["gc", "--keep", "0"]);
    assert!(out.stdout.starts_with("removed 1 run"), "{}", out.stdout);
    assert!(!run.exists());
}

#[test]
fn rerun_replays_the_recorded_plan_on_the_recorded_snapshot() {
    let dir = fixture();
    assert_eq!(run_in(dir.path(), &["run", "fail", "view", "--runtime", "bwrap"]).code, 1);
    let first = runs(dir.path())[0].clone();
    let first_record = read_json(&dir.path().join(".pikaci/runs").join(&first).join("run.json"));
    // The work tree moves on; a rerun still sees the old source.
    std::fs::write(dir.path().join("marker.txt"), "something else").unwrap();

    let out = run_in(dir.path(), &["rerun", &first, "--output", "json"]);
    assert_eq!(out.code, 1, "{out:?}");
    let again = out.json();
    assert_eq!(again["rerun_of"], first.as_str());
    assert_eq!(again["snapshot"]["id"], first_record["snapshot"]["id"]);
    assert_eq!(again["plan"], first_record["plan"]);
    assert_eq!(job_status(&again, "view"), "passed", "the old snapshot still has the marker");

    let out = run_in(dir.path(), &["rerun", &first, "--failed", "--output", "json"]);
    assert_eq!(out.code, 1);
    let failed_only = out.json();
    let jobs: Vec<&str> =
        failed_only["jobs"].as_array().unwrap().iter().map(|j| j["job_id"].as_str().unwrap()).collect();
    assert_eq!(jobs, ["fail"]);

    let none = run_in(dir.path(), &["rerun", "nope"]);
    assert_eq!(none.code, 2);
}

#[test]
fn a_rerun_whose_derivations_were_collected_roots_the_recorded_outputs() {
    // Nix keeps a rooted output's `.drv` by default (`keep-derivations`); a host that does
    // not can collect them while the run's roots keep the outputs. A rerun then roots the
    // recorded outputs, one command each (nothing can be built without the `.drv`s).
    let dir = fixture();
    assert_eq!(run_in(dir.path(), &["run", "view", "--runtime", "bwrap"]).code, 0);
    let first = runs(dir.path())[0].clone();
    let job = read_json(&dir.path().join(".pikaci/runs").join(&first).join("jobs/view/job.json"));
    let drvs: Vec<&str> = job["payloads"].as_array().unwrap().iter().map(|p| p["drv_path"].as_str().unwrap()).collect();
    let deleted = std::process::Command::new("nix-store")
        .arg("--delete")
        .args(&drvs)
        .env("NIX_CONFIG", "keep-derivations = false")
        .output()
        .unwrap();
    assert!(deleted.status.success(), "{deleted:?}");
    assert!(drvs.iter().all(|d| !Path::new(d).exists()), "{drvs:?}");

    let out = run_in(dir.path(), &["rerun", &first, "--output", "json"]);
    assert_eq!(out.code, 0, "{out:?}");
    let again = out.json();
    assert_eq!(job_status(&again, "view"), "passed");
    let run_dir = dir.path().join(".pikaci/runs").join(again["run_id"].as_str().unwrap());
    let host_log = std::fs::read_to_string(run_dir.join("jobs/view/host.log")).unwrap();
    assert!(host_log.contains("their recorded outputs are rooted instead"), "{host_log}");
    let outputs: usize =
        job["payloads"].as_array().unwrap().iter().map(|p| p["outputs"].as_object().unwrap().len()).sum();
    assert_eq!(host_log.matches("/nix-store --realise /nix/store/").count(), outputs, "{host_log}");
    // The same link names as a realisation of the `.drv`s gives them.
    for name in ["workspace-deps", "workspace-deps-dev", "workspace-build", "extra"] {
        let link = run_dir.join("jobs/view/staged-linux-rust").join(name);
        assert!(link.exists(), "{} does not lead to a root", link.display());
    }
}

#[test]
fn rerun_failed_of_a_run_whose_process_died_reruns_its_interrupted_jobs() {
    let dir = fixture();
    let mut child = spawn_run(dir.path(), &["slow", "view"]);
    let run = wait_until_slow_runs(dir.path());
    signal(&child, "-KILL");
    child.wait().unwrap();
    let first = run.file_name().unwrap().to_string_lossy().into_owned();
    assert_eq!(read_json(&run.join("run.json"))["status"], "running", "the record was left as the process died");

    // `slow` was interrupted when pikaci died: it is a job to rerun. (It sleeps for
    // minutes, so the rerun is stopped as soon as it has started it.)
    let rerun = pikaci()
        .args(["rerun", &first, "--failed", "--output", "jsonl", "--flake"])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let second = loop {
        let newer: Vec<String> = runs(dir.path()).into_iter().filter(|r| *r != first).collect();
        if let Some(r) = newer.first()
            && std::fs::read_to_string(dir.path().join(".pikaci/runs").join(r).join("jobs/slow/guest.log"))
                .is_ok_and(|l| l.contains("started"))
        {
            break r.clone();
        }
        assert!(Instant::now() < deadline, "the rerun never started the interrupted job");
        std::thread::sleep(Duration::from_millis(50));
    };
    signal(&rerun, "-INT");
    let out = rerun.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", String::from_utf8_lossy(&out.stderr));
    let record = read_json(&dir.path().join(".pikaci/runs").join(&second).join("run.json"));
    assert_eq!(record["rerun_of"], first.as_str());
    let jobs: Vec<&str> = record["jobs"].as_array().unwrap().iter().map(|j| j["job_id"].as_str().unwrap()).collect();
    // `view` passed before pikaci was killed (or never started: then it is interrupted
    // too, and rerun as well); `slow` is rerun in any case.
    assert!(jobs.contains(&"slow"), "{jobs:?}");
}

#[test]
fn a_panic_in_a_job_is_recorded_as_an_internal_error_with_its_message() {
    let dir = fixture();
    // A debug build honours this test-only trigger (tests run the debug binary).
    let out: Run = pikaci()
        .args(["run", "view", "fail", "--runtime", "bwrap", "--jobs", "1", "--flake"])
        .arg(dir.path())
        .env("PIKACI_DEBUG_PANIC_IN_JOB", "view")
        .output()
        .unwrap()
        .into();
    assert_eq!(out.code, 70, "a bug has its own exit code: {out:?}");
    let bug_lines: Vec<&str> = out.stderr.lines().filter(|l| l.contains("bug in pikaci")).collect();
    assert_eq!(bug_lines.len(), 2, "one error line and one line that says it is a bug: {}", out.stderr);
    assert!(out.stderr.contains("test-only panic in job `view`"), "{}", out.stderr);
    assert!(!out.stderr.contains("panicked at"), "no Rust panic report reaches the user: {}", out.stderr);
    let run = only_run(dir.path());
    let record = read_json(&run.join("run.json"));
    assert_eq!(record["status"], "error", "the run is recorded, not left running");
    assert!(record["message"].as_str().unwrap().contains("test-only panic in job `view`"), "{record}");
    assert_eq!(job_status(&record, "view"), "error");
    // The other job still ran to its own end.
    assert_eq!(job_status(&record, "fail"), "failed");
    let job = read_json(&run.join("jobs/view/job.json"));
    assert_eq!(job["status"], "error");
    assert!(job["message"].as_str().unwrap().starts_with("internal error (a bug in pikaci): test-only panic"), "{job}");
    assert_eq!(run_in(dir.path(), &["status", "latest"]).code, 3);
}

/// The run recorded by the previous release (`tests/fixtures/state-v1`), put into a state
/// root beside a copy of its flake.
fn previous_release_state(dir: &Path) {
    let fixture = fixture_path("state-v1");
    let state = dir.join(".pikaci");
    for sub in ["runs", "snapshots"] {
        copy_tree(&fixture.join(sub), &state.join(sub));
    }
    let mut files = Vec::new();
    collect_files(&state.join("runs"), &mut files);
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let text =
            text.replace("@STATE_ROOT@", &state.display().to_string()).replace("@FLAKE@", &dir.display().to_string());
        std::fs::write(&file, text).unwrap();
    }
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            collect_files(&path, out);
        } else {
            out.push(path);
        }
    }
}

#[test]
fn a_run_recorded_by_the_previous_release_is_listed_shown_and_rerun() {
    let dir = fixture();
    previous_release_state(dir.path());
    let old = "20261126-201440-388-ec59";

    let list = run_in(dir.path(), &["list", "--json"]).json();
    assert_eq!(list[0]["run_id"], old);
    assert_eq!(list[0]["status"], "failed");

    let status = run_in(dir.path(), &["status", old, "--json"]);
    assert_eq!(status.code, 1, "a failed run's status exits 1: {status:?}");
    let status = status.json();
    assert_eq!(status["runtime"], "bwrap");
    assert_eq!(job_status(&status, "fail"), "failed");
    assert_eq!(job_status(&status, "view"), "passed");
    assert_eq!(status["plan"][0]["lane"]["id"], "fail");
    let text = run_in(dir.path(), &["status", old]).stdout;
    assert!(text.contains("runtime   bwrap"), "{text}");
    let logs = run_in(dir.path(), &["logs", old, "--job", "view"]);
    assert!(logs.stdout.contains("VIEW OK"), "{logs:?}");

    // Replayed from the record: the recorded plan on the recorded snapshot. Its `.drv`
    // files are made again from that snapshot (evaluation is deterministic), as on the
    // machine that recorded it.
    let snapshot = dir.path().join(".pikaci/snapshots/57b84cb37aa8c257c6685a7c7ec09fa8");
    let scratch = tempfile::tempdir().unwrap();
    let lanes: Run = pikaci()
        .arg("lanes")
        .arg("--flake")
        .arg(&snapshot)
        .arg("--state-root")
        .arg(scratch.path())
        .output()
        .unwrap()
        .into();
    assert_eq!(lanes.code, 0, "{lanes:?}");
    let out = run_in(dir.path(), &["rerun", old, "--failed", "--output", "json"]);
    assert_eq!(out.code, 1, "{out:?}");
    let again = out.json();
    assert_eq!(again["rerun_of"], old);
    assert_eq!(again["snapshot"]["id"], "57b84cb37aa8c257c6685a7c7ec09fa8");
    let jobs: Vec<&str> = again["jobs"].as_array().unwrap().iter().map(|j| j["job_id"].as_str().unwrap()).collect();
    assert_eq!(jobs, ["fail"]);
    assert_eq!(job_status(&again, "fail"), "failed");
}

#[test]
fn rerun_refuses_a_record_whose_names_would_leave_the_state_root() {
    let dir = fixture();
    assert_eq!(run_in(dir.path(), &["run", "fail", "--runtime", "bwrap"]).code, 1);
    let first = runs(dir.path())[0].clone();
    let run_json = dir.path().join(".pikaci/runs").join(&first).join("run.json");
    let original = read_json(&run_json);
    let escape = dir.path().join("outside");
    std::fs::create_dir(&escape).unwrap();
    let target = escape.join("x");
    type Edit = Box<dyn Fn(&mut serde_json::Value)>;
    let edits: [(&str, Edit); 3] = [
        (
            "has a payload name `../../../../outside/x`",
            Box::new(|r| r["plan"][0]["lane"]["payloads"][0]["name"] = "../../../../outside/x".into()),
        ),
        ("has a job id `../x`", Box::new(|r| r["plan"][0]["job_id"] = "../x".into())),
        ("names a snapshot outside the state root's `snapshots/`", Box::new(|r| r["snapshot"]["dir"] = "/etc".into())),
    ];
    for (why, edit) in edits {
        let mut record = original.clone();
        edit(&mut record);
        std::fs::write(&run_json, serde_json::to_vec(&record).unwrap()).unwrap();
        let out = run_in(dir.path(), &["rerun", &first]);
        assert_eq!(out.code, 2, "{out:?}");
        assert!(out.stderr.contains(&format!("cannot be replayed: its `run.json` {why}")), "{}", out.stderr);
        assert_eq!(runs(dir.path()).len(), 1, "a run was created");
        assert!(!target.exists() && !target.is_symlink(), "a link was made outside the state root");
    }
}
