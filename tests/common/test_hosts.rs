//! Real, separate test hosts: unprivileged Incus system containers (Debian 12, systemd,
//! sshd, their own Nix store and their own incusd; image by `scripts/test-host-image`),
//! each reached over SSH on a loopback address of its own (127.0.0.3, .4, ...) through an
//! Incus `proxy` device. Nothing of this machine's store or daemon is shared with them.
//!
//! A test binary creates its hosts once ([`shared`], and [`cluster`] for two hosts forming
//! one Incus cluster) and shares them between its tests.
//! They are removed when the test process exits, however it exits: a watcher process holds
//! the read end of a pipe whose write end only this process has, and deletes the hosts on
//! end of file. Hosts whose owner process is gone (a watcher killed too) are reaped by the
//! next test binary that asks for hosts.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::{pikaci, repo_root};

/// Every test host's name starts so; then `<pid>-<n>`.
const PREFIX: &str = "pikaci-th-";
/// Every test bridge's name starts so (bridge names have at most 15 bytes); then `<pid>`.
const NET_PREFIX: &str = "pkth";
/// The Incus config key naming the owner process as `<pid>:<start time>`.
const OWNER_KEY: &str = "user.pikaci.test-owner";

pub struct TestHost {
    /// The Incus instance here, and the SSH alias in [`TestHosts::ssh_config`].
    pub name: String,
    /// The loopback address its sshd is reached on.
    pub addr: String,
    /// What `pikaci doctor --remote` said of the host before the guest image was there.
    pub doctor_before_image: OnceLock<crate::common::Run>,
}

pub struct TestHosts {
    pub hosts: Vec<TestHost>,
    /// Work directory: key, SSH config, watcher log.
    pub dir: PathBuf,
    /// The SSH config naming every host (give it as `PIKACI_SSH_CONFIG`).
    pub ssh_config: PathBuf,
    /// The layer-2 bridge between the hosts (the cluster's), if any.
    pub network: Option<String>,
    /// Measured while creating them, for the report of the test that wants it.
    pub timings: Timings,
    /// Holds the write end of the watcher's stdin (see the module's comment).
    _watcher: Mutex<Child>,
}

#[derive(Clone, Debug, Default)]
pub struct Timings {
    pub image: Duration,
    pub to_sshd: Duration,
    pub to_ready: Duration,
}

/// The hosts, or why making them failed (said once; every later test fails with it).
static SHARED: OnceLock<Result<TestHosts, String>> = OnceLock::new();
static CLUSTER: OnceLock<Result<TestHosts, String>> = OnceLock::new();

/// The addresses of the cluster's members on their layer-2 bridge (a bridge of their own,
/// with no address on this machine, so these never meet anything else).
pub const CLUSTER_ADDRS: [&str; 2] = ["10.254.0.11", "10.254.0.12"];

/// The test binary's separate hosts, created on first use (`count` of them; a later call
/// may ask for fewer, never more).
pub fn shared(count: usize) -> &'static TestHosts {
    let hosts = made(&SHARED, || TestHosts::create(Layout::Separate(count)));
    assert!(hosts.hosts.len() >= count, "the shared test hosts were created with {} hosts", hosts.hosts.len());
    hosts
}

/// The test binary's Incus cluster: two hosts joined over a layer-2 bridge of their own,
/// each with a static address from [`CLUSTER_ADDRS`] on it, the first one bootstrapping
/// the cluster (its member name is its host name). The guest image is imported once,
/// through the first; the cluster shares it.
pub fn cluster() -> &'static TestHosts {
    made(&CLUSTER, || TestHosts::create(Layout::Cluster))
}

