//! Remote placement, for real: lanes run over SSH on a separate test host (an Incus system
//! container with its own Nix store, its own incusd and its own sshd; see
//! `common/test_hosts.rs`). What is checked: the snapshot sent once, the one `mkdir -p` of
//! the job's directories, payloads built there (rooted in the remote job directory, absent
//! from this machine's store), Incus devices whose sources are the remote paths, artifacts
//! brought back, and gc cleaning up there. Remote state is read over SSH, never from the
//! local disk.

mod common;
#[path = "common/sandbox_checks.rs"]
mod sandbox_checks;

use std::path::Path;

use common::test_hosts::{TestHost, TestHosts};
use common::*;

/// The hosts this binary makes (the measurement below wants two; the third is stopped
/// during a run by the test of a failing host, the fourth has its sshd stopped and
/// started by the gc test: no other test ever meets either of them down).
const HOSTS: usize = 4;
/// The host whose sshd a test stops.
const DISRUPTED: usize = 3;

struct RemoteLab {
    hosts: &'static TestHosts,
    host: &'static TestHost,
    /// This test's own state root on the host (its runs never meet another test's).
    remote_root: String,
}

impl RemoteLab {
    fn start(flake: &Path) -> RemoteLab {
        RemoteLab::start_on(flake, 0)
    }

    fn start_on(flake: &Path, index: usize) -> RemoteLab {
        require_nix();
        let hosts = common::test_hosts::shared(HOSTS);
        let name = flake.file_name().unwrap().to_string_lossy();
        RemoteLab { hosts, host: &hosts.hosts[index], remote_root: format!("/var/tmp/pikaci/{name}") }
    }

    fn pikaci(&self, flake: &Path, args: &[&str]) -> Run {
        pikaci()
            .env("PIKACI_SSH_CONFIG", &self.hosts.ssh_config)
            .env("PIKACI_REMOTE_STATE_ROOT", &self.remote_root)
            .args(args)
            .arg("--flake")
            .arg(flake)
            .output()
            .unwrap()
            .into()
    }

    fn exists(&self, path: &str) -> bool {
        self.hosts.test(self.host, &["-e", path])
    }
}

