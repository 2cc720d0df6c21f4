//! Nothing a lane does reaches the host: lanes of `tests/fixtures/sandbox` try to write the
//! host's store, `/usr` and the snapshot (remounts, device nodes, `chroot`, `pivot_root`,
//! nested namespaces), read pikaci's environment, and leave setuid files behind. Each test
//! runs the real runtime, as root and (for bwrap) as an unprivileged user.

mod common;
#[path = "common/sandbox_checks.rs"]
mod sandbox_checks;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use common::*;
use sandbox_checks::assert_artifacts_safe;

/// Every attempt `ci/escape.sh` makes; under bwrap each must be `held`.
const ATTEMPTS: &[&str] = &[
    "remount /nix/store read-write",
    "write into /nix/store",
    "remount /workspace read-write",
    "write into /workspace",
    "remount /pikaci/payloads/workspace-build read-write",
    "write into /pikaci/payloads/workspace-build",
    "remount /usr read-write",
    "write into /usr",
    "write into a payload's store path",
    "remount a payload's store path read-write",
    "unmount a payload's store path",
    "remount it read-write in a user namespace of its own",
    "overwrite the snapshot",
    "mknod a character device",
    "mount a tmpfs",
    "pivot_root",
    "chroot",
    "unshare a user namespace (unshare -r)",
    "unshare a mount namespace (unshare -m)",
    "hold a capability",
    "run as uid 0",
];

fn sandbox_fixture() -> tempfile::TempDir {
    require_nix();
    copy_fixture(&fixture_path("sandbox"))
}