fn made(cell: &'static OnceLock<Result<TestHosts, String>>, make: impl FnOnce() -> TestHosts) -> &'static TestHosts {
    let made = cell.get_or_init(|| {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(make)).map_err(|panic| {
            panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default()
        })
    });
    match made {
        Ok(hosts) => hosts,
        Err(why) => panic!("the test hosts could not be made: {why}"),
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Layout {
    Separate(usize),
    Cluster,
}

impl Layout {
    fn count(self) -> usize {
        match self {
            Layout::Separate(n) => n,
            Layout::Cluster => CLUSTER_ADDRS.len(),
        }
    }
    /// The part of the names that tells fixtures of one process apart.
    fn tag(self) -> &'static str {
        match self {
            Layout::Separate(_) => "",
            Layout::Cluster => "c",
        }
    }
}

impl TestHosts {
    fn create(layout: Layout) -> TestHosts {
        super::require_incus();
        for tool in ["ssh", "ssh-keygen"] {
            if super::which(tool).is_none() {
                panic!("`{tool}` is required by the test hosts: run `scripts/bootstrap --test-hosts`");
            }
        }
        reap_stale();
        let t0 = Instant::now();
        let image = build_image();
        let image_time = t0.elapsed();

        let pid = std::process::id();
        let tag = layout.tag();
        let dir = std::env::temp_dir().join(format!("{PREFIX}{pid}")).join(if tag.is_empty() { "hosts" } else { tag });
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let key = dir.join("key");
        run_ok(Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-C", "pikaci-test", "-f"]).arg(&key));
        let names: Vec<String> = (0..layout.count()).map(|n| format!("{PREFIX}{pid}-{tag}{n}")).collect();
        let network = (layout == Layout::Cluster).then(|| format!("{NET_PREFIX}{pid}"));
        let watcher = start_watcher(&dir, &names, network.as_deref());
        let owner = format!("{OWNER_KEY}={}", owner_tag(pid).expect("own start time"));
        if let Some(net) = &network {
            incus_ok(&[
                "network",
                "create",
                net,
                "-q",
                "ipv4.address=none",
                "ipv6.address=none",
                "ipv4.nat=false",
                "ipv6.nat=false",
                &owner,
            ]);
        }
        let addrs = create_instances(&image, &names, &key, &owner, network.as_deref());

        let ssh_config = dir.join("ssh_config");
        let mut config = String::new();
        for (name, addr) in names.iter().zip(&addrs) {
            config.push_str(&format!(
                "Host {name}\n  HostName {addr}\n  User root\n  IdentityFile {key}\n  IdentitiesOnly yes\n  \
                 StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n  LogLevel ERROR\n  BatchMode yes\n",
                key = key.display()
            ));
        }
        std::fs::write(&ssh_config, config).unwrap();

        let hosts = TestHosts {
            hosts: names
                .into_iter()
                .zip(addrs)
                .map(|(name, addr)| TestHost { name, addr, doctor_before_image: OnceLock::new() })
                .collect(),
            dir,
            ssh_config,
            network,
            timings: Timings { image: image_time, ..Timings::default() },
            _watcher: Mutex::new(watcher),
        };
        let t1 = Instant::now();
        std::thread::scope(|s| {
            for h in &hosts.hosts {
                s.spawn(|| hosts.boot(h));
            }
        });
        let to_sshd = t1.elapsed();
        match layout {
            Layout::Separate(_) => std::thread::scope(|s| {
                for h in &hosts.hosts {
                    s.spawn(|| hosts.provision(h, &incus_preseed(None)));
                }
            }),
            Layout::Cluster => hosts.form_cluster(),
        }
        TestHosts { timings: Timings { to_sshd, to_ready: t1.elapsed(), ..hosts.timings.clone() }, ..hosts }
    }

    /// The first member bootstraps the cluster, the second joins with a token from it.
    fn form_cluster(&self) {
        let [first, second] = [&self.hosts[0], &self.hosts[1]];
        let bootstrap = incus_preseed(Some(&format!(
            "config: {{core.https_address: \"{}:8443\"}}\ncluster: {{server_name: {}, enabled: true}}\n",
            CLUSTER_ADDRS[0], first.name
        )));
        self.provision(first, &bootstrap);
        let token = self.sh(first, &format!("incus cluster add {} --quiet", second.name));
        let join = format!(
            "cluster: {{enabled: true, server_name: {}, server_address: \"{}:8443\", cluster_token: \"{}\", member_config: []}}\n",
            second.name,
            CLUSTER_ADDRS[1],
            token.trim()
        );
        let out = self.ssh_stdin(second, "incus admin waitready --timeout=60 && incus admin init --preseed", &join);
        assert!(
            out.status.success(),
            "join `{}` to the cluster: {}",
            second.name,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Start a host and wait for its sshd.
    fn boot(&self, host: &TestHost) {
        incus_ok(&["start", &host.name]);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = self.ssh(host, &["true"]);
            if out.status.success() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "test host `{}` ({}) did not answer SSH in 60 s: {}",
                host.name,
                host.addr,
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The host's own Incus (a `dir` pool, a default profile) and the guest image, which
    /// pikaci itself installs there.
    fn provision(&self, host: &TestHost, preseed: &str) {
        let out = self.ssh_stdin(host, "incus admin waitready --timeout=60 && incus admin init --preseed", preseed);
        assert!(out.status.success(), "incus admin init on `{}`: {}", host.name, String::from_utf8_lossy(&out.stderr));
        let doctor = pikaci()
            .env("PIKACI_SSH_CONFIG", &self.ssh_config)
            .env("PIKACI_STATE_ROOT", self.dir.join("doctor-state"))
            .args(["doctor", "--remote", &host.name])
            .output()
            .unwrap();
        let _ = host.doctor_before_image.set(doctor.into());
        let out = pikaci()
            .env("PIKACI_SSH_CONFIG", &self.ssh_config)
            .args(["image", "import", "--remote", &host.name])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "`pikaci image import --remote {}`: {}{}",
            host.name,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn first(&self) -> &TestHost {
        &self.hosts[0]
    }

    /// `ssh HOST -- ARGV` (each word quoted for the remote shell).
    pub fn ssh(&self, host: &TestHost, argv: &[&str]) -> Output {
        let remote: Vec<String> = argv.iter().map(|a| quote(a)).collect();
        Command::new("ssh")
            .arg("-F")
            .arg(&self.ssh_config)
            .args(["-o", "ConnectTimeout=5", &host.name, "--", &remote.join(" ")])
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// A shell script on the host, with `stdin`.
    pub fn ssh_stdin(&self, host: &TestHost, script: &str, stdin: &str) -> Output {
        let mut child = Command::new("ssh")
            .arg("-F")
            .arg(&self.ssh_config)
            .args([&host.name, "--", "sh", "-c", &quote(script)])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
        child.wait_with_output().unwrap()
    }

    /// `sh -c SCRIPT` on the host; its stdout, asserting success.
    pub fn sh(&self, host: &TestHost, script: &str) -> String {
        let out = self.ssh(host, &["sh", "-c", script]);
        assert!(out.status.success(), "`{script}` on `{}` failed: {}", host.name, String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// True when `test ARGS` holds on the host.
    pub fn test(&self, host: &TestHost, args: &[&str]) -> bool {
        let mut argv = vec!["test"];
        argv.extend_from_slice(args);
        self.ssh(host, &argv).status.success()
    }

    /// Memory the host's container uses now, in MiB (its cgroup, seen from here).
    pub fn memory_mib(&self, host: &TestHost) -> Option<u64> {
        let out =
            Command::new("incus").args(["query", &format!("/1.0/instances/{}/state", host.name)]).output().ok()?;
        let state: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        state["memory"]["usage"].as_u64().map(|b| b >> 20)
    }
}

/// Create the stopped instances: each with the key, a proxy from a free loopback address
/// to its sshd, and on `network` a NIC whose static address the image's boot unit sets.
/// Returns the loopback addresses. They are picked and claimed (by the proxy device) under
/// one lock, so that two test binaries never pick the same.
fn create_instances(image: &str, names: &[String], key: &Path, owner: &str, network: Option<&str>) -> Vec<String> {
    let lock = File::create(std::env::temp_dir().join("pikaci-test-hosts.lock")).unwrap();
    lock.lock().unwrap();
    let addrs = free_addresses(names.len());
    for (n, (name, addr)) in names.iter().zip(&addrs).enumerate() {
        incus_ok(&["create", image, name, "-q", "-c", "security.nesting=true", "-c", owner]);
        let key = format!("{}.pub", key.display());
        let dest = format!("{name}/root/.ssh/authorized_keys");
        incus_ok(&["file", "push", "-q", "--uid", "0", "--gid", "0", "--mode", "0600", &key, &dest]);
        let listen = format!("listen=tcp:{addr}:22");
        incus_ok(&["config", "device", "add", "-q", name, "ssh", "proxy", &listen, "connect=tcp:127.0.0.1:22"]);
        if let Some(net) = network {
            incus_ok(&["config", "device", "add", "-q", name, "eth0", "nic", &format!("network={net}"), "name=eth0"]);
            incus_ok(&["config", "set", name, &format!("user.pikaci.address={}/24", CLUSTER_ADDRS[n])]);
        }
    }
    addrs
}

/// `incus admin init --preseed` input: a `dir` pool and a default profile, after `extra`.
fn incus_preseed(extra: Option<&str>) -> String {
    format!(
        "{}storage_pools: [{{name: default, driver: dir}}]\n\
         profiles: [{{name: default, devices: {{root: {{path: /, pool: default, type: disk}}}}}}]\n",
        extra.unwrap_or("")
    )
}

/// The one quoting of a word for the remote shell (single quotes).
fn quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

/// Build (or reuse) the image and import it; its Incus alias.
fn build_image() -> String {
    let script = repo_root().join("scripts/test-host-image");
    let out = Command::new(&script).stderr(Stdio::inherit()).output().unwrap();
    assert!(out.status.success(), "`{}` failed (see its output above)", script.display());
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// `<pid>:<start time in clock ticks>` of a live process: a pid alone may be reused.
fn owner_tag(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Field 22, counted after the command name's closing parenthesis.
    let start = stat.rsplit_once(')')?.1.split_whitespace().nth(19)?;
    Some(format!("{pid}:{start}"))
}

/// Delete test hosts and bridges whose owner process is gone, and their work directories.
fn reap_stale() {
    reap_stale_instances();
    // Work directories of processes that are gone (their hosts, if any, are gone above).
    for entry in std::fs::read_dir(std::env::temp_dir()).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let pid = name.strip_prefix(PREFIX).and_then(|p| p.parse::<u32>().ok());
        if pid.is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists()) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
    let out = Command::new("incus").args(["network", "list", "-f", "json"]).output().unwrap();
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    for net in list.as_array().into_iter().flatten() {
        let name = net["name"].as_str().unwrap_or_default();
        let owner = net["config"][OWNER_KEY].as_str().unwrap_or_default();
        if name.starts_with(NET_PREFIX) && !owner.is_empty() && !owner_alive(owner) {
            eprintln!("removing stale test bridge `{name}` (owner {owner:?} is gone)");
            let _ = Command::new("incus").args(["network", "delete", name]).output();
        }
    }
}

/// True when `<pid>:<start time>` names a live process.
fn owner_alive(owner: &str) -> bool {
    let pid: Option<u32> = owner.split(':').next().and_then(|p| p.parse().ok());
    pid.is_some_and(|pid| owner_tag(pid).as_deref() == Some(owner))
}

fn reap_stale_instances() {
    let out = Command::new("incus").args(["list", "-f", "json", PREFIX]).output().unwrap();
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    for instance in list.as_array().into_iter().flatten() {
        let name = instance["name"].as_str().unwrap_or_default();
        let Some(rest) = name.strip_prefix(PREFIX) else { continue };
        let owner = instance["config"][OWNER_KEY].as_str().unwrap_or_default();
        if !owner_alive(owner) {
            eprintln!("removing stale test host `{name}` (owner {owner:?} is gone)");
            let _ = Command::new("incus").args(["delete", "-f", name]).output();
            if let Some(pid) = rest.split('-').next() {
                let _ = std::fs::remove_dir_all(std::env::temp_dir().join(format!("{PREFIX}{pid}")));
            }
        }
    }
}

/// `count` loopback addresses from 127.0.0.3 on that no Incus proxy listens on and that
/// nothing else has port 22 bound on.
fn free_addresses(count: usize) -> Vec<String> {
    let out = Command::new("incus").args(["list", "-f", "json"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let mut addrs = Vec::new();
    for last in 3..=254u8 {
        let addr = format!("127.0.0.{last}");
        if text.contains(&format!("tcp:{addr}:22\"")) {
            continue;
        }
        if std::net::TcpListener::bind((addr.as_str(), 22)).is_err() {
            continue;
        }
        addrs.push(addr);
        if addrs.len() == count {
            return addrs;
        }
    }
    panic!(
        "no {count} free loopback addresses in 127.0.0.3-254 for test hosts (each needs its port 22: \
         an sshd listening on 0.0.0.0:22 here takes them all; make it listen on 127.0.0.1 only)"
    );
}

/// A process that deletes the hosts once this process is gone: it reads a pipe until end
/// of file, which comes when the last write end closes, at this process's exit (the end
/// is close-on-exec, so no child inherits it). Its own process group: a Ctrl-C to the
/// tests does not stop it before it has cleaned up.
fn start_watcher(dir: &Path, names: &[String], network: Option<&str>) -> Child {
    use std::os::unix::process::CommandExt;
    let log = File::create(dir.join("watcher.log")).unwrap();
    let script = r#"cat >/dev/null; d=$1; net=$2; shift 2; for n; do incus delete -f "$n"; done
        [ -z "$net" ] || incus network delete "$net"; rm -rf "$d"; rmdir "${d%/*}" 2>/dev/null"#;
    Command::new("sh")
        .args(["-c", script, "sh"])
        .arg(dir)
        .arg(network.unwrap_or(""))
        .args(names)
        .stdin(Stdio::piped())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .process_group(0)
        .spawn()
        .unwrap()
}

fn incus_ok(args: &[&str]) {
    run_ok(Command::new("incus").args(args));
}

fn run_ok(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
}
