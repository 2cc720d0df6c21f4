//! The embedded runtime: a bubblewrap sandbox. No daemon, about 10 ms to start. The base
//! system is the host's `/usr` (with `/bin`, `/lib*` and a minimal `/etc`), read-only;
//! on top of it the guest view of [`super::guest`]. All namespaces are unshared (no
//! network), and the sandbox dies with pikaci.

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

pub struct BwrapRuntime {
    program: PathBuf,
}

impl BwrapRuntime {
    pub fn locate() -> Result<BwrapRuntime> {
        let program = which::which("bwrap").map_err(|_| {
            error::infra("`bwrap` (bubblewrap) was not found on PATH")
                .hint("install it: `apt-get install bubblewrap` (Debian), `nix profile install nixpkgs#bubblewrap`")
        })?;
        Ok(BwrapRuntime { program })
    }

    /// The bwrap command for a job. Pure: reads only the host's filesystem layout.
    pub fn command(&self, ctx: &HostContext) -> Result<Cmd> {
        let mut cmd = Cmd::new("bwrap", &self.program).args([
            "--die-with-parent",
            "--unshare-all",
            // Its own session: the guest cannot inject input into the user's terminal, and
            // Ctrl-C reaches pikaci, which ends the sandbox itself.
            "--new-session",
        ]);
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
        if Path::new(guest::NIX_STORE).is_dir() {
            cmd = cmd.args(["--ro-bind", guest::NIX_STORE, guest::NIX_STORE]);
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
