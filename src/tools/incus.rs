//! Typed calls to the `incus` client, built on [`Cmd`]. The same calls run on this
//! machine or, for a remote placement, through `ssh` (each word quoted by
//! [`Ssh::command`]), so the runtime never knows where the daemon is.
//!
//! Two ways to wait: [`Wait::Interruptible`] (Ctrl-C kills the client, like every
//! [`Cmd`]) and [`Wait::ToCompletion`] for calls that change the daemon's state (create,
//! start, delete): killing their client would not stop the daemon's operation, only lose
//! track of it, and an instance could appear after pikaci believed it gone. Both have a
//! time limit, so a hung daemon cannot hang a run.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::command::{Cmd, CmdOutput, CommandFailed, TimeLimitExceeded};
use super::log::HostLog;
use super::ssh::Ssh;
use crate::error;

/// How long a probe of the daemon may take before the daemon counts as not answering.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// The same through `ssh`, which may first have to connect (its own limit is 10 s).
pub const REMOTE_PROBE_TIMEOUT: Duration = Duration::from_secs(20);
/// Create, start, delete: generous, since creating unpacks the image on `dir` pools.
pub const LIFECYCLE_TIMEOUT: Duration = Duration::from_secs(300);
/// Reads (`incus query`).
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(30);

/// How to wait for an `incus` call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    /// Ctrl-C kills the client and the call fails with [`Interrupted`].
    Interruptible(Duration),
    /// Ctrl-C does not stop the call; only the time limit does.
    ToCompletion(Duration),
}

/// The `incus` client, here or on a remote host.
#[derive(Clone, Debug)]
pub struct Incus {
    target: Target,
    /// On an Incus cluster: the member new instances are created on (`--target`).
    member: Option<String>,
}

#[derive(Clone, Debug)]
enum Target {
    Local(PathBuf),
    Remote { ssh: Ssh, host: String },
}

/// An instance as `incus query /1.0/instances?recursion=1` lists it (the fields pikaci
/// reads).
#[derive(Clone, Debug, Default, Deserialize)]
pub struct InstanceInfo {
    pub name: String,
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub ephemeral: bool,
    #[serde(default)]
    pub config: BTreeMap<String, String>,
    #[serde(default)]
    pub devices: BTreeMap<String, BTreeMap<String, String>>,
}

/// A member of an Incus cluster (the fields pikaci reads).
#[derive(Clone, Debug, Default, Deserialize)]
pub struct ClusterMember {
    pub server_name: String,
    #[serde(default)]
    pub url: String,
    #[serde(default)]
    pub status: String,
}

/// What `incus init` reads from its stdin: the instance's config keys and devices, so
/// that one call creates the instance with every device attached.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct InstanceSpec {
    pub description: String,
    pub config: BTreeMap<String, String>,
    pub devices: BTreeMap<String, BTreeMap<String, String>>,
}

