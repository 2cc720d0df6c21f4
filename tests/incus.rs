//! The Incus runtime against the real daemon: instance lifecycle, names and tags, each
//! fault (daemon not answering, image missing, device source vanished, container that
//! cannot start, `incus exec` dying, instance deleted under a run, Ctrl-C while the
//! command runs and while the instance is being created), `pikaci gc` reaping orphans,
//! other images by name, and `pikaci image import`.
//!
//! Tests run in parallel against a shared daemon: every instance, image alias and state
//! root is unique to its test, instances are found by their `user.pikaci.state_root`
//! tag, and a test only ever deletes what it created.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Once};
use std::time::{Duration, Instant};

use common::*;
use pikaci::executor::runtime::incus::naming;
use serde_json::Value;

// ---------------------------------------------------------------------------------------
// Helpers

/// A flake of our own: one payload script per lane, plus lanes that probe the image.
/// `@ALIAS@` is replaced by an image alias (for the lane-level `runtime.image`).
const PROBE_FLAKE: &str = r#"{
  outputs = { self }:
    let
      system = "x86_64-linux";
      payload = name: derivation {
        inherit name system;
        builder = "${./tools}/busybox";
        args = [ "sh" "-c" ''
          mkdir -p $out/bin
          printf '#!/bin/sh\necho started\nexec sleep 600\n' > $out/bin/sleep-long
          chmod +x $out/bin/sleep-long
        '' ];
      };
      lane = command: extra: {
        kind = "staged-linux-rust";
        payloads = { workspace-deps = payload "probe-deps"; workspace-build = payload "probe-build"; };
        inherit command;
        timeout = 60;
      } // extra;
    in
    {
      pikaci.${system}.lanes = {
        sleepy = lane [ "/pikaci/payloads/workspace-build/bin/sleep-long" ] { };
        marker = lane [ "/bin/cat" "/etc/pikaci-test-marker" ] { };
        marker-by-lane = lane [ "/bin/cat" "/etc/pikaci-test-marker" ] { runtime.image = "@ALIAS@"; };
        missing-program = lane [ "/no/such/program" ] { };
        env = lane [ "/usr/bin/env" ] { env = { LANE_VAR = "x"; }; };
        a-lane-id-of-the-longest-length-allowed-48-chars = lane [ "/bin/true" ] { };
        fresh = lane [ "/bin/sh" "-c" "if [ -e /var/pikaci-used ]; then echo REUSED; exit 1; fi; touch /var/pikaci-used; echo fresh" ] { };
      };
    };
}
"#;

const LONG_LANE: &str = "a-lane-id-of-the-longest-length-allowed-48-chars";

fn probe_flake(alias: &str) -> tempfile::TempDir {
    let dir = tempfile::Builder::new().prefix("pikaci-incus-test-").tempdir().unwrap();
    fs::write(dir.path().join("flake.nix"), PROBE_FLAKE.replace("@ALIAS@", alias)).unwrap();
    add_build_tools(dir.path());
    dir
}

fn lanes_flake() -> tempfile::TempDir {
    copy_fixture(&fixture_path("lanes"))
}

