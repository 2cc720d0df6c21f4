//! The lane library on a real Rust workspace (tests/fixtures/rust-workspace: a proc-macro
//! crate, a build script, an integration test reading a fixture file, a failing, an
//! ignored and a flaky test), compiled by the host's real cargo through a crane-shaped
//! stand-in (tests/fixtures/real-rust), run by pikaci with the real cargo-nextest on
//! bubblewrap and Incus, and compared with `cargo test` on the same source.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

use common::*;
use pikaci::results::{TestResults, read_junit_dir};

const SYSTEM: &str = "x86_64-linux";

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Nix with its sandbox off for these builds: the stand-in crane runs the host's C compiler
/// (cargo's linker) and the host's /bin/sh, which a sandboxed build cannot see (nixpkgs'
/// stdenv brings its own). The payloads are built here before pikaci runs, so pikaci finds
/// them valid whatever the machine's sandbox setting.
fn nix(args: &[&str]) -> Output {
    let (sub, rest) = args.split_first().unwrap();
    Command::new("nix")
        .args(["--extra-experimental-features", "nix-command flakes", sub])
        .args(if *sub == "build" { &["--option", "sandbox", "false"][..] } else { &[][..] })
        .args(rest)
        .output()
        .unwrap()
}

fn nix_ok(args: &[&str]) -> String {
    let out = nix(args);
    assert!(out.status.success(), "`nix {}` failed:\n{}", args.join(" "), text(&out.stderr));
    text(&out.stdout).trim().to_string()
}

fn attr(dir: &Path, a: &str) -> String {
    format!("path:{}#{a}", dir.display())
}

fn fixture() -> tempfile::TempDir {
    require_nix();
    let tools = host_rust::host_tools_json();
    let dir = copy_fixture(&fixture_path("real-rust"));
    copy_tree(&fixture_path("rust-workspace"), &dir.path().join("ws"));
    copy_tree(&repo_root().join("nix"), &dir.path().join("nix"));
    std::fs::write(dir.path().join("host-tools.json"), tools).unwrap();
    dir
}

/// Build a lane's payload; its store path and the seconds the build took.
fn build_payload(dir: &Path, lane: &str, payload: &str) -> (PathBuf, f64) {
    let a = attr(dir, &format!("pikaci.{SYSTEM}.lanes.{lane}.payloads.{payload}"));
    let start = Instant::now();
    let out = nix_ok(&["build", "--no-link", "--print-out-paths", &a]);
    (PathBuf::from(out.lines().last().unwrap()), start.elapsed().as_secs_f64())
}

/// Outcome of every test under `cargo test` on the fixture workspace (fresh target dir and
/// TMPDIR): "ok", "FAILED" or "ignored", by `<suite> <name>` as nextest names them.
fn cargo_test_outcomes(ws: &Path) -> BTreeMap<String, String> {
    let target = tempfile::tempdir().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new("cargo")
        .args(["test", "--workspace", "--no-fail-fast", "--offline"])
        .current_dir(ws)
        .env("CARGO_TARGET_DIR", target.path())
        .env("TMPDIR", tmp.path())
        .output()
        .unwrap();
    let stdout = text(&out.stdout);
    let stderr = text(&out.stderr);
    let mut suite = String::new();
    let mut outcomes = BTreeMap::new();
    // stderr names each binary ("Running unittests src/lib.rs (.../alpha-...)"), stdout its tests.
    let suites: Vec<String> = stderr
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Running "))
        .map(|l| {
            let (src, exe) = l.split_once(" (").unwrap();
            let bin = exe.rsplit('/').next().unwrap().rsplit_once('-').unwrap().0.replace('_', "-");
            if src.starts_with("unittests") { bin } else { format!("beta::{}", bin.replace('-', "_")) }
        })
        .collect();
    let mut next = suites.iter();
    for line in stdout.lines() {
        if line.starts_with("running ") {
            suite = next.next().cloned().unwrap_or_default();
        }
        if let Some((name, outcome)) = line.strip_prefix("test ").and_then(|rest| rest.split_once(" ... ")) {
            let outcome = outcome.split_whitespace().next().unwrap_or("").trim_end_matches(',').to_string();
            outcomes.insert(format!("{suite} {name}"), outcome);
        }
    }
    assert!(!out.status.success(), "the fixture has a failing test: cargo test must fail");
    outcomes
}

