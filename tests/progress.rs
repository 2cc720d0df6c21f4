//! Long builds are not silent: a payload whose build takes seconds (the `building` lane of
//! the lanes fixture: six lines, a second apart) is shown while it builds, on a terminal
//! (a pseudo-terminal, through util-linux's `script`) and off one, in the events, and in
//! its kept log; a failed build names that log; `logs --payload` shows it, live with
//! `--follow`.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn lanes_fixture() -> tempfile::TempDir {
    require_nix();
    require_bwrap();
    copy_fixture(&fixture_path("lanes"))
}

/// The text a terminal would keep of `raw`, roughly: escape sequences removed, each
/// carriage return or erased line starting a new line, so that every state the display
/// drew stays readable in order.
fn screen_text(raw: &str) -> String {
    let mut out = String::new();
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\x1b' if chars.peek() == Some(&'[') => {
                chars.next();
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
                out.push('\n');
            }
            '\r' => out.push('\n'),
            _ => out.push(c),
        }
    }
    out
}

fn events(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("events.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn of(events: &[serde_json::Value], name: &str, job: &str, payload: &str) -> Vec<serde_json::Value> {
    events.iter().filter(|e| e["event"] == name && e["job_id"] == job && e["payload"] == payload).cloned().collect()
}

#[test]
fn on_a_terminal_a_long_build_is_drawn_live() {
    let dir = lanes_fixture();
    if which("script").is_none() {
        panic!("`script` (util-linux) is required by this test: `apt-get install util-linux`");
    }
    let command = format!(
        "stty cols 200 rows 50; exec {} run building --runtime bwrap --flake {}",
        shell_quote_path(Path::new(env!("CARGO_BIN_EXE_pikaci"))),
        shell_quote_path(Path::new(&format!("path:{}", dir.path().display())))
    );
    let out = Command::new("script")
        .args(["-qfec", &command, "/dev/null"])
        .env_remove("PIKACI_STATE_ROOT")
        .env("NO_COLOR", "1")
        .env("NIX_CONFIG", "sandbox = true")
        .env("TERM", "xterm")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let raw = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(0), "{raw}");
    assert!(raw.contains("\x1b[2K"), "the display redraws its lines in place: {raw:?}");
    let screen = screen_text(&raw);
    let payload = screen.find(" PAYLOAD building workspace-build").unwrap_or_else(|| panic!("{screen}"));
    let before = &screen[..payload];
    // Drawn, not printed: the plain lines of a non-terminal are not there.
    assert!(!before.contains("started, log"), "{before}");
    let drawn: Vec<&str> = before.lines().filter(|l| l.contains("BUILD building workspace-build")).collect();
    let shows = |what: &str| drawn.iter().any(|l| l.contains(what));
    assert!(shows("building fixture-slow-build"), "the derivation building:\n{before}");
    assert!(shows("0/1 built"), "the count:\n{before}");
    let log_line = drawn.iter().any(|l| l.contains("fixture-slow-build> ") && l.contains("step "));
    assert!(log_line, "a line of its log, as it builds:\n{before}");
    assert!(drawn.iter().any(|l| l.contains(" 4s ")), "the time so far:\n{before}");
    // Its end is kept, with the build's time, before the payload's line.
    assert!(before.contains("   BUILD building workspace-build "), "{before}");
    assert!(
        before.lines().any(|l| l.contains("BUILD building workspace-build") && l.ends_with(": 1 derivation built"))
    );
    assert!(screen.contains("evaluated in "), "{screen}");
}