/// Something unique to this test process and call, for aliases and instance names.
fn unique(what: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!("pikaci-test-{what}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst))
}

/// Nix and Incus are there, and the default image is imported (once per test binary).
fn setup() {
    require_nix();
    require_incus();
    static IMPORT: Once = Once::new();
    IMPORT.call_once(|| {
        let out: Run = pikaci().args(["image", "import"]).output().unwrap().into();
        assert_eq!(out.code, 0, "`pikaci image import` failed: {out:?}");
    });
}

fn incus(args: &[&str]) -> Run {
    Command::new("incus").args(args).output().expect("run incus").into()
}

fn state_root(flake: &Path) -> PathBuf {
    flake.join(".pikaci").canonicalize().unwrap_or_else(|_| flake.join(".pikaci"))
}

/// The instances whose `user.pikaci.state_root` tag names this state root.
fn instances_of(state_root: &Path) -> Vec<Value> {
    let out = incus(&["query", "/1.0/instances?recursion=1"]);
    assert_eq!(out.code, 0, "{out:?}");
    let root = state_root.to_string_lossy();
    out.json().as_array().unwrap().iter().filter(|i| i["config"]["user.pikaci.state_root"] == *root).cloned().collect()
}

fn instance_exists(name: &str) -> bool {
    incus(&["query", &format!("/1.0/instances/{name}")]).code == 0
}

fn assert_no_instance_left(flake: &Path) {
    let left = instances_of(&state_root(flake));
    assert!(left.is_empty(), "instances left behind: {:?}", left.iter().map(|i| &i["name"]).collect::<Vec<_>>());
}

fn wait_for<T>(what: &str, timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(start.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `pikaci ARGS --flake path:FLAKE` in the background, output to files in the flake dir.
fn spawn_in(flake: &Path, args: &[&str]) -> Child {
    pikaci()
        .args(args)
        .arg("--flake")
        .arg(format!("path:{}", flake.display()))
        .stdin(Stdio::null())
        .stdout(fs::File::create(flake.join("pikaci.stdout")).unwrap())
        .stderr(fs::File::create(flake.join("pikaci.stderr")).unwrap())
        .spawn()
        .expect("spawn pikaci")
}

fn wait_exit(child: &mut Child, flake: &Path) -> Run {
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > Duration::from_secs(90) {
            let _ = child.kill();
            panic!("pikaci did not exit within 90s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Run {
        code: status.code().unwrap_or(-1),
        stdout: fs::read_to_string(flake.join("pikaci.stdout")).unwrap_or_default(),
        stderr: fs::read_to_string(flake.join("pikaci.stderr")).unwrap_or_default(),
    }
}

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill").args([sig, &pid.to_string()]).status().unwrap().success();
    assert!(ok, "kill {sig} {pid}");
}

/// The run directory, once the run has one.
fn wait_run_dir(flake: &Path) -> PathBuf {
    wait_for("the run directory", Duration::from_secs(60), || {
        fs::read_dir(flake.join(".pikaci/runs")).ok()?.flatten().map(|e| e.path()).find(|p| p.is_dir())
    })
}

/// The running instance of a job, once its command printed `started`.
fn wait_started(flake: &Path, job: &str) -> (PathBuf, String) {
    let run_dir = wait_run_dir(flake);
    let guest_log = run_dir.join("jobs").join(job).join("guest.log");
    wait_for("the guest command to start", Duration::from_secs(60), || {
        fs::read_to_string(&guest_log).ok().filter(|t| t.contains("started"))
    });
    let run_id = run_dir.file_name().unwrap().to_string_lossy().into_owned();
    (run_dir, naming::instance_name(&run_id, job))
}

fn job_json(run_dir: &Path, job: &str) -> Value {
    read_json(&run_dir.join("jobs").join(job).join("job.json"))
}

fn host_log(run_dir: &Path, job: &str) -> String {
    fs::read_to_string(run_dir.join("jobs").join(job).join("host.log")).unwrap()
}

/// Build an image tarball from the host's busybox: with or without `/sbin/init`, with a
/// marker file, with `ballast` empty files (which make `incus init` slow to unpack).
fn image_tarball(dir: &Path, init: bool, marker: Option<&str>, ballast: usize) -> PathBuf {
    let root = dir.join("rootfs");
    for d in ["bin", "sbin", "etc", "tmp", "proc", "sys", "dev", "usr/bin", "usr/sbin", "run"] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    fs::copy("/bin/busybox", root.join("bin/busybox")).expect("/bin/busybox (busybox-static) is needed");
    let list = Command::new("/bin/busybox").arg("--list-full").output().unwrap();
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        let link = root.join(applet);
        if (applet == "sbin/init" && !init) || link.symlink_metadata().is_ok() {
            continue;
        }
        fs::create_dir_all(link.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink("/bin/busybox", &link).unwrap();
    }
    fs::write(root.join("etc/inittab"), "::sysinit:/bin/mkdir -p /run /tmp\n::respawn:/bin/sleep 2147483647\n")
        .unwrap();
    fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    fs::write(root.join("etc/group"), "root:x:0:\n").unwrap();
    if let Some(m) = marker {
        fs::write(root.join("etc/pikaci-test-marker"), format!("{m}\n")).unwrap();
    }
    if ballast > 0 {
        let b = root.join("ballast");
        fs::create_dir_all(&b).unwrap();
        for i in 0..ballast {
            fs::write(b.join(i.to_string()), b"").unwrap();
        }
    }
    fs::write(
        dir.join("metadata.yaml"),
        format!(
            "architecture: x86_64\ncreation_date: 1700000000\nproperties:\n  description: {}\n",
            marker.unwrap_or("pikaci test image")
        ),
    )
    .unwrap();
    let tarball = dir.join("image.tar.gz");
    let ok = Command::new("tar")
        .arg("-C")
        .arg(dir)
        .args(["--numeric-owner", "--owner=0", "--group=0", "-czf"])
        .arg(&tarball)
        .args(["metadata.yaml", "rootfs"])
        .status()
        .unwrap()
        .success();
    assert!(ok, "tar");
    tarball
}

/// An image alias this test imported; removed (with its image, when nothing else names
/// it) at the end of the test.
struct TestImage {
    alias: String,
}

impl TestImage {
    fn import(alias: &str, tarball: &Path) -> TestImage {
        let out: Run =
            pikaci().args(["image", "import", "--alias", alias, "--from"]).arg(tarball).output().unwrap().into();
        assert_eq!(out.code, 0, "{out:?}");
        TestImage { alias: alias.to_string() }
    }
}

impl Drop for TestImage {
    fn drop(&mut self) {
        remove_alias(&self.alias);
    }
}

fn alias_target(alias: &str) -> Option<String> {
    let out = incus(&["query", &format!("/1.0/images/aliases/{}", alias.replace('/', "%2F"))]);
    (out.code == 0).then(|| out.json()["target"].as_str().unwrap().to_string())
}

fn remove_alias(alias: &str) {
    let Some(fp) = alias_target(alias) else { return };
    incus(&["image", "alias", "delete", alias]);
    let image = incus(&["query", &format!("/1.0/images/{fp}")]);
    if image.code == 0 && image.json()["aliases"].as_array().is_none_or(|a| a.is_empty()) {
        incus(&["image", "delete", &fp]);
    }
}

/// Instances this test created by hand, deleted at the end of the test.
struct HandMade(Vec<String>);

impl Drop for HandMade {
    fn drop(&mut self) {
        for name in &self.0 {
            if instance_exists(name) {
                incus(&["delete", "--force", name]);
            }
        }
    }
}

fn sha256_hex(path: &Path) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(fs::read(path).unwrap()).iter().map(|b| format!("{b:02x}")).collect()
}

// ---------------------------------------------------------------------------------------
// Lifecycle, names, tags

#[test]
fn pass_fail_and_timeout_each_delete_their_instance() {
    setup();
    let flake = lanes_flake();
    let out = run_in(flake.path(), &["run", "view", "fail", "slow", "--runtime", "incus", "--jobs", "3"]);
    assert_eq!(out.code, 1, "{out:?}");
    let run_dir = only_run(flake.path());
    let run = read_json(&run_dir.join("run.json"));
    assert_eq!(run["runtime"], "incus");
    assert_eq!(job_status(&run, "view"), "passed", "{}", host_log(&run_dir, "view"));
    assert_eq!(job_status(&run, "fail"), "failed");
    assert_eq!(job_status(&run, "slow"), "timed_out");
    assert_eq!(job_json(&run_dir, "fail")["exit_code"], 7);
    assert!(out.stdout.contains("VIEW OK"), "live output: {}", out.stdout);
    // The artifact the guest wrote is on the host, in the job's artifacts directory.
    assert_eq!(fs::read_to_string(run_dir.join("jobs/view/artifacts/kept.txt")).unwrap(), "kept\n");

    let run_id = run["run_id"].as_str().unwrap();
    for job in ["view", "fail", "slow"] {
        let record = job_json(&run_dir, job);
        let name = naming::instance_name(run_id, job);
        assert_eq!(record["instance"], name.as_str());
        assert_eq!(name, format!("pikaci-{run_id}-{job}"));
        let reproduce: Vec<&str> =
            record["reproduce"].as_array().unwrap().iter().map(|l| l.as_str().unwrap()).collect();
        assert!(
            reproduce.iter().any(|l| l.contains(&format!("incus init pikaci/busybox {name} --ephemeral"))),
            "{reproduce:?}"
        );
        assert!(
            reproduce.iter().any(|l| l.contains(&format!("incus exec {name} ")) && l.contains("--cwd /workspace")),
            "{reproduce:?}"
        );
        assert!(reproduce.iter().any(|l| l.ends_with(&format!("incus delete --force {name}"))), "{reproduce:?}");
        // Every incus call is in host.log with its outcome and duration, delete last.
        let log = host_log(&run_dir, job);
        for call in ["init", "start", "delete --force"] {
            let line = log.lines().find(|l| l.contains(&format!("incus {call} ")));
            let line = line.unwrap_or_else(|| panic!("no `incus {call}` in host.log of {job}:\n{log}"));
            assert!(line.contains("(exit 0, ") && line.ends_with("s)"), "{line}");
        }
        assert!(log.find("incus exec").unwrap() < log.find("incus delete").unwrap(), "{log}");
    }
    assert!(host_log(&run_dir, "slow").contains("timed out after 2s"));
    let slow_ms = job_json(&run_dir, "slow")["duration_ms"].as_u64().unwrap();
    assert!(slow_ms < 20_000, "the timeout was not enforced: {slow_ms} ms");
    assert_no_instance_left(flake.path());
}

#[test]
fn a_running_instance_is_named_tagged_and_mounted_as_documented_and_ctrl_c_removes_it() {
    setup();
    let flake = probe_flake("unused");
    let mut child = spawn_in(flake.path(), &["run", "sleepy", "--runtime", "incus"]);
    let (run_dir, name) = wait_started(flake.path(), "sleepy");
    let run_id = run_dir.file_name().unwrap().to_string_lossy().into_owned();

    let live = instances_of(&state_root(flake.path()));
    assert_eq!(live.len(), 1, "{live:?}");
    let inst = &live[0];
    assert_eq!(inst["name"], name.as_str());
    assert_eq!(inst["status"], "Running");
    assert_eq!(inst["ephemeral"], true);
    assert_eq!(inst["config"]["user.pikaci.run"], run_id.as_str());
    assert_eq!(inst["config"]["user.pikaci.job"], "sleepy");
    let devices = inst["devices"].as_object().unwrap();
    let expect: BTreeMap<&str, (&str, bool)> = [
        ("workspace", ("/workspace", true)),
        ("nix-store", ("/nix/store", true)),
        ("payload-workspace-deps", ("/pikaci/payloads/workspace-deps", true)),
        ("payload-workspace-build", ("/pikaci/payloads/workspace-build", true)),
        ("artifacts", ("/pikaci/artifacts", false)),
    ]
    .into_iter()
    .collect();
    // Besides these, one read-only disk per store path of the payloads' closure, under
    // the read-only `/nix/store` (issue 8: the guest sees the closure, not the host store).
    let store: Vec<&String> = devices.keys().filter(|k| k.starts_with("store-")).collect();
    assert!(!store.is_empty(), "{devices:?}");
    for dev in &store {
        let d = &devices[dev.as_str()];
        assert!(d["path"].as_str().unwrap().starts_with("/nix/store/"), "{dev}: {d}");
        assert_eq!((d["readonly"].as_str(), d["shift"].as_str()), (Some("true"), Some("true")), "{dev}: {d}");
    }
    let others: Vec<&str> = devices.keys().map(String::as_str).filter(|k| !k.starts_with("store-")).collect();
    assert_eq!(others, expect.keys().copied().collect::<Vec<_>>());
    for (dev, (path, ro)) in &expect {
        let d = &devices[*dev];
        assert_eq!(d["type"], "disk", "{dev}");
        assert_eq!(d["path"], *path, "{dev}");
        assert_eq!(d["shift"], "true", "{dev}");
        assert_eq!(d["readonly"] == "true", *ro, "{dev}: {d}");
    }
    // The link named after the payload, which leads through its GC root to the store.
    let build_link = run_dir.join("jobs/sleepy/staged-linux-rust/workspace-build");
    assert_eq!(
        devices["payload-workspace-build"]["source"],
        build_link.canonicalize().unwrap().to_string_lossy().as_ref()
    );

    signal(child.id(), "-INT");
    let out = wait_exit(&mut child, flake.path());
    assert_eq!(out.code, 130, "{out:?}");
    let run = read_json(&run_dir.join("run.json"));
    assert_eq!(run["status"], "interrupted");
    assert_eq!(job_status(&run, "sleepy"), "interrupted");
    assert!(host_log(&run_dir, "sleepy").contains(&format!("incus delete --force {name}")));
    assert!(!instance_exists(&name));
    assert_no_instance_left(flake.path());
}

#[test]
fn ctrl_c_while_the_instance_is_being_created_leaves_no_instance() {
    setup();
    let work = tempfile::tempdir().unwrap();
    // 50k files make `incus init` unpack for a second or two: a window to press Ctrl-C in.
    let image = TestImage::import(&unique("slow-create"), &image_tarball(work.path(), true, None, 50_000));
    let flake = probe_flake("unused");
    let mut child = spawn_in(flake.path(), &["run", "sleepy", "--runtime", "incus", "--image", &image.alias]);
    let run_dir = wait_run_dir(flake.path());
    let root = state_root(flake.path());
    wait_for("the instance to be in creation", Duration::from_secs(60), || {
        (!instances_of(&root).is_empty()).then_some(())
    });
    let log_before = fs::read_to_string(run_dir.join("jobs/sleepy/host.log")).unwrap_or_default();
    signal(child.id(), "-INT");
    let out = wait_exit(&mut child, flake.path());
    assert!(!log_before.contains("/incus init "), "`incus init` had already finished:\n{log_before}");
    assert_eq!(out.code, 130, "{out:?}");
    let run = read_json(&run_dir.join("run.json"));
    assert_eq!(job_status(&run, "sleepy"), "interrupted");
    let message = job_json(&run_dir, "sleepy")["message"].as_str().unwrap().to_string();
    assert!(message.contains("interrupted before the start of instance"), "{message}");
    let log = host_log(&run_dir, "sleepy");
    assert!(log.contains("incus init") && log.contains("incus delete --force"), "{log}");
    assert!(!log.contains("incus exec"), "the command must not run after Ctrl-C:\n{log}");
    assert_no_instance_left(flake.path());
}

#[test]
fn the_longest_job_id_gets_a_shortened_hashed_instance_name() {
    setup();
    let flake = probe_flake("unused");
    let out = run_in(flake.path(), &["run", LONG_LANE, "--runtime", "incus"]);
    assert_eq!(out.code, 0, "{out:?}");
    let run_dir = only_run(flake.path());
    let run_id = run_dir.file_name().unwrap().to_string_lossy().into_owned();
    let name = job_json(&run_dir, LONG_LANE)["instance"].as_str().unwrap().to_string();
    assert_eq!(name, naming::instance_name(&run_id, LONG_LANE));
    assert!(name.len() <= 63 && naming::is_valid_instance_name(&name), "{name}");
    assert!(name.starts_with(&format!("pikaci-{run_id}-a-lane")), "{name}");
    assert_ne!(name, format!("pikaci-{run_id}-{LONG_LANE}"));
    assert!(host_log(&run_dir, LONG_LANE).contains(&format!("incus start {name} ")));
    assert_no_instance_left(flake.path());
}

// ---------------------------------------------------------------------------------------
// Faults

#[test]
fn a_missing_image_is_a_recorded_error_that_says_how_to_import_it() {
    setup();
    let flake = probe_flake("unused");
    let absent = unique("absent");
    let out = run_in(flake.path(), &["run", "marker", "--runtime", "incus", "--image", &absent]);
    assert_eq!(out.code, 3, "{out:?}");
    let run_dir = only_run(flake.path());
    assert_eq!(job_status(&read_json(&run_dir.join("run.json")), "marker"), "error");
    let message = job_json(&run_dir, "marker")["message"].as_str().unwrap().to_string();
    assert!(message.contains(&format!("image `{absent}` is not in the Incus image store")), "{message}");
    assert!(message.contains(&format!("`pikaci image import --alias {absent} --from TARBALL`")), "{message}");
    assert!(message.contains("`incus init` failed (exit 1)"), "Incus' own message: {message}");
    assert_no_instance_left(flake.path());
}

#[test]
fn a_container_that_cannot_start_is_a_recorded_error_with_its_log() {
    setup();
    let work = tempfile::tempdir().unwrap();
    let image = TestImage::import(&unique("no-init"), &image_tarball(work.path(), false, None, 0));
    let flake = probe_flake("unused");
    let out = run_in(flake.path(), &["run", "marker", "--runtime", "incus", "--image", &image.alias]);
    assert_eq!(out.code, 3, "{out:?}");
    let run_dir = only_run(flake.path());
    assert_eq!(job_status(&read_json(&run_dir.join("run.json")), "marker"), "error");
    let message = job_json(&run_dir, "marker")["message"].as_str().unwrap().to_string();
    assert!(message.contains("could not start: `incus start` failed (exit 1)"), "{message}");
    assert!(message.contains("host.log"), "{message}");
    let log = host_log(&run_dir, "marker");
    assert!(log.contains("container log of"), "{log}");
    assert!(log.contains("/sbin/init"), "the container's log names what failed:\n{log}");
    assert_no_instance_left(flake.path());
}

#[test]
fn a_killed_incus_exec_client_is_a_recorded_error() {
    setup();
    let flake = probe_flake("unused");
    let mut child = spawn_in(flake.path(), &["run", "sleepy", "--runtime", "incus"]);
    let (run_dir, name) = wait_started(flake.path(), "sleepy");
    let client = exec_client_of(child.id());
    signal(client, "-KILL");
    let out = wait_exit(&mut child, flake.path());
    assert_eq!(out.code, 3, "{out:?}");
    assert_eq!(job_status(&read_json(&run_dir.join("run.json")), "sleepy"), "error");
    let message = job_json(&run_dir, "sleepy")["message"].as_str().unwrap().to_string();
    assert!(
        message.contains(&format!("the `incus exec` client of instance `{name}` was killed by signal 9")),
        "{message}"
    );
    assert!(!instance_exists(&name));
    assert_no_instance_left(flake.path());
}

/// The `incus exec` process that pikaci (`pid`) started.
fn exec_client_of(pid: u32) -> u32 {
    wait_for("the `incus exec` client", Duration::from_secs(10), || {
        fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
            let child: u32 = e.file_name().to_str()?.parse().ok()?;
            let stat = fs::read_to_string(e.path().join("stat")).ok()?;
            let ppid: u32 = stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()?;
            let cmdline = fs::read_to_string(e.path().join("cmdline")).ok()?;
            (ppid == pid && cmdline.split('\0').nth(1) == Some("exec")).then_some(child)
        })
    })
}

