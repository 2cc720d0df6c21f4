//! The build hosts a team declares, in a file it commits: `pikaci.toml` beside the flake,
//! or the file `--hosts FILE` names. `--remote NAME` then names a declared host:
//!
//! ```toml
//! [hosts.build1]
//! ssh = "ci@build1.example.org"   # the SSH destination (default: the name)
//! slots = 4                       # jobs at once there (default: --jobs)
//!
//! [hosts.build1.members]          # an Incus cluster: how each member is reached
//! member2 = "ci@10.0.0.12"        # (default: the member's name, as an SSH host)
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Result;
use serde::Deserialize;

use crate::error;

/// The name of the hosts file beside the flake.
pub const HOSTS_FILE: &str = "pikaci.toml";

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostsFile {
    #[serde(default)]
    pub hosts: BTreeMap<String, DeclaredHost>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeclaredHost {
    #[serde(default)]
    pub ssh: String,
    #[serde(default)]
    pub slots: Option<usize>,
    #[serde(default)]
    pub members: BTreeMap<String, String>,
}

impl HostsFile {
    /// `--hosts FILE` (which must exist), else `pikaci.toml` in `flake_dir` if there is
    /// one, else no declared hosts.
    pub fn load(explicit: Option<&Path>, flake_dir: &Path) -> Result<HostsFile> {
        let path: PathBuf = match explicit {
            Some(p) => p.to_path_buf(),
            None => {
                let beside = flake_dir.join(HOSTS_FILE);
                if !beside.is_file() {
                    return Ok(HostsFile::default());
                }
                beside
            }
        };
        let text = std::fs::read_to_string(&path).map_err(|e| {
            error::config(format!("cannot read the hosts file `{}`: {e}", path.display()))
                .hint("`--hosts FILE` names a TOML file with `[hosts.NAME]` tables (docs/scaling.md)")
        })?;
        HostsFile::parse(&text).map_err(|e| {
            error::config(format!("the hosts file `{}` is not valid: {e}", path.display()))
                .hint("each host is a table `[hosts.NAME]` with `ssh = \"user@host\"`, `slots = N` and optionally `[hosts.NAME.members]` (docs/scaling.md)")
                .into()
        })
    }

    pub fn parse(text: &str) -> Result<HostsFile, String> {
        let mut file: HostsFile = toml::from_str(text).map_err(|e| e.to_string().trim().to_string())?;
        for (name, host) in &mut file.hosts {
            if host.ssh.is_empty() {
                host.ssh = name.clone();
            }
            if host.slots == Some(0) {
                return Err(format!("host `{name}`: `slots` must be at least 1"));
            }
        }
        Ok(file)
    }

    pub fn host(&self, name: &str) -> Option<&DeclaredHost> {
        self.hosts.get(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declared_hosts_with_slots_and_members() {
        let file = HostsFile::parse(
            "[hosts.build1]\nssh = \"ci@build1\"\nslots = 4\n\n[hosts.c]\n[hosts.c.members]\nm2 = \"root@10.0.0.12\"\n",
        )
        .unwrap();
        let b = file.host("build1").unwrap();
        assert_eq!((b.ssh.as_str(), b.slots), ("ci@build1", Some(4)));
        let c = file.host("c").unwrap();
        assert_eq!(c.ssh, "c", "the SSH destination defaults to the name");
        assert_eq!(c.members["m2"], "root@10.0.0.12");
        assert!(file.host("other").is_none());
    }

    #[test]
    fn mistakes_are_named() {
        let err = HostsFile::parse("[hosts.b]\nslot = 4\n").unwrap_err();
        assert!(err.contains("slot"), "{err}");
        let err = HostsFile::parse("[hosts.b]\nslots = 0\n").unwrap_err();
        assert!(err.contains("host `b`"), "{err}");
    }
}