#[test]
fn off_a_terminal_a_long_build_prints_plain_lines_and_events() {
    let dir = lanes_fixture();
    let out = run_in(dir.path(), &["run", "building", "--runtime", "bwrap"]);
    assert_eq!(out.code, 0, "{out:?}");
    let run = only_run(dir.path());
    let log = run.join("jobs/building/payload-workspace-build.log");
    let payload = out.stdout.find(" PAYLOAD building workspace-build").unwrap_or_else(|| panic!("{}", out.stdout));
    let before = &out.stdout[..payload];
    assert!(
        before.contains(&format!("   BUILD building workspace-build: started, log `{}`", log.display())),
        "{before}"
    );
    let lines: Vec<&str> = before.lines().filter(|l| l.starts_with("   BUILD building workspace-build ")).collect();
    assert!(lines.iter().any(|l| l.contains(": 0/1 built · building fixture-slow-build")), "{before}");
    assert!(lines.iter().any(|l| l.contains(" · fixture-slow-build> ") && l.contains("step ")), "{before}");
    // 18 lines of log in about six seconds: at most one a second, plus the lines of the
    // build's start and end and of its derivation's.
    let events = events(&run);
    let finished = of(&events, "payload_build_finished", "building", "workspace-build");
    let took = finished[0]["duration_ms"].as_u64().unwrap() as usize / 1000;
    assert!(lines.len() <= took + 5, "{} lines in {took}s:\n{before}", lines.len());
    assert!(lines.last().unwrap().ends_with(": 1 derivation built"), "{before}");
    assert!(!out.stdout.contains("\x1b["), "no drawing off a terminal");

    // The events say the same.
    let started = of(&events, "payload_build_started", "building", "workspace-build");
    assert_eq!(started.len(), 1, "{events:#?}");
    assert!(started[0]["drv_path"].as_str().unwrap().ends_with("-fixture-slow-build.drv"));
    assert_eq!(started[0]["log"], log.display().to_string());
    let progress = of(&events, "payload_build_progress", "building", "workspace-build");
    assert!(progress.iter().any(|p| p["building"] == serde_json::json!(["fixture-slow-build"]) && p["total"] == 1));
    let with_lines = progress
        .iter()
        .filter(|p| p["line"].as_str().is_some_and(|l| l.starts_with("fixture-slow-build> ") && l.contains("step ")));
    assert!(with_lines.count() >= 2, "{progress:#?}");
    assert!(progress.len() <= took + 3, "at most one a second: {progress:#?}");
    assert!(progress.iter().all(|p| p["elapsed_ms"].as_u64().is_some()));
    assert_eq!((finished[0]["status"].as_str(), finished[0]["built"].as_u64()), (Some("built"), Some(1)));
    assert!(finished[0]["duration_ms"].as_u64().unwrap() >= 5000, "{finished:#?}");
    let realized = of(&events, "payload_realized", "building", "workspace-build");
    assert!(realized[0]["duration_ms"].as_u64().unwrap() >= 5000, "{realized:#?}");
    // And the log is kept, as `nix build -L` would print it.
    let kept = std::fs::read_to_string(&log).unwrap();
    for i in 1..=6 {
        assert!(kept.contains(&format!("fixture-slow-build> slow build step {i} of 6\n")), "{kept}");
        assert!(kept.contains(&format!("fixture-slow-build>   compiling unit b of step {i}\n")), "{kept}");
    }
    // The evaluation's time is printed and recorded.
    assert!(out.stdout.lines().next().unwrap().contains(", evaluated in "), "{}", out.stdout);
    assert!(read_json(&run.join("run.json"))["eval_ms"].as_u64().is_some());
    let status = run_in(dir.path(), &["status", "latest"]);
    assert!(status.stdout.contains("  eval      "), "{}", status.stdout);
}

#[test]
fn a_payload_another_job_built_counts_its_own_time_not_the_wait() {
    let dir = lanes_fixture();
    let out = run_in(dir.path(), &["run", "building", "building-too", "--runtime", "bwrap", "-j", "2"]);
    assert_eq!(out.code, 0, "{out:?}");
    let lines: Vec<&str> =
        out.stdout.lines().filter(|l| l.contains(" PAYLOAD ") && l.contains("workspace-build")).collect();
    assert_eq!(lines.len(), 2, "{}", out.stdout);
    let (waiter, builder) = if lines[0].contains("built by job") { (lines[0], lines[1]) } else { (lines[1], lines[0]) };
    let seconds = |line: &str| -> f64 {
        let inside = &line[line.rfind('(').unwrap() + 1..];
        inside[..inside.find('s').unwrap()].parse().unwrap()
    };
    assert!(seconds(builder) >= 5.0, "{builder}");
    assert!(seconds(waiter) < 3.0, "the waiting job's own time: {waiter}");
    let builder_job = if builder.contains("PAYLOAD building-too ") { "building-too" } else { "building" };
    assert!(waiter.contains(&format!("; built by job `{builder_job}`, waited ")), "{waiter}");
    // Only the builder told of a build.
    let events = events(&only_run(dir.path()));
    let builds: Vec<&str> = events
        .iter()
        .filter(|e| e["event"] == "payload_build_started" && e["payload"] == "workspace-build")
        .map(|e| e["job_id"].as_str().unwrap())
        .collect();
    assert_eq!(builds, [builder_job]);
    // The waiting job only roots what the other built: one query, no realisation.
    let waiter_job = if builder_job == "building" { "building-too" } else { "building" };
    let waiter_log =
        std::fs::read_to_string(only_run(dir.path()).join("jobs").join(waiter_job).join("host.log")).unwrap();
    assert!(waiter_log.contains("every payload output was valid already"), "{waiter_log}");
    assert!(!waiter_log.contains("/nix-store --realise "), "{waiter_log}");
}