/// The results a job's JUnit files give (its guest.log in the message when there are none).
fn results_of(job: &Path) -> TestResults {
    let report = read_junit_dir(&job.join("artifacts/junit"));
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);
    report.results.unwrap_or_else(|| {
        let log = std::fs::read_to_string(job.join("guest.log")).unwrap_or_default();
        panic!("no JUnit results in {}/artifacts/junit; guest.log:\n{log}", job.display())
    })
}

fn failed_names(r: &TestResults) -> Vec<String> {
    let mut v: Vec<String> = r.failures.iter().map(|f| format!("{} {}", f.suite, f.name)).collect();
    v.sort();
    v
}

#[test]
fn real_workspace_lanes_build_and_run_under_pikaci_like_cargo_test() {
    require_bwrap();
    let dir = fixture();
    let d = dir.path();

    // The payloads, built for real (timed: deps, then the test archive on them).
    let (deps, deps_secs) = build_payload(d, "unit", "workspace-deps");
    let (build, build_secs) = build_payload(d, "unit", "workspace-build");
    eprintln!("measured: workspace-deps built in {deps_secs:.1} s, workspace-build in {build_secs:.1} s");
    assert!(deps.join("target").is_dir());
    assert!(build.join("share/pikaci/tests.tar.zst").is_file());
    let binaries = std::fs::read_to_string(build.join("share/pikaci/tests.txt")).unwrap();
    assert_eq!(binaries.lines().count(), 4, "{binaries}");
    // The caller's postInstall runs on the build, not on crane's deps build.
    assert!(build.join("share/pikaci/caller-post-install").is_file());
    assert!(!deps.join("share/pikaci/caller-post-install").exists());
    // The payload's closure: the C library and nextest the binaries need, not the toolchain.
    let closure = Command::new("nix-store").arg("-qR").arg(&build).output().unwrap();
    let closure = text(&closure.stdout);
    let toolchain = nix_ok(&["eval", "--raw", &attr(d, "toolchain.outPath")]);
    let glibc = nix_ok(&["eval", "--raw", &attr(d, "glibc.outPath")]);
    assert!(closure.lines().any(|l| l == glibc), "{closure}");
    assert!(closure.contains("-cargo-nextest-host"), "{closure}");
    assert!(!closure.lines().any(|l| l == toolchain), "the toolchain is a runtime reference:\n{closure}");

    // `cargo test` on the same source.
    let cargo = cargo_test_outcomes(&d.join("ws"));
    let by =
        |o: &str| -> Vec<String> { cargo.iter().filter(|(_, v)| v.as_str() == o).map(|(k, _)| k.clone()).collect() };
    assert_eq!(by("FAILED"), ["alpha tests::fails_one", "alpha tests::flaky_one"], "{cargo:?}");
    assert_eq!(by("ignored"), ["alpha tests::ignored_one"], "{cargo:?}");
    assert_eq!(by("ok").len(), 6, "{cargo:?}");

    // The catalog reads the new lane attributes (testFilterArgs as "declared").
    let listed = run_in(d, &["lanes", "--json"]);
    assert_eq!(listed.code, 0, "{}", listed.stderr);
    let lanes: serde_json::Value = serde_json::from_str(&listed.stdout).unwrap();
    let by_id = |id: &str| lanes.as_array().unwrap().iter().find(|l| l["id"] == id).unwrap().clone();
    let fields = |id: &str| {
        let l = by_id(id);
        (l["retries"].as_u64(), l["shards"].as_u64(), l["test_filter"].as_bool())
    };
    assert_eq!(fields("unit"), (Some(1), Some(1), Some(true)));
    assert_eq!(fields("no-retries"), (Some(0), Some(1), Some(true)));
    assert_eq!(fields("sharded"), (Some(1), Some(2), Some(true)));

    // pikaci on bwrap: `no-retries` matches cargo test; `unit` retries the flaky test.
    build_payload(d, "no-retries", "workspace-build");
    let start = Instant::now();
    let out = run_in(d, &["run", "unit", "no-retries", "--runtime", "bwrap", "--jobs", "1"]);
    eprintln!(
        "measured: `pikaci run unit no-retries --runtime bwrap --jobs 1` took {:.1} s (payloads built)",
        start.elapsed().as_secs_f64()
    );
    assert_eq!(out.code, 1, "{}", out.stderr);
    let run = only_run(d);
    let unit = results_of(&run.join("jobs/unit"));
    let plain = results_of(&run.join("jobs/no-retries"));
    assert_eq!((plain.passed, plain.failed, plain.skipped, plain.flaky), (6, 2, 1, 0));
    assert_eq!(failed_names(&plain), by("FAILED"));
    assert_eq!((unit.passed, unit.failed, unit.skipped, unit.flaky), (7, 1, 1, 1));
    assert_eq!(failed_names(&unit), ["alpha tests::fails_one"]);
    assert_eq!(unit.flaky_tests, [("alpha".to_string(), "tests::flaky_one".to_string())]);
    let guest = std::fs::read_to_string(run.join("jobs/unit/guest.log")).unwrap();
    assert!(guest.contains("8 tests run: 7 passed (1 flaky), 1 failed, 1 skipped"), "{guest}");
    assert!(guest.contains("PASS") && guest.contains("answer-macro tests::upper_trims_and_capitalises"), "{guest}");
}