#[test]
fn an_instance_deleted_under_a_running_command_is_a_recorded_error() {
    setup();
    let flake = probe_flake("unused");
    let mut child = spawn_in(flake.path(), &["run", "sleepy", "--runtime", "incus"]);
    let (run_dir, name) = wait_started(flake.path(), "sleepy");
    // Deleting pikaci's own instance from outside: the fault of someone else's cleanup.
    assert_eq!(incus(&["delete", "--force", &name]).code, 0);
    let out = wait_exit(&mut child, flake.path());
    assert_eq!(out.code, 3, "{out:?}");
    assert_eq!(job_status(&read_json(&run_dir.join("run.json")), "sleepy"), "error");
    let message = job_json(&run_dir, "sleepy")["message"].as_str().unwrap().to_string();
    // Depending on how far Incus got: the instance is gone, or still stopping.
    assert!(
        message.contains(&format!("instance `{name}` ")) && message.contains("deleted while the command ran"),
        "{message}"
    );
    assert_no_instance_left(flake.path());
}

#[test]
fn a_command_missing_from_the_guest_fails_with_127() {
    setup();
    let flake = probe_flake("unused");
    let out = run_in(flake.path(), &["run", "missing-program", "--runtime", "incus"]);
    assert_eq!(out.code, 1, "{out:?}");
    let run_dir = only_run(flake.path());
    assert_eq!(job_status(&read_json(&run_dir.join("run.json")), "missing-program"), "failed");
    assert_eq!(job_json(&run_dir, "missing-program")["exit_code"], 127);
    // The guest's shell names the program; on exit 127 the Incus client also prints its
    // own "Command not found" and, under load, can exit before relaying the shell's line.
    let guest = fs::read_to_string(run_dir.join("jobs/missing-program/guest.log")).unwrap();
    assert!(guest.contains("/no/such/program") || guest.contains("Command not found"), "{guest}");
    assert_no_instance_left(flake.path());
}

