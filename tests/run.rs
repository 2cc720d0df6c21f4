//! Runs end to end on the bwrap runtime: records, GC roots, failures, timeouts, output
//! formats.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;

fn lanes_fixture() -> tempfile::TempDir {
    require_nix();
    require_bwrap();
    copy_fixture(&fixture_path("lanes"))
}

#[test]
fn the_hello_example_passes_fails_and_keeps_its_report() {
    require_nix();
    require_bwrap();
    let dir = copy_fixture(&repo_root().join("examples/hello"));
    // The example has no inputs and builds with the host's /bin/sh and tools (coreutils,
    // sed), which Nix's sandbox hides: it runs with the sandbox off, as on the Debian hosts
    // its quickstart is written for.
    let flake = format!("path:{}", dir.path().display());
    let out: Run = pikaci()
        .env("NIX_CONFIG", "sandbox = false")
        .args(["run", "--all", "--runtime", "bwrap", "--flake", &flake])
        .output()
        .unwrap()
        .into();
    assert_eq!(out.code, 1, "one lane fails on purpose: {out:?}");
    assert!(out.stdout.contains("[unit] test greet(world) ... ok"), "{}", out.stdout);
    assert!(out.stdout.contains("[pending] test greet() ... FAILED"), "{}", out.stdout);
    assert!(out.stdout.contains("report line 3000 of 3000"), "guest output is streamed");
    let run = only_run(dir.path());
    let record = read_json(&run.join("run.json"));
    assert_eq!(record["status"], "failed");
    assert_eq!(job_status(&record, "unit"), "passed");
    assert_eq!(job_status(&record, "pending"), "failed");
    assert_eq!(job_status(&record, "report"), "passed");
    let report = std::fs::read_to_string(run.join("jobs/report/artifacts/report.txt")).unwrap();
    assert_eq!(report.lines().count(), 3000);
    let summary = read_json(&run.join("jobs/report/artifacts/summary.json"));
    assert_eq!(summary["job"], "report");
    let guest_log = std::fs::read_to_string(run.join("jobs/report/guest.log")).unwrap();
    assert!(guest_log.lines().count() >= 3000);
}

fn link_target(p: &Path) -> PathBuf {
    std::fs::read_link(p).unwrap_or_else(|e| panic!("{} is not a link: {e}", p.display()))
}

