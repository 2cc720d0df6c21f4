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
}

impl Ssh {
    pub fn new(host: &str) -> Result<Ssh> {
        let program = which::which("ssh").map_err(|_| {
            error::infra("`ssh` was not found on PATH")
                .hint("install OpenSSH's client (`apt-get install openssh-client`)")
        })?;
        Ok(Ssh { program, host: host.to_string() })
    }

    /// `ssh <host> -- <argv, each word quoted>`, never prompting.
    pub fn command<S: AsRef<str>>(&self, label: &str, argv: &[S]) -> Cmd {
        let remote: Vec<String> = argv.iter().map(|a| shell_quote(a.as_ref())).collect();
        Cmd::new(label, &self.program)
            .args(["-o", "BatchMode=yes", "-o", "ConnectTimeout=10", &self.host, "--"])
            .arg(remote.join(" "))
    }

    pub fn probe(&self) -> Result<()> {
        self.command("ssh", &["true"]).run(None)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_words_are_quoted_one_by_one() {
        let ssh = Ssh { program: "/usr/bin/ssh".into(), host: "ci@builder".into() };
        let cmd = ssh.command("mkdir", &["mkdir", "-p", "/var/tmp/a b", "/x/it's"]);
        let argv: Vec<String> = cmd.argv().iter().map(|a| a.to_string_lossy().into_owned()).collect();
        assert_eq!(argv.last().unwrap(), r"mkdir -p '/var/tmp/a b' '/x/it'\''s'");
        assert_eq!(argv[5], "ci@builder");
    }
}