#[test]
fn a_job_that_shares_one_payload_waits_for_that_build_not_for_the_other_jobs_realisation() {
    // Both lanes' workspace-deps is the 6 s slow build; each has its own 3 s
    // workspace-build on top of it (crane's layout). One job's realisation builds
    // workspace-deps, then its own build; the other starts its own realisation as soon as
    // workspace-deps is built, while the first is still building its own.
    let dir = lanes_fixture();
    let out = run_in(dir.path(), &["run", "shared-deps-a", "shared-deps-b", "--runtime", "bwrap", "-j", "2"]);
    assert_eq!(out.code, 0, "{out:?}");
    let run = only_run(dir.path());
    let events = events(&run);
    let (builder, waiter) = builder_and_waiter(&events, ["shared-deps-a", "shared-deps-b"]);
    let waiter_log = std::fs::read_to_string(run.join("jobs").join(waiter).join("host.log")).unwrap();
    assert!(waiter_log.contains(&format!("waits for job `{builder}`, which builds `")), "{waiter_log}");
    assert!(waiter_log.contains("-fixture-slow-build.drv` on `localhost`"), "{waiter_log}");
    let line = out.stdout.lines().find(|l| l.starts_with(&format!(" PAYLOAD {waiter} workspace-deps "))).unwrap();
    assert!(line.contains(&format!("; built by job `{builder}`, waited ")), "{line}");
    assert!(events.iter().all(|e| e["waiting"] != true), "a wait on Nix's lock:\n{events:#?}");
}

#[test]
fn a_payload_fetched_from_a_binary_cache_is_ready_before_the_rest_of_the_realisation() {
    // `layered`'s workspace-deps in a binary cache (a `file://` one), its outputs gone from
    // the store: the job's realisation fetches it, then builds workspace-build on it. The
    // fetched payload is told finished when its fetch ends (another job waiting for it
    // would go on then), before workspace-build's build.
    let dir = lanes_fixture();
    assert_eq!(run_in(dir.path(), &["run", "layered", "--runtime", "bwrap"]).code, 0);
    let job = read_json(&only_run(dir.path()).join("jobs/layered/job.json"));
    let output = |i: usize| job["payloads"][i]["outputs"]["out"].as_str().unwrap().to_string();
    let (deps, build) = (output(0), output(1));
    assert_eq!(job["payloads"][0]["name"], "workspace-deps");
    let cache = tempfile::tempdir().unwrap();
    let cache_url = format!("file://{}", cache.path().display());
    let nix = |args: &[&str]| {
        let out = Command::new("nix").args(["--extra-experimental-features", "nix-command"]).args(args).output();
        let out = out.unwrap();
        assert!(out.status.success(), "nix {args:?}: {out:?}");
    };
    nix(&["copy", "--to", &cache_url, &deps]);
    assert_eq!(run_in(dir.path(), &["gc", "--keep", "0"]).code, 0);
    let deleted = Command::new("nix-store").args(["--delete", &deps, &build]).output().unwrap();
    assert!(deleted.status.success(), "{deleted:?}");

    let out: Run = pikaci()
        .args(["run", "layered", "--runtime", "bwrap", "--flake"])
        .arg(format!("path:{}", dir.path().display()))
        .env("NIX_CONFIG", format!("substituters = {cache_url}\nrequire-sigs = false"))
        .output()
        .unwrap()
        .into();
    assert_eq!(out.code, 0, "{out:?}");
    let run = only_run(dir.path());
    let events = events(&run);
    let deps_done = events
        .iter()
        .position(|e| e["event"] == "payload_build_finished" && e["payload"] == "workspace-deps")
        .expect("workspace-deps finished");
    assert_eq!(events[deps_done]["status"], "built", "{events:#?}");
    let build_done = events
        .iter()
        .position(|e| e["event"] == "payload_build_finished" && e["payload"] == "workspace-build")
        .expect("workspace-build built");
    assert!(deps_done < build_done, "{events:#?}");
    let deps_log = std::fs::read_to_string(run.join("jobs/layered/payload-workspace-deps.log")).unwrap();
    assert!(deps_log.contains(&format!("fetching '{deps}'")), "{deps_log}");
    assert!(!deps_log.contains("slow build step"), "fetched, not built: {deps_log}");
}