#[test]
fn payloads_are_registered_gc_roots_and_the_job_record_can_reproduce_them() {
    let dir = lanes_fixture();
    let out = run_in(dir.path(), &["run", "view", "--runtime", "bwrap"]);
    assert_eq!(out.code, 0, "{out:?}");
    let run = only_run(dir.path());
    let job_dir = run.join("jobs/view");
    let job = read_json(&job_dir.join("job.json"));
    assert_eq!(job["schema_version"], 1);
    assert_eq!(job["status"], "passed");
    assert!(job["nix_version"].as_str().unwrap().starts_with("nix (Nix) 2."), "{job:#}");
    let staged = job_dir.join("staged-linux-rust");

    let payloads = job["payloads"].as_array().unwrap();
    let names: Vec<&str> = payloads.iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["workspace-deps", "workspace-build", "extra"]);
    let deps = &payloads[0];
    assert!(deps["drv_path"].as_str().unwrap().ends_with("-fixture-deps.drv"));
    // Both outputs of the two-output derivation are rooted, with the names Nix gives the
    // outputs of the lane's payloads realized at once (the first payload's `.gcroot`,
    // `.gcroot-<output>`, then `.gcroot-2`, ...), whether they were built or not; and
    // each output has a link named after its payload that leads there.
    let out_path = deps["outputs"]["out"].as_str().unwrap();
    let dev_path = deps["outputs"]["dev"].as_str().unwrap();
    assert_eq!(link_target(&staged.join(".gcroot")), Path::new(out_path));
    assert_eq!(link_target(&staged.join(".gcroot-dev")), Path::new(dev_path));
    assert_eq!(link_target(&staged.join(".gcroot-2")), Path::new(payloads[1]["mounted"].as_str().unwrap()));
    assert_eq!(link_target(&staged.join(".gcroot-3")), Path::new(payloads[2]["mounted"].as_str().unwrap()));
    for (named, root) in [
        ("workspace-deps", ".gcroot"),
        ("workspace-deps-dev", ".gcroot-dev"),
        ("workspace-build", ".gcroot-2"),
        ("extra", ".gcroot-3"),
    ] {
        assert_eq!(link_target(&staged.join(named)), Path::new(root), "{named}");
    }
    let roots = |i: usize| -> Vec<PathBuf> {
        payloads[i]["roots"].as_array().unwrap().iter().map(|r| PathBuf::from(r.as_str().unwrap())).collect()
    };
    assert_eq!(roots(0), [staged.join(".gcroot"), staged.join(".gcroot-dev")]);
    assert_eq!(roots(2), [staged.join(".gcroot-3")]);
    assert_eq!(deps["mounted"], out_path);
    assert_eq!(deps["manifest"]["kind"], "workspace-deps");

    // Registered with Nix: an indirect root in gcroots/auto points at each link.
    let auto: Vec<PathBuf> =
        std::fs::read_dir("/nix/var/nix/gcroots/auto").unwrap().map(|e| link_target(&e.unwrap().path())).collect();
    for link in [".gcroot", ".gcroot-dev", ".gcroot-2", ".gcroot-3"] {
        assert!(auto.contains(&staged.join(link)), "{link} is not a registered GC root");
    }
    // And Nix agrees they are alive.
    let dead = std::process::Command::new("nix-store").args(["--gc", "--print-dead"]).output().unwrap();
    let dead = String::from_utf8_lossy(&dead.stdout);
    assert!(!dead.contains(out_path) && !dead.contains(dev_path), "rooted payloads listed as dead");

    let reproduce: Vec<&str> = job["reproduce"].as_array().unwrap().iter().map(|l| l.as_str().unwrap()).collect();
    assert!(
        reproduce
            .iter()
            .any(|l| l.contains("nix-store --realise") && l.contains("-fixture-deps.drv") && l.contains("--add-root"))
    );
    assert!(
        reproduce.last().unwrap().contains("bwrap") && reproduce.last().unwrap().contains("/pikaci/payloads/extra")
    );
    let host_log = std::fs::read_to_string(job_dir.join("host.log")).unwrap();
    assert!(host_log.contains("/nix-store --realise /nix/store/"), "{host_log}");
}

#[test]
fn payloads_valid_already_are_rooted_by_one_nix_command_and_their_roots_hold() {
    let dir = lanes_fixture();
    // The first run builds the payloads; the second finds every output valid.
    assert_eq!(run_in(dir.path(), &["run", "view", "--runtime", "bwrap"]).code, 0);
    let out = run_in(dir.path(), &["run", "view", "--runtime", "bwrap"]);
    assert_eq!(out.code, 0, "{out:?}");
    // Only the second run is kept: its roots alone hold the payloads now.
    assert_eq!(run_in(dir.path(), &["gc", "--keep", "1"]).code, 0);
    let run = only_run(dir.path());
    let job_dir = run.join("jobs/view");
    let host_log = std::fs::read_to_string(job_dir.join("host.log")).unwrap();
    // The host log writes down every command: one Nix command, and no realisation.
    let program = |l: &str| l.split_once("] $ ").and_then(|(_, cmd)| cmd.split(' ').next()).map(str::to_string);
    let nix_commands: Vec<&str> = host_log
        .lines()
        .filter(|l| program(l).is_some_and(|p| p.ends_with("/nix-store") || p.ends_with("/nix")))
        .collect();
    assert_eq!(nix_commands.len(), 1, "{host_log}");
    assert!(nix_commands[0].contains("--add-root") && !nix_commands[0].contains("--realise"), "{host_log}");
    assert!(!job_dir.join("payload-workspace-build.log").exists(), "nothing was built, no build log is kept");
    let events = std::fs::read_to_string(run.join("events.jsonl")).unwrap();
    assert!(!events.contains("payload_build_started"), "{events}");
    assert_eq!(events.matches("\"event\":\"payload_realized\"").count(), 3, "{events}");

    let job = read_json(&job_dir.join("job.json"));
    let staged = job_dir.join("staged-linux-rust");
    for payload in job["payloads"].as_array().unwrap() {
        for (output, path) in payload["outputs"].as_object().unwrap() {
            let path = path.as_str().unwrap();
            // Nix lists this job's link among the path's roots...
            let roots = std::process::Command::new("nix-store").args(["--query", "--roots", path]).output().unwrap();
            let roots = String::from_utf8_lossy(&roots.stdout);
            let rooted = roots.lines().any(|l| l.starts_with(&*staged.to_string_lossy()) && l.ends_with(path));
            assert!(rooted, "{} `{output}`: {path} is not rooted in the job:\n{roots}", payload["name"]);
            // ...and refuses to delete it.
            let delete = std::process::Command::new("nix-store").args(["--delete", path]).output().unwrap();
            assert!(!delete.status.success(), "{path} could be deleted: {delete:?}");
            assert!(Path::new(path).exists());
        }
    }
    let reproduce = job["reproduce"][0].as_str().unwrap();
    assert!(reproduce.contains("nix-store --realise") && reproduce.contains("-fixture-extra.drv"), "{reproduce}");
}

