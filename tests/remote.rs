//! Remote placement, for real: each test starts its own `sshd` on a loopback address
//! (127.0.0.2, which pikaci does not treat as this machine) and runs lanes there over SSH
//! with the Incus runtime. The "remote host" shares this machine's Nix store and Incus
//! daemon, so what is tested is the SSH path itself: the remote job directories, the
//! snapshot sent once, payloads built and rooted there, Incus driven over SSH, artifacts
//! brought back, and gc cleaning up there.

mod common;
#[path = "common/sandbox_checks.rs"]
mod sandbox_checks;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::*;

struct RemoteLab {
    dir: tempfile::TempDir,
    sshd: Child,
    host: String,
}

impl RemoteLab {
    fn start() -> RemoteLab {
        require_nix();
        require_incus();
        let sshd = Path::new("/usr/sbin/sshd");
        assert!(
            sshd.exists(),
            "`/usr/sbin/sshd` is required by the remote tests: run `scripts/bootstrap` (installs openssh-server)"
        );
        let dir = tempfile::Builder::new().prefix("pikaci-remote-").tempdir().unwrap();
        let d = dir.path();
        for key in ["hostkey", "userkey"] {
            let ok = Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(d.join(key))
                .status()
                .unwrap();
            assert!(ok.success());
        }
        std::fs::copy(d.join("userkey.pub"), d.join("authorized_keys")).unwrap();
        // A free port on the loopback address; sshd takes it right after.
        let port = TcpListener::bind("127.0.0.2:0").unwrap().local_addr().unwrap().port();
        std::fs::write(
            d.join("sshd_config"),
            format!(
                "ListenAddress 127.0.0.2\nPort {port}\nHostKey {d}/hostkey\nAuthorizedKeysFile {d}/authorized_keys\n\
                 PermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
                 UsePAM no\nStrictModes no\nPidFile {d}/sshd.pid\n",
                d = d.display()
            ),
        )
        .unwrap();
        let host = format!("pikaci-lab-{port}");
        std::fs::write(
            d.join("ssh_config"),
            format!(
                "Host {host}\n  HostName 127.0.0.2\n  Port {port}\n  User root\n  IdentityFile {d}/userkey\n  \
                 StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n  LogLevel ERROR\n",
                d = d.display()
            ),
        )
        .unwrap();
        std::fs::create_dir_all("/run/sshd").unwrap();
        let sshd = Command::new(sshd)
            .arg("-D")
            .arg("-f")
            .arg(d.join("sshd_config"))
            .arg("-E")
            .arg(d.join("sshd.log"))
            .spawn()
            .unwrap();
        let lab = RemoteLab { dir, sshd, host };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !lab.ssh(&["true"]).success() {
            assert!(
                Instant::now() < deadline,
                "the test sshd did not come up: {}",
                std::fs::read_to_string(lab.dir.path().join("sshd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        lab
    }

    fn ssh(&self, argv: &[&str]) -> std::process::ExitStatus {
        Command::new("ssh")
            .arg("-F")
            .arg(self.dir.path().join("ssh_config"))
            .arg(&self.host)
            .args(argv)
            .output()
            .unwrap()
            .status
    }

    /// The host becomes unreachable: sshd stops, and pikaci's shared connection to it
    /// (which outlives the listener) is closed.
    fn stop_sshd(&mut self) {
        let _ = self.sshd.kill();
        let _ = self.sshd.wait();
        let uid = String::from_utf8(Command::new("id").arg("-u").output().unwrap().stdout).unwrap();
        let control = std::env::temp_dir().join(format!("pikaci-ssh-{}", uid.trim())).join("%C");
        let _ = Command::new("ssh")
            .arg("-F")
            .arg(self.dir.path().join("ssh_config"))
            .arg("-o")
            .arg(format!("ControlPath={}", control.display()))
            .args(["-O", "exit", &self.host])
            .output();
    }

    /// The same sshd again, on the same port.
    fn restart_sshd(&mut self) {
        let d = self.dir.path();
        self.sshd = Command::new("/usr/sbin/sshd")
            .arg("-D")
            .arg("-f")
            .arg(d.join("sshd_config"))
            .arg("-E")
            .arg(d.join("sshd.log"))
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.ssh(&["true"]).success() {
            assert!(Instant::now() < deadline, "the test sshd did not come back");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn remote_root(&self) -> PathBuf {
        self.dir.path().join("remote-state")
    }

    fn pikaci(&self, flake: &Path, args: &[&str]) -> Run {
        pikaci()
            .env("PIKACI_SSH_CONFIG", self.dir.path().join("ssh_config"))
            .env("PIKACI_REMOTE_STATE_ROOT", self.remote_root())
            .args(args)
            .arg("--flake")
            .arg(flake)
            .output()
            .unwrap()
            .into()
    }
}

impl Drop for RemoteLab {
    fn drop(&mut self) {
        let _ = self.sshd.kill();
        let _ = self.sshd.wait();
    }
}

#[test]
fn lanes_run_on_a_remote_host_and_gc_cleans_up_there() {
    let lab = RemoteLab::start();
    let flake = copy_fixture(&fixture_path("lanes"));
    let out = lab.pikaci(
        flake.path(),
        &["run", "view", "fail", "--runtime", "incus", "--remote", &lab.host, "--output", "json"],
    );
    assert_eq!(out.code, 1, "{out:?}");
    let record = out.json();
    assert_eq!(record["remote"], lab.host.as_str());
    assert_eq!(job_status(&record, "view"), "passed", "{}", out.stderr);
    let fail = record["jobs"].as_array().unwrap().iter().find(|j| j["job_id"] == "fail").unwrap();
    assert_eq!(fail["exit_code"], 7);
    assert!(out.stderr.contains("[view] VIEW OK"), "guest output streams back: {}", out.stderr);

    let run_id = record["run_id"].as_str().unwrap();
    let local_job = flake.path().join(".pikaci/runs").join(run_id).join("jobs/view");
    let remote_job = lab.remote_root().join("runs").join(run_id).join("jobs/view");
    // Built and rooted there (a registered indirect root per output), not here.
    let staged = remote_job.join("staged-linux-rust");
    let auto: Vec<PathBuf> = std::fs::read_dir("/nix/var/nix/gcroots/auto")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.unwrap().path()).ok())
        .collect();
    for link in ["workspace-deps", "workspace-deps-dev", "workspace-build", "extra"] {
        assert!(staged.join(link).is_symlink(), "{link} is not rooted on the remote side");
        assert!(auto.contains(&staged.join(link)), "{link} is not a registered root");
    }
    assert_eq!(
        std::fs::read_dir(local_job.join("staged-linux-rust")).unwrap().count(),
        0,
        "no payload is rooted locally"
    );
    // The artifacts came back.
    assert_eq!(std::fs::read_to_string(local_job.join("artifacts/kept.txt")).unwrap(), "kept\n");
    // The snapshot was sent once for the two jobs.
    let snapshot = record["snapshot"]["id"].as_str().unwrap();
    assert!(lab.remote_root().join("snapshots").join(snapshot).join("marker.txt").is_file());
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
    assert_eq!(
        view_log.matches("'mkdir -p -- \"$@\"").count(),
        1,
        "one mkdir -p for all of a job's directories:\n{view_log}"
    );
    let job = read_json(&local_job.join("job.json"));
    let reproduce = job["reproduce"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap().to_string())
        .collect::<Vec<_>>()
        .join("\n");
    assert!(reproduce.contains(&format!("copy --derivation --to ssh://{} /nix/store/", lab.host)), "{reproduce}");
    assert!(reproduce.contains("'nix-store --realise"), "{reproduce}");

    let gc = lab.pikaci(flake.path(), &["gc", "--keep", "0"]);
    assert_eq!(gc.code, 0, "{gc:?}");
    assert!(!gc.stdout.contains("warning"), "{}", gc.stdout);
    assert!(!lab.remote_root().join("runs").join(run_id).exists(), "gc removes the remote job directories");
    assert!(!lab.remote_root().join("snapshots").join(snapshot).exists(), "and the remote snapshot");
}

#[test]
fn artifacts_come_back_from_a_remote_host_without_setid_bits_or_devices() {
    let lab = RemoteLab::start();
    let flake = copy_fixture(&fixture_path("sandbox"));
    let out = lab.pikaci(flake.path(), &["run", "leave-setuid", "--runtime", "incus", "--remote", &lab.host]);
    assert_eq!(out.code, 0, "{out:?}");
    let job_dir = only_run(flake.path()).join("jobs/leave-setuid");
    sandbox_checks::assert_artifacts_safe(&job_dir);
    use std::os::unix::fs::PermissionsExt;
    let remote_mode = std::fs::metadata(lab.remote_root()).unwrap().permissions().mode();
    assert_eq!(remote_mode & 0o007, 0, "the remote state root is open to other users: {remote_mode:o}");
}

#[test]
fn payload_manifests_on_a_remote_host_are_read_without_following_links_and_bounded() {
    let lab = RemoteLab::start();
    let flake = copy_fixture(&fixture_path("sandbox"));
    let lanes = ["manifest-shadow-link", "manifest-dir-link", "manifest-directory", "manifest-huge"];
    let args = [&["run", "--runtime", "incus", "--remote", &lab.host, "--output", "json"], &lanes[..]].concat();
    let out = lab.pikaci(flake.path(), &args);
    assert_eq!(out.code, 1, "{out:?}");
    let record = out.json();
    for (lane, why) in [
        ("manifest-shadow-link", "a part of its path is a symbolic link, and links are not followed"),
        ("manifest-dir-link", "a part of its path is a symbolic link, and links are not followed"),
        ("manifest-directory", "it is a directory; it must be a JSON file"),
        ("manifest-huge", "it is larger than 1048576 bytes"),
    ] {
        let job = record["jobs"].as_array().unwrap().iter().find(|j| j["job_id"] == lane).unwrap();
        assert_eq!(job["status"], "failed", "{lane}: {job:#}");
        assert!(job["message"].as_str().unwrap().contains(why), "{lane}: {job:#}");
    }
}

#[test]
fn an_unreachable_host_is_an_infrastructure_error_naming_it() {
    let lab = RemoteLab::start();
    let flake = copy_fixture(&fixture_path("lanes"));
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

    let bwrap = lab.pikaci(flake.path(), &["run", "view", "--runtime", "bwrap", "--remote", &lab.host]);
    assert_eq!(bwrap.code, 2, "{bwrap:?}");
    assert!(bwrap.stderr.contains("the bwrap runtime runs jobs on this machine only"), "{}", bwrap.stderr);
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

#[test]
fn gc_with_the_remote_host_unreachable_keeps_what_to_clean_there_and_the_next_gc_does() {
    let mut lab = RemoteLab::start();
    let flake = copy_fixture(&fixture_path("sandbox"));
    let out =
        lab.pikaci(flake.path(), &["run", "environ", "--runtime", "incus", "--remote", &lab.host, "--output", "json"]);
    assert_eq!(out.code, 0, "{out:?}");
    let run_id = out.json()["run_id"].as_str().unwrap().to_string();
    let remote_run = lab.remote_root().join("runs").join(&run_id);
    assert!(remote_run.is_dir());

    lab.stop_sshd();
    let gc = lab.pikaci(flake.path(), &["gc", "--keep", "0"]);
    assert_eq!(gc.code, 0, "{gc:?}");
    assert!(gc.stdout.contains("the next `pikaci gc` tries again"), "{}", gc.stdout);
    assert!(remote_run.is_dir(), "the remote host was unreachable");
    let pending = read_json(&flake.path().join(".pikaci/remote-leftovers.json"));
    assert!(pending[&lab.host].as_array().is_some_and(|a| !a.is_empty()), "{pending:#}");

    lab.restart_sshd();
    let gc = lab.pikaci(flake.path(), &["gc", "--keep", "0"]);
    assert_eq!(gc.code, 0, "{gc:?}");
    assert!(!gc.stdout.contains("warning"), "{}", gc.stdout);
    assert!(!remote_run.exists(), "the next gc removes the remote run directory");
    assert!(!flake.path().join(".pikaci/remote-leftovers.json").exists());
}
