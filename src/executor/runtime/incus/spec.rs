//! What a job's instance looks like, decided before Incus is called: its name, tags,
//! devices (the guest view of [`crate::executor::guest`]), and the command `incus exec`
//! runs. Pure apart from resolving the device sources on the host.

use std::path::Path;

use anyhow::{Context, Result};

use super::naming::{self, DEVICE_ARTIFACTS, DEVICE_NIX_STORE, DEVICE_WORKSPACE, TAG_JOB, TAG_RUN, TAG_STATE_ROOT};
use crate::executor::Placement;
use crate::executor::placement::staged_payload_source_root;
use crate::handoff::{self as guest, HostContext, JobPreview};
use crate::tools::incus::{Incus, InstanceSpec};
use crate::tools::log::HostLog;

/// Runs before the lane's command, in the guest: `$HOME` (`/pikaci/home`) is not part
/// of an image, so it is made here, on the instance's own (writable, discarded) root
/// filesystem; `$TMPDIR` too, in case the lane points it elsewhere. `exec` then
/// replaces the shell, so the command's argv, exit code and signals are its own.
///
/// `2>&1`: Incus carries stdout and stderr on separate streams, which lose their
/// relative order; merged in the guest, they reach `guest.log` in the order they were
/// written, as with bwrap (where both are one pipe).
pub const GUEST_PRELUDE: &str = r#"mkdir -p "$HOME" "${TMPDIR:-/tmp}" && exec "$@" 2>&1"#;

/// Variables the command would get from `incus exec` (`container`, `USER`, `TERM`) or
/// from the prelude's shell (`PWD`, `SHLVL`) rather than from pikaci. Unset before the
/// command starts, unless the lane sets them, so that the environment is exactly
/// pikaci's, as with bwrap's `--clearenv`.
const FOREIGN_ENV: &[&str] = &["container", "USER", "TERM", "PWD", "SHLVL", "OLDPWD"];

/// The prelude for a job's environment: [`GUEST_PRELUDE`], after an `unset` of the
/// foreign variables the lane does not set.
pub fn guest_prelude(env: &std::collections::BTreeMap<String, String>) -> String {
    let foreign: Vec<&str> = FOREIGN_ENV.iter().copied().filter(|v| !env.contains_key(*v)).collect();
    if foreign.is_empty() { GUEST_PRELUDE.to_string() } else { format!("unset {}; {GUEST_PRELUDE}", foreign.join(" ")) }
}

/// A job's instance, planned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstancePlan {
    pub name: String,
    pub image: String,
    pub spec: InstanceSpec,
    /// What `incus exec` runs: the prelude, then the lane's argv.
    pub exec_argv: Vec<String>,
}

/// The directory in the job's directory that is the guest's `/nix/store`: empty but for
/// one mount point per store path of the closure ([`make_store_view`] makes it).
pub fn store_view(job_dir: &Path) -> std::path::PathBuf {
    job_dir.join("store-view")
}

/// Make [`store_view`] for a job whose closure is mounted path by path, on the job's host
/// (over SSH, one `mkdir -p` of them all).
pub fn make_store_view(ctx: &HostContext, placement: &Placement, log: &HostLog) -> Result<()> {
    let Some(closure) = ctx.store_closure.as_ref().filter(|c| c.len() <= MAX_CLOSURE_DEVICES) else { return Ok(()) };
    let view = store_view(&ctx.job_dir);
    let dirs: Vec<std::path::PathBuf> = closure.iter().filter_map(|p| p.file_name()).map(|b| view.join(b)).collect();
    placement.ensure_job_directories(&dirs, &[], log).context("make the guest's view of /nix/store")
}

