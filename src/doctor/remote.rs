//! `pikaci doctor --remote HOST`: what a remote placement needs on that host. SSH without
//! a prompt; `nix` and `nix-store` on the PATH of a non-interactive SSH session (`nix copy
//! --to ssh://` runs `nix-store --serve` there, and payloads are built with `nix-store
//! --realise` there); its Incus daemon, storage and the guest image; free disk under the
//! remote state root.

use super::Check;
use super::incus;
use crate::executor::placement::{remote_state_root, ssh_host_is_local};
use crate::tools::incus::Incus;
use crate::tools::nix::Nix;
use crate::tools::ssh::Ssh;

/// Below this much free space under the remote state root, the disk check fails.
const MIN_FREE_MIB: u64 = 1024;

pub fn checks(host: &str) -> Vec<Check> {
    let ssh_check = super::ssh_check(host);
    if !ssh_check.ok || ssh_host_is_local(Some(host)) {
        return vec![ssh_check];
    }
    let Ok(ssh) = Ssh::new(host) else { return vec![ssh_check] };
    let mut checks = vec![ssh_check, nix_check(&ssh, host)];
    let incus = Incus::via_ssh(ssh.clone(), host);
    match incus.server() {
        Ok(server) => {
            let version = server["environment"]["server_version"].as_str().unwrap_or("?").to_string();
            checks.push(Check::ok("remote incus", format!("Incus {version} answers on `{host}`")));
            // The same checks as here, named apart from this machine's.
            checks.push(Check { name: "remote storage", ..incus::storage_check(&incus) });
            checks.push(Check { name: "remote image", ..incus::image_check(&incus) });
        }
        Err(e) => checks.push(Check::fail(
            "remote incus",
            format!("the Incus daemon on `{host}` does not answer: {e:#}"),
            format!("on `{host}`: start incusd, and put the SSH user in `incus-admin` (`ssh {host} incus info`)"),
        )),
    }
    checks.push(disk_check(&ssh, host));
    checks
}

fn nix_check(ssh: &Ssh, host: &str) -> Check {
    let fix = format!(
        "install Nix on `{host}` so that `nix` and `nix-store` are on the PATH of a non-interactive SSH session \
         (`ssh {host} nix-store --version`), with `experimental-features = nix-command`"
    );
    let out = ssh.command("ssh nix --version", &["sh", "-c", "nix --version && nix-store --version"]).run(None);
    match out {
        Ok(out) => {
            let there = out.stdout_str().lines().next().unwrap_or("?").trim().to_string();
            let here = Nix::locate().and_then(|n| n.version()).map(|v| v.text).unwrap_or_default();
            let note = if !here.is_empty() && here != there { format!(" (here: {here})") } else { String::new() };
            Check::ok("remote nix", format!("{there} on `{host}`{note}"))
        }
        Err(e) => Check::fail("remote nix", format!("`nix` does not run on `{host}`: {e:#}"), fix),
    }
}

fn disk_check(ssh: &Ssh, host: &str) -> Check {
    let root = remote_state_root().display().to_string();
    // The state root may not exist yet: measure the nearest directory that does.
    let script = r#"d=$1; while [ ! -e "$d" ]; do d=$(dirname "$d"); done; df -Pk "$d" | tail -n 1"#;
    let fix = format!("free space on `{host}` under `{root}` (or set PIKACI_REMOTE_STATE_ROOT to a larger disk)");
    match ssh.command("ssh df", &["sh", "-c", script, "sh", &root]).run(None) {
        Ok(out) => match parse_df_available_kib(&out.stdout_str()) {
            Some(kib) if kib / 1024 >= MIN_FREE_MIB => {
                Check::ok("remote disk", format!("{} MiB free under `{root}` on `{host}`", kib / 1024))
            }
            Some(kib) => Check::fail(
                "remote disk",
                format!("only {} MiB free under `{root}` on `{host}` (at least {MIN_FREE_MIB} MiB wanted)", kib / 1024),
                fix,
            ),
            None => {
                Check::fail("remote disk", format!("cannot read `df` on `{host}`: {}", out.stdout_str().trim()), fix)
            }
        },
        Err(e) => Check::fail("remote disk", format!("`df` failed on `{host}`: {e:#}"), fix),
    }
}

/// The "Available" column (KiB) of `df -Pk`'s data line.
fn parse_df_available_kib(line: &str) -> Option<u64> {
    line.split_whitespace().nth(3)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn df_available_column() {
        assert_eq!(parse_df_available_kib("tmpfs 12338036 0 12338036 0% /var/tmp/pikaci\n"), Some(12338036));
        assert_eq!(parse_df_available_kib("garbage"), None);
    }
}