#[test]
fn lanes_run_on_a_remote_host_and_gc_cleans_up_there() {
    let flake = copy_fixture(&fixture_path("lanes"));
    let lab = RemoteLab::start(flake.path());
    let host = lab.host.name.as_str();
    let out =
        lab.pikaci(flake.path(), &["run", "view", "fail", "--runtime", "incus", "--remote", host, "--output", "json"]);
    assert_eq!(out.code, 1, "{out:?}");
    let record = out.json();
    assert_eq!(record["remote"], host);
    assert_eq!(job_status(&record, "view"), "passed", "{}", out.stderr);
    let fail = record["jobs"].as_array().unwrap().iter().find(|j| j["job_id"] == "fail").unwrap();
    assert_eq!(fail["exit_code"], 7);
    assert!(out.stderr.contains("[view] VIEW OK"), "guest output streams back: {}", out.stderr);

    let run_id = record["run_id"].as_str().unwrap();
    let local_job = flake.path().join(".pikaci/runs").join(run_id).join("jobs/view");
    let remote_job = format!("{}/runs/{run_id}/jobs/view", lab.remote_root);
    // Built and rooted there (a registered indirect root per output), not here.
    let staged = format!("{remote_job}/staged-linux-rust");
    let auto = lab.hosts.sh(lab.host, "for l in /nix/var/nix/gcroots/auto/*; do readlink \"$l\"; done");
    let job = read_json(&local_job.join("job.json"));
    let mut payload_paths = Vec::new();
    for link in [".gcroot", ".gcroot-dev", ".gcroot-2", ".gcroot-3"] {
        let path = format!("{staged}/{link}");
        assert!(lab.hosts.test(lab.host, &["-L", &path]), "{link} is not rooted on the remote side");
        assert!(auto.lines().any(|l| l == path), "{link} is not a registered root there:\n{auto}");
        let target = lab.hosts.sh(lab.host, &format!("readlink {path}"));
        let target = target.trim();
        assert!(target.starts_with("/nix/store/"), "{link} -> {target}");
        assert!(lab.exists(target), "{target} is in the host's store");
        assert!(!Path::new(target).exists(), "{target} was built there only, never here");
        payload_paths.push(target.to_string());
    }
    assert_eq!(
        std::fs::read_dir(local_job.join("staged-linux-rust")).unwrap().count(),
        0,
        "no payload is rooted locally"
    );
    // The build there was watched as it ran (its structured log came back over SSH): its
    // log is kept here, and its events were told.
    let extra_log = std::fs::read_to_string(local_job.join("payload-extra.log")).unwrap();
    assert!(extra_log.contains("building '/nix/store/") && extra_log.contains("-fixture-extra.drv'"), "{extra_log}");
    let events = std::fs::read_to_string(local_job.join("../../events.jsonl")).unwrap();
    assert!(
        events.lines().any(|l| l.contains(r#""event":"payload_build_finished","run_id""#)
            && l.contains(r#""job_id":"view","payload":"extra","status":"built""#)),
        "{events}"
    );
    // The artifacts came back.
    assert_eq!(std::fs::read_to_string(local_job.join("artifacts/kept.txt")).unwrap(), "kept\n");
    // The snapshot was sent once for the two jobs.
    let snapshot = record["snapshot"]["id"].as_str().unwrap();
    let remote_snapshot = format!("{}/snapshots/{snapshot}", lab.remote_root);
    assert!(lab.hosts.test(lab.host, &["-f", &format!("{remote_snapshot}/marker.txt")]));
    let logs: String = ["view", "fail"]
        .iter()
        .map(|j| {
            std::fs::read_to_string(
                flake.path().join(".pikaci/runs").join(run_id).join("jobs").join(j).join("host.log"),
            )
            .unwrap()
        })
        .collect();
    assert_eq!(logs.matches("'sh -c '\\''set -e; d=$1;").count(), 1, "the snapshot is sent once:\n{logs}");
    let view_log = std::fs::read_to_string(local_job.join("host.log")).unwrap();
    let mkdirs: Vec<&str> = view_log.lines().filter(|l| l.contains("mkdir -p -- \"$1\"")).collect();
    let (views, dirs): (Vec<&str>, Vec<&str>) = mkdirs.iter().partition(|l| l.contains("/store-view/"));
    assert_eq!(dirs.len(), 1, "one call for all of a job's directories and links:\n{view_log}");
    assert!(
        dirs[0].contains(":: .gcroot-dev ") && dirs[0].contains("/staged-linux-rust/workspace-build"),
        "{}",
        dirs[0]
    );
    assert_eq!(views.len(), 1, "one more for the mount points of the guest's /nix/store:\n{view_log}");
    // The Incus devices there name the remote job directory's payload links as sources.
    for link in ["workspace-deps", "workspace-build", "extra"] {
        assert!(view_log.contains(&format!("\"source\":\"{staged}/{link}\"")), "device source `{link}`:\n{view_log}");
    }
    let reproduce = job["reproduce"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap().to_string())
        .collect::<Vec<_>>()
        .join("\n");
    assert!(reproduce.contains(&format!("copy --derivation --to ssh://{host} /nix/store/")), "{reproduce}");
    assert!(reproduce.contains("'nix-store --realise"), "{reproduce}");

    // Another run of the same content: the snapshot there is the same, and not sent again.
    let again = lab.pikaci(flake.path(), &["run", "view", "--runtime", "incus", "--remote", host, "--output", "json"]);
    assert_eq!(again.code, 0, "{again:?}");
    let again_id = again.json()["run_id"].as_str().unwrap().to_string();
    assert_eq!(again.json()["snapshot"]["id"], snapshot);
    let again_log =
        std::fs::read_to_string(flake.path().join(".pikaci/runs").join(&again_id).join("jobs/view/host.log")).unwrap();
    assert!(!again_log.contains("set -e; d=$1;"), "a snapshot already there is not sent again:\n{again_log}");
    // Its payloads are valid there now: one `nix copy` of every `.drv`, one check that the
    // outputs are valid there, and one Nix command there roots them all; no payload is
    // realized, and the roots are registered there.
    let nix_calls: Vec<&str> = again_log
        .lines()
        .filter(|l| l.contains("] $ ") && (l.contains("/bin/nix ") || l.contains(" 'nix-store ")))
        .collect();
    assert_eq!(nix_calls.len(), 3, "{again_log}");
    assert!(nix_calls[0].contains("copy --derivation --to ssh://") && nix_calls[0].contains("-fixture-extra.drv"));
    assert!(nix_calls[1].contains("--check-validity"), "{again_log}");
    assert!(nix_calls[2].contains("--force-realise") && nix_calls[2].contains("--add-root"), "{again_log}");
    assert!(!again_log.contains("--realise"), "{again_log}");
    let again_staged = format!("{}/runs/{again_id}/jobs/view/staged-linux-rust", lab.remote_root);
    let auto = lab.hosts.sh(lab.host, "for l in /nix/var/nix/gcroots/auto/*; do readlink \"$l\"; done");
    for link in [".gcroot", ".gcroot-dev", ".gcroot-2", ".gcroot-3"] {
        let path = format!("{again_staged}/{link}");
        assert!(auto.lines().any(|l| l == path), "{link} is not a registered root there:\n{auto}");
    }

    let gc = lab.pikaci(flake.path(), &["gc", "--keep", "0"]);
    assert_eq!(gc.code, 0, "{gc:?}");
    assert!(!gc.stdout.contains("warning"), "{}", gc.stdout);
    assert!(!lab.exists(&format!("{}/runs/{run_id}", lab.remote_root)), "gc removes the remote job directories");
    assert!(!lab.exists(&remote_snapshot), "and the remote snapshot");
    // And with them the roots there: the payloads are garbage on the host now.
    let dead = lab.hosts.sh(lab.host, "nix-store --gc --print-dead 2>/dev/null");
    for target in &payload_paths {
        assert!(dead.lines().any(|l| l == target), "{target} is still alive on the host:\n{dead}");
    }
}

#[test]
fn doctor_checks_what_a_remote_placement_needs_there() {
    let hosts = common::test_hosts::shared(HOSTS);
    let host = &hosts.hosts[1];
    // Before the fixture imported the guest image: the doctor said how to install it.
    let before = host.doctor_before_image.get().expect("the fixture ran the doctor");
    assert_eq!(before.code, 3, "{before:?}");
    assert!(before.stdout.contains("FAIL remote image"), "{}", before.stdout);
    assert!(
        before.stdout.contains(&format!("fix: `pikaci image import --remote {}`", host.name)),
        "the doctor says how to import the image there:\n{}",
        before.stdout
    );
    let state = tempfile::tempdir().unwrap();
    let out: Run = pikaci()
        .env("PIKACI_SSH_CONFIG", &hosts.ssh_config)
        .env("PIKACI_STATE_ROOT", state.path())
        .args(["doctor", "--remote", &host.name])
        .output()
        .unwrap()
        .into();
    assert_eq!(out.code, 0, "{out:?}");
    eprintln!("{}", out.stdout);
    let line = |name: &str| {
        out.stdout
            .lines()
            .find(|l| l.contains(&format!(" {name} ")))
            .unwrap_or_else(|| panic!("no `{name}` line:\n{}", out.stdout))
            .to_string()
    };
    let nix_there = hosts.sh(host, "nix --version");
    let nix_here = std::process::Command::new("nix").arg("--version").output().unwrap();
    let nix_here = String::from_utf8_lossy(&nix_here.stdout);
    if std::env::var("PIKACI_TEST_HOST_NIX").as_deref() == Ok("debian") {
        // Hosts made with Debian's Nix on purpose: the doctor tells the versions apart.
        if nix_there != nix_here {
            assert!(line("remote nix").contains(&format!("(here: {})", nix_here.trim())), "{}", out.stdout);
        }
    } else {
        assert_eq!(nix_there, nix_here, "the hosts have this machine's Nix");
    }
    assert!(line("remote nix").contains(nix_there.trim()), "{}", out.stdout);
    assert!(line("remote incus").starts_with("ok"), "{}", out.stdout);
    assert!(line("remote disk").contains("MiB free under `/var/tmp/pikaci`"), "{}", out.stdout);
    assert!(line("remote image").contains("`pikaci/busybox` is imported"), "{}", out.stdout);
    assert!(line("remote storage").contains("pool `default` (dir)"), "{}", out.stdout);
}

#[test]
fn an_unreachable_host_is_an_infrastructure_error_naming_it() {
    let flake = copy_fixture(&fixture_path("lanes"));
    let lab = RemoteLab::start(flake.path());
    let out =
        lab.pikaci(flake.path(), &["run", "view", "--runtime", "incus", "--remote", "pikaci-no-such-host.invalid"]);
    assert_eq!(out.code, 3, "{out:?}");
    assert!(out.stdout.contains("pikaci-no-such-host.invalid"), "{}", out.stdout);
    assert!(out.stdout.contains("hint:"), "{}", out.stdout);
    // Recorded: the job ended in `error` with the reason.
    let record = read_json(&only_run(flake.path()).join("run.json"));
    assert_eq!(record["status"], "error");
    assert_eq!(job_status(&record, "view"), "error");
    assert!(record["jobs"][0]["message"].as_str().unwrap().contains("pikaci-no-such-host.invalid"), "{record:#}");

    // A host without the image asked for: the error says how to put it there.
    let host = lab.host.name.as_str();
    let out = lab.pikaci(
        flake.path(),
        &["run", "view", "--runtime", "incus", "--remote", host, "--image", "pikaci-test/absent"],
    );
    assert_eq!(out.code, 3, "{out:?}");
    assert!(
        out.stdout.contains(&format!(
            "import it: `pikaci image import --remote {host} --alias pikaci-test/absent --from TARBALL`"
        )),
        "{}",
        out.stdout
    );

    let bwrap = lab.pikaci(flake.path(), &["run", "view", "--runtime", "bwrap", "--remote", &lab.host.name]);
    assert_eq!(bwrap.code, 2, "{bwrap:?}");
    assert!(bwrap.stderr.contains("the bwrap runtime runs jobs on this machine only"), "{}", bwrap.stderr);
}

/// Not a check but a measurement (`cargo test --test remote -- --ignored --nocapture
/// measure`): the hosts' start-up, their memory, and a job's overhead on a remote host
/// against the same job here, with the payloads already built on both sides.
#[test]
#[ignore]
fn measure_remote_job_overhead() {
    let flake = copy_fixture(&fixture_path("lanes"));
    let lab = RemoteLab::start(flake.path());
    let t = &lab.hosts.timings;
    eprintln!(
        "hosts: {} ready; image {:.1} s, to sshd {:.1} s, to ready (incusd, guest image) {:.1} s",
        lab.hosts.hosts.len(),
        t.image.as_secs_f64(),
        t.to_sshd.as_secs_f64(),
        t.to_ready.as_secs_f64()
    );
    let mem = |label: &str| {
        for h in &lab.hosts.hosts {
            eprintln!("memory of `{}` {label}: {:?} MiB", h.name, lab.hosts.memory_mib(h));
        }
    };
    mem("idle");
    let host = lab.host.name.clone();
    let timing = |args: &[&str]| -> (u64, u64) {
        let t0 = std::time::Instant::now();
        let out =
            lab.pikaci(flake.path(), &[&["run", "view", "--runtime", "incus", "--output", "json"], args].concat());
        let wall = t0.elapsed().as_millis() as u64;
        assert_eq!(out.code, 0, "{out:?}");
        let job = out.json()["jobs"][0]["duration_ms"].as_u64().unwrap();
        (job, wall)
    };
    for (label, args) in [("local", vec![]), ("remote", vec!["--remote", host.as_str()])] {
        timing(&args); // builds the payloads
        let runs: Vec<(u64, u64)> = (0..5).map(|_| timing(&args)).collect();
        eprintln!("{label}: job ms / run wall ms, payloads built: {runs:?}");
        let mut runs: Vec<_> = std::fs::read_dir(flake.path().join(".pikaci/runs")).unwrap().flatten().collect();
        runs.sort_by_key(|e| e.file_name());
        let log = runs.last().unwrap().path().join("jobs/view/host.log");
        eprintln!("{label}: the last job's host.log:\n{}", std::fs::read_to_string(log).unwrap());
    }
    mem("after the runs");
}

/// The cluster fixture: two test hosts form one Incus cluster over their own layer-2
/// bridge, and an instance asked for on the second member from the first lands there.
#[test]
fn the_cluster_fixture_places_an_instance_on_the_member_asked_for() {
    let cluster = common::test_hosts::cluster();
    let [first, second] = [&cluster.hosts[0], &cluster.hosts[1]];
    let t = &cluster.timings;
    eprintln!(
        "cluster: to sshd {:.1} s, to a cluster with the guest image {:.1} s; memory {:?} / {:?} MiB",
        t.to_sshd.as_secs_f64(),
        t.to_ready.as_secs_f64(),
        cluster.memory_mib(first),
        cluster.memory_mib(second)
    );
    let members = cluster.sh(first, "incus cluster list -f csv -c nus");
    for (host, addr) in [first, second].iter().zip(common::test_hosts::CLUSTER_ADDRS) {
        assert!(
            members.lines().any(|l| l == format!("{},https://{addr}:8443,ONLINE", host.name)),
            "`{}` is an online member:\n{members}",
            host.name
        );
    }
    // The bridge has no address on this machine.
    let net = cluster.network.as_deref().unwrap();
    let addrs = std::process::Command::new("ip").args(["-o", "addr", "show", "dev", net]).output().unwrap();
    assert!(String::from_utf8_lossy(&addrs.stdout).trim().is_empty(), "{net} has an address here");
    let placed = cluster.sh(
        first,
        &format!(
            "incus init pikaci/busybox probe --target {} -q && incus list probe -c L -f csv && incus delete -f probe",
            second.name
        ),
    );
    assert_eq!(placed.trim(), second.name, "the instance is on the member asked for");
}

/// A job that times out on a remote host: recorded as timed out, and its instance is gone
/// from that host's Incus (looked up there, the only place it could be).
#[test]
fn a_remote_job_that_times_out_leaves_no_instance_on_the_host() {
    let flake = copy_fixture(&fixture_path("lanes"));
    let lab = RemoteLab::start(flake.path());
    let host = lab.host.name.as_str();
    let out = lab.pikaci(flake.path(), &["run", "slow", "--runtime", "incus", "--remote", host, "--output", "json"]);
    assert_eq!(out.code, 1, "{out:?}");
    let record = out.json();
    assert_eq!(job_status(&record, "slow"), "timed_out", "{record:#}");
    let run_id = record["run_id"].as_str().unwrap();
    let instances = lab.hosts.sh(lab.host, "incus list -f csv -c n");
    assert!(!instances.contains(run_id), "the job's instance is left on `{host}`:\n{instances}");
    // And the guest's process with it: nothing of the job runs there any more.
    let procs = lab.hosts.sh(lab.host, "ps -eo args");
    assert!(!procs.contains("sleep-long"), "{procs}");
}

/// A run killed while its job runs on a remote host leaves the instance there; `pikaci gc`
/// finds it on that host (by the state root it is tagged with) and deletes it.
#[test]
fn gc_deletes_an_instance_a_killed_run_left_on_the_host() {
    let flake = copy_fixture(&fixture_path("lanes"));
    let mut lab = RemoteLab::start(flake.path());
    lab.host = &lab.hosts.hosts[1]; // not the host the timeout test runs `slow` on
    let host = lab.host.name.as_str();
    let mut child = pikaci()
        .env("PIKACI_SSH_CONFIG", &lab.hosts.ssh_config)
        .env("PIKACI_REMOTE_STATE_ROOT", &lab.remote_root)
        .args(["run", "slow", "--runtime", "incus", "--remote", host, "--flake"])
        .arg(flake.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let running = || {
        lab.hosts
            .sh(lab.host, "incus list -f csv -c ns")
            .lines()
            .find(|l| l.ends_with("-slow,RUNNING"))
            .map(str::to_string)
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let instance = loop {
        if let Some(line) = running() {
            break line.split(',').next().unwrap().to_string();
        }
        assert!(std::time::Instant::now() < deadline, "the job's instance never ran on `{host}`");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(running().is_some(), "the killed run's instance is still there");

    let gc = lab.pikaci(flake.path(), &["gc", "--keep", "0"]);
    assert_eq!(gc.code, 0, "{gc:?}");
    assert!(gc.stdout.contains(", 1 instance;"), "gc counts what it deleted there:\n{}", gc.stdout);
    let instances = lab.hosts.sh(lab.host, "incus list -f csv -c n");
    assert!(!instances.lines().any(|l| l == instance), "`{instance}` is still on `{host}`:\n{instances}");
}

#[test]
fn artifacts_come_back_from_a_remote_host_without_setid_bits_or_devices() {
    let flake = copy_fixture(&fixture_path("sandbox"));
    let lab = RemoteLab::start(flake.path());
    let out = lab.pikaci(flake.path(), &["run", "leave-setuid", "--runtime", "incus", "--remote", &lab.host.name]);
    assert_eq!(out.code, 0, "{out:?}");
    let job_dir = only_run(flake.path()).join("jobs/leave-setuid");
    sandbox_checks::assert_artifacts_safe(&job_dir);
    // The remote state root is closed to other users there (read over SSH).
    let mode = lab.hosts.sh(lab.host, &format!("stat -c %a {}", lab.remote_root));
    let mode = u32::from_str_radix(mode.trim(), 8).unwrap();
    assert_eq!(mode & 0o007, 0, "the remote state root is open to other users: {mode:o}");
}

/// Output of every shape streams back over SSH byte for byte: no newline, `\r` progress
/// bars, bytes of every value (`tests/fixtures/output`; `tests/output.rs` checks the view
/// and the memory here).
#[test]
fn every_output_shape_comes_back_from_a_remote_host_byte_exact() {
    let flake = copy_fixture(&fixture_path("output"));
    let lab = RemoteLab::start(flake.path());
    let lanes = ["progress", "no-newline", "binary"];
    let host = lab.host.name.as_str();
    let started = std::time::Instant::now();
    let out = lab
        .pikaci(flake.path(), &[&["run", "--runtime", "incus", "--remote", host, "--jobs", "1"], &lanes[..]].concat());
    eprintln!("three lanes, 95 MB of output over SSH: {:.2}s", started.elapsed().as_secs_f64());
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.lines().any(|l| l == "[progress] compiled"), "the progress bar's last state is not shown");
    let run = only_run(flake.path());
    for lane in lanes {
        let script = flake.path().join("ci").join(format!("{lane}.sh"));
        let expected = std::process::Command::new("/bin/sh").arg(script).output().unwrap().stdout;
        let log = std::fs::read(run.join("jobs").join(lane).join("guest.log")).unwrap();
        assert_eq!(log.len(), expected.len(), "guest.log of {lane} has another length");
        assert!(log == expected, "guest.log of {lane} differs from the output");
    }
}

/// Not a check but a measurement (`cargo test --test remote -- --ignored --nocapture
/// measure_output`): output of each shape over SSH, pikaci (its view to /dev/null)
/// against the commands of the job's record (`incus init` / `start` / `exec` / `delete`
/// through `ssh`) with the guest's output into `tee`; medians of 5, interleaved.
/// `PIKACI_BIN=target/release/pikaci` measures a release build (the test's own is a debug
/// build, several times slower at this); `OLD_BIN=...` adds another build, interleaved.
#[test]
#[ignore]
fn measure_output_over_ssh() {
    let flake = copy_fixture(&fixture_path("output"));
    let lab = RemoteLab::start(flake.path());
    let host = lab.host.name.as_str();
    let timed = |cmd: &mut std::process::Command| {
        let t0 = std::time::Instant::now();
        let status = cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).status().unwrap();
        assert!(status.success(), "{cmd:?}");
        t0.elapsed().as_secs_f64()
    };
    let bin = std::env::var_os("PIKACI_BIN");
    let old_bin = std::env::var_os("OLD_BIN");
    let pikaci_with = |bin: Option<&std::ffi::OsString>, lane: &str| {
        let mut cmd = pikaci();
        if let Some(bin) = bin {
            // The same environment as `pikaci()` gives, another binary.
            cmd = std::process::Command::new(bin);
            cmd.env_remove("PIKACI_STATE_ROOT").env("NO_COLOR", "1").env("NIX_CONFIG", "sandbox = true");
        }
        cmd.env("PIKACI_SSH_CONFIG", &lab.hosts.ssh_config)
            .env("PIKACI_REMOTE_STATE_ROOT", &lab.remote_root)
            .args(["run", lane, "--runtime", "incus", "--remote", host, "--flake"])
            .arg(flake.path());
        cmd
    };
    let pikaci_run = |lane: &str| pikaci_with(bin.as_ref(), lane);
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    for lane in ["lines", "no-newline", "progress", "binary"] {
        timed(&mut pikaci_run(lane)); // builds the payloads there, records the commands
        let mut runs: Vec<_> = std::fs::read_dir(flake.path().join(".pikaci/runs")).unwrap().flatten().collect();
        runs.sort_by_key(|e| e.file_name());
        let job = read_json(&runs.last().unwrap().path().join("jobs").join(lane).join("job.json"));
        let tee = flake.path().join(format!("tee-{lane}.log"));
        let mut script = String::from("set -e\n");
        for line in job["reproduce"].as_array().unwrap().iter().map(|l| l.as_str().unwrap()) {
            let first = line.lines().next().unwrap();
            if !first.contains("incus ") {
                continue;
            }
            script.push_str(line);
            if first.contains("incus exec ") {
                script.push_str(&format!(" | tee {} >/dev/null", tee.display()));
            }
            script.push('\n');
        }
        let (mut by_hand, mut with_pikaci, mut with_old) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..5 {
            by_hand.push(timed(std::process::Command::new("/bin/sh").args(["-c", &script])));
            with_pikaci.push(timed(&mut pikaci_run(lane)));
            if old_bin.is_some() {
                with_old.push(timed(&mut pikaci_with(old_bin.as_ref(), lane)));
            }
        }
        assert!(std::fs::metadata(&tee).unwrap().len() > 0, "the by-hand script gave nothing:\n{script}");
        let (a, b) = (median(by_hand), median(with_pikaci));
        let old = if with_old.is_empty() {
            String::new()
        } else {
            let o = median(with_old);
            format!(", OLD_BIN {o:.2}s, ratio {:.2}", o / a)
        };
        eprintln!("output over SSH, {lane}: by hand into tee {a:.2}s, pikaci {b:.2}s, ratio {:.2}{old}", b / a);
    }
}

#[test]
fn payload_manifests_on_a_remote_host_are_read_without_following_links_and_bounded() {
    let flake = copy_fixture(&fixture_path("sandbox"));
    let lab = RemoteLab::start(flake.path());
    let lanes = ["manifest-shadow-link", "manifest-dir-link", "manifest-directory", "manifest-huge"];
    let host = lab.host.name.as_str();
    let args = [&["run", "--runtime", "incus", "--remote", host, "--output", "json"], &lanes[..]].concat();
    let out = lab.pikaci(flake.path(), &args);
    assert_eq!(out.code, 1, "{out:?}");
    let record = out.json();
    for (lane, why) in [
        ("manifest-shadow-link", "is a symbolic link, and links are not followed"),
        ("manifest-dir-link", "is a symbolic link, and links are not followed"),
        ("manifest-directory", "it is a directory; it must be a JSON file"),
        ("manifest-huge", "it is larger than 1048576 bytes"),
    ] {
        let job = record["jobs"].as_array().unwrap().iter().find(|j| j["job_id"] == lane).unwrap();
        assert_eq!(job["status"], "failed", "{lane}: {job:#}");
        assert!(job["message"].as_str().unwrap().contains(why), "{lane}: {job:#}");
    }
}

#[test]
fn a_remote_host_that_would_be_an_ssh_option_is_refused() {
    let flake = copy_fixture(&fixture_path("sandbox"));
    let marker = flake.path().join("pwned");
    let out: Run = pikaci()
        .args(["run", "escape", "--runtime", "incus"])
        .arg(format!("--remote=-oProxyCommand=touch {}", marker.display()))
        .arg("--flake")
        .arg(flake.path())
        .output()
        .unwrap()
        .into();
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("starts with `-`, so `ssh` would read it as an option"), "{}", out.stderr);
    assert!(!marker.exists(), "ssh ran the ProxyCommand");
}

/// The host's sshd stops (inside the test host, through Incus), and pikaci's shared
/// connection to it (which outlives the listener) is closed; or it starts again.
fn set_sshd(lab: &RemoteLab, running: bool) {
    let verb = if running { "start" } else { "stop" };
    let out = std::process::Command::new("incus")
        .args(["exec", &lab.host.name, "--", "systemctl", verb, "ssh.socket", "ssh.service"])
        .output()
        .unwrap();
    assert!(out.status.success(), "systemctl {verb} ssh: {}", String::from_utf8_lossy(&out.stderr));
    if !running {
        let uid = String::from_utf8(std::process::Command::new("id").arg("-u").output().unwrap().stdout).unwrap();
        let control = std::env::temp_dir().join(format!("pikaci-ssh-{}", uid.trim())).join("%C");
        let _ = std::process::Command::new("ssh")
            .arg("-F")
            .arg(&lab.hosts.ssh_config)
            .arg("-o")
            .arg(format!("ControlPath={}", control.display()))
            .args(["-O", "exit", &lab.host.name])
            .output();
        return;
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !lab.hosts.test(lab.host, &["-d", "/"]) {
        assert!(std::time::Instant::now() < deadline, "the host's sshd did not come back");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

#[test]
fn gc_with_the_remote_host_unreachable_keeps_what_to_clean_there_and_the_next_gc_does() {
    let flake = copy_fixture(&fixture_path("sandbox"));
    let lab = RemoteLab::start_on(flake.path(), DISRUPTED);
    let host = lab.host.name.as_str();
    let out = lab.pikaci(flake.path(), &["run", "environ", "--runtime", "incus", "--remote", host, "--output", "json"]);
    assert_eq!(out.code, 0, "{out:?}");
    let run_id = out.json()["run_id"].as_str().unwrap().to_string();
    let remote_run = format!("{}/runs/{run_id}", lab.remote_root);
    assert!(lab.hosts.test(lab.host, &["-d", &remote_run]));

    set_sshd(&lab, false);
    let gc = lab.pikaci(flake.path(), &["gc", "--keep", "0"]);
    set_sshd(&lab, true);
    assert_eq!(gc.code, 0, "{gc:?}");
    assert!(gc.stdout.contains("the next `pikaci gc` tries again"), "{}", gc.stdout);
    assert!(lab.hosts.test(lab.host, &["-d", &remote_run]), "the remote host was unreachable");
    let pending = read_json(&flake.path().join(".pikaci/remote-leftovers.json"));
    assert!(pending[host].as_array().is_some_and(|a| !a.is_empty()), "{pending:#}");

    let gc = lab.pikaci(flake.path(), &["gc", "--keep", "0"]);
    assert_eq!(gc.code, 0, "{gc:?}");
    assert!(!gc.stdout.contains("warning"), "{}", gc.stdout);
    assert!(!lab.hosts.test(lab.host, &["-e", &remote_run]), "the next gc removes the remote run directory");
    assert!(!flake.path().join(".pikaci/remote-leftovers.json").exists());
}

/// The `job.json` of a job of the run `record` describes.
fn job_record(flake: &Path, record: &serde_json::Value, job: &str) -> serde_json::Value {
    read_json(
        &flake.join(".pikaci/runs").join(record["run_id"].as_str().unwrap()).join("jobs").join(job).join("job.json"),
    )
}

/// The per-job records of a run: (job id, status, host, message).
fn jobs_of(record: &serde_json::Value) -> Vec<(String, String, String, String)> {
    record["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| {
            let s = |k: &str| j[k].as_str().unwrap_or_default().to_string();
            (s("job_id"), s("status"), s("host"), s("message"))
        })
        .collect()
}

/// Several hosts per run: jobs spread over two hosts declared in the flake's `pikaci.toml`
/// (one slot each), every job's record names its host; then a host stopped while its job
/// runs (`incus stop --force` of the test host) is taken out of the run: its job is an
/// error naming it, the jobs still queued run on the other host, and the run goes on.
#[test]
fn jobs_spread_over_hosts_and_a_host_that_fails_is_taken_out_of_the_run() {
    let flake = copy_fixture(&fixture_path("hosts"));
    let lab = RemoteLab::start(flake.path());
    let [a, c] = [&lab.hosts.hosts[0], &lab.hosts.hosts[2]];
    std::fs::write(
        flake.path().join("pikaci.toml"),
        format!("[hosts.first]\nssh = \"{}\"\nslots = 1\n\n[hosts.third]\nssh = \"{}\"\nslots = 1\n", a.name, c.name),
    )
    .unwrap();
    let args = ["--runtime", "incus", "--remote", "first", "--remote", "third", "--jobs", "2", "--output", "json"];
    let out = lab.pikaci(flake.path(), &[&["run", "nap-1", "nap-2", "nap-3", "nap-4"][..], &args].concat());
    assert_eq!(out.code, 0, "{out:?}");
    let record = out.json();
    assert_eq!(record["remotes"], serde_json::json!([a.name, c.name]), "{record:#}");
    assert_eq!(record["remote"], a.name.as_str(), "the first host, for older readers");
    let jobs = jobs_of(&record);
    for (job, status, host, _) in &jobs {
        assert_eq!(status, "passed", "{job}: {record:#}");
        let job_json = job_record(flake.path(), &record, job);
        assert_eq!(job_json["host"], host.as_str(), "job.json names the host too");
    }
    for h in [a, c] {
        assert!(jobs.iter().any(|(_, _, host, _)| host == &h.name), "no job ran on `{}`: {jobs:?}", h.name);
    }
    // `pikaci status` says which host ran which job.
    let status = lab.pikaci(flake.path(), &["status", record["run_id"].as_str().unwrap()]);
    assert!(status.stdout.contains(&format!("hosts     {}, {}", a.name, c.name)), "{}", status.stdout);
    for (job, _, host, _) in &jobs {
        assert!(status.stdout.contains(&format!("{job} on {host} ")), "{}", status.stdout);
    }
    // The payloads were built once, on one host, and the other received them from there.
    let logs = |record: &serde_json::Value| -> String {
        let run_dir = flake.path().join(".pikaci/runs").join(record["run_id"].as_str().unwrap());
        jobs_of(record)
            .iter()
            .map(|(job, ..)| std::fs::read_to_string(run_dir.join("jobs").join(job).join("host.log")).unwrap())
            .collect()
    };
    let log = logs(&record);
    let (builder, receiver) =
        if log.contains(&format!("--from ssh://{} --to ssh://{} ", a.name, c.name)) { (a, c) } else { (c, a) };
    // One copy for both payloads (they were built by one job's realisation), and only one.
    let copy = format!("copy --from ssh://{} --to ssh://{} /nix/store/", builder.name, receiver.name);
    let copies: Vec<&str> = log.lines().filter(|l| l.contains(&copy)).collect();
    assert_eq!(copies.len(), 1, "both payloads are copied once, from the builder:\n{log}");
    assert!(copies[0].contains("-hosts-deps ") && copies[0].contains("-hosts-build"), "{}", copies[0]);
    assert!(
        !log.contains(&format!("--from ssh://{} --to ssh://{} ", receiver.name, builder.name)),
        "nothing is sent to the builder:\n{log}"
    );
    let drvs: Vec<String> = read_json(
        &flake.path().join(".pikaci/runs").join(record["run_id"].as_str().unwrap()).join("jobs/nap-1/job.json"),
    )["payloads"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["drv_path"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(drvs.len(), 2);
    for drv in &drvs {
        // Nix keeps a build log where it built: on the builder only.
        assert!(
            lab.hosts.ssh(builder, &["nix-store", "--read-log", drv]).status.success(),
            "{drv} built on the builder"
        );
        assert!(
            !lab.hosts.ssh(receiver, &["nix-store", "--read-log", drv]).status.success(),
            "{drv} was built on `{}` too",
            receiver.name
        );
        let out = lab.hosts.sh(receiver, &format!("nix-store -q --outputs {drv}"));
        assert!(lab.hosts.test(receiver, &["-e", out.lines().next().unwrap()]), "{drv}'s output is on the receiver");
    }

    // Now slow jobs, and the third host stopped while its job runs.
    std::fs::write(flake.path().join("nap"), "6").unwrap();
    let child = pikaci()
        .env("PIKACI_SSH_CONFIG", &lab.hosts.ssh_config)
        .env("PIKACI_REMOTE_STATE_ROOT", &lab.remote_root)
        .args(["run", "nap-1", "nap-2", "nap-3", "nap-4"])
        .args(args)
        .arg("--flake")
        .arg(flake.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let running = lab.hosts.sh(c, "incus list -f csv -c ns");
        if running.lines().any(|l| l.ends_with(",RUNNING") && l.contains("-nap-")) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no job ever ran on `{}`", c.name);
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let stop = std::process::Command::new("incus").args(["stop", "--force", &c.name]).status().unwrap();
    assert!(stop.success(), "incus stop --force {}", c.name);
    let out: Run = child.wait_with_output().unwrap().into();
    let record = out.json();
    let jobs = jobs_of(&record);
    let on_c: Vec<_> = jobs.iter().filter(|(_, _, host, _)| host == &c.name).collect();
    assert_eq!(on_c.len(), 1, "one job was running on the stopped host, none started there after: {jobs:?}");
    let (job, status, _, message) = on_c[0];
    assert_eq!(status, "error", "{record:#}");
    assert!(
        message.contains(&format!("host `{}` failed and was taken out of the run", c.name)),
        "the job's error names its host: {message}"
    );
    let job_json = job_record(flake.path(), &record, job);
    assert_eq!(job_json["message"], message.as_str(), "job.json says so too");
    for (job, status, host, _) in jobs.iter().filter(|(_, _, host, _)| host != &c.name) {
        assert_eq!(
            (status.as_str(), host.as_str()),
            ("passed", a.name.as_str()),
            "{job} went to the host left: {record:#}"
        );
    }
    assert_eq!(jobs.len(), 4);
    let log = logs(&record);
    // Outputs valid on a host are not sent again: they are rooted there at once.
    assert!(log.contains("every payload output was valid already"), "{log}");
    assert!(!log.contains("copy --from"), "{log}");
    assert_eq!(record["status"], "error", "{record:#}");
    assert_eq!(out.code, 3, "a job ended in error: {out:?}");
}

/// Two jobs on two SSH hosts share a slow workspace-deps (4 s), each with a slow
/// workspace-build of its own on it (3 s): one host builds workspace-deps; the other
/// receives it as soon as it is built there, and builds its own while the first host
/// still builds its own, instead of waiting for the first job's whole realisation.
#[test]
fn a_host_waiting_for_a_shared_payload_receives_it_once_built_not_when_the_other_job_ends() {
    let flake = copy_fixture(&fixture_path("hosts"));
    std::fs::write(flake.path().join("shared-lanes"), "").unwrap();
    let lab = RemoteLab::start(flake.path());
    let [a, b] = [&lab.hosts.hosts[0], &lab.hosts.hosts[1]];
    std::fs::write(
        flake.path().join("pikaci.toml"),
        format!("[hosts.one]\nssh = \"{}\"\nslots = 1\n\n[hosts.two]\nssh = \"{}\"\nslots = 1\n", a.name, b.name),
    )
    .unwrap();
    let args = ["--runtime", "incus", "--remote", "one", "--remote", "two", "--jobs", "2", "--output", "json"];
    let out = lab.pikaci(flake.path(), &[&["run", "shared-a", "shared-b"][..], &args].concat());
    assert_eq!(out.code, 0, "{out:?}");
    let record = out.json();
    let jobs = jobs_of(&record);
    assert_eq!(jobs.len(), 2, "{record:#}");
    assert_ne!(jobs[0].2, jobs[1].2, "one job on each host: {jobs:?}");
    let run_dir = flake.path().join(".pikaci/runs").join(record["run_id"].as_str().unwrap());
    let events: Vec<serde_json::Value> = std::fs::read_to_string(run_dir.join("events.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let (builder, waiter) = builder_and_waiter(&events, ["shared-a", "shared-b"]);
    let host_of = |job: &str| jobs.iter().find(|(j, ..)| j == job).unwrap().2.clone();
    let waiter_log = std::fs::read_to_string(run_dir.join("jobs").join(waiter).join("host.log")).unwrap();
    let copy = format!("copy --from ssh://{} --to ssh://{} /nix/store/", host_of(builder), host_of(waiter));
    let copies: Vec<&str> = waiter_log.lines().filter(|l| l.contains(&copy)).collect();
    assert_eq!(copies.len(), 1, "{waiter_log}");
    assert!(copies[0].contains("-hosts-slow-deps") && !copies[0].contains("-hosts-own-"), "{}", copies[0]);
}

/// An Incus cluster as the engine: `--remote` names one member; pikaci sees the cluster,
/// runs jobs on each member (`incus init --target MEMBER`, where that member's snapshot
/// and payloads are), and each job's record names the member's host.
#[test]
fn a_cluster_member_brings_the_whole_cluster_and_jobs_land_where_their_files_are() {
    require_nix();
    let cluster = common::test_hosts::cluster();
    let flake = copy_fixture(&fixture_path("hosts"));
    let [first, second] = [&cluster.hosts[0], &cluster.hosts[1]];
    let out: Run = pikaci()
        .env("PIKACI_SSH_CONFIG", &cluster.ssh_config)
        .env("PIKACI_REMOTE_STATE_ROOT", "/var/tmp/pikaci/cluster")
        .args(["run", "--all", "--runtime", "incus", "--remote", &first.name, "--jobs", "4", "--output", "json"])
        .arg("--flake")
        .arg(flake.path())
        .output()
        .unwrap()
        .into();
    assert_eq!(out.code, 0, "{out:?}");
    let record = out.json();
    assert_eq!(record["remotes"], serde_json::json!([first.name, second.name]), "{record:#}");
    let jobs = jobs_of(&record);
    let run_dir = flake.path().join(".pikaci/runs").join(record["run_id"].as_str().unwrap());
    for member in [first, second] {
        let here: Vec<_> = jobs.iter().filter(|(_, _, host, _)| host == &member.name).collect();
        assert!(!here.is_empty(), "no job on member `{}`: {jobs:?}", member.name);
        for (job, status, _, _) in here {
            assert_eq!(status, "passed", "{record:#}");
            let log = std::fs::read_to_string(run_dir.join("jobs").join(job).join("host.log")).unwrap();
            assert!(
                log.contains(&format!("'--target' '{}'", member.name))
                    || log.contains(&format!("--target {}", member.name)),
                "{job} was created on its member:\n{log}"
            );
            let guest = std::fs::read_to_string(run_dir.join("jobs").join(job).join("guest.log")).unwrap();
            assert!(guest.contains("napped on"), "{guest}");
        }
    }
    // Each member built its payloads in its own store, from the snapshot sent there.
    let snapshot = record["snapshot"]["id"].as_str().unwrap();
    for member in [first, second] {
        assert!(
            cluster.test(member, &["-d", &format!("/var/tmp/pikaci/cluster/snapshots/{snapshot}")]),
            "{}",
            member.name
        );
    }
}

/// Not a check but a measurement (`scripts/bench-hosts`, or `cargo test --test remote --
/// --ignored --nocapture measure_hosts`), side by side in one run, medians of `N` (env,
/// default 3) interleaved iterations:
/// (a) 8 lanes of 1 s on one host (2 slots, `--jobs 2`) against two hosts (2 slots each,
///     `--jobs 4`): the ratio, and the ideal 0.5;
/// (b) a payload that takes `BUILD_SECS` (default 5) to build, needed on two hosts: built
///     on each (two runs at once, one per host) against built once and copied (one run
///     over both hosts);
/// (c) one job of 1 s here against the same job on a remote host, payloads built.
#[test]
#[ignore]
fn measure_hosts() {
    let flake = copy_fixture(&fixture_path("hosts"));
    let lab = RemoteLab::start(flake.path());
    let n: usize = std::env::var("N").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    let build_secs: u64 = std::env::var("BUILD_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(5);
    let [a, b] = [&lab.hosts.hosts[0], &lab.hosts.hosts[1]];
    std::fs::write(
        flake.path().join("pikaci.toml"),
        format!("[hosts.a]\nssh = \"{}\"\nslots = 2\n\n[hosts.b]\nssh = \"{}\"\nslots = 2\n", a.name, b.name),
    )
    .unwrap();
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let spawn = |args: &[&str]| {
        pikaci()
            .env("PIKACI_SSH_CONFIG", &lab.hosts.ssh_config)
            .env("PIKACI_REMOTE_STATE_ROOT", &lab.remote_root)
            .args(args)
            .arg("--flake")
            .arg(flake.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    // Wall seconds of the runs started at once, each asserted to pass.
    let timed = |runs: &[&[&str]]| -> f64 {
        let t0 = std::time::Instant::now();
        let children: Vec<_> = runs.iter().map(|args| spawn(args)).collect();
        for child in children {
            let out = child.wait_with_output().unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        }
        t0.elapsed().as_secs_f64()
    };
    let incus = ["--runtime", "incus"];
    let one_host: Vec<&str> = [&["run", "--all", "--remote", "a", "--jobs", "2"][..], &incus].concat();
    let two_hosts: Vec<&str> =
        [&["run", "--all", "--remote", "a", "--remote", "b", "--jobs", "4"][..], &incus].concat();
    timed(&[&two_hosts]); // payloads built on both
    let (mut one, mut two) = (Vec::new(), Vec::new());
    for _ in 0..n {
        one.push(timed(&[&one_host]));
        two.push(timed(&[&two_hosts]));
    }
    let (one, two) = (median(one), median(two));
    eprintln!("(a) 8 lanes of 1 s: one host {one:.1} s, two hosts {two:.1} s: ratio {:.2} (ideal 0.50)", two / one);

    let (mut twice, mut once) = (Vec::new(), Vec::new());
    for i in 0..n {
        for (k, times) in [(0, &mut twice), (1, &mut once)] {
            // New derivations each time: nothing is in either store yet.
            std::fs::write(flake.path().join("build-secs"), build_secs.to_string()).unwrap();
            std::fs::write(flake.path().join("salt"), format!("bench-{}-{i}-{k}", std::process::id())).unwrap();
            let t = if k == 0 {
                let on_a: Vec<&str> = [&["run", "nap-1", "--remote", "a"][..], &incus].concat();
                let on_b: Vec<&str> = [&["run", "nap-2", "--remote", "b"][..], &incus].concat();
                timed(&[&on_a, &on_b])
            } else {
                let both: Vec<&str> =
                    [&["run", "nap-1", "nap-2", "--remote", "a", "--remote", "b", "--jobs", "4"][..], &incus].concat();
                timed(&[&both])
            };
            times.push(t);
        }
    }
    let (twice, once) = (median(twice), median(once));
    eprintln!(
        "(b) a payload of {build_secs} s needed on two hosts: built on each {twice:.1} s, built once and copied {once:.1} s: ratio {:.2}",
        once / twice
    );

    std::fs::write(flake.path().join("build-secs"), "0").unwrap();
    let local: Vec<&str> = [&["run", "nap-1"][..], &incus].concat();
    let remote: Vec<&str> = [&["run", "nap-1", "--remote", "a"][..], &incus].concat();
    timed(&[&local]);
    timed(&[&remote]);
    let (mut here, mut there) = (Vec::new(), Vec::new());
    for _ in 0..n {
        here.push(timed(&[&local]));
        there.push(timed(&[&remote]));
    }
    let (here, there) = (median(here), median(there));
    eprintln!(
        "(c) one job of 1 s: here {here:.1} s, on a remote host {there:.1} s: {:.1} s more per job (ratio {:.2})",
        there - here,
        there / here
    );
}

/// Not a check but a measurement (`scripts/bench-hosts`): how a payload built on one host
/// best reaches another, on the two cluster hosts (which reach each other on their bridge):
/// through this process (`nix copy --from ssh://A --to ssh://B`, what pikaci does) against
/// host to host (`ssh A -- nix copy --to ssh://B`). A store path of `COPY_MB` (default 50)
/// random MiB, deleted on B between copies; medians of `N` (default 3), interleaved.
#[test]
#[ignore]
fn measure_copy_routes() {
    let cluster = common::test_hosts::cluster();
    let [a, b] = [&cluster.hosts[0], &cluster.hosts[1]];
    let n: usize = std::env::var("N").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    let mb: usize = std::env::var("COPY_MB").ok().and_then(|v| v.parse().ok()).unwrap_or(50);
    let path = cluster.sh(a, &format!("head -c {}M /dev/urandom > /tmp/blob && nix-store --add /tmp/blob", mb));
    let path = path.trim().to_string();
    // A key of A's that B accepts, for the host-to-host route.
    cluster.sh(a, "test -f /root/.ssh/id_ed25519 || ssh-keygen -q -t ed25519 -N '' -f /root/.ssh/id_ed25519");
    let key = cluster.sh(a, "cat /root/.ssh/id_ed25519.pub");
    let out = cluster.ssh_stdin(b, "cat >> /root/.ssh/authorized_keys", &key);
    assert!(out.status.success());
    let opts = "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR";
    let via_here = || {
        let t0 = std::time::Instant::now();
        let ok = std::process::Command::new("nix")
            .env("NIX_SSHOPTS", format!("-F {}", cluster.ssh_config.display()))
            .args(["--extra-experimental-features", "nix-command", "copy", "--from"])
            .arg(format!("ssh://{}", a.name))
            .arg("--to")
            .arg(format!("ssh://{}", b.name))
            .arg(&path)
            .status()
            .unwrap();
        assert!(ok.success());
        t0.elapsed().as_secs_f64()
    };
    let host_to_host = || {
        let t0 = std::time::Instant::now();
        let to = format!("ssh://root@{}", common::test_hosts::CLUSTER_ADDRS[1]);
        cluster.sh(
            a,
            &format!("NIX_SSHOPTS='{opts}' nix --extra-experimental-features nix-command copy --to {to} {path}"),
        );
        t0.elapsed().as_secs_f64()
    };
    let forget = || cluster.sh(b, &format!("nix-store --delete {path} >/dev/null 2>&1; ! test -e {path}"));
    let (mut here, mut direct) = (Vec::new(), Vec::new());
    for _ in 0..n {
        forget();
        here.push(via_here());
        forget();
        direct.push(host_to_host());
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (here, direct) = (median(here), median(direct));
    eprintln!(
        "(d) a {mb} MiB store path from one host to another: through this process {here:.2} s, host to host {direct:.2} s: ratio {:.2}",
        here / direct
    );
}

#[test]
fn the_guest_on_an_ssh_host_sees_only_the_closure_of_its_payloads() {
    let flake = copy_fixture(&fixture_path("sandbox"));
    let lab = RemoteLab::start(flake.path());
    let host = lab.host.name.as_str();
    let out = lab.pikaci(flake.path(), &["run", "store-view", "--runtime", "incus", "--remote", host]);
    assert_eq!(out.code, 0, "{out:?}");
    let run = only_run(flake.path());
    let run_id = run.file_name().unwrap().to_string_lossy();
    // The closure, asked of the host's own store over SSH.
    let staged = format!("{}/runs/{run_id}/jobs/store-view/staged-linux-rust", lab.remote_root);
    let closure = lab.hosts.sh(lab.host, &format!("nix-store --query --requisites {staged}/*"));
    let mut expected: Vec<&str> = closure.lines().map(|l| l.trim_start_matches("/nix/store/")).collect();
    expected.sort();
    assert!(expected.len() > 1, "{closure}");
    let listed = std::fs::read_to_string(run.join("jobs/store-view/guest.log")).unwrap();
    let mut seen: Vec<&str> = listed.lines().collect();
    seen.sort();
    assert_eq!(seen, expected, "the guest's /nix/store on `{host}` is not the closure of its payloads");
    // The host's store holds more: at least the `.drv` files sent there to build them.
    let everything = lab.hosts.sh(lab.host, "ls /nix/store | wc -l");
    assert!(everything.trim().parse::<usize>().unwrap() > seen.len(), "{everything}");
    let host_log = std::fs::read_to_string(run.join("jobs/store-view/host.log")).unwrap();
    assert!(host_log.contains("the guest's /nix/store is the payloads' closure"), "{host_log}");
}

/// The warm pool on an SSH host: a run there leaves a started instance on that host (its
/// entry here names the host), the next run's job runs in it once, and gc empties it.
#[test]
fn a_warm_pool_on_an_ssh_host_serves_the_next_run_there_and_gc_empties_it() {
    let flake = copy_fixture(&fixture_path("lanes"));
    let lab = RemoteLab::start(flake.path());
    let host = lab.host.name.as_str();
    let pooled_run = || -> Run {
        pikaci()
            .env("PIKACI_SSH_CONFIG", &lab.hosts.ssh_config)
            .env("PIKACI_REMOTE_STATE_ROOT", &lab.remote_root)
            .env("PIKACI_INCUS_POOL", "1")
            .env("PIKACI_INCUS_POOL_IDLE", "300")
            .args(["run", "view", "--runtime", "incus", "--remote", host, "--output", "json", "--flake"])
            .arg(flake.path())
            .output()
            .unwrap()
            .into()
    };
    let entries = || -> Vec<serde_json::Value> {
        let Ok(dir) = std::fs::read_dir(flake.path().join(".pikaci/incus-pool")) else { return Vec::new() };
        dir.flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .map(|p| read_json(&p))
            .collect()
    };
    let wait_entry = |not: Option<&str>| -> String {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        loop {
            let found = entries().into_iter().map(|e| e["instance"].as_str().unwrap().to_string());
            if let Some(name) = found.into_iter().find(|n| Some(n.as_str()) != not) {
                return name;
            }
            assert!(std::time::Instant::now() < deadline, "the pool on `{host}` was never refilled");
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    };
    let on_host = |name: &str| lab.hosts.sh(lab.host, "incus list -f csv -c n").lines().any(|l| l == name);

    let out = pooled_run();
    assert_eq!(out.code, 0, "{out:?}");
    let pooled = wait_entry(None);
    assert_eq!(entries()[0]["location"], format!("ssh:{host}"));
    assert!(on_host(&pooled), "`{pooled}` is not on `{host}`");

    let out = pooled_run();
    assert_eq!(out.code, 0, "{out:?}");
    let record = out.json();
    let job = job_record(flake.path(), &record, "view");
    assert_eq!(job["instance"], *pooled, "{job:#}");
    assert!(!on_host(&pooled), "a pool instance runs one job and is deleted");

    let next = wait_entry(Some(&pooled));
    let gc = lab.pikaci(flake.path(), &["gc", "--keep", "0"]);
    assert_eq!(gc.code, 0, "{gc:?}");
    assert!(entries().is_empty(), "{:?}", entries());
    assert!(!on_host(&next), "gc leaves `{next}` on `{host}`");
}