#[test]
fn a_payload_waiting_for_nix_lock_counts_its_own_time_not_the_wait() {
    // Another process (a `nix-store --realise` started here) builds the slow derivation
    // that `building` needs: pikaci's realisation waits on Nix's lock meanwhile.
    let dir = lanes_fixture();
    let installable =
        format!("path:{}#pikaci.x86_64-linux.lanes.building.payloads.workspace-build.drvPath", dir.path().display());
    let drv = Command::new("nix")
        .args(["--extra-experimental-features", "nix-command flakes", "eval", "--raw", &installable])
        .env("NIX_CONFIG", "sandbox = true")
        .output()
        .unwrap();
    assert!(drv.status.success(), "{drv:?}");
    let drv = String::from_utf8(drv.stdout).unwrap();
    let mut other = Command::new("nix-store")
        .args(["--realise", &drv])
        .env("NIX_CONFIG", "sandbox = true")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Its build has started once the builder printed its first line.
    let mut first = String::new();
    BufReader::new(other.stderr.take().unwrap()).read_line(&mut first).unwrap();
    let out = run_in(dir.path(), &["run", "building", "--runtime", "bwrap"]);
    assert!(other.wait().unwrap().success());
    assert_eq!(out.code, 0, "{out:?}");
    let line = out.stdout.lines().find(|l| l.starts_with(" PAYLOAD building workspace-build ")).unwrap();
    assert!(line.contains(" for another build of it)"), "{}", out.stdout);
    let own = &line[line.rfind('(').unwrap() + 1..];
    let own: f64 = own[..own.find('s').unwrap()].parse().unwrap();
    assert!(own < 3.0, "its own time, not the wait: {line}");
    let events = events(&only_run(dir.path()));
    let waiting = events.iter().filter(|e| e["event"] == "payload_build_progress" && e["waiting"] == true);
    assert!(waiting.count() >= 1, "{events:#?}");
}