/// The lane on Incus (the busybox image: no C library, no toolchain in the guest).
#[test]
fn real_workspace_lane_runs_on_incus_with_the_same_results() {
    require_incus();
    let dir = fixture();
    let d = dir.path();
    build_payload(d, "unit", "workspace-deps");
    build_payload(d, "unit", "workspace-build");
    let start = Instant::now();
    let out = run_in(d, &["run", "unit", "--runtime", "incus"]);
    eprintln!(
        "measured: `pikaci run unit --runtime incus` took {:.1} s (payloads built)",
        start.elapsed().as_secs_f64()
    );
    assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
    let run = only_run(d);
    let unit = results_of(&run.join("jobs/unit"));
    assert_eq!((unit.passed, unit.failed, unit.skipped, unit.flaky), (7, 1, 1, 1));
    assert_eq!(failed_names(&unit), ["alpha tests::fails_one"]);
    let guest = std::fs::read_to_string(run.join("jobs/unit/guest.log")).unwrap();
    assert!(guest.contains("beta::fixture_file reads_the_fixture_file"), "{guest}");
    // pikaci's own record of them, as on bwrap.
    let tests = &read_json(&run.join("jobs/unit/job.json"))["tests"];
    assert_eq!(tests["failures"][0]["name"], "tests::fails_one", "{tests}");
    assert_eq!((tests["passed"].as_u64(), tests["failed"].as_u64()), (Some(7), Some(1)), "{tests}");
    assert_eq!((tests["skipped"].as_u64(), tests["flaky"].as_u64()), (Some(1), Some(1)), "{tests}");
    assert_eq!(tests["flaky_tests"], serde_json::json!(["tests::flaky_one"]));
}

/// Run a lane's `bin/run-tests` on the host as the guest would, with `env` and `args`;
/// its output and the results of the JUnit files it wrote.
fn run_tests(d: &Path, build: &Path, env: &[(&str, &str)], args: &[String]) -> (String, TestResults) {
    let artifacts = tempfile::tempdir().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(build.join("bin/run-tests"))
        .args(args)
        .env("PIKACI_WORKSPACE", d)
        .env("PIKACI_ARTIFACTS", artifacts.path())
        .env("TMPDIR", tmp.path())
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let log = format!("{}{}", text(&out.stdout), text(&out.stderr));
    let report = read_junit_dir(&artifacts.path().join("junit"));
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);
    (log.clone(), report.results.unwrap_or_else(|| panic!("no results:\n{log}")))
}

