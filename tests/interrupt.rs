//! Ctrl-C at a terminal sends SIGINT to the whole foreground process group: pikaci, and
//! whatever it started in that group. The run must end `interrupted` (exit 130), not
//! `failed` because the sandbox died of the signal first, and a payload build must not
//! leave its builder running. Each test starts pikaci in a process group of its own and
//! signals that group, as a terminal would.

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn start_in_own_group(flake: &Path, args: &[&str]) -> Child {
    pikaci()
        .args(args)
        .arg("--flake")
        .arg(format!("path:{}", flake.display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .expect("start pikaci")
}

fn sigint_group(child: &Child) {
    sigint(child, true);
}

/// SIGINT to pikaci's process group (Ctrl-C at a terminal) or to pikaci alone (`kill -INT`).
fn sigint(child: &Child, group: bool) {
    let pid = child.id() as libc::pid_t;
    // SAFETY: kill(2); no memory involved.
    let rc = unsafe { libc::kill(if group { -pid } else { pid }, libc::SIGINT) };
    assert_eq!(rc, 0, "kill {pid}");
}

/// The `sleep` that the slow build of this test's fixture copy runs: the process whose
/// environment has the copy's `salt` (in Nix's build sandbox or not, /proc shows it).
fn builder_of(salt: &str) -> Option<i32> {
    let needle = format!("salt={salt}\0");
    std::fs::read_dir("/proc").ok()?.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok()).find(|pid| {
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        String::from_utf8_lossy(&environ).contains(&needle) && String::from_utf8_lossy(&cmdline).starts_with("sleep")
    })
}

fn alive(pid: i32) -> bool {
    // /proc/<pid> exists and is not a zombie.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'))
        .unwrap_or(false)
}

#[test]
fn ctrl_c_to_the_process_group_under_bwrap_records_interrupted() {
    require_nix();
    require_bwrap();
    let dir = copy_fixture(&fixture_path("sandbox"));
    let mut child = start_in_own_group(dir.path(), &["run", "sleeper", "--runtime", "bwrap"]);
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    while out.read_line(&mut line).unwrap() > 0 && !line.contains("[sleeper] started") {
        line.clear();
    }
    assert!(line.contains("started"), "the guest never started");
    sigint_group(&child);
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{status:?}");
    let record = read_json(&only_run(dir.path()).join("run.json"));
    assert_eq!(job_status(&record, "sleeper"), "interrupted", "{record:#}");
    assert_eq!(record["status"], "interrupted");
    assert!(sandboxes_of(dir.path()).is_empty(), "a sandbox survived");
}

#[test]
fn ctrl_c_to_the_process_group_during_a_build_stops_the_builder() {
    interrupt_a_build(true);
}

#[test]
fn sigint_to_pikaci_alone_during_a_build_stops_the_builder() {
    interrupt_a_build(false);
}

fn interrupt_a_build(group: bool) {
    require_nix();
    require_bwrap();
    let dir = copy_fixture(&fixture_path("sandbox"));
    let salt = std::fs::read_to_string(dir.path().join("salt")).unwrap();
    let mut child = start_in_own_group(dir.path(), &["run", "slow-build", "--runtime", "bwrap"]);
    let deadline = Instant::now() + Duration::from_secs(120);
    let builder = loop {
        if let Some(pid) = builder_of(&salt) {
            break pid;
        }
        assert!(Instant::now() < deadline, "the build never started");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(alive(builder));
    sigint(&child, group);
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{status:?}");
    let record = read_json(&only_run(dir.path()).join("run.json"));
    assert_eq!(job_status(&record, "slow-build"), "interrupted", "{record:#}");
    // Its build ends told as interrupted, not failed.
    let events = std::fs::read_to_string(only_run(dir.path()).join("events.jsonl")).unwrap();
    assert!(events.lines().any(|l| l.contains(r#""payload":"workspace-build","status":"interrupted""#)), "{events}");
    let deadline = Instant::now() + Duration::from_secs(15);
    while alive(builder) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!alive(builder), "the builder {builder} kept running after the build was interrupted");
}

fn wait_exit(child: &mut Child, within: Duration) -> Option<i32> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("pikaci did not exit within {within:?} of the first Ctrl-C");
}

#[test]
fn gc_says_what_it_waits_for_and_the_first_ctrl_c_stops_it() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("state");
    std::fs::create_dir_all(root.join("runs")).unwrap();
    // A starting run holds the root lock shared.
    let lock = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(root.join("lock")).unwrap();
    lock.lock_shared().unwrap();
    let mut gc = pikaci()
        .args(["gc", "--state-root"])
        .arg(&root)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap();
    let mut err = BufReader::new(gc.stderr.take().unwrap());
    let mut line = String::new();
    err.read_line(&mut line).unwrap();
    assert!(line.contains("waiting for") && line.contains("a run of this state root is starting"), "{line}");
    sigint(&gc, false);
    assert_eq!(wait_exit(&mut gc, Duration::from_secs(5)), Some(130));
}

#[test]
fn logs_follow_stops_at_the_first_ctrl_c() {
    require_nix();
    require_bwrap();
    let dir = copy_fixture(&fixture_path("sandbox"));
    let mut run = start_in_own_group(dir.path(), &["run", "sleeper", "--runtime", "bwrap"]);
    let mut out = BufReader::new(run.stdout.take().unwrap());
    let mut line = String::new();
    while out.read_line(&mut line).unwrap() > 0 && !line.contains("[sleeper] started") {
        line.clear();
    }
    let mut follow = start_in_own_group(dir.path(), &["logs", "latest", "--follow"]);
    let mut followed = BufReader::new(follow.stdout.take().unwrap());
    let mut first = String::new();
    followed.read_line(&mut first).unwrap();
    assert!(first.contains("started"), "{first}");
    sigint(&follow, false);
    assert_eq!(wait_exit(&mut follow, Duration::from_secs(5)), Some(130));
    // The run itself goes on until it is interrupted in turn.
    assert!(run.try_wait().unwrap().is_none(), "following stopped the run");
    sigint_group(&run);
    assert_eq!(run.wait().unwrap().code(), Some(130));
}