impl InstanceSpec {
    pub fn to_json(&self) -> String {
        // Plain maps of strings: serialization cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}

impl Incus {
    /// The client for a host: `incus` on PATH here (no host), or `ssh HOST -- incus ...`.
    pub fn locate(ssh_host: Option<&str>) -> Result<Incus> {
        match ssh_host {
            None => Incus::local(),
            Some(host) => Ok(Incus::via_ssh(Ssh::new(host)?, host)),
        }
    }

    pub fn local() -> Result<Incus> {
        let program = which::which("incus").map_err(|_| {
            error::infra("`incus` was not found on PATH").hint(
                "install Incus and start its daemon (`scripts/bootstrap` on Debian 12, the NixOS module elsewhere), \
                 or use `--runtime bwrap`",
            )
        })?;
        Ok(Incus { target: Target::Local(program), member: None })
    }

    /// For tests of argv building.
    pub fn with_program(program: impl Into<PathBuf>) -> Incus {
        Incus { target: Target::Local(program.into()), member: None }
    }

    pub fn via_ssh(ssh: Ssh, host: &str) -> Incus {
        Incus { target: Target::Remote { ssh, host: host.to_string() }, member: None }
    }

    /// The same client, creating instances on this cluster member (`incus init --target`).
    pub fn on_member(self, member: &str) -> Incus {
        Incus { member: Some(member.to_string()), ..self }
    }

    /// The cluster member instances are created on, if one was chosen.
    pub fn member(&self) -> Option<&str> {
        self.member.as_deref()
    }

    /// The members of the cluster this daemon belongs to, with their status
    /// (`GET /1.0/cluster/members`); empty when it is not clustered.
    pub fn cluster_members(&self) -> Result<Vec<ClusterMember>> {
        let cluster = self.query("/1.0/cluster", None, Wait::Interruptible(QUERY_TIMEOUT))?;
        if !cluster.as_ref().and_then(|c| c.get("enabled")).and_then(|e| e.as_bool()).unwrap_or(false) {
            return Ok(Vec::new());
        }
        let members = self.query("/1.0/cluster/members?recursion=1", None, Wait::Interruptible(QUERY_TIMEOUT))?;
        serde_json::from_value(members.unwrap_or_default())
            .context("`incus query /1.0/cluster/members` did not print the expected JSON")
    }

    /// Where the daemon is, for messages: "this machine" or "`host`".
    pub fn location(&self) -> String {
        match &self.target {
            Target::Local(_) => "this machine".to_string(),
            Target::Remote { host, .. } => format!("`{host}`"),
        }
    }

    /// The client, for messages: its path, or `ssh HOST -- incus`.
    pub fn client(&self) -> String {
        match &self.target {
            Target::Local(program) => format!("`{}`", program.display()),
            Target::Remote { host, .. } => format!("`ssh {host} -- incus`"),
        }
    }

    pub fn is_local(&self) -> bool {
        matches!(self.target, Target::Local(_))
    }

    /// The SSH host this client reaches, if any.
    pub fn remote_host(&self) -> Option<&str> {
        match &self.target {
            Target::Local(_) => None,
            Target::Remote { host, .. } => Some(host),
        }
    }

    /// `incus ARGS`, here or through `ssh`.
    pub fn command<S: AsRef<str>>(&self, label: &str, args: &[S]) -> Cmd {
        match &self.target {
            Target::Local(program) => Cmd::new(label, program).args(args.iter().map(|a| a.as_ref())),
            Target::Remote { ssh, .. } => {
                let argv: Vec<&str> = std::iter::once("incus").chain(args.iter().map(|a| a.as_ref())).collect();
                ssh.command(label, &argv)
            }
        }
    }

    pub fn query_cmd(&self, path: &str) -> Cmd {
        self.command("incus query", &["query", path])
    }

    /// `incus init IMAGE NAME --ephemeral` with the config and devices on stdin.
    /// On a cluster, `--target MEMBER` puts it on the member that has its files.
    pub fn init_cmd(&self, image: &str, name: &str, spec: &InstanceSpec) -> Cmd {
        let mut args = vec!["init", image, name, "--ephemeral", "--quiet"];
        if let Some(member) = &self.member {
            args.extend(["--target", member]);
        }
        self.command("incus init", &args).stdin_bytes(spec.to_json())
    }

    /// `PATCH /1.0/instances/NAME` with more devices: one API call adds them all. A
    /// read-only disk added to a running container is not locked read-only inside it:
    /// pikaci's job instances may take them only because they run without
    /// `CAP_SYS_ADMIN` (`executor::runtime::incus::spec::DROPPED_CAPABILITIES`).
    pub fn add_devices_cmd(&self, name: &str, devices: &BTreeMap<String, BTreeMap<String, String>>) -> Cmd {
        self.patch_cmd(name, &serde_json::json!({ "devices": devices }))
    }

    /// `PATCH /1.0/instances/NAME`: the keys of `body` (`description`, `config`,
    /// `devices`) are merged into the instance's, in one API call.
    pub fn patch_cmd(&self, name: &str, body: &serde_json::Value) -> Cmd {
        let path = format!("/1.0/instances/{}", url_segment(name));
        self.command("incus query -X PATCH", &["query", "-X", "PATCH", &path, "--data", &body.to_string()])
    }

    pub fn start_cmd(&self, name: &str) -> Cmd {
        self.command("incus start", &["start", name, "--quiet"])
    }

    /// `incus exec`: non-interactive, stdin closed (by [`Cmd`]), the environment as
    /// `--env` pairs, then the argv after `--`.
    pub fn exec_cmd(&self, name: &str, cwd: &str, env: &BTreeMap<String, String>, argv: &[String]) -> Cmd {
        let mut args: Vec<String> =
            vec!["exec".into(), name.into(), "--force-noninteractive".into(), "--cwd".into(), cwd.into()];
        for (k, v) in env {
            args.push("--env".into());
            args.push(format!("{k}={v}"));
        }
        args.push("--".into());
        args.extend(argv.iter().cloned());
        self.command("incus exec", &args)
    }

    pub fn delete_cmd(&self, name: &str) -> Cmd {
        self.command("incus delete", &["delete", "--force", name])
    }

    /// The instance's `lxc.log`, read through the API. (`incus info --show-log` also asks
    /// for the instance's state, which fails, "Invalid PID", right after a failed start.)
    pub fn show_log_cmd(&self, name: &str) -> Cmd {
        self.command(
            "incus query logs/lxc.log",
            &["query", &format!("/1.0/instances/{}/logs/lxc.log", url_segment(name))],
        )
    }

    /// Run an `incus` call; a non-zero exit is a [`CommandFailed`] carrying Incus' own
    /// message. Logged to `log` (command, exit status, duration, stderr on failure).
    pub fn run(&self, cmd: &Cmd, log: Option<&HostLog>, wait: Wait) -> Result<CmdOutput> {
        run_with(cmd, log, wait)
    }

    /// `incus query PATH` as JSON; `None` when the object does not exist.
    pub fn query(&self, path: &str, log: Option<&HostLog>, wait: Wait) -> Result<Option<serde_json::Value>> {
        let cmd = self.query_cmd(path);
        match self.run(&cmd, log, wait) {
            Ok(out) => {
                let value = serde_json::from_slice(&out.stdout)
                    .with_context(|| format!("`incus query {path}` did not print JSON"))?;
                Ok(Some(value))
            }
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The server's `/1.0`: answers, or fails within [`PROBE_TIMEOUT`]
    /// ([`REMOTE_PROBE_TIMEOUT`] through `ssh`).
    pub fn server(&self) -> Result<serde_json::Value> {
        // This machine's socket answers in a few milliseconds, with no process; a socket
        // that cannot be reached leaves the answer (and its error) to `incus query`.
        if let Some(socket) = self.socket()
            && let Ok(value) = socket.request("GET", "/1.0", None, PROBE_TIMEOUT, None)
        {
            return Ok(value);
        }
        let cmd = self.query_cmd("/1.0");
        let limit = if self.is_local() { PROBE_TIMEOUT } else { REMOTE_PROBE_TIMEOUT };
        let out = self.run(&cmd, None, Wait::Interruptible(limit))?;
        serde_json::from_slice(&out.stdout).context("`incus query /1.0` did not print JSON")
    }

    /// Every instance of the current project, with its config.
    pub fn instances(&self, log: Option<&HostLog>) -> Result<Vec<InstanceInfo>> {
        let cmd = self.query_cmd("/1.0/instances?recursion=1");
        let out = self.run(&cmd, log, Wait::Interruptible(QUERY_TIMEOUT))?;
        serde_json::from_slice(&out.stdout).context("`incus query /1.0/instances` did not print the expected JSON")
    }

    /// This machine's Incus socket, for a client of this machine's daemon that can reach
    /// it (see [`super::incus_socket`]).
    fn socket(&self) -> Option<super::incus_socket::Socket> {
        match self.target {
            Target::Local(_) => super::incus_socket::Socket::local(),
            Target::Remote { .. } => None,
        }
    }

    /// `GET PATH` as JSON, `None` when the object does not exist: through this machine's
    /// socket when it can be reached (no `incus` process), else `incus query`.
    pub fn get(&self, path: &str, log: Option<&HostLog>) -> Result<Option<serde_json::Value>> {
        if let Some(socket) = self.socket() {
            match socket.request("GET", path, None, QUERY_TIMEOUT, log) {
                Ok(value) => return Ok(Some(value)),
                Err(e) if super::incus_socket::is_not_found(&e) => return Ok(None),
                Err(e) if e.downcast_ref::<super::incus_socket::ApiError>().is_some() => return Err(e),
                Err(_) => {}
            }
        }
        self.query(path, log, Wait::Interruptible(QUERY_TIMEOUT))
    }

    /// `PATCH /1.0/instances/NAME` with `body`: through this machine's socket when it can
    /// be reached, else [`Incus::patch_cmd`].
    pub fn patch(&self, name: &str, body: &serde_json::Value, log: Option<&HostLog>) -> Result<()> {
        let path = format!("/1.0/instances/{}", url_segment(name));
        if let Some(socket) = self.socket() {
            match socket.request("PATCH", &path, Some(&body.to_string()), LIFECYCLE_TIMEOUT, log) {
                Ok(_) => return Ok(()),
                Err(e) if e.downcast_ref::<super::incus_socket::ApiError>().is_some() => return Err(e),
                Err(_) => {}
            }
        }
        self.run(&self.patch_cmd(name, body), log, Wait::ToCompletion(LIFECYCLE_TIMEOUT)).map(drop)
    }

    /// The fingerprint an image alias points to, `None` when there is no such alias.
    /// Asked as [`Incus::get`] asks (this machine's socket when it can be reached).
    pub fn alias_target(&self, alias: &str, log: Option<&HostLog>) -> Result<Option<String>> {
        let value = self.get(&format!("/1.0/images/aliases/{}", url_segment(alias)), log)?;
        Ok(value.and_then(|v| v.get("target").and_then(|t| t.as_str()).map(str::to_string)))
    }

    /// An image by fingerprint, `None` when it is not in the image store.
    pub fn image(&self, fingerprint: &str) -> Result<Option<serde_json::Value>> {
        self.query(&format!("/1.0/images/{}", url_segment(fingerprint)), None, Wait::Interruptible(QUERY_TIMEOUT))
    }
}

/// True when an `incus` call failed because the object does not exist ("Instance not
/// found", "Image alias not found", "not found"); not when `incus` itself is missing on
/// a remote host (the shell's exit 127).
pub fn is_not_found(err: &anyhow::Error) -> bool {
    err.chain()
        .filter_map(|e| e.downcast_ref::<CommandFailed>())
        .any(|f| f.code != Some(127) && f.stderr.to_ascii_lowercase().contains("not found"))
}

/// Percent-encode one path segment of an API URL (aliases may contain `/`).
pub fn url_segment(s: &str) -> String {
    super::url::percent_encode(s.as_bytes(), b"")
}

/// Run a command with a time limit, optionally deaf to Ctrl-C; a daemon that does not
/// finish in time is an infrastructure error that says where to look.
fn run_with(cmd: &Cmd, log: Option<&HostLog>, wait: Wait) -> Result<CmdOutput> {
    let cmd = match wait {
        Wait::Interruptible(limit) => cmd.clone().time_limit(limit),
        Wait::ToCompletion(limit) => cmd.clone().time_limit(limit).uninterruptible(),
    };
    cmd.run(log).map_err(|e| match e.downcast_ref::<TimeLimitExceeded>() {
        Some(exceeded) => error::infra(exceeded.to_string())
            .hint("the Incus daemon may be stuck: check `incus info` and `/var/log/incus/incusd.log`")
            .into(),
        None => e,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(cmd: &Cmd) -> Vec<String> {
        cmd.argv().iter().map(|a| a.to_string_lossy().into_owned()).collect()
    }

    #[test]
    fn local_exec_argv_keeps_every_word() {
        let incus = Incus::with_program("/usr/bin/incus");
        let env: BTreeMap<String, String> =
            [("HOME", "/pikaci/home"), ("X", "a b=c")].into_iter().map(|(k, v)| (k.into(), v.into())).collect();
        let cmd = incus.exec_cmd("pikaci-r-j", "/workspace", &env, &["/bin/echo".into(), "it's".into()]);
        assert_eq!(
            argv(&cmd),
            [
                "/usr/bin/incus",
                "exec",
                "pikaci-r-j",
                "--force-noninteractive",
                "--cwd",
                "/workspace",
                "--env",
                "HOME=/pikaci/home",
                "--env",
                "X=a b=c",
                "--",
                "/bin/echo",
                "it's"
            ]
        );
        assert_eq!(cmd.label(), "incus exec");
    }

    #[test]
    fn remote_calls_go_through_ssh_with_each_word_quoted() {
        let ssh = Ssh::with_program("/usr/bin/ssh", "ci@builder");
        let incus = Incus::via_ssh(ssh, "ci@builder");
        let cmd = incus.exec_cmd(
            "pikaci-r-j",
            "/workspace",
            &BTreeMap::new(),
            &["sh".into(), "-c".into(), "echo $HOME".into()],
        );
        let argv = argv(&cmd);
        assert!(argv[0].ends_with("/ssh"), "{argv:?}");
        assert!(argv.contains(&"ci@builder".to_string()), "{argv:?}");
        assert_eq!(
            argv.last().unwrap(),
            "incus exec pikaci-r-j --force-noninteractive --cwd /workspace -- sh -c 'echo $HOME'"
        );
        let del = incus.delete_cmd("pikaci-r-j");
        assert_eq!(argv_last(&del), "incus delete --force pikaci-r-j");
        assert_eq!(incus.location(), "`ci@builder`");
    }

    fn argv_last(cmd: &Cmd) -> String {
        argv(cmd).pop().unwrap()
    }

    #[test]
    fn init_sends_the_spec_on_stdin_and_is_ephemeral() {
        let incus = Incus::with_program("incus");
        let mut spec = InstanceSpec { description: "d".into(), ..Default::default() };
        spec.config.insert("user.pikaci.run".into(), "r".into());
        let cmd = incus.init_cmd("pikaci/busybox", "pikaci-r-j", &spec);
        assert_eq!(argv(&cmd), ["incus", "init", "pikaci/busybox", "pikaci-r-j", "--ephemeral", "--quiet"]);
        let json: serde_json::Value = serde_json::from_str(&spec.to_json()).unwrap();
        assert_eq!(json["config"]["user.pikaci.run"], "r");
        assert_eq!(json["devices"], serde_json::json!({}));
        let on_member = incus.on_member("m2").init_cmd("pikaci/busybox", "pikaci-r-j", &spec);
        assert_eq!(argv(&on_member)[6..], ["--target", "m2"], "on a cluster, the member is named");
    }

    #[test]
    fn aliases_are_encoded_as_one_url_segment() {
        assert_eq!(url_segment("pikaci/busybox"), "pikaci%2Fbusybox");
        assert_eq!(url_segment("a b?c"), "a%20b%3Fc");
        assert_eq!(url_segment("0123abc-def"), "0123abc-def");
    }

    #[test]
    fn not_found_is_recognised_but_a_missing_remote_client_is_not() {
        let gone: anyhow::Error =
            CommandFailed { label: "incus query".into(), code: Some(1), stderr: "Error: Instance not found\n".into() }
                .into();
        assert!(is_not_found(&gone.context("query instance")));
        let missing: anyhow::Error =
            CommandFailed { label: "incus query".into(), code: Some(127), stderr: "sh: incus: not found\n".into() }
                .into();
        assert!(!is_not_found(&missing));
        let dead: anyhow::Error = CommandFailed {
            label: "incus query".into(),
            code: Some(1),
            stderr: "Error: The incus daemon doesn't appear to be started (socket path: /x/unix.socket)\n".into(),
        }
        .into();
        assert!(!is_not_found(&dead));
    }

    #[test]
    fn time_limit_kills_a_hung_call() {
        use std::time::Instant;
        let cmd = Cmd::new("sleepy", "/bin/sh").args(["-c", "exec sleep 10"]);
        let t = Instant::now();
        let err = run_with(&cmd, None, Wait::ToCompletion(Duration::from_millis(200))).unwrap_err();
        assert!(t.elapsed() < Duration::from_secs(5));
        assert!(err.to_string().contains("`sleepy` did not finish within 0s"), "{err}");
        assert_eq!(error::kind_of(&err), error::ErrorKind::Infrastructure);
    }

    #[test]
    fn failure_carries_the_label_and_stderr_and_is_logged() {
        let dir = tempfile::tempdir().unwrap();
        let log = HostLog::create(&dir.path().join("host.log")).unwrap();
        let cmd = Cmd::new("incus start", "/bin/sh").args(["-c", "echo 'Error: nope' >&2; exit 1"]);
        let err = run_with(&cmd, Some(&log), Wait::ToCompletion(Duration::from_secs(10))).unwrap_err();
        assert_eq!(err.to_string(), "`incus start` failed (exit 1): Error: nope");
        let text = std::fs::read_to_string(dir.path().join("host.log")).unwrap();
        assert!(text.contains("(exit 1, "), "{text}");
        assert!(text.contains("    | Error: nope"), "{text}");
    }
}