/// `PIKACI_SHARD=k/N` partitions the tests (the shards add up to the whole), and the
/// lane's `testFilterArgs`, evaluated as a rerun evaluates it, runs only the named tests.
#[test]
fn shards_add_up_and_the_filter_runs_only_the_named_tests() {
    let dir = fixture();
    let d = dir.path();
    let (build, _) = build_payload(d, "unit", "workspace-build");

    let (_, whole) = run_tests(d, &build, &[], &[]);
    let (log1, one) = run_tests(d, &build, &[("PIKACI_SHARD", "1/2")], &[]);
    let (log2, two) = run_tests(d, &build, &[("PIKACI_SHARD", "2/2")], &[]);
    assert!(one.total() > 0 && two.total() > 0, "{log1}\n{log2}");
    let mut sum = one.clone();
    sum.merge(two);
    assert_eq!(
        (sum.passed, sum.failed, sum.skipped, sum.flaky),
        (whole.passed, whole.failed, whole.skipped, whole.flaky),
        "{log1}\n{log2}"
    );
    assert_eq!((whole.passed, whole.failed, whole.skipped, whole.flaky), (7, 1, 1, 1));
    let (bad, _) = {
        let out = Command::new(build.join("bin/run-tests")).env("PIKACI_SHARD", "1-2").output().unwrap();
        (text(&out.stderr), out.status.code())
    };
    assert!(bad.contains("PIKACI_SHARD=1-2 is not k/N"), "{bad}");

    // The filter, from the lane's own `testFilterArgs`, evaluated as a rerun does (with a
    // name that Nix must not misread as the end of a string or an interpolation).
    let lane = attr(d, &format!("pikaci.{SYSTEM}.lanes.unit"));
    let filter_args = |names: &[&str]| -> Vec<String> {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let expr = pikaci::catalog::filter::apply_expression(&names);
        let words = nix_ok(&["eval", "--json", &lane, "--apply", &expr]);
        pikaci::catalog::filter::parse_args("unit", &serde_json::from_str(&words).unwrap()).unwrap()
    };
    assert_eq!(
        filter_args(&["tests::a", "no \"such\" ${test} \\"]),
        ["-E", "test(=tests::a) | test(=no \"such\" ${test} \\)"]
    );
    // mkLaneChecks runs the same command in a Nix build: it fails on the failing test.
    let check = nix(&["build", "--no-link", "-L", &attr(d, &format!("checks.{SYSTEM}.lane-unit"))]);
    let log = text(&check.stderr);
    assert!(
        !check.status.success() && log.contains("Extracted 8 files") && log.contains("error: test run failed"),
        "{log}"
    );

    let words = filter_args(&["tests::fails_one"]);
    let (log, only_failed) = run_tests(d, &build, &[], &words);
    assert_eq!((only_failed.passed, only_failed.failed, only_failed.skipped), (0, 1, 0), "{log}");
    assert!(log.contains("1 test run: 0 passed, 1 failed"), "{log}");
}

/// The fixture with the payloads of the `unit` and `sharded` lanes built.
fn sharded_fixture() -> tempfile::TempDir {
    let dir = fixture();
    build_payload(dir.path(), "unit", "workspace-deps");
    build_payload(dir.path(), "unit", "workspace-build");
    build_payload(dir.path(), "sharded", "workspace-build");
    dir
}