#[test]
fn the_guest_environment_is_exactly_pikacis() {
    setup();
    let flake = probe_flake("unused");
    let out = run_in(flake.path(), &["run", "env", "--runtime", "incus"]);
    assert_eq!(out.code, 0, "{out:?}");
    let run_dir = only_run(flake.path());
    let guest = fs::read_to_string(run_dir.join("jobs/env/guest.log")).unwrap();
    let mut names: Vec<&str> = guest.lines().filter_map(|l| l.split_once('=').map(|(k, _)| k)).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "CI",
            "HOME",
            "LANE_VAR",
            "LANG",
            "PATH",
            "PIKACI",
            "PIKACI_ARTIFACTS",
            "PIKACI_JOB",
            "PIKACI_LANE",
            "PIKACI_PAYLOADS",
            "PIKACI_RUNTIME",
            "PIKACI_RUN_ID",
            "PIKACI_WORKSPACE",
            "TMPDIR"
        ],
        "nothing from `incus exec` or the prelude's shell:\n{guest}"
    );
    assert!(guest.contains("HOME=/pikaci/home\n"), "{guest}");
    assert!(guest.contains("PIKACI_RUNTIME=incus\n") && guest.contains("PIKACI_LANE=env\n"), "{guest}");
}

#[test]
fn a_dead_daemon_fails_incus_with_a_hint_and_auto_falls_back_to_bwrap() {
    setup();
    require_bwrap();
    // An empty INCUS_DIR: the client looks for a socket that no daemon serves.
    let dead = tempfile::tempdir().unwrap();
    let flake = lanes_flake();
    let run = |args: &[&str]| -> Run {
        pikaci()
            .env("INCUS_DIR", dead.path())
            .args(args)
            .arg("--flake")
            .arg(format!("path:{}", flake.path().display()))
            .output()
            .unwrap()
            .into()
    };
    let t = Instant::now();
    let out = run(&["run", "fail", "--runtime", "incus"]);
    assert_eq!(out.code, 3, "{out:?}");
    assert!(out.stdout.contains("the Incus daemon on this machine does not answer"), "{}", out.stdout);
    assert!(out.stdout.contains("doesn't appear to be started"), "Incus' own message: {}", out.stdout);
    assert!(out.stdout.contains("hint: start it: `scripts/bootstrap`"), "{}", out.stdout);
    assert!(t.elapsed() < Duration::from_secs(30));
    assert_no_instance_left(flake.path());
    // Recorded: the job ended in `error`, with the reason, and nothing was built for it.
    let record = read_json(&only_run(flake.path()).join("run.json"));
    assert_eq!(record["status"], "error");
    assert_eq!(record["runtime"], "incus");
    assert_eq!(job_status(&record, "fail"), "error");
    let message = record["jobs"][0]["message"].as_str().unwrap();
    assert!(message.contains("does not answer") && message.contains("hint: start it"), "{message}");
    let job = read_json(&only_run(flake.path()).join("jobs/fail/job.json"));
    assert_eq!(job["payloads"].as_array().unwrap().len(), 0, "nothing is built for a job that cannot run");

    let out = run(&["run", "view", "--runtime", "auto", "--output", "json"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.json()["runtime"], "bwrap");

    let out: Run =
        pikaci().env("INCUS_DIR", dead.path()).arg("doctor").current_dir(flake.path()).output().unwrap().into();
    assert_eq!(out.code, 0, "incus is optional when bwrap works: {out:?}");
    assert!(out.stdout.contains("FAIL incus daemon"), "{}", out.stdout);
    assert!(out.stdout.contains("fix: start it: `scripts/bootstrap`"), "{}", out.stdout);
    assert!(out.stdout.contains("`--runtime auto` would use: bwrap"), "{}", out.stdout);

    let out = run(&["gc"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(!out.stdout.contains("warning"), "gc must stay quiet without a daemon: {}", out.stdout);
}

#[test]
fn device_sources_that_vanish_before_create_or_start_are_clear_errors() {
    use pikaci::executor::Placement;
    use pikaci::executor::runtime::incus::IncusRuntime;
    use pikaci::handoff::{HostContext, StagedPayloadMount};
    use pikaci::tools::log::HostLog;
    setup();
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("state");
    let run_id = format!("19700101-000000-000-{:04x}", std::process::id() % 0xffff);
    let ctx_for = |job: &str| -> HostContext {
        let job_dir = root.join("runs").join(&run_id).join("jobs").join(job);
        let staged = job_dir.join("staged-linux-rust");
        fs::create_dir_all(&staged).unwrap();
        fs::create_dir_all(job_dir.join("artifacts")).unwrap();
        fs::create_dir_all(root.join("snapshots/s")).unwrap();
        let payload = work.path().join(format!("payload-{job}"));
        fs::create_dir_all(&payload).unwrap();
        std::os::unix::fs::symlink(&payload, staged.join("workspace-build")).unwrap();
        HostContext {
            run_id: run_id.clone(),
            job_id: job.into(),
            job_dir: job_dir.clone(),
            snapshot_dir: root.join("snapshots/s"),
            artifacts_dir: job_dir.join("artifacts"),
            command: vec!["/bin/true".into()],
            env: BTreeMap::new(),
            timeout: Duration::from_secs(10),
            image: None,
            staged_payload_mounts: vec![StagedPayloadMount {
                local_mount_path: staged.join("workspace-build"),
                device_prefix: "workspace-build".into(),
            }],
            extra_mounts: vec![],
            store_closure: None,
        }
    };
    let runtime = IncusRuntime::connect(&Placement::Local, None, &root).unwrap();

    // Gone after the plan, before `incus init`: Incus refuses to create the instance.
    let ctx = ctx_for("before-create");
    let log = HostLog::create(&ctx.job_dir.join("host.log")).unwrap();
    let plan = runtime.plan(&ctx).unwrap();
    fs::remove_dir(work.path().join("payload-before-create")).unwrap();
    let err = runtime.create(&plan, &log).err().expect("create must fail");
    let text = pikaci::error::render(&err);
    assert!(
        text.contains(&format!("instance `{}` could not be created: a device source vanished", plan.name)),
        "{text}"
    );
    assert!(text.contains("Missing source path") && text.contains("payload-workspace-build"), "{text}");
    assert!(text.contains("hint: a payload, the snapshot or the artifacts directory was removed"), "{text}");
    assert!(!instance_exists(&plan.name));

    // Gone after `incus init`, before `incus start`.
    let ctx = ctx_for("before-start");
    let log = HostLog::create(&ctx.job_dir.join("host.log")).unwrap();
    let plan = runtime.plan(&ctx).unwrap();
    let instance = runtime.create(&plan, &log).unwrap();
    assert!(instance_exists(instance.name()));
    fs::remove_dir(work.path().join("payload-before-start")).unwrap();
    let err = instance.start().unwrap_err();
    let text = pikaci::error::render(&err);
    assert!(text.contains(&format!("instance `{}` could not start: a device source vanished", plan.name)), "{text}");
    assert!(text.contains("payload-workspace-build"), "{text}");
    instance.delete().unwrap();
    assert!(!instance_exists(&plan.name));

    // Gone before the runtime even plans: named, and Incus is never called.
    let ctx = ctx_for("before-plan");
    fs::remove_dir(work.path().join("payload-before-plan")).unwrap();
    let err = runtime.plan(&ctx).unwrap_err();
    assert!(format!("{err:#}").contains("resolve staged payload `workspace-build`"), "{err:#}");
    assert!(instances_of(&root.canonicalize().unwrap()).is_empty());
}

#[test]
fn a_panic_after_create_still_deletes_the_instance() {
    use pikaci::executor::Placement;
    use pikaci::executor::runtime::incus::IncusRuntime;
    use pikaci::handoff::HostContext;
    use pikaci::tools::log::HostLog;
    setup();
    let work = tempfile::tempdir().unwrap();
    let job_dir = work.path().join("state/runs/19700101-000000-001-0000/jobs/panics");
    fs::create_dir_all(job_dir.join("artifacts")).unwrap();
    let ctx = HostContext {
        run_id: "19700101-000000-001-0000".into(),
        job_id: "panics".into(),
        job_dir: job_dir.clone(),
        snapshot_dir: work.path().to_path_buf(),
        artifacts_dir: job_dir.join("artifacts"),
        command: vec!["/bin/true".into()],
        env: BTreeMap::new(),
        timeout: Duration::from_secs(10),
        image: None,
        staged_payload_mounts: vec![],
        extra_mounts: vec![],
        store_closure: None,
    };
    let runtime = Arc::new(IncusRuntime::connect(&Placement::Local, None, &work.path().join("state")).unwrap());
    let plan = runtime.plan(&ctx).unwrap();
    let name = plan.name.clone();
    let log = HostLog::create(&job_dir.join("host.log")).unwrap();
    let rt = runtime.clone();
    let result = std::thread::spawn(move || {
        let instance = rt.create(&plan, &log).unwrap();
        assert!(instance_exists(instance.name()));
        panic!("a bug between create and delete");
    })
    .join();
    assert!(result.is_err());
    assert!(!instance_exists(&name), "the drop guard must delete `{name}`");
}

// ---------------------------------------------------------------------------------------
// gc

#[test]
fn gc_reaps_instances_of_dead_runs_of_this_state_root_only() {
    setup();
    let flake = probe_flake("unused");
    // A run killed with SIGKILL leaves its instance behind...
    let mut child = spawn_in(flake.path(), &["run", "sleepy", "--runtime", "incus"]);
    let (_run_dir, killed) = wait_started(flake.path(), "sleepy");
    signal(child.id(), "-KILL");
    let _ = child.wait();
    assert!(instance_exists(&killed), "SIGKILL leaves the instance (that is what gc is for)");

    // ...and so, by hand: a dead run of this state root, a run of another state root, and
    // a live run of this one (its lock held here).
    let root = state_root(flake.path());
    let live_run = "29991231-235959-999-0001";
    fs::create_dir_all(root.join("runs").join(live_run)).unwrap();
    let lock = fs::File::create(root.join("runs").join(live_run).join("lock")).unwrap();
    lock.lock().unwrap();
    let make = |name: &str, run: &str, state: &str| {
        let out = incus(&[
            "init",
            "pikaci/busybox",
            name,
            "-c",
            &format!("user.pikaci.run={run}"),
            "-c",
            "user.pikaci.job=j",
            "-c",
            &format!("user.pikaci.state_root={state}"),
        ]);
        assert_eq!(out.code, 0, "{out:?}");
    };
    let (dead, other, live) = (unique("dead"), unique("other-root"), unique("live"));
    let hand = HandMade(vec![dead.clone(), other.clone(), live.clone(), killed.clone()]);
    make(&dead, "19700101-000000-000-dead", &root.to_string_lossy());
    make(&other, "19700101-000000-000-dead", "/nonexistent/other/.pikaci");
    make(&live, live_run, &root.to_string_lossy());

    // With the daemon out of reach, gc cannot look, and says so because a run died on it.
    let unreachable = tempfile::tempdir().unwrap();
    let out: Run = pikaci()
        .env("INCUS_DIR", unreachable.path())
        .args(["gc", "--keep", "100"])
        .current_dir(flake.path())
        .output()
        .unwrap()
        .into();
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("0 instances"), "{}", out.stdout);
    assert!(
        out.stdout.contains(
            "warning: a run that died while using Incus, or could not delete its instance, may have left an instance"
        ),
        "{}",
        out.stdout
    );
    assert!(instance_exists(&killed));

    let out = run_in(flake.path(), &["gc", "--keep", "100"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("2 instances"), "{}", out.stdout);
    assert!(!instance_exists(&killed), "the SIGKILLed run's instance is reaped");
    assert!(!instance_exists(&dead), "the dead run's instance is reaped");
    assert!(instance_exists(&other), "another state root's instance is not touched");
    assert!(instance_exists(&live), "a live run's instance is not touched");
    drop(lock);
    drop(hand);
}

#[test]
fn gc_warns_when_it_cannot_reap_what_a_run_that_could_not_delete_its_instance_left() {
    setup();
    let flake = copy_fixture(&fixture_path("sandbox"));
    let out = run_in(flake.path(), &["run", "environ", "--runtime", "incus"]);
    assert_eq!(out.code, 0, "{out:?}");
    // The record such a run leaves when incusd dies before `incus delete` (a fault that
    // cannot be made here without stopping the shared daemon): the job is `error` with the
    // message pikaci writes then.
    let run_json = only_run(flake.path()).join("run.json");
    let mut record = read_json(&run_json);
    record["status"] = "error".into();
    record["jobs"][0]["status"] = "error".into();
    record["jobs"][0]["message"] =
        "the command ended (exit 0), then: could not delete instance `pikaci-x`: the daemon does not answer".into();
    fs::write(&run_json, serde_json::to_vec(&record).unwrap()).unwrap();
    let unreachable = tempfile::tempdir().unwrap();
    let out: Run = pikaci()
        .env("INCUS_DIR", unreachable.path())
        .args(["gc", "--keep", "100"])
        .current_dir(flake.path())
        .output()
        .unwrap()
        .into();
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("or could not delete its instance, may have left an instance"), "{}", out.stdout);
}

// ---------------------------------------------------------------------------------------
// Images

#[test]
fn another_image_is_used_when_named_by_flag_or_by_the_lane() {
    setup();
    let work = tempfile::tempdir().unwrap();
    let marker = unique("marker");
    let image = TestImage::import(&unique("marked"), &image_tarball(work.path(), true, Some(&marker), 0));
    let flake = probe_flake(&image.alias);

    let out = run_in(flake.path(), &["run", "marker", "--runtime", "incus", "--image", &image.alias]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains(&marker), "{}", out.stdout);
    let out = run_in(flake.path(), &["run", "marker-by-lane", "--runtime", "incus"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains(&marker), "{}", out.stdout);
    // The default image has no marker: the image really is what was named.
    let out = run_in(flake.path(), &["run", "marker", "--runtime", "incus"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(!out.stdout.contains(&marker));
    assert_no_instance_left(flake.path());
}

#[test]
fn image_import_is_idempotent_and_force_replaces() {
    setup();
    let work = tempfile::tempdir().unwrap();
    let alias = format!("pikaci-test/{}", unique("idem"));
    let _cleanup = TestImage { alias: alias.clone() };
    let tarball = image_tarball(work.path(), true, Some(&unique("idem-marker")), 0);
    let import = |extra: &[&str]| -> Run {
        pikaci().args(["image", "import", "--alias", &alias]).args(extra).output().unwrap().into()
    };
    let tar = tarball.to_string_lossy().into_owned();
    let first = import(&["--from", &tar]);
    assert_eq!(first.code, 0, "{first:?}");
    let fp1 = sha256_hex(&tarball);
    assert_eq!(first.stdout.trim(), format!("imported image `{alias}` ({fp1})"));
    assert_eq!(alias_target(&alias).as_deref(), Some(fp1.as_str()));

    // Again, from the tarball or built: the alias exists, nothing changes.
    for extra in [&["--from", tar.as_str()][..], &[][..]] {
        let again = import(extra);
        assert_eq!(again.code, 0, "{again:?}");
        assert_eq!(again.stdout.trim(), format!("imported image `{alias}` ({fp1})"));
        assert_eq!(alias_target(&alias).as_deref(), Some(fp1.as_str()));
    }

    // --force builds the default image and moves the alias; the old image, now unnamed, goes.
    let forced = import(&["--force"]);
    assert_eq!(forced.code, 0, "{forced:?}");
    let fp2 = alias_target(&alias).unwrap();
    assert_ne!(fp2, fp1);
    assert!(forced.stdout.contains(&fp2), "{}", forced.stdout);
    assert_ne!(incus(&["query", &format!("/1.0/images/{fp1}")]).code, 0, "the replaced image is deleted");
}

#[test]
fn doctor_reports_a_ready_incus() {
    setup();
    let dir = tempfile::tempdir().unwrap();
    let out: Run = pikaci().arg("doctor").current_dir(dir.path()).output().unwrap().into();
    assert_eq!(out.code, 0, "{out:?}");
    for line in [
        "ok   incus          client `",
        "ok   incus daemon",
        "ok   incus idmap",
        "ok   incus storage",
        "ok   incus image",
        "ok   incus orphans",
    ] {
        assert!(out.stdout.contains(line), "no `{line}` in:\n{}", out.stdout);
    }
    assert!(out.stdout.contains("`--runtime auto` would use: incus"), "{}", out.stdout);
}

#[test]
fn without_incus_doctor_says_so_in_one_line_and_gc_stays_quiet() {
    require_nix();
    require_bwrap();
    // A PATH with nix and bwrap but no `incus`.
    let bin = tempfile::tempdir().unwrap();
    for tool in ["nix", "nix-store", "bwrap"] {
        std::os::unix::fs::symlink(which(tool).unwrap(), bin.path().join(tool)).unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let out: Run = pikaci().env("PATH", bin.path()).arg("doctor").current_dir(dir.path()).output().unwrap().into();
    assert_eq!(out.code, 0, "incus is optional when bwrap works: {out:?}");
    let incus_checks: Vec<&str> =
        out.stdout.lines().filter(|l| l.starts_with("ok   incus") || l.starts_with("FAIL incus")).collect();
    assert_eq!(
        incus_checks,
        ["FAIL incus          `incus` is not on PATH (optional: `--runtime auto` uses bwrap without it)"]
    );
    assert!(out.stdout.contains("fix: for container isolation install Incus"), "{}", out.stdout);
    assert!(out.stdout.contains("`--runtime auto` would use: bwrap"), "{}", out.stdout);

    let out: Run = pikaci().env("PATH", bin.path()).arg("gc").current_dir(dir.path()).output().unwrap().into();
    assert_eq!(out.code, 0, "{out:?}");
    assert!(!out.stdout.contains("warning"), "{}", out.stdout);
}

// ---------------------------------------------------------------------------------------
// The warm pool (on for these tests only: `tests/common` turns it off)

/// `pikaci ARGS --flake path:FLAKE` with a warm pool of one, whose instances wait
/// `idle_secs` for a job.
fn run_pooled(flake: &Path, args: &[&str], idle_secs: u64) -> Run {
    pikaci()
        .env("PIKACI_INCUS_POOL", "1")
        .env("PIKACI_INCUS_POOL_IDLE", idle_secs.to_string())
        .args(args)
        .arg("--flake")
        .arg(format!("path:{}", flake.display()))
        .output()
        .expect("run pikaci")
        .into()
}

/// The pool's entries (instance names), as the state root holds them.
fn pool_entries(flake: &Path) -> Vec<String> {
    let Ok(dir) = fs::read_dir(flake.join(".pikaci/incus-pool")) else { return Vec::new() };
    let mut names: Vec<String> = dir
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| read_json(&p)["instance"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    names
}

/// The entry the run's end made in the background (other than `not`).
fn wait_pool_entry(flake: &Path, not: Option<&str>) -> String {
    wait_for("the warm pool's refill", Duration::from_secs(90), || {
        pool_entries(flake).into_iter().find(|n| Some(n.as_str()) != not)
    })
}

/// Once the refill after the last run has made an instance other than `past`, `pikaci gc`
/// empties the pool: no entry, no instance of this state root.
fn gc_empties_the_pool(flake: &Path, past: &str) {
    wait_pool_entry(flake, Some(past));
    let out = run_in(flake, &["gc"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(pool_entries(flake).is_empty());
    assert_no_instance_left(flake);
}

fn only_run_dir_newest(flake: &Path) -> PathBuf {
    let mut runs: Vec<PathBuf> =
        fs::read_dir(flake.join(".pikaci/runs")).unwrap().flatten().map(|e| e.path()).collect();
    runs.sort();
    runs.pop().unwrap()
}

#[test]
fn the_warm_pool_gives_the_next_run_a_started_instance_used_once_and_gc_empties_it() {
    setup();
    let flake = probe_flake("unused");
    let out = run_pooled(flake.path(), &["run", "fresh", "--runtime", "incus"], 300);
    assert_eq!(out.code, 0, "{out:?}");
    let first = only_run(flake.path());
    let run_id = first.file_name().unwrap().to_string_lossy().into_owned();
    assert_eq!(job_json(&first, "fresh")["instance"], naming::instance_name(&run_id, "fresh"), "no pool yet");

    // The run's end made one started, empty instance, tagged for the pool and not for a run.
    let pooled = wait_pool_entry(flake.path(), None);
    let info = incus(&["query", &format!("/1.0/instances/{pooled}")]).json();
    assert_eq!(info["status"], "Running", "{info}");
    assert_eq!(info["config"]["user.pikaci.state_root"], *state_root(flake.path()).to_string_lossy());
    assert!(info["config"]["user.pikaci.pool"].is_string(), "{info}");
    assert!(info["config"].get("user.pikaci.run").is_none(), "{info}");
    assert!(info["devices"].as_object().is_none_or(|d| d.is_empty()), "no job's devices yet: {info}");

    // The next run's job runs in it, once: a fresh instance, deleted after the job.
    let out = run_pooled(flake.path(), &["run", "fresh", "--runtime", "incus"], 300);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("fresh") && !out.stdout.contains("REUSED"), "{}", out.stdout);
    let second = only_run_dir_newest(flake.path());
    let job = job_json(&second, "fresh");
    assert_eq!(job["instance"], *pooled, "{job}");
    assert!(host_log(&second, "fresh").contains(&format!("instance `{pooled}` of the warm pool")));
    assert!(!instance_exists(&pooled), "a pool instance runs one job and is deleted");

    // And the run after that gets another one, never the same.
    let next = wait_pool_entry(flake.path(), Some(&pooled));
    let out = run_pooled(flake.path(), &["run", "fresh", "--runtime", "incus"], 300);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(!out.stdout.contains("REUSED"), "{}", out.stdout);
    assert_eq!(job_json(&only_run_dir_newest(flake.path()), "fresh")["instance"], *next);

    // gc empties the pool: no instance of this state root, no entry.
    gc_empties_the_pool(flake.path(), &next);
}

#[test]
fn an_idle_pool_instance_powers_itself_off_and_is_never_claimed_late() {
    setup();
    let flake = probe_flake("unused");
    let out = run_pooled(flake.path(), &["run", "fresh", "--runtime", "incus"], 5);
    assert_eq!(out.code, 0, "{out:?}");
    let pooled = wait_pool_entry(flake.path(), None);
    // Nothing of pikaci runs now: the instance's own timer stops it, and Incus deletes it.
    wait_for("the idle instance to go", Duration::from_secs(60), || (!instance_exists(&pooled)).then_some(()));
    assert_eq!(pool_entries(flake.path()), std::slice::from_ref(&pooled), "its entry stays until a run or gc looks");

    // The next run takes the expired entry out and makes its own instance.
    let out = run_pooled(flake.path(), &["run", "fresh", "--runtime", "incus"], 5);
    assert_eq!(out.code, 0, "{out:?}");
    let run_dir = only_run_dir_newest(flake.path());
    let run_id = run_dir.file_name().unwrap().to_string_lossy().into_owned();
    assert_eq!(job_json(&run_dir, "fresh")["instance"], naming::instance_name(&run_id, "fresh"));
    assert!(host_log(&run_dir, "fresh").contains(&format!("`{pooled}` of the warm pool idled too long")));
    gc_empties_the_pool(flake.path(), &pooled);
}

#[test]
fn a_pool_instance_of_an_image_replaced_since_is_not_used() {
    setup();
    let work = tempfile::tempdir().unwrap();
    let (old, new) = (unique("old-marker"), unique("new-marker"));
    let image = TestImage::import(&unique("pooled"), &image_tarball(&work.path().join("old"), true, Some(&old), 0));
    let flake = probe_flake(&image.alias);
    let out = run_pooled(flake.path(), &["run", "marker-by-lane", "--runtime", "incus"], 300);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains(&old), "{}", out.stdout);
    let pooled = wait_pool_entry(flake.path(), None);

    // The alias now names another image: the instance made from the old one is not used.
    let tarball = image_tarball(&work.path().join("new"), true, Some(&new), 0);
    let replaced: Run = pikaci()
        .args(["image", "import", "--force", "--alias", &image.alias, "--from"])
        .arg(&tarball)
        .output()
        .unwrap()
        .into();
    assert_eq!(replaced.code, 0, "{replaced:?}");
    let out = run_pooled(flake.path(), &["run", "marker-by-lane", "--runtime", "incus"], 300);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains(&new) && !out.stdout.contains(&old), "{}", out.stdout);
    let run_dir = only_run_dir_newest(flake.path());
    assert_ne!(job_json(&run_dir, "marker-by-lane")["instance"], *pooled);
    assert!(
        host_log(&run_dir, "marker-by-lane").contains(&format!("`{pooled}` of the warm pool cannot be this job's"))
    );
    assert!(!instance_exists(&pooled));
    gc_empties_the_pool(flake.path(), &pooled);
}

#[test]
fn ctrl_c_in_a_job_on_a_pool_instance_removes_it_and_refills_nothing() {
    setup();
    let flake = probe_flake("unused");
    let out = run_pooled(flake.path(), &["run", "fresh", "--runtime", "incus"], 300);
    assert_eq!(out.code, 0, "{out:?}");
    let pooled = wait_pool_entry(flake.path(), None);
    let refill_log = flake.path().join(".pikaci/incus-pool/refill.log");
    let refills = || fs::read_to_string(&refill_log).unwrap_or_default().matches("refill of").count();
    assert_eq!(refills(), 1);

    let mut child = pikaci()
        .env("PIKACI_INCUS_POOL", "1")
        .env("PIKACI_INCUS_POOL_IDLE", "300")
        .args(["run", "sleepy", "--runtime", "incus", "--flake", &format!("path:{}", flake.path().display())])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let run_dir = wait_for("the second run", Duration::from_secs(60), || {
        let dir = only_run_dir_newest(flake.path());
        let log = fs::read_to_string(dir.join("jobs/sleepy/guest.log")).ok()?;
        log.contains("started").then_some(dir)
    });
    assert!(host_log(&run_dir, "sleepy").contains(&format!("instance `{pooled}` of the warm pool")));
    signal(child.id(), "-INT");
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{status:?}");
    assert_eq!(job_json(&run_dir, "sleepy")["instance"], *pooled);
    assert!(!instance_exists(&pooled), "the claimed instance is deleted");
    // An interrupted run starts no refill (a refill's first line is written as it
    // starts): nothing of this state root is left at all.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(refills(), 1, "{}", fs::read_to_string(&refill_log).unwrap());
    assert!(pool_entries(flake.path()).is_empty(), "{:?}", pool_entries(flake.path()));
    assert_no_instance_left(flake.path());
}

#[test]
fn a_pool_instance_deleted_behind_pikacis_back_is_passed_over() {
    setup();
    let flake = probe_flake("unused");
    let out = run_pooled(flake.path(), &["run", "fresh", "--runtime", "incus"], 300);
    assert_eq!(out.code, 0, "{out:?}");
    let pooled = wait_pool_entry(flake.path(), None);
    // As a reboot of the host would (its instances are ephemeral).
    assert_eq!(incus(&["delete", "--force", &pooled]).code, 0);

    let out = run_pooled(flake.path(), &["run", "fresh", "--runtime", "incus"], 300);
    assert_eq!(out.code, 0, "{out:?}");
    let run_dir = only_run_dir_newest(flake.path());
    let run_id = run_dir.file_name().unwrap().to_string_lossy().into_owned();
    assert_eq!(job_json(&run_dir, "fresh")["instance"], naming::instance_name(&run_id, "fresh"));
    let log = host_log(&run_dir, "fresh");
    assert!(log.contains(&format!("`{pooled}` of the warm pool cannot be this job's: it is not running")), "{log}");
    gc_empties_the_pool(flake.path(), &pooled);
}
