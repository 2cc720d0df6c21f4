//! `pikaci doctor`: is everything a run needs here, and if not, how to fix it.

mod incus;
mod remote;

use crate::error::{self, exit};
use crate::state::StateRoot;
use crate::tools::command::Cmd;
use crate::tools::nix::Nix;

/// One check and its verdict.
#[derive(Clone, Debug)]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
    pub fix: Option<String>,
}

impl Check {
    pub fn ok(name: &'static str, detail: impl Into<String>) -> Check {
        Check { name, ok: true, detail: detail.into(), fix: None }
    }
    pub fn fail(name: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Check {
        Check { name, ok: false, detail: detail.into(), fix: Some(fix.into()) }
    }
}

/// Run every check, print them, and return the exit code: 0 when nix and at least one
/// runtime work (and, when a host is named, everything a remote placement needs there
/// does), else 3.
pub fn run(state: &StateRoot, remote: Option<&str>) -> i32 {
    let mut checks = Vec::new();
    let nix = match Nix::locate() {
        Ok(nix) => match nix.version() {
            Ok(v) => match nix.check_supported(&v) {
                Ok(()) => {
                    checks.push(Check::ok("nix", format!("{} at `{}`", v.text, nix.program().display())));
                    true
                }
                Err(e) => {
                    let fix = error::classification(&e).and_then(|c| c.hint.clone()).unwrap_or_default();
                    checks.push(Check::fail("nix", format!("{e:#}"), fix));
                    false
                }
            },
            Err(e) => {
                let detail = format!("`{}` does not run: {e:#}", nix.program().display());
                checks.push(Check::fail("nix", detail, "reinstall Nix"));
                false
            }
        },
        Err(e) => {
            let fix = error::classification(&e).and_then(|c| c.hint.clone()).unwrap_or_else(|| "install Nix".into());
            checks.push(Check::fail("nix", format!("{e:#}"), fix));
            false
        }
    };
    let bwrap = bwrap_check();
    let bwrap_ok = bwrap.ok;
    checks.push(bwrap);
    let incus_checks = incus::doctor_checks(state);
    let incus_ok = incus_checks.iter().all(|c| c.ok);
    checks.extend(incus_checks);
    checks.push(state_root_check(state));
    let ssh_ok = match remote {
        Some(host) => {
            let remote_checks = remote::checks(host);
            let ok = remote_checks.iter().all(|c| c.ok);
            checks.extend(remote_checks);
            ok
        }
        None => true,
    };

    for c in &checks {
        println!("{} {:<14} {}", if c.ok { "ok  " } else { "FAIL" }, c.name, c.detail);
        if let Some(fix) = &c.fix {
            println!("     {:<14} fix: {fix}", "");
        }
    }
    let runtime = match (incus_ok, bwrap_ok) {
        (true, _) => "incus",
        (false, true) => "bwrap",
        (false, false) => "none",
    };
    println!("`--runtime auto` would use: {runtime}");
    if nix && (incus_ok || bwrap_ok) && ssh_ok && checks.iter().find(|c| c.name == "state root").is_some_and(|c| c.ok) {
        exit::SUCCESS
    } else {
        exit::INFRASTRUCTURE
    }
}

fn bwrap_check() -> Check {
    let Ok(program) = which::which("bwrap") else {
        return Check::fail(
            "bwrap",
            "`bwrap` is not on PATH",
            "`apt-get install bubblewrap` (Debian) or add bubblewrap to the environment",
        );
    };
    // A real sandbox, as a run makes one: namespaces and a read-only bind.
    let probe = Cmd::new("bwrap", &program)
        .args(["--unshare-all", "--die-with-parent", "--ro-bind", "/", "/", "--", "/bin/true"])
        .run(None);
    match probe {
        Ok(_) => Check::ok("bwrap", format!("`{}` can create sandboxes", program.display())),
        Err(e) => Check::fail(
            "bwrap",
            format!("`{}` cannot create a sandbox: {e:#}", program.display()),
            "enable unprivileged user namespaces (`sysctl kernel.unprivileged_userns_clone=1`) or run as root",
        ),
    }
}

fn state_root_check(state: &StateRoot) -> Check {
    match state.ensure().and_then(|_| crate::state::atomic_write(&state.root.join(".doctor"), b"ok")) {
        Ok(()) => {
            let _ = std::fs::remove_file(state.root.join(".doctor"));
            Check::ok("state root", format!("`{}` is writable", state.root.display()))
        }
        Err(e) => Check::fail(
            "state root",
            format!("`{}` is not writable: {e:#}", state.root.display()),
            "pass a writable `--state-root` (or set PIKACI_STATE_ROOT)",
        ),
    }
}

fn ssh_check(host: &str) -> Check {
    if crate::executor::placement::ssh_host_is_local(Some(host)) {
        return Check::ok("ssh", format!("`{host}` is this machine; no SSH needed"));
    }
    match crate::tools::ssh::Ssh::new(host).and_then(|ssh| ssh.probe()) {
        Ok(()) => Check::ok("ssh", format!("`{host}` answers")),
        Err(e) => Check::fail(
            "ssh",
            format!("`{host}` does not answer: {e:#}"),
            format!("check `ssh {host} true` works without a password prompt (keys, `~/.ssh/config`)"),
        ),
    }
}