#[test]
fn a_job_builds_all_its_payloads_with_one_realisation_and_each_keeps_its_own_log() {
    // `layered`'s workspace-build takes workspace-deps' derivation as an input: one
    // `nix-store --realise` of both builds that input once, first, and nothing waits on
    // Nix's lock (whose poll is 5 seconds). Each payload's log has its own builds.
    let dir = lanes_fixture();
    let out = run_in(dir.path(), &["run", "layered", "--runtime", "bwrap"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(!out.stdout.contains("for another build of it"), "{}", out.stdout);
    let run = only_run(dir.path());
    let events = events(&run);
    // Nix plans both builds at once (both payloads say they build), and builds
    // workspace-build's derivation once workspace-deps' is built.
    let deps_built = events
        .iter()
        .position(|e| e["event"] == "payload_build_finished" && e["payload"] == "workspace-deps")
        .expect("workspace-deps built");
    let build_building = events
        .iter()
        .position(|e| {
            e["event"] == "payload_build_progress"
                && e["payload"] == "workspace-build"
                && e["building"].as_array().is_some_and(|b| !b.is_empty())
        })
        .expect("workspace-build's derivation built");
    assert!(deps_built < build_building, "{events:#?}");
    assert!(events.iter().all(|e| e["waiting"] != true), "a wait on Nix's lock:\n{events:#?}");
    for payload in ["workspace-deps", "workspace-build"] {
        let finished = of(&events, "payload_build_finished", "layered", payload);
        assert_eq!((finished.len(), &finished[0]["status"]), (1, &serde_json::json!("built")), "{events:#?}");
    }

    let job_dir = run.join("jobs/layered");
    let host_log = std::fs::read_to_string(job_dir.join("host.log")).unwrap();
    let realisations: Vec<&str> = host_log.lines().filter(|l| l.contains("/nix-store --realise ")).collect();
    assert_eq!(realisations.len(), 1, "{host_log}");
    assert!(realisations[0].contains("-fixture-slow-build.drv /nix/store/"), "{host_log}");
    assert!(realisations[0].contains("-fixture-on-slow.drv --add-root"), "{host_log}");
    let job = read_json(&job_dir.join("job.json"));
    let reproduce: Vec<&str> = job["reproduce"].as_array().unwrap().iter().map(|l| l.as_str().unwrap()).collect();
    assert_eq!(reproduce.iter().filter(|l| l.contains("nix-store --realise")).count(), 1, "{reproduce:?}");

    let deps_log = std::fs::read_to_string(job_dir.join("payload-workspace-deps.log")).unwrap();
    let build_log = std::fs::read_to_string(job_dir.join("payload-workspace-build.log")).unwrap();
    assert!(deps_log.contains("fixture-slow-build> slow build step 6 of 6"), "{deps_log}");
    assert!(!deps_log.contains("fixture-on-slow"), "{deps_log}");
    assert!(build_log.contains("-fixture-on-slow.drv'"), "{build_log}");
    assert!(!build_log.contains("slow build step"), "{build_log}");
}

#[test]
fn a_failed_build_names_its_kept_log_and_logs_shows_it() {
    let dir = lanes_fixture();
    let out = run_in(dir.path(), &["run", "broken", "--runtime", "bwrap"]);
    assert_eq!(out.code, 1, "{out:?}");
    let run = only_run(dir.path());
    let run_id = run.file_name().unwrap().to_string_lossy().into_owned();
    let log = run.join("jobs/broken/payload-workspace-build.log");
    let named = format!("the build's whole log: `{}`", log.display());
    assert!(out.stdout.contains(&named), "{}", out.stdout);
    assert!(out.stdout.contains(&format!("`pikaci logs {run_id} --job broken --payload workspace-build`")));
    let job = read_json(&run.join("jobs/broken/job.json"));
    assert!(job["message"].as_str().unwrap().contains(&named), "{job:#}");
    let kept = std::fs::read_to_string(&log).unwrap();
    assert!(kept.contains("fixture-broken> error[E0308]: mismatched types in src/lib.rs\n"), "{kept}");
    assert!(kept.contains("Reason: builder failed with exit code 1"), "{kept}");
    let finished = of(&events(&run), "payload_build_finished", "broken", "workspace-build");
    assert_eq!(finished[0]["status"], "failed");

    let logs = run_in(dir.path(), &["logs", &run_id, "--job", "broken", "--payload", "workspace-build"]);
    assert_eq!(logs.code, 0, "{logs:?}");
    assert_eq!(logs.stdout, kept);
    let guest = run_in(dir.path(), &["logs", &run_id, "--job", "broken"]);
    assert!(guest.stdout.contains("--job broken --payload workspace-build"), "{}", guest.stdout);
    let unknown = run_in(dir.path(), &["logs", &run_id, "--job", "broken", "--payload", "nope"]);
    assert_eq!(unknown.code, 2, "{unknown:?}");
    assert!(unknown.stderr.contains("workspace-build, workspace-deps"), "{}", unknown.stderr);

    // `--output json`: the record on stdout, and nothing of the build beyond the events.
    let json = run_in(dir.path(), &["run", "broken", "--runtime", "bwrap", "--output", "json"]);
    assert_eq!(json.code, 1);
    assert_eq!(json.json()["status"], "failed");
    assert!(!json.stderr.contains("BUILD"), "{}", json.stderr);
}

#[test]
fn logs_follow_shows_a_build_as_it_goes() {
    let dir = lanes_fixture();
    let mut run = pikaci()
        .args(["run", "building", "--runtime", "bwrap", "--flake"])
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let runs = dir.path().join(".pikaci/runs");
    let log = loop {
        let found = std::fs::read_dir(&runs)
            .into_iter()
            .flatten()
            .map(|e| e.unwrap().path().join("jobs/building/payload-workspace-build.log"))
            .find(|p| p.exists());
        if let Some(log) = found {
            break log;
        }
        assert!(Instant::now() < deadline, "the build never started");
        std::thread::sleep(Duration::from_millis(50));
    };
    let run_id = log.ancestors().nth(3).unwrap().file_name().unwrap().to_string_lossy().into_owned();
    let mut follow = pikaci()
        .args(["logs", &run_id, "--job", "building", "--payload", "workspace-build", "--follow", "--flake"])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(follow.stdout.take().unwrap()).lines();
    let first_step = lines.by_ref().map(|l| l.unwrap()).find(|l| l.contains("slow build step")).unwrap();
    assert!(run.try_wait().unwrap().is_none(), "a line came while the build ran: {first_step}");
    let rest: Vec<String> = lines.map(|l| l.unwrap()).collect();
    assert!(rest.iter().any(|l| l == "fixture-slow-build> slow build step 6 of 6"), "{rest:?}");
    assert_eq!(follow.wait().unwrap().code(), Some(0));
    assert_eq!(run.wait().unwrap().code(), Some(0));
}
