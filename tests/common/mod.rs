//! Shared helpers for the integration tests: they run the built `pikaci` binary against
//! fixture flakes copied into temporary directories, with real nix, bwrap and Incus.
//! A missing tool fails the test with a message that says how to install it; nothing is
//! skipped silently.

#![allow(dead_code)]

pub mod test_hosts;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn fixture_path(name: &str) -> PathBuf {
    repo_root().join("tests/fixtures").join(name)
}

/// The built binary, with no state root or colour from the environment.
pub fn pikaci() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pikaci"));
    // Nix's build sandbox on, whatever nix.conf says, as on a NixOS host: what builds here
    // builds there. Fixtures build with a busybox from the store (`add_build_tools`); the
    // few that need the host's tools turn it off and say why.
    cmd.env_remove("PIKACI_STATE_ROOT").env("NO_COLOR", "1").env("NIX_CONFIG", "sandbox = true");
    // No warm pool of Incus instances kept between runs: every test has a state root of
    // its own, gone with it, and checks that its runs leave no instance. The pool's own
    // tests (tests/incus.rs) turn it on.
    cmd.env("PIKACI_INCUS_POOL", "0").env_remove("PIKACI_INCUS_POOL_IDLE");
    cmd
}

fn require(tool: &str, how: &str) {
    if which(tool).is_none() {
        panic!("`{tool}` is required by this test and is not on PATH: {how}");
    }
}

pub fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join(tool)).find(|p| p.is_file())
}

pub fn require_nix() {
    require("nix", "run `scripts/bootstrap` (installs and configures Nix)");
}

pub fn require_bwrap() {
    require("bwrap", "run `scripts/bootstrap` (installs bubblewrap)");
}

pub fn require_incus() {
    require("incus", "run `scripts/bootstrap` (installs Incus and starts its daemon)");
    let ok = Command::new("incus").args(["query", "/1.0"]).output().map(|o| o.status.success()).unwrap_or(false);
    if !ok {
        panic!(
            "the Incus daemon does not answer (`incus query /1.0` failed): run `scripts/bootstrap`, which starts it"
        );
    }
}

/// Copy a directory tree (a fixture flake) into a new temporary directory, with a
/// unique `salt` file that fixture flakes mix into their derivations.
pub fn copy_fixture(src: &Path) -> tempfile::TempDir {
    let dir = tempfile::Builder::new().prefix("pikaci-test-").tempdir().expect("create a temp dir");
    copy_tree(src, dir.path());
    let salt = dir.path().file_name().unwrap().to_string_lossy().into_owned();
    std::fs::write(dir.path().join("salt"), salt).unwrap();
    add_build_tools(dir.path());
    dir
}

/// Fixture flakes build with `tools/busybox` (Debian's static busybox, copied into the
/// flake), a store path in their derivations, instead of the host's `/bin/sh` and tools:
/// so they build in Nix's sandbox (`sandbox = true`, set by `scripts/bootstrap`), as on a
/// NixOS host.
pub fn add_build_tools(dir: &Path) {
    let busybox = Path::new("/bin/busybox");
    let runs =
        std::process::Command::new(busybox).args(["sh", "-c", "true"]).env_clear().status().is_ok_and(|s| s.success());
    if !runs {
        panic!(
            "`/bin/busybox` (Debian's busybox-static) is required by this test: run `scripts/bootstrap`, which installs it"
        );
    }
    std::fs::create_dir_all(dir.join("tools")).unwrap();
    std::fs::copy(busybox, dir.join("tools/busybox")).unwrap();
}

pub fn copy_tree(src: &Path, dest: &Path) {
    std::fs::create_dir_all(dest).unwrap();
    for entry in std::fs::read_dir(src).unwrap_or_else(|e| panic!("read {}: {e}", src.display())) {
        let entry = entry.unwrap();
        let name = entry.file_name();
        if name == ".pikaci" || name == "target" {
            continue;
        }
        let (from, to) = (entry.path(), dest.join(&name));
        let ty = entry.file_type().unwrap();
        if ty.is_dir() {
            copy_tree(&from, &to);
        } else if ty.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&from).unwrap(), &to).unwrap();
        } else {
            std::fs::copy(&from, &to).unwrap();
        }
    }
}

/// What a finished command gave back, as text.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}\nstderr:\n{}", self.stdout, self.stderr))
    }
}

impl From<Output> for Run {
    fn from(o: Output) -> Run {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

/// Run `pikaci ARGS` with `--flake path:<flake>` and the state root inside it.
pub fn run_in(flake: &Path, args: &[&str]) -> Run {
    let out = pikaci().args(args).arg("--flake").arg(format!("path:{}", flake.display())).output().expect("run pikaci");
    out.into()
}

/// The only run of a state root (panics when there is not exactly one).
pub fn only_run(flake: &Path) -> PathBuf {
    let runs: Vec<PathBuf> =
        std::fs::read_dir(flake.join(".pikaci/runs")).expect("runs dir").map(|e| e.unwrap().path()).collect();
    assert_eq!(runs.len(), 1, "expected one run: {runs:?}");
    runs.into_iter().next().unwrap()
}

pub fn read_json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parse {}: {e}", path.display()))
}

/// A job's status from a run.json.
pub fn job_status(run: &serde_json::Value, job: &str) -> String {
    run["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["job_id"] == job)
        .unwrap_or_else(|| panic!("no job {job} in {run:#}"))["status"]
        .as_str()
        .unwrap()
        .to_string()
}

/// The command lines of bwrap processes whose arguments mention `dir` (a test's flake
/// copy, so that parallel tests do not see each other's sandboxes).
pub fn sandboxes_of(dir: &Path) -> Vec<String> {
    let needle = dir.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| std::fs::read(e.ok()?.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains("bwrap") && c.contains(&needle))
        .collect()
}

pub mod host_rust;

/// A path as one word for `sh -c`.
pub fn shell_quote_path(path: &Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', "'\\''"))
}

/// Of two jobs of a run (`events`: its events) that share a `workspace-deps`, each with a
/// `workspace-build` of its own on it: the one that built `workspace-deps` (exactly one
/// did) and the other, once checked that the other started its own build before the
/// builder had finished its own (it waited for the shared derivation, not for the
/// builder's whole realisation).
pub fn builder_and_waiter<'a>(events: &[serde_json::Value], jobs: [&'a str; 2]) -> (&'a str, &'a str) {
    let builders: Vec<&str> = events
        .iter()
        .filter(|e| e["event"] == "payload_build_started" && e["payload"] == "workspace-deps")
        .map(|e| e["job_id"].as_str().unwrap())
        .collect();
    assert_eq!(builders.len(), 1, "workspace-deps is built once: {events:#?}");
    let (builder, waiter) = if builders[0] == jobs[0] { (jobs[0], jobs[1]) } else { (jobs[1], jobs[0]) };
    let at = |event: &str, job: &str| -> String {
        let found =
            events.iter().find(|e| e["event"] == event && e["job_id"] == job && e["payload"] == "workspace-build");
        found.unwrap_or_else(|| panic!("{event} of {job}: {events:#?}"))["at"].as_str().unwrap().to_string()
    };
    // RFC 3339 times of one run, same offset: they compare as text.
    assert!(
        at("payload_build_started", waiter) < at("payload_build_finished", builder),
        "`{waiter}` started its own build only after `{builder}` had finished its own:\n{events:#?}"
    );
    (builder, waiter)
}