/// The capabilities every process of a job's container goes without, init included (LXC
/// drops them from the bounding set, so nothing in the guest gets them back, setuid
/// binaries included). Without `CAP_SYS_ADMIN` the guest's root cannot remount, unmount or
/// move a mount: the read-only disks added to the running instance (its payloads and
/// store closure, see [`super::warm`]) stay read-only, and in a user namespace of its
/// own they are locked read-only by the kernel. Without `CAP_SYS_PTRACE` it cannot reach
/// into Incus' own processes in the container.
pub const DROPPED_CAPABILITIES: &str = "lxc.cap.drop = sys_admin sys_ptrace sys_module";

/// The configuration every instance of a job starts from: its description, the tags that
/// `gc` reaps by, and [`DROPPED_CAPABILITIES`].
fn job_spec(run_id: &str, job_id: &str, state_root_tag: &str) -> InstanceSpec {
    let mut spec =
        InstanceSpec { description: format!("pikaci job `{job_id}` of run `{run_id}`"), ..Default::default() };
    spec.config.insert(TAG_RUN.into(), run_id.to_string());
    spec.config.insert(TAG_JOB.into(), job_id.to_string());
    spec.config.insert(TAG_STATE_ROOT.into(), state_root_tag.to_string());
    spec.config.insert("raw.lxc".into(), DROPPED_CAPABILITIES.to_string());
    spec
}

/// The most store paths a job's closure may have to be mounted one device each; a larger
/// closure gets the host's store (the job's `host.log` says so).
pub const MAX_CLOSURE_DEVICES: usize = 256;

/// The devices an instance is created with when it is started ahead of its job (their
/// sources exist before the payloads do); the others are added in one call later.
pub const BASE_DEVICES: [&str; 2] = [DEVICE_WORKSPACE, DEVICE_ARTIFACTS];

impl InstancePlan {
    /// The instance of a job whose payloads are not realized yet: its tags and the
    /// [`BASE_DEVICES`]. [`InstancePlan::new`] of the same job names the same instance.
    pub fn base(job: &JobPreview, placement: &Placement, image: &str, state_root_tag: &str) -> Result<InstancePlan> {
        let name = naming::instance_name(&job.run_id, &job.job_id);
        let mut spec = job_spec(&job.run_id, &job.job_id, state_root_tag);
        let workspace = placement.device_source(&job.snapshot_dir).context("resolve the snapshot")?;
        add_disk(&mut spec, DEVICE_WORKSPACE, &workspace, guest::WORKSPACE, true);
        let artifacts = placement.device_source(&job.artifacts_dir).context("resolve the artifacts directory")?;
        add_disk(&mut spec, DEVICE_ARTIFACTS, &artifacts, guest::ARTIFACTS, false);
        Ok(InstancePlan { name, image: image.to_string(), spec, exec_argv: Vec::new() })
    }