#[test]
fn a_payload_that_fails_to_build_is_a_failed_job_with_the_build_log_tail() {
    let dir = lanes_fixture();
    let out = run_in(dir.path(), &["run", "broken", "--runtime", "bwrap"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stdout.contains("error[E0308]: mismatched types"), "the error shows the build log: {}", out.stdout);
    let run = only_run(dir.path());
    let record = read_json(&run.join("run.json"));
    assert_eq!(job_status(&record, "broken"), "failed");
    let job = read_json(&run.join("jobs/broken/job.json"));
    let message = job["message"].as_str().unwrap();
    assert!(message.contains("realize payload `workspace-build` of lane `broken`"), "{message}");
    assert!(message.contains("error[E0308]: mismatched types in src/lib.rs"), "{message}");
    let host_log = std::fs::read_to_string(run.join("jobs/broken/host.log")).unwrap();
    assert!(host_log.contains("error[E0308]: mismatched types"), "{host_log}");
}

#[test]
fn a_manifest_path_that_escapes_the_payload_fails_the_job_naming_the_path() {
    let dir = lanes_fixture();
    let out = run_in(dir.path(), &["run", "escaping", "--runtime", "bwrap"]);
    assert_eq!(out.code, 1, "{out:?}");
    let job = read_json(&only_run(dir.path()).join("jobs/escaping/job.json"));
    assert_eq!(job["status"], "failed");
    assert!(job["message"].as_str().unwrap().contains("entrypoint `../../etc/passwd` contains `..`"), "{job:#}");
}

#[test]
fn a_timeout_kills_the_whole_sandbox_and_is_recorded() {
    let dir = lanes_fixture();
    let started = Instant::now();
    let out = run_in(dir.path(), &["run", "slow", "--runtime", "bwrap"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(started.elapsed() < Duration::from_secs(30), "the 2 s timeout did not fire");
    let record = read_json(&only_run(dir.path()).join("run.json"));
    assert_eq!(job_status(&record, "slow"), "timed_out");
    assert!(out.stdout.contains("TIMEOUT slow"), "{}", out.stdout);
    assert!(sandboxes_of(dir.path()).is_empty(), "sandbox left behind: {:?}", sandboxes_of(dir.path()));
}

#[test]
fn jsonl_streams_each_event_as_it_happens() {
    let dir = lanes_fixture();
    let mut child = pikaci()
        .args(["run", "fail", "slow", "--runtime", "bwrap", "--output", "jsonl", "-j", "2", "--flake"])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut events: Vec<serde_json::Value> = Vec::new();
    // Read until `fail` has finished: the run (with `slow` sleeping) must still be going.
    for line in lines.by_ref() {
        let event: serde_json::Value = serde_json::from_str(&line.unwrap()).unwrap();
        let done = event["event"] == "job_finished" && event["job_id"] == "fail";
        events.push(event);
        if done {
            break;
        }
    }
    assert!(child.try_wait().unwrap().is_none(), "events must arrive while the run goes on");
    events.extend(lines.map(|l| serde_json::from_str(&l.unwrap()).unwrap()));
    assert_eq!(child.wait().unwrap().code(), Some(1));
    assert!(events.iter().all(|e| e["schema_version"] == 1));
    let names: Vec<&str> = events.iter().map(|e| e["event"].as_str().unwrap()).collect();
    assert_eq!(names.first(), Some(&"run_started"));
    // The fixture's payloads are built for this test (its `salt`): their builds stream too.
    for build in ["payload_build_started", "payload_build_progress", "payload_build_finished"] {
        assert!(names.contains(&build), "{build}: {names:?}");
    }
    assert_eq!(names.last(), Some(&"run_finished"));
    for job in ["fail", "slow"] {
        // (The payloads' builds are told too, by the job that built them: tests/progress.rs.)
        let of_job: Vec<&str> = events
            .iter()
            .filter(|e| e["job_id"] == job)
            .map(|e| e["event"].as_str().unwrap())
            .filter(|e| !e.starts_with("payload_build_"))
            .collect();
        assert_eq!(of_job, ["job_started", "payload_realized", "payload_realized", "job_finished"], "{job}");
    }
    let fail = events.iter().find(|e| e["event"] == "job_finished" && e["job_id"] == "fail").unwrap();
    assert_eq!(fail["status"], "failed");
    assert_eq!(fail["exit_code"], 7);
    let last = events.last().unwrap();
    assert_eq!(last["status"], "failed");
    assert_eq!(last["counts"]["timed_out"], 1);
    // events.jsonl holds the same stream.
    let log = std::fs::read_to_string(only_run(dir.path()).join("events.jsonl")).unwrap();
    assert_eq!(log.lines().count(), events.len());
}

#[test]
fn json_output_is_the_run_record_and_guest_output_goes_to_stderr() {
    let dir = lanes_fixture();
    let out = run_in(dir.path(), &["run", "fail", "--runtime", "bwrap", "--output", "json"]);
    assert_eq!(out.code, 1);
    let record = out.json();
    assert_eq!(record["schema_version"], 1);
    assert_eq!(record["status"], "failed");
    assert_eq!(record["jobs"][0]["exit_code"], 7);
    assert_eq!(record["plan"][0]["lane"]["id"], "fail");
    assert!(out.stderr.contains("[fail] failing with 7"), "{}", out.stderr);
}

#[test]
fn junit_from_any_lane_is_recorded_and_bad_files_are_warnings() {
    let dir = lanes_fixture();
    let out = run_in(dir.path(), &["run", "junit", "junit-lies", "--runtime", "bwrap"]);
    assert_eq!(out.code, 1, "the commands' status decides: {out:?}");
    let run = only_run(dir.path());
    let tests = read_json(&run.join("jobs/junit/job.json"))["tests"].clone();
    assert_eq!(
        (tests["passed"].as_u64(), tests["failed"].as_u64(), tests["skipped"].as_u64()),
        (Some(1), Some(1), Some(1)),
        "{tests}"
    );
    assert_eq!(tests["failures"][0]["name"], "checks::two");
    assert_eq!(tests["failures"][0]["suite"], "shell");
    assert_eq!(tests["failures"][0]["message"], "expected 1, got 2");
    assert!(tests["failures"][0]["output"].as_str().unwrap().contains("line two"), "{tests}");
    let warnings: Vec<&str> = tests["warnings"].as_array().unwrap().iter().map(|w| w.as_str().unwrap()).collect();
    assert_eq!(warnings.len(), 3, "{warnings:?}");
    for name in ["bad.xml", "link.xml", "huge.xml"] {
        assert!(warnings.iter().any(|w| w.contains(name)), "no warning names {name}: {warnings:?}");
    }
    assert!(tests.get("inconsistent").is_none(), "{tests}");
    // The symlink was not followed: nothing of /etc/passwd is in the record.
    assert!(!tests.to_string().contains("root:x:0"), "{tests}");

    let lies = read_json(&run.join("jobs/junit-lies/job.json"));
    assert_eq!(lies["status"], "passed", "the exit code decides the job");
    assert_eq!(lies["tests"]["failed"], 1);
    assert_eq!(lies["tests"]["inconsistent"], true, "{lies}");
    // Lanes that write no JUnit have no `tests` at all.
    let plain = run_in(dir.path(), &["run", "fail", "--runtime", "bwrap", "--output", "json"]);
    assert_eq!(plain.code, 1);
    assert!(plain.json()["jobs"][0].get("tests").is_none(), "{}", plain.stdout);
}