fn guest_log(flake: &Path, job: &str) -> String {
    let path = only_run(flake).join("jobs").join(job).join("guest.log");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// The lines of `escape`'s log, and the host is as it was: no file the guest tried to
/// write exists, the snapshot and the payloads are unchanged.
fn assert_escape_held(flake: &Path, out: &Run, expected_held: &[&str]) {
    let log = guest_log(flake, "escape");
    for attempt in expected_held {
        assert!(log.lines().any(|l| l == format!("held: {attempt}")), "`{attempt}` was not held:\n{log}\n{out:?}");
    }
    for target in ["/nix/store/pikaci-escape", "/usr/pikaci-escape"] {
        assert!(!Path::new(target).exists(), "the guest wrote `{target}` on the host");
    }
    let run = only_run(flake);
    // The GC-root links of the two payloads' outputs.
    for payload in ["workspace-deps", "workspace-build"] {
        let store_path = run.join("jobs/escape/staged-linux-rust").join(payload).canonicalize().unwrap();
        assert!(!store_path.join("pikaci-escape").exists(), "the guest wrote into payload {payload}");
        assert!(!store_path.join("bin/pwned").exists(), "the guest wrote into payload {payload}");
    }
    let snapshots: Vec<PathBuf> =
        std::fs::read_dir(flake.join(".pikaci/snapshots")).unwrap().map(|e| e.unwrap().path()).collect();
    for snapshot in snapshots {
        assert_eq!(std::fs::read_to_string(snapshot.join("marker.txt")).unwrap(), "snapshot marker\n");
        assert!(!snapshot.join("pikaci-escape").exists(), "the guest wrote into the snapshot");
    }
}

#[test]
fn bwrap_as_root_holds_the_sandbox() {
    require_bwrap();
    assert!(is_root(), "this test runs pikaci as root, the set-up where bwrap keeps every capability");
    let dir = sandbox_fixture();
    let out = run_in(dir.path(), &["run", "escape", "--runtime", "bwrap"]);
    assert_escape_held(dir.path(), &out, ATTEMPTS);
    assert!(guest_log(dir.path(), "escape").ends_with("SANDBOX HELD\n"));
    assert_eq!(out.code, 0, "{out:?}");
}

#[test]
fn bwrap_as_an_unprivileged_user_holds_the_sandbox() {
    require_bwrap();
    let user = Unprivileged::start();
    let out = user.run(&["run", "escape", "--runtime", "bwrap"], &[]);
    assert_escape_held(&user.flake, &out, ATTEMPTS);
    assert_eq!(out.code, 0, "{out:?}");
}

#[test]
fn incus_holds_the_host_mounts() {
    require_incus();
    let dir = sandbox_fixture();
    let out = run_in(dir.path(), &["run", "escape", "--runtime", "incus"]);
    // The container's root is root in its own user namespace, but without CAP_SYS_ADMIN
    // (it can still chroot, or make a user namespace of its own): what reaches the host
    // must be held, the payload disks added to the running instance included.
    assert_escape_held(dir.path(), &out, &ATTEMPTS[..6]);
    assert_escape_held(dir.path(), &out, &ATTEMPTS[8..14]);
    assert_escape_held(dir.path(), &out, &["mount a tmpfs", "pivot_root"]);
    let host_log = std::fs::read_to_string(only_run(dir.path()).join("jobs/escape/host.log")).unwrap();
    assert!(
        host_log.contains("was started ahead; adding the job's devices"),
        "the devices went to a running instance:\n{host_log}"
    );
}

fn assert_no_secret(flake: &Path, out: &Run) {
    let log = guest_log(flake, "environ");
    // The guest did read environments (its own at least), and none had the secret.
    assert!(log.lines().any(|l| l.ends_with(": PIKACI_JOB=environ")), "{log}\n{out:?}");
    assert!(log.contains("ENVIRON DONE"), "{log}");
    assert!(!log.contains("SECRET_TOKEN"), "pikaci's environment reached the guest:\n{log}");
    assert!(!log.contains("hunter2"), "pikaci's environment reached the guest:\n{log}");
}

#[test]
fn bwrap_keeps_pikaci_environment_from_the_guest() {
    require_bwrap();
    let dir = sandbox_fixture();
    let out = pikaci()
        .env("SECRET_TOKEN", "hunter2")
        .args(["run", "environ", "--runtime", "bwrap", "--flake"])
        .arg(format!("path:{}", dir.path().display()))
        .output()
        .unwrap()
        .into();
    assert_no_secret(dir.path(), &out);
}

#[test]
fn bwrap_as_an_unprivileged_user_keeps_pikaci_environment_from_the_guest() {
    require_bwrap();
    let user = Unprivileged::start();
    let out = user.run(&["run", "environ", "--runtime", "bwrap"], &[("SECRET_TOKEN", "hunter2")]);
    assert_no_secret(&user.flake, &out);
}

#[test]
fn incus_keeps_pikaci_environment_from_the_guest() {
    require_incus();
    let dir = sandbox_fixture();
    let out = pikaci()
        .env("SECRET_TOKEN", "hunter2")
        .args(["run", "environ", "--runtime", "incus", "--flake"])
        .arg(format!("path:{}", dir.path().display()))
        .output()
        .unwrap()
        .into();
    assert_no_secret(dir.path(), &out);
}

pub fn is_root() -> bool {
    let out = Command::new("id").arg("-u").output().expect("run `id -u`");
    String::from_utf8_lossy(&out.stdout).trim() == "0"
}

/// pikaci run by `nobody` (uid 65534) on a copy of the fixture that `nobody` owns, with a
/// private `nix-daemon` (started by this test as root, on a socket in the temp dir) as its
/// store: the set-up of a developer without root.
pub struct Unprivileged {
    _dir: tempfile::TempDir,
    pub flake: PathBuf,
    home: PathBuf,
    socket: PathBuf,
    daemon: Child,
}

const NOBODY: &str = "65534";

impl Unprivileged {
    pub fn start() -> Unprivileged {
        require_nix();
        assert!(is_root(), "this test needs root, to start a `nix-daemon` and switch to `nobody` with `setpriv`");
        for tool in ["setpriv", "nix-daemon"] {
            assert!(which(tool).is_some(), "`{tool}` is required by this test: run `scripts/bootstrap`");
        }
        let dir = tempfile::Builder::new().prefix("pikaci-unpriv-").tempdir().unwrap();
        let flake = dir.path().join("flake");
        copy_tree(&fixture_path("sandbox"), &flake);
        std::fs::write(flake.join("salt"), dir.path().file_name().unwrap().to_string_lossy().as_bytes()).unwrap();
        let home = dir.path().join("home");
        std::fs::create_dir(&home).unwrap();
        chown_nobody(dir.path());
        let socket = dir.path().join("daemon.sock");
        let daemon = Command::new("nix-daemon")
            .env("NIX_DAEMON_SOCKET_PATH", &socket)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start nix-daemon");
        for _ in 0..100 {
            if socket.exists() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        assert!(socket.exists(), "nix-daemon did not create `{}`", socket.display());
        Unprivileged { _dir: dir, flake, home, socket, daemon }
    }

    /// `pikaci ARGS --flake path:<flake>` as `nobody`, with only the given variables
    /// added to a minimal environment.
    pub fn run(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        let mut cmd = Command::new("setpriv");
        cmd.args(["--reuid", NOBODY, "--regid", NOBODY, "--clear-groups", "--"])
            .arg(env!("CARGO_BIN_EXE_pikaci"))
            .args(args)
            .arg("--flake")
            .arg(format!("path:{}", self.flake.display()))
            .current_dir(&self.flake)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap())
            .env("HOME", &self.home)
            .env("NO_COLOR", "1")
            .env("NIX_REMOTE", "daemon")
            .env("NIX_DAEMON_SOCKET_PATH", &self.socket);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().expect("run pikaci as nobody").into()
    }
}

impl Drop for Unprivileged {
    fn drop(&mut self) {
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
        // What `nobody` left (the state root) is removed with the temp dir, by root.
    }
}

fn chown_nobody(path: &Path) {
    let status = Command::new("chown").args(["-R", "65534:65534"]).arg(path).status().expect("run chown");
    assert!(status.success(), "chown -R nobody {}", path.display());
}

/// The state root is closed to other users, and records and logs share one mode.
pub fn assert_state_root_modes(flake: &Path, job: &str) {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    let root = flake.join(".pikaci");
    assert_eq!(mode(&root) & 0o007, 0, "the state root is open to other users: {:o}", mode(&root));
    let run = only_run(flake);
    for file in ["run.json", "events.jsonl"] {
        assert_eq!(mode(&run.join(file)), 0o640, "{file}");
    }
    for file in ["job.json", "guest.log", "host.log"] {
        assert_eq!(mode(&run.join("jobs").join(job).join(file)), 0o640, "{file}");
    }
}

#[test]
fn bwrap_artifacts_reach_the_host_without_setid_bits_or_devices() {
    require_bwrap();
    let dir = sandbox_fixture();
    let out = run_in(dir.path(), &["run", "leave-setuid", "--runtime", "bwrap"]);
    assert_eq!(out.code, 0, "{out:?}");
    let job_dir = only_run(dir.path()).join("jobs/leave-setuid");
    // The guest did make a device node (c 0 0 needs no capability): it was removed.
    assert!(guest_log(dir.path(), "leave-setuid").contains("whiteout"), "{out:?}");
    assert!(std::fs::read_to_string(job_dir.join("host.log")).unwrap().contains("removed `whiteout` (device"));
    assert_artifacts_safe(&job_dir);
    assert_state_root_modes(dir.path(), "leave-setuid");
    // Another user cannot reach what the lane left.
    let suid = job_dir.join("artifacts/suid-shell");
    let other = Command::new("setpriv")
        .args(["--reuid", NOBODY, "--regid", NOBODY, "--clear-groups", "--"])
        .arg(&suid)
        .args(["id", "-u"])
        .output()
        .expect("run setpriv");
    assert!(!other.status.success(), "`nobody` ran an artifact: {other:?}");
}

#[test]
fn bwrap_as_an_unprivileged_user_keeps_artifacts_safe() {
    require_bwrap();
    let user = Unprivileged::start();
    let out = user.run(&["run", "leave-setuid", "--runtime", "bwrap"], &[]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_artifacts_safe(&only_run(&user.flake).join("jobs/leave-setuid"));
    assert_state_root_modes(&user.flake, "leave-setuid");
}

#[test]
fn incus_artifacts_reach_the_host_without_setid_bits_or_devices() {
    require_incus();
    let dir = sandbox_fixture();
    let out = run_in(dir.path(), &["run", "leave-setuid", "--runtime", "incus"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_artifacts_safe(&only_run(dir.path()).join("jobs/leave-setuid"));
    assert_state_root_modes(dir.path(), "leave-setuid");
}

/// Each `manifest-*` lane and what its failure says.
pub const BAD_MANIFESTS: &[(&str, &str)] = &[
    ("manifest-shadow-link", "`share/pikaci/payload-manifest.json` is a symbolic link, and links are not followed"),
    ("manifest-zero-link", "`share/pikaci/payload-manifest.json` is a symbolic link, and links are not followed"),
    ("manifest-dir-link", "`share/pikaci` is a symbolic link, and links are not followed"),
    ("manifest-directory", "it is a directory; it must be a JSON file"),
    ("manifest-huge", "it is larger than 1048576 bytes"),
    ("manifest-same-guest-path", "two payload manifest mounts have the same guest_path `/opt/x`"),
    ("manifest-nested-guest-path", "payload manifest mount guest_path `/opt/x/y` is inside `/opt/x`, another mount's"),
];

#[test]
fn payload_manifests_are_read_without_following_links_and_bounded() {
    require_bwrap();
    let dir = sandbox_fixture();
    let lanes: Vec<&str> = BAD_MANIFESTS.iter().map(|(lane, _)| *lane).collect();
    let started = std::time::Instant::now();
    let out = run_in(dir.path(), &[&["run", "--runtime", "bwrap", "--output", "json"], &lanes[..]].concat());
    assert!(started.elapsed().as_secs() < 60, "a manifest read without bound (/dev/zero) is slow");
    // Failed jobs (the payload is the lane's own), not infrastructure errors.
    assert_eq!(out.code, 1, "{out:?}");
    let record = out.json();
    for (lane, why) in BAD_MANIFESTS {
        let job = record["jobs"].as_array().unwrap().iter().find(|j| j["job_id"] == *lane).unwrap();
        assert_eq!(job["status"], "failed", "{lane}: {job:#}");
        let message = job["message"].as_str().unwrap();
        assert!(message.contains(why), "{lane}: {message}");
    }
    assert!(!out.stdout.contains("root:") && !out.stderr.contains("root:"), "/etc/shadow was read: {out:?}");
}

fn long_manifest_mount(runtime: &str) {
    let dir = sandbox_fixture();
    let out = run_in(dir.path(), &["run", "long-mount", "--runtime", runtime]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(guest_log(dir.path(), "long-mount"), "long-mount-content\n");
}

#[test]
fn incus_mounts_a_manifest_guest_path_longer_than_a_device_name() {
    require_incus();
    long_manifest_mount("incus");
}

#[test]
fn bwrap_mounts_a_long_manifest_guest_path() {
    require_bwrap();
    long_manifest_mount("bwrap");
}

/// Run `lane` on bwrap with the terminal view on (human output, to a pipe that is
/// drained), and compare its `guest.log` with the same script run on the host.
fn output_is_kept_byte_exact(lane: &str) {
    require_bwrap();
    let dir = sandbox_fixture();
    let started = std::time::Instant::now();
    let out = pikaci()
        .args(["run", lane, "--runtime", "bwrap", "--flake"])
        .arg(format!("path:{}", dir.path().display()))
        .stderr(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    eprintln!("{lane}: pikaci run took {:.2}s", started.elapsed().as_secs_f64());
    assert!(out.success(), "{out:?}");
    let expected = Command::new("/bin/sh").arg(dir.path().join("ci").join(format!("{lane}.sh"))).output().unwrap();
    let log = std::fs::read(only_run(dir.path()).join("jobs").join(lane).join("guest.log")).unwrap();
    assert_eq!(log.len(), expected.stdout.len(), "guest.log of {lane} has another length");
    assert!(log == expected.stdout, "guest.log of {lane} differs from the output");
}

#[test]
fn bwrap_keeps_a_20_mb_line_without_newline_byte_exact() {
    output_is_kept_byte_exact("long-line");
}

#[test]
fn bwrap_keeps_100_mb_of_output_byte_exact() {
    output_is_kept_byte_exact("flood");
}

#[test]
fn terminal_control_sequences_are_shown_not_obeyed() {
    require_bwrap();
    let dir = sandbox_fixture();
    let out = run_in(dir.path(), &["run", "control", "--runtime", "bwrap"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("[control] ^[]0;pwned-title^G^[[2Jvisible\n"), "{}", out.stdout);
    assert!(out.stdout.contains("[control] \\u{9b}1mC1\n"), "{}", out.stdout);
    assert!(!out.stdout.contains('\x1b') && !out.stdout.contains('\x07'), "{:?}", out.stdout);
    // guest.log keeps the bytes as they came.
    assert_eq!(
        std::fs::read(only_run(dir.path()).join("jobs/control/guest.log")).unwrap(),
        b"\x1b]0;pwned-title\x07\x1b[2Jvisible\n\xc2\x9b1mC1\n"
    );
}

#[test]
fn bwrap_shows_the_guest_only_the_closure_of_its_payloads() {
    require_bwrap();
    guest_sees_only_the_closure("bwrap");
}

#[test]
fn incus_shows_the_guest_only_the_closure_of_its_payloads() {
    require_incus();
    guest_sees_only_the_closure("incus");
}

fn guest_sees_only_the_closure(runtime: &str) {
    let dir = sandbox_fixture();
    let out = run_in(dir.path(), &["run", "store-view", "--runtime", runtime]);
    assert_eq!(out.code, 0, "{out:?}");
    let staged = only_run(dir.path()).join("jobs/store-view/staged-linux-rust");
    let roots: Vec<PathBuf> =
        std::fs::read_dir(&staged).unwrap().map(|e| e.unwrap().path().canonicalize().unwrap()).collect();
    let closure = Command::new("nix-store").arg("--query").arg("--requisites").args(&roots).output().unwrap();
    assert!(closure.status.success(), "{closure:?}");
    let mut expected: Vec<String> = String::from_utf8_lossy(&closure.stdout)
        .lines()
        .map(|l| l.trim_start_matches("/nix/store/").to_string())
        .collect();
    expected.sort();
    let mut seen: Vec<String> = guest_log(dir.path(), "store-view").lines().map(str::to_string).collect();
    seen.sort();
    assert_eq!(seen, expected, "the guest's /nix/store is not the closure of its payloads");
    // The host's store holds far more (at least this test's other derivations).
    assert!(std::fs::read_dir("/nix/store").unwrap().count() > seen.len());
}

/// A tmpfs of `size`, mounted by this test (as root) and unmounted when dropped.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn new(size: &str) -> SmallDisk {
        assert!(is_root(), "this test mounts a small tmpfs, which needs root");
        let dir = tempfile::Builder::new().prefix("pikaci-full-").tempdir().unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "pikaci-test-full"])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(ok.success(), "mount a tmpfs of {size}");
        SmallDisk { dir }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

#[test]
fn a_full_disk_under_the_state_root_is_a_recorded_error_and_the_record_is_written() {
    require_bwrap();
    let dir = sandbox_fixture();
    let disk = SmallDisk::new("8m");
    let state = disk.dir.path().join("state");
    let out: Run = pikaci()
        .args(["run", "flood", "--runtime", "bwrap", "--output", "json", "--state-root"])
        .arg(&state)
        .arg("--flake")
        .arg(format!("path:{}", dir.path().display()))
        .stderr(std::process::Stdio::null())
        .output()
        .unwrap()
        .into();
    assert_eq!(out.code, 3, "{}", out.stdout);
    let runs: Vec<PathBuf> = std::fs::read_dir(state.join("runs")).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(runs.len(), 1);
    let record = read_json(&runs[0].join("run.json"));
    assert_eq!(record["status"], "error", "{record:#}");
    assert!(record["finished_at"].is_string(), "the final record was not written: {record:#}");
    let job = read_json(&runs[0].join("jobs/flood/job.json"));
    assert_eq!(job["status"], "error", "{job:#}");
    let message = job["message"].as_str().unwrap();
    assert!(message.contains("its output could not be written to") && message.contains("guest.log"), "{message}");
}
