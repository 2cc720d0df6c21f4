//! Typed calls to `ssh`. The remote side always runs a shell, so each argument of the
//! remote command is quoted by [`shell_quote`], the one quoting helper.

use std::path::PathBuf;

use anyhow::Result;

use super::command::{Cmd, shell_quote};
use crate::error;

#[derive(Clone, Debug)]
pub struct Ssh {
    program: PathBuf,
    host: String,
    /// `-F <file>` when `PIKACI_SSH_CONFIG` names an SSH config to use.
    config: Option<PathBuf>,
    /// Where the shared connection's socket lives; None when no private directory could
    /// be made (then every call connects anew).
    control_dir: Option<PathBuf>,
}

/// Names an SSH client config file for every SSH connection pikaci makes (its own and
/// `nix copy`'s), e.g. a CI machine's dedicated keys and host aliases.
pub const CONFIG_ENV: &str = "PIKACI_SSH_CONFIG";

/// A destination for `ssh`: not empty, not starting with `-` (which `ssh` or `nix copy`'s
/// `ssh` would take as an option, e.g. `-oProxyCommand=...`), no whitespace or control
/// character. For clap's `--remote`, and checked again by [`Ssh::new`].
pub fn parse_host(host: &str) -> Result<String, String> {
    if host.is_empty() {
        return Err("the host is empty".into());
    }
    if host.starts_with('-') {
        return Err(format!("`{host}` starts with `-`, so `ssh` would read it as an option; name a host"));
    }
    if host.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("`{}` has a space or a control character", host.escape_debug()));
    }
    Ok(host.to_string())
}

impl Ssh {
    pub fn new(host: &str) -> Result<Ssh> {
        parse_host(host).map_err(|why| {
            error::usage(format!("not an SSH host: {why}")).hint("pass `--remote HOST`, `user@host` or an alias")
        })?;
        let program = which::which("ssh").map_err(|_| {
            error::infra("`ssh` was not found on PATH")
                .hint("install OpenSSH's client (`apt-get install openssh-client`)")
        })?;
        let config = std::env::var_os(CONFIG_ENV).filter(|v| !v.is_empty()).map(PathBuf::from);
        Ok(Ssh { program, host: host.to_string(), config, control_dir: control_dir() })
    }

    /// Options every connection gets: the config file, no prompts, and one shared
    /// connection per host (a job makes a dozen calls; each new connection costs a
    /// handshake of 0.3 s or more, a shared one a few milliseconds).
    fn options(&self) -> Vec<String> {
        let mut opts = Vec::new();
        if let Some(config) = &self.config {
            opts.extend(["-F".to_string(), config.display().to_string()]);
        }
        opts.extend(["-o", "BatchMode=yes", "-o", "ConnectTimeout=10"].map(String::from));
        if let Some(dir) = &self.control_dir {
            opts.extend([
                "-o".to_string(),
                "ControlMaster=auto".to_string(),
                "-o".to_string(),
                format!("ControlPath={}/%C", dir.display()),
                "-o".to_string(),
                "ControlPersist=60".to_string(),
            ]);
        }
        opts
    }

    /// A client with a given program and no config or shared connection: for tests of the
    /// argv, which must not depend on the machine.
    pub fn with_program(program: impl Into<PathBuf>, host: &str) -> Ssh {
        Ssh { program: program.into(), host: host.to_string(), config: None, control_dir: None }
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    /// The options `nix copy --to ssh://` passes to its own `ssh` (`NIX_SSHOPTS`).
    pub fn nix_sshopts(&self) -> String {
        self.options().join(" ")
    }

    /// `ssh <host> -- <argv, each word quoted>`, never prompting.
    pub fn command<S: AsRef<str>>(&self, label: &str, argv: &[S]) -> Cmd {
        let remote: Vec<String> = argv.iter().map(|a| shell_quote(a.as_ref())).collect();
        // `--` ends ssh's options before the destination: nothing after it is an option.
        Cmd::new(label, &self.program).args(self.options()).args(["--", self.host.as_str()]).arg(remote.join(" "))
    }

    pub fn probe(&self) -> Result<()> {
        self.command("ssh", &["true"]).run(None)?;
        Ok(())
    }
}

/// A directory only this user can use, for connection sockets (a socket another user
/// could plant would be a connection we did not make). Short: socket paths are limited to
/// about 100 bytes.
fn control_dir() -> Option<PathBuf> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    let uid = std::fs::metadata("/proc/self").ok()?.uid();
    let dir = std::env::temp_dir().join(format!("pikaci-ssh-{uid}"));
    let _ = std::fs::DirBuilder::new().mode(0o700).create(&dir);
    let meta = std::fs::symlink_metadata(&dir).ok()?;
    (meta.is_dir() && meta.uid() == uid && meta.permissions().mode() & 0o077 == 0).then_some(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_words_are_quoted_one_by_one() {
        let ssh = Ssh::with_program("/usr/bin/ssh", "ci@builder");
        let cmd = ssh.command("mkdir", &["mkdir", "-p", "/var/tmp/a b", "/x/it's"]);
        let argv: Vec<String> = cmd.argv().iter().map(|a| a.to_string_lossy().into_owned()).collect();
        assert_eq!(argv.last().unwrap(), r"mkdir -p '/var/tmp/a b' '/x/it'\''s'");
        assert_eq!(argv[5], "--");
        assert_eq!(argv[6], "ci@builder");
        let with_config = Ssh { config: Some("/etc/pikaci/ssh_config".into()), ..ssh };
        let argv: Vec<String> =
            with_config.command("x", &["true"]).argv().iter().map(|a| a.to_string_lossy().into_owned()).collect();
        assert_eq!(argv[1..3], ["-F", "/etc/pikaci/ssh_config"]);
        assert_eq!(with_config.nix_sshopts(), "-F /etc/pikaci/ssh_config -o BatchMode=yes -o ConnectTimeout=10");
        let shared = Ssh { control_dir: Some("/tmp/pikaci-ssh-0".into()), ..with_config };
        assert!(shared.nix_sshopts().ends_with("-o ControlPath=/tmp/pikaci-ssh-0/%C -o ControlPersist=60"));
    }

    #[test]
    fn a_host_that_would_be_an_option_is_refused() {
        assert!(parse_host("-oProxyCommand=touch /tmp/x").unwrap_err().contains("starts with `-`"));
        assert!(parse_host("").is_err());
        assert!(parse_host("a b").is_err());
        assert_eq!(parse_host("ci@builder.example").unwrap(), "ci@builder.example");
        assert!(Ssh::new("-oProxyCommand=x").is_err());
    }
}
