//! The embedded runtime: a bubblewrap sandbox. No daemon, about 10 ms to start. The base
//! system is the host's `/usr` (with `/bin`, `/lib*` and a minimal `/etc`), read-only;
//! on top of it the guest view of [`super::guest`]. All namespaces are unshared (no
//! network), and the sandbox dies with pikaci.
//!
//! The sandbox holds whether pikaci runs as root or not: the guest runs as
//! [`GUEST_UID`] in its own user namespace with every capability dropped (so it cannot
//! remount, `mknod`, `chroot` or make namespaces), cannot create nested user namespaces
//! (`--disable-userns`, where bwrap has it), and bwrap itself starts with an empty
//! environment (its PID 1 is readable by the guest through `/proc/1/environ`).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::{GuestOutcome, JobIo, Runtime, RuntimeReport, process};
use crate::error;
use crate::executor::Placement;
use crate::executor::placement::staged_payload_source_root;
use crate::handoff::{self as guest, HostContext};
use crate::tools::command::Cmd;

/// The parts of the host's `/etc` that programs need to start: users, name service
/// config, the dynamic linker's cache, and Debian's alternatives (`awk` and friends).
const ETC_FILES: &[&str] = &[
    "passwd",
    "group",
    "hosts",
    "nsswitch.conf",
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "localtime",
    "alternatives",
    "os-release",
    "ssl",
    "ca-certificates",
];

/// Top-level directories of the base system, bound read-only (or recreated as the
/// symlinks they are on merged-/usr hosts).
const BASE_DIRS: &[&str] = &["/usr", "/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32"];

/// The guest's uid and gid inside its user namespace. Not 0: no capabilities, and files
/// the guest creates in the artifacts directory belong to whoever runs pikaci.
pub const GUEST_UID: u32 = 1000;

pub struct BwrapRuntime {
    program: PathBuf,
    /// Whether this bwrap has `--disable-userns` (0.8.0 and later).
    disable_userns: bool,
}

impl BwrapRuntime {
    pub fn locate() -> Result<BwrapRuntime> {
        let program = which::which("bwrap").map_err(|_| {
            error::infra("`bwrap` (bubblewrap) was not found on PATH")
                .hint("install it: `apt-get install bubblewrap` (Debian), `nix profile install nixpkgs#bubblewrap`")
        })?;
        // `--help` lists the options this bwrap knows; an old one without
        // `--disable-userns` still drops every capability, which stops nested namespaces.
        let help = Cmd::new("bwrap --help", &program).arg("--help").env_clear().run_unchecked(None)?;
        let disable_userns = help.stdout_str().contains("--disable-userns");
        Ok(BwrapRuntime { program, disable_userns })
    }

    /// The bwrap command for a job. Pure: reads only the host's filesystem layout.
    pub fn command(&self, ctx: &HostContext) -> Result<Cmd> {
        let uid = GUEST_UID.to_string();
        // bwrap's own environment is empty: the guest's is given with `--setenv` below.
        let mut cmd = Cmd::new("bwrap", &self.program).env_clear().args([
            "--die-with-parent",
            "--unshare-all",
            // A user namespace even when pikaci runs as root, the guest an unprivileged
            // user in it, with no capabilities at all: read-only binds stay read-only.
            "--unshare-user",
            "--uid",
            &uid,
            "--gid",
            &uid,
            "--cap-drop",
            "ALL",
            // Its own session: the guest cannot inject input into the user's terminal, and
            // Ctrl-C reaches pikaci, which ends the sandbox itself.
            "--new-session",
        ]);
        if self.disable_userns {
            cmd = cmd.arg("--disable-userns");
        }
        for dir in BASE_DIRS {
            let path = Path::new(dir);
            match path.symlink_metadata() {
                Ok(m) if m.file_type().is_symlink() => {
                    let target = std::fs::read_link(path).with_context(|| format!("read link `{dir}`"))?;
                    cmd = cmd.arg("--symlink").arg(target).arg(dir);
                }
                Ok(m) if m.is_dir() => cmd = cmd.args(["--ro-bind", dir, dir]),
                _ => {}
            }
        }
        cmd = cmd.args(["--proc", "/proc", "--dev", "/dev", "--tmpfs", guest::TMPDIR, "--dir", "/etc"]);
        for name in ETC_FILES {
            let host = Path::new("/etc").join(name);
            if host.exists() {
                cmd = cmd.arg("--ro-bind").arg(&host).arg(&host);
            }
        }
        match &ctx.store_closure {
            // Only the payloads' closure: an empty `/nix/store`, each closure path bound
            // into it, then made read-only (no new entries either).
            Some(closure) => {
                cmd = cmd.args(["--tmpfs", guest::NIX_STORE]);
                for path in closure {
                    cmd = cmd.arg("--ro-bind").arg(path).arg(path);
                }
                cmd = cmd.args(["--remount-ro", guest::NIX_STORE]);
            }
            None if Path::new(guest::NIX_STORE).is_dir() => {
                cmd = cmd.args(["--ro-bind", guest::NIX_STORE, guest::NIX_STORE]);
            }
            None => {}
        }
        cmd = cmd.arg("--ro-bind").arg(&ctx.snapshot_dir).arg(guest::WORKSPACE);
        for mount in &ctx.staged_payload_mounts {
            let source = staged_payload_source_root(mount, &Placement::Local)?;
            cmd = cmd.arg("--ro-bind").arg(source).arg(guest::payload_path(&mount.device_prefix));
        }
        for extra in &ctx.extra_mounts {
            cmd = cmd.arg("--ro-bind").arg(&extra.source).arg(&extra.guest_path);
        }
        cmd = cmd.arg("--bind").arg(&ctx.artifacts_dir).arg(guest::ARTIFACTS);
        cmd = cmd.args(["--tmpfs", guest::HOME, "--chdir", guest::WORKSPACE, "--clearenv"]);
        for (k, v) in &ctx.env {
            cmd = cmd.arg("--setenv").arg(k).arg(v);
        }
        Ok(cmd.arg("--").args(&ctx.command))
    }
}

impl Runtime for BwrapRuntime {
    fn name(&self) -> &'static str {
        "bwrap"
    }

    fn run(&self, ctx: &HostContext, io: &JobIo, report: &mut RuntimeReport) -> Result<GuestOutcome> {
        let cmd = self.command(ctx)?;
        report.reproduce.push(cmd.display());
        process::run_guest(&cmd, &ctx.job_id, ctx.timeout, io)
    }
}