    /// The devices of this plan that an instance started from [`InstancePlan::base`]
    /// lacks.
    pub fn later_devices(&self) -> std::collections::BTreeMap<String, std::collections::BTreeMap<String, String>> {
        self.spec
            .devices
            .iter()
            .filter(|(k, _)| !BASE_DEVICES.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    pub fn new(ctx: &HostContext, placement: &Placement, image: &str, state_root_tag: &str) -> Result<InstancePlan> {
        let name = naming::instance_name(&ctx.run_id, &ctx.job_id);
        let mut spec = job_spec(&ctx.run_id, &ctx.job_id, state_root_tag);

        let workspace = placement.device_source(&ctx.snapshot_dir).context("resolve the snapshot")?;
        add_disk(&mut spec, DEVICE_WORKSPACE, &workspace, guest::WORKSPACE, true);
        // The payloads' runtime closure, one read-only disk per store path, so that a
        // Nix-built binary runs in an image that does not contain it and the guest sees
        // nothing else of the host's store (on an SSH host, the closure in that host's
        // store). A closure too large for a device each gets the host's store. The job's
        // `host.log` says which.
        match ctx.store_closure.as_ref().filter(|c| c.len() <= MAX_CLOSURE_DEVICES) {
            Some(closure) => {
                // `/nix/store` itself: a read-only directory holding only the mount points.
                let view = placement.host_path(&store_view(&ctx.job_dir))?;
                add_disk(&mut spec, DEVICE_NIX_STORE, &view, guest::NIX_STORE, true);
                for path in closure {
                    let base = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                    let guest_path = format!("{}/{base}", guest::NIX_STORE);
                    add_disk(&mut spec, &naming::store_device(&base), path, &guest_path, true);
                }
            }
            None if !placement.is_local() || Path::new(guest::NIX_STORE).is_dir() => {
                add_disk(&mut spec, DEVICE_NIX_STORE, Path::new(guest::NIX_STORE), guest::NIX_STORE, true);
            }
            None => {}
        }
        for mount in &ctx.staged_payload_mounts {
            let source = staged_payload_source_root(mount, placement)?;
            let device = naming::payload_device(&mount.device_prefix);
            add_disk(&mut spec, &device, &source, &guest::payload_path(&mount.device_prefix), true);
        }
        for (i, extra) in ctx.extra_mounts.iter().enumerate() {
            // Manifest mounts are sub-paths of a payload reached through the job's GC-root
            // link, so they map to the host that runs the job like the job directory.
            let source = placement.host_path(&extra.source)?;
            add_disk(&mut spec, &naming::extra_device(i, &extra.guest_path), &source, &extra.guest_path, true);
        }
        let artifacts = placement.device_source(&ctx.artifacts_dir).context("resolve the artifacts directory")?;
        add_disk(&mut spec, DEVICE_ARTIFACTS, &artifacts, guest::ARTIFACTS, false);

        let mut exec_argv = vec!["/bin/sh".to_string(), "-c".to_string(), guest_prelude(&ctx.env), "sh".to_string()];
        exec_argv.extend(ctx.command.iter().cloned());
        Ok(InstancePlan { name, image: image.to_string(), spec, exec_argv })
    }

    /// Shell lines that redo the instance's life by hand.
    pub fn reproduce(&self, incus: &Incus, ctx: &HostContext) -> Vec<String> {
        vec![
            format!(
                "{} <<'EOF'\n{}\nEOF",
                incus.init_cmd(&self.image, &self.name, &self.spec).display(),
                self.spec.to_json()
            ),
            incus.start_cmd(&self.name).display(),
            incus.exec_cmd(&self.name, guest::WORKSPACE, &ctx.env, &self.exec_argv).display(),
            incus.delete_cmd(&self.name).display(),
        ]
    }
}

/// A disk device: read-only unless it is the artifacts directory; `shift=true` so that
/// the unprivileged container's root sees host files with their owners (and can write
/// the artifacts directory) through an idmapped mount.
fn add_disk(spec: &mut InstanceSpec, device: &str, source: &Path, path: &str, readonly: bool) {
    let mut props: std::collections::BTreeMap<String, String> = [
        ("type", "disk".to_string()),
        ("source", source.to_string_lossy().into_owned()),
        ("path", path.to_string()),
        ("shift", "true".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    if readonly {
        props.insert("readonly".into(), "true".into());
    }
    spec.devices.insert(device.to_string(), props);
}

/// A job-directory path as the daemon's host sees it: canonical here, mapped under the
/// remote state root there.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::handoff::{ExtraMount, StagedPayloadMount};
    use std::collections::BTreeMap;
    use std::path::PathBuf;
    use std::time::Duration;

    struct Fixture {
        _dir: tempfile::TempDir,
        ctx: HostContext,
        placement: Placement,
        store_a: PathBuf,
    }

    fn fixture(placement_remote: bool) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("state");
        let job_dir = root.join("runs/r1/jobs/unit");
        let staged = job_dir.join("staged-linux-rust");
        std::fs::create_dir_all(&staged).unwrap();
        std::fs::create_dir_all(job_dir.join("artifacts")).unwrap();
        let snapshot = root.join("snapshots/abc");
        std::fs::create_dir_all(&snapshot).unwrap();
        let store_a = dir.path().join("store-a");
        let store_b = dir.path().join("store-b");
        std::fs::create_dir_all(store_a.join("share/assets")).unwrap();
        std::fs::create_dir_all(&store_b).unwrap();
        std::os::unix::fs::symlink(&store_a, staged.join("workspace-build")).unwrap();
        std::os::unix::fs::symlink(&store_b, staged.join("workspace-deps")).unwrap();
        let placement = if placement_remote {
            Placement::new(Some("ci@builder"), &root, Path::new("/var/tmp/pikaci"))
        } else {
            Placement::Local
        };
        let ctx = HostContext {
            run_id: "r1".into(),
            job_id: "unit".into(),
            job_dir: job_dir.clone(),
            snapshot_dir: snapshot,
            artifacts_dir: job_dir.join("artifacts"),
            command: vec!["/pikaci/payloads/workspace-build/bin/run".into(), "a b".into()],
            env: BTreeMap::from([("HOME".to_string(), guest::HOME.to_string())]),
            timeout: Duration::from_secs(5),
            image: None,
            staged_payload_mounts: ["workspace-deps", "workspace-build"]
                .iter()
                .map(|p| StagedPayloadMount { local_mount_path: staged.join(p), device_prefix: p.to_string() })
                .collect(),
            // Through the job's link to the payload, as prepare resolves manifest mounts.
            extra_mounts: vec![ExtraMount {
                source: staged.join("workspace-build/share/assets"),
                guest_path: "/opt/assets".into(),
            }],
            store_closure: None,
        };
        Fixture { _dir: dir, ctx, placement, store_a }
    }

    #[test]
    fn local_plan_has_the_whole_guest_view() {
        let f = fixture(false);
        let plan = InstancePlan::new(&f.ctx, &f.placement, "pikaci/busybox", "/state").unwrap();
        assert_eq!(plan.name, "pikaci-r1-unit");
        let d = &plan.spec.devices;
        let names: Vec<&str> = d.keys().map(String::as_str).collect();
        let mut expected =
            vec!["artifacts", "extra-0-opt-assets", "payload-workspace-build", "payload-workspace-deps", "workspace"];
        if Path::new("/nix/store").is_dir() {
            expected.push("nix-store");
            expected.sort();
            assert_eq!(d["nix-store"]["readonly"], "true");
        }
        assert_eq!(names, expected);
        let build = &d["payload-workspace-build"];
        assert_eq!(build["source"], f.store_a.canonicalize().unwrap().to_string_lossy());
        assert_eq!(build["path"], "/pikaci/payloads/workspace-build");
        assert_eq!(build["readonly"], "true");
        assert_eq!(build["shift"], "true");
        assert_eq!(d["workspace"]["path"], "/workspace");
        assert_eq!(d["workspace"]["readonly"], "true");
        assert_eq!(d["extra-0-opt-assets"]["path"], "/opt/assets");
        assert_eq!(d["artifacts"]["path"], "/pikaci/artifacts");
        assert!(!d["artifacts"].contains_key("readonly"), "artifacts must be writable");
        assert_eq!(d["artifacts"]["shift"], "true");
        assert!(d.values().all(|p| p["type"] == "disk" && p["shift"] == "true"));
        assert_eq!(plan.spec.config[TAG_RUN], "r1");
        assert_eq!(plan.spec.config[TAG_JOB], "unit");
        assert_eq!(plan.spec.config[TAG_STATE_ROOT], "/state");
        let prelude = format!("unset container USER TERM PWD SHLVL OLDPWD; {GUEST_PRELUDE}");
        assert_eq!(plan.exec_argv[..4], ["/bin/sh", "-c", prelude.as_str(), "sh"]);
        assert_eq!(plan.exec_argv[4..], ["/pikaci/payloads/workspace-build/bin/run", "a b"]);
    }

    #[test]
    fn remote_plan_names_paths_under_the_remote_state_root() {
        let f = fixture(true);
        let plan = InstancePlan::new(&f.ctx, &f.placement, "pikaci/busybox", "/state").unwrap();
        let d = &plan.spec.devices;
        assert_eq!(
            d["payload-workspace-deps"]["source"],
            "/var/tmp/pikaci/runs/r1/jobs/unit/staged-linux-rust/workspace-deps"
        );
        assert_eq!(d["workspace"]["source"], "/var/tmp/pikaci/snapshots/abc");
        assert_eq!(d["artifacts"]["source"], "/var/tmp/pikaci/runs/r1/jobs/unit/artifacts");
        assert_eq!(d["nix-store"]["source"], "/nix/store");
        assert_eq!(
            d["extra-0-opt-assets"]["source"],
            "/var/tmp/pikaci/runs/r1/jobs/unit/staged-linux-rust/workspace-build/share/assets"
        );
    }

    #[test]
    fn a_vanished_payload_fails_the_plan_naming_it() {
        let f = fixture(false);
        std::fs::remove_dir_all(&f.store_a).unwrap();
        let err = InstancePlan::new(&f.ctx, &f.placement, "pikaci/busybox", "/state").unwrap_err();
        assert!(format!("{err:#}").contains("resolve staged payload `workspace-build`"), "{err:#}");
    }

    #[test]
    fn reproduce_lines_paste_into_a_shell() {
        let f = fixture(false);
        let plan = InstancePlan::new(&f.ctx, &f.placement, "pikaci/busybox", "/state").unwrap();
        let lines = plan.reproduce(&Incus::with_program("incus"), &f.ctx);
        assert!(
            lines[0].starts_with("incus init pikaci/busybox pikaci-r1-unit --ephemeral --quiet <<'EOF'\n{"),
            "{}",
            lines[0]
        );
        assert!(lines[0].ends_with("}\nEOF"), "{}", lines[0]);
        assert_eq!(lines[1], "incus start pikaci-r1-unit --quiet");
        assert!(lines[2].starts_with("incus exec pikaci-r1-unit --force-noninteractive --cwd /workspace --env HOME=/pikaci/home -- /bin/sh -c "), "{}", lines[2]);
        assert!(lines[2].ends_with(" sh /pikaci/payloads/workspace-build/bin/run 'a b'"), "{}", lines[2]);
        assert_eq!(lines[3], "incus delete --force pikaci-r1-unit");
    }

    #[test]
    fn the_prelude_keeps_variables_the_lane_sets() {
        let env = BTreeMap::from([("TERM".to_string(), "dumb".to_string()), ("USER".to_string(), "ci".to_string())]);
        assert_eq!(guest_prelude(&env), format!("unset container PWD SHLVL OLDPWD; {GUEST_PRELUDE}"));
        let all: BTreeMap<String, String> = FOREIGN_ENV.iter().map(|v| (v.to_string(), String::new())).collect();
        assert_eq!(guest_prelude(&all), GUEST_PRELUDE);
    }

    #[test]
    fn the_prelude_makes_home_and_keeps_argv() {
        let out = std::process::Command::new("/bin/sh")
            .args([
                "-c",
                GUEST_PRELUDE,
                "sh",
                "/bin/sh",
                "-c",
                r#"test -d "$HOME" && printf '%s|' "$@""#,
                "x",
                "a b",
                "it's",
            ])
            .env("HOME", tempfile::tempdir().unwrap().path().join("h/home"))
            .env("TMPDIR", std::env::temp_dir())
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "a b|it's|");
        let out = std::process::Command::new("/bin/sh")
            .args(["-c", GUEST_PRELUDE, "sh", "/bin/sh", "-c", "echo 1; echo 2 >&2; echo 3; exit 5"])
            .env("HOME", tempfile::tempdir().unwrap().path().join("h"))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(5));
        assert_eq!(String::from_utf8_lossy(&out.stdout), "1\n2\n3\n", "stderr joins stdout in order");
        assert!(out.stderr.is_empty());
    }
}