/// What pikaci makes of the JUnit a lane writes: every test recorded in `job.json` (and
/// counted in `run.json`), shown and summed in the human output, sent as a `test_results`
/// event; `rerun --failed` runs only the failed test through the lane's `testFilterArgs`;
/// `-- ARGS` reach the command; `shards = 2` gives two jobs whose counts add up.
#[test]
fn pikaci_records_each_test_reruns_only_the_failed_one_and_splits_shards() {
    require_bwrap();
    let dir = sharded_fixture();
    let d = dir.path();

    let out = run_in(d, &["run", "unit", "--runtime", "bwrap"]);
    assert_eq!(out.code, 1, "the command's status decides the exit code: {}", out.stderr);
    assert!(out.stdout.contains("TESTS unit: 1 failed, 7 passed, 1 skipped, 1 flaky"), "{}", out.stdout);
    assert!(out.stdout.contains("failed: tests::fails_one"), "{}", out.stdout);
    assert!(out.stdout.contains("flaky: tests::flaky_one"), "{}", out.stdout);
    assert!(out.stdout.contains("tests 1 failed, 7 passed, 1 skipped, 1 flaky"), "the summary: {}", out.stdout);
    let run = only_run(d);
    let job = read_json(&run.join("jobs/unit/job.json"));
    let tests = &job["tests"];
    assert_eq!((tests["passed"].as_u64(), tests["failed"].as_u64()), (Some(7), Some(1)), "{tests}");
    assert_eq!((tests["skipped"].as_u64(), tests["flaky"].as_u64()), (Some(1), Some(1)), "{tests}");
    assert_eq!(tests["failures"].as_array().unwrap().len(), 1, "{tests}");
    assert_eq!(tests["failures"][0]["name"], "tests::fails_one");
    assert_eq!(tests["failures"][0]["suite"], "alpha");
    assert_eq!(tests["flaky_tests"], serde_json::json!(["tests::flaky_one"]));
    assert!(tests.get("inconsistent").is_none(), "the command failed too: {tests}");
    let record = read_json(&run.join("run.json"));
    assert_eq!(record["jobs"][0]["tests"], serde_json::json!({"passed": 7, "failed": 1, "skipped": 1, "flaky": 1}));
    let events = std::fs::read_to_string(run.join("events.jsonl")).unwrap();
    let results: Vec<serde_json::Value> = events
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|e| e["event"] == "test_results")
        .collect();
    assert_eq!(results.len(), 1, "{events}");
    assert_eq!(results[0]["failed_tests"], serde_json::json!(["tests::fails_one"]));
    // `status` shows them per job; `status --json` the same, structured.
    let status = run_in(d, &["status", "latest"]);
    assert!(
        status.stdout.contains("tests: 7 passed, 1 failed, 1 skipped, 1 flaky (tests::flaky_one)"),
        "{}",
        status.stdout
    );
    assert!(status.stdout.contains("FAILED tests::fails_one (alpha)"), "{}", status.stdout);
    let status = run_in(d, &["status", "latest", "--json"]).json();
    assert_eq!(status["jobs"][0]["tests"]["failures"][0]["name"], "tests::fails_one", "{status}");

    // Only the failed test runs again, through the lane's filter.
    let first = run.file_name().unwrap().to_string_lossy().into_owned();
    let again = run_in(d, &["rerun", &first, "--failed", "--output", "json"]);
    assert_eq!(again.code, 1, "{}", again.stderr);
    let again = again.json();
    let rerun_dir = d.join(".pikaci/runs").join(again["run_id"].as_str().unwrap());
    let guest = std::fs::read_to_string(rerun_dir.join("jobs/unit/guest.log")).unwrap();
    assert!(guest.contains("1 test run: 0 passed, 1 failed"), "{guest}");
    assert_eq!(again["plan"][0]["extra_args"], serde_json::json!(["-E", "test(=tests::fails_one)"]));
    assert_eq!(again["jobs"][0]["tests"], serde_json::json!({"passed": 0, "failed": 1, "skipped": 0, "flaky": 0}));

    // `-- ARGS` reach the lane's command (here: nextest's filter), and are recorded.
    let out: Run = pikaci()
        .args(["run", "unit", "--runtime", "bwrap", "--flake"])
        .arg(format!("path:{}", d.display()))
        .args(["--output", "json", "--", "-E", "test(=tests::answer_is_42)"])
        .output()
        .unwrap()
        .into();
    assert_eq!(out.code, 0, "{}", out.stderr);
    let with_args = out.json();
    assert_eq!(with_args["args"], serde_json::json!(["-E", "test(=tests::answer_is_42)"]));
    assert_eq!(with_args["jobs"][0]["tests"]["passed"], 1, "{with_args}");

    // Two shards: two jobs, each told its part, whose counts add up to the whole.
    let out = run_in(d, &["run", "sharded", "--runtime", "bwrap", "--jobs", "2", "--output", "json"]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    let sharded = out.json();
    let jobs: Vec<&str> = sharded["jobs"].as_array().unwrap().iter().map(|j| j["job_id"].as_str().unwrap()).collect();
    assert_eq!(jobs, ["sharded-1of2", "sharded-2of2"]);
    let sum = |field: &str| -> u64 {
        sharded["jobs"].as_array().unwrap().iter().map(|j| j["tests"][field].as_u64().unwrap()).sum()
    };
    assert_eq!((sum("passed"), sum("failed"), sum("skipped"), sum("flaky")), (7, 1, 1, 1), "{sharded}");
    assert_eq!(sharded["plan"][1]["shard"], "2/2");
    // The human summary adds the shards back up under their lane.
    let out = run_in(d, &["run", "sharded", "--runtime", "bwrap", "--jobs", "2"]);
    assert!(out.stdout.contains("TESTS sharded (2 jobs): 1 failed, 7 passed, 1 skipped, 1 flaky"), "{}", out.stdout);
}

/// Not a check but a measurement (`cargo test --test real_rust -- --ignored --nocapture
/// measure_sharded`): the wall time of the fixture workspace's lane split in two shards
/// (`--jobs 2`) against the same tests unsharded, payloads built, medians of 3, interleaved.
#[test]
#[ignore]
fn measure_sharded_against_unsharded() {
    require_bwrap();
    let dir = sharded_fixture();
    let d = dir.path();
    let time = |lane: &str| {
        let start = Instant::now();
        run_in(d, &["run", lane, "--runtime", "bwrap", "--jobs", "2"]);
        start.elapsed().as_secs_f64()
    };
    let (mut whole, mut shards) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        whole.push(time("unit"));
        shards.push(time("sharded"));
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (w, s) = (median(&mut whole), median(&mut shards));
    eprintln!("measured: unsharded {w:.2} s, shards = 2 with --jobs 2 {s:.2} s, ratio {:.2}", s / w);
}
