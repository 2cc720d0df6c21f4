//! The Incus runtime: one ephemeral container per job.
//!
//! A job's life is four `incus` calls, each logged with its duration in `host.log`:
//!
//! 1. `incus init IMAGE NAME --ephemeral`, with the tags and every disk device on stdin
//!    (one call; no `config device add` round trips), see [`spec`];
//! 2. `incus start NAME`;
//! 3. `incus exec NAME --cwd /workspace --env ... -- /bin/sh -c PRELUDE sh ARGV`, streamed
//!    and timed by [`process::run_guest`] (the timeout and Ctrl-C kill the client, and
//!    Incus then kills the guest's processes);
//! 4. `incus delete --force NAME`, after success, failure, timeout, Ctrl-C and every
//!    error once the instance exists (and from `Drop`, should anything panic).
//!
//! Create, start and delete run to completion even after Ctrl-C (see
//! [`crate::tools::incus::Wait`]): the instance is then deleted, not lost. A second
//! Ctrl-C exits at once; `pikaci gc` reaps what that leaves, by its tags.

mod image;
pub mod naming;
mod pool;
mod reap;
mod remote_image;
pub mod spec;
mod warm;

use std::path::Path;
use std::time::Duration;

use anyhow::Result;

use super::{GuestOutcome, JobIo, Placement, Runtime, RuntimeReport, process};
use crate::error;
use crate::handoff::{self as guest, HostContext, JobPreview};
use crate::signals;
use crate::tools::command::{CommandFailed, Interrupted, is_interrupted};
use crate::tools::incus::{Incus, LIFECYCLE_TIMEOUT, QUERY_TIMEOUT, Wait, is_not_found};
use crate::tools::log::HostLog;

pub use image::{build_default_image, import_image};
pub use pool::{PoolSettings, refill_now as refill_pool};
pub use reap::{orphans, reap_orphans, reap_orphans_with};
pub use spec::InstancePlan;

/// The image of lanes that name none: built by `pikaci image import` from the host's
/// static busybox, or imported from the flake's `guest-image`.
pub const DEFAULT_IMAGE: &str = "pikaci/busybox";

/// The Incus runtime, connected to a daemon that answered.
pub struct IncusRuntime {
    incus: Incus,
    default_image: String,
    /// The state root the run belongs to, as instances' `user.pikaci.state_root` tag
    /// names it (`pikaci gc` reaps by it).
    state_root_tag: String,
    placement: Placement,
    /// Instances started ahead of their jobs, and deletions under way.
    warmed: warm::Warmed,
    /// Started instances kept between runs (this machine's daemon only).
    pool: std::sync::Arc<pool::Pool>,
    /// The images whose pools the run's end refills, each with the `host.log` of the
    /// last job that used it (which tells of the refill) and how many jobs did.
    pool_images: std::sync::Mutex<std::collections::BTreeMap<String, (HostLog, usize)>>,
    state_root: std::path::PathBuf,
}

impl IncusRuntime {
    /// Find `incus` (here, or on the remote host through `ssh`) and check that the
    /// daemon answers, within a few seconds. `--runtime auto` falls back to bubblewrap
    /// when this fails, so it fails fast.
    pub fn connect(placement: &Placement, image: Option<&str>, state_root: &Path) -> Result<IncusRuntime> {
        Self::connect_member(placement, None, image, state_root)
    }

    /// The same, on an Incus cluster: instances are created on `member` (the one the
    /// placement reaches, which has the job's files).
    pub fn connect_member(
        placement: &Placement,
        member: Option<&str>,
        image: Option<&str>,
        state_root: &Path,
    ) -> Result<IncusRuntime> {
        let mut incus = Incus::locate(placement.ssh_host())?;
        if let Some(member) = member {
            incus = incus.on_member(member);
        }
        let probed = if incus.is_local() && member.is_none() { take_early_probe() } else { None };
        probed.unwrap_or_else(|| incus.server()).map_err(|e| daemon_error(&incus, e))?;
        let state_root_tag = reap::canonical_tag(state_root);
        let pool_incus = incus.clone();
        Ok(IncusRuntime {
            incus,
            default_image: image.unwrap_or(DEFAULT_IMAGE).to_string(),
            state_root_tag: state_root_tag.clone(),
            placement: placement.clone(),
            warmed: warm::Warmed::default(),
            pool: std::sync::Arc::new(pool::Pool::new(state_root, &state_root_tag, PoolSettings::OFF, &pool_incus)),
            pool_images: Default::default(),
            state_root: state_root.to_path_buf(),
        })
    }

    /// Keep a warm pool of `settings.size` started instances between runs (see
    /// [`pool`]), on this machine's daemon or an SSH host's; not on a cluster member
    /// (nothing changes there).
    pub fn with_pool(mut self, state_root: &Path, settings: PoolSettings) -> IncusRuntime {
        if self.incus.member().is_none() {
            self.pool = std::sync::Arc::new(pool::Pool::new(state_root, &self.state_root_tag, settings, &self.incus));
        }
        self
    }

    pub fn incus(&self) -> &Incus {
        &self.incus
    }

    /// The job's instance: name, tags, devices and command. Resolves every device
    /// source first, so a payload that vanished fails here, before Incus is called.
    pub fn plan(&self, ctx: &HostContext) -> Result<InstancePlan> {
        let image = ctx.image.as_deref().unwrap_or(&self.default_image);
        InstancePlan::new(ctx, &self.placement, image, &self.state_root_tag)
    }

    /// `incus init`: the instance exists, stopped, with its devices, when this returns
    /// `Ok`. On failure nothing is left behind.
    pub fn create(&self, plan: &InstancePlan, log: &HostLog) -> Result<JobInstance> {
        JobInstance::create(&self.incus, plan, log)
    }
}

impl Runtime for IncusRuntime {
    fn name(&self) -> &'static str {
        "incus"
    }

    /// The instance comes from [`IncusRuntime::warm`] when the job was warmed (its
    /// payload devices are then added in one call), else it is created and started now.
    /// The command's outcome is returned as soon as it is known: the instance is deleted
    /// in the background ([`Runtime::finish`] waits for that).
    fn run(&self, ctx: &HostContext, io: &JobIo, report: &mut RuntimeReport) -> Result<GuestOutcome> {
        let plan = self.plan(ctx)?;
        spec::make_store_view(ctx, &self.placement, &io.host_log)?;
        report.instance = Some(plan.name.clone());
        report.reproduce.extend(plan.reproduce(&self.incus, ctx));
        io.host_log.line(&format!(
            "incus: the job's instance is of image `{}` on {}",
            plan.image,
            self.incus.location()
        ));
        io.host_log.line(&match &ctx.store_closure {
            Some(c) if c.len() <= spec::MAX_CLOSURE_DEVICES => {
                format!("incus: the guest's /nix/store is the payloads' closure ({} paths)", c.len())
            }
            Some(c) => format!(
                "incus: the payloads' closure has {} paths, more than {} devices: the guest sees the host's store",
                c.len(),
                spec::MAX_CLOSURE_DEVICES
            ),
            None => "incus: the guest sees the host's store (no closure was given for this job)".to_string(),
        });
        let warm = self.warmed.take(&plan.name);
        // Only jobs got ready ahead (one host) can have a pool instance: only they refill.
        let poolable = warm.is_some() && self.pool.enabled();
        let ready = match warm {
            Some(warm) => warm.ready(&plan, &io.host_log)?,
            None => None,
        };
        let instance = match ready {
            Some(instance) => instance,
            None => {
                check_interrupted(&plan.name, "before the creation of")?;
                let instance = self.create(&plan, &io.host_log)?;
                check_interrupted(&plan.name, "before the start of")?;
                instance.start()?;
                instance
            }
        };
        // A pool instance has a name of its own.
        report.instance = Some(instance.name().to_string());
        let outcome = check_interrupted(instance.name(), "before the command ran in")
            .and_then(|()| instance.exec(&plan, ctx, io));
        self.warmed.delete_in_background(instance);
        if poolable {
            let mut images = self.pool_images.lock().unwrap_or_else(|p| p.into_inner());
            let used = images.entry(plan.image.clone()).or_insert_with(|| (io.host_log.clone(), 0));
            *used = (io.host_log.clone(), used.1 + 1);
        }
        outcome
    }

    fn check_host(&self) -> Result<()> {
        self.incus.server().map(|_| ()).map_err(|e| daemon_error(&self.incus, e))
    }

    fn warm(&self, job: &JobPreview) {
        // A remote job's directories exist there only once the job has made them: no
        // instance is created ahead for it, but one of the warm pool's (which gets its
        // devices later) is claimed.
        let create = self.placement.is_local();
        if !create && !self.pool.enabled() {
            return;
        }
        let image = job.image.as_deref().unwrap_or(&self.default_image);
        // A plan that cannot be made is reported by the job itself, when it gets there.
        if let Ok(plan) = InstancePlan::base(job, &self.placement, image, &self.state_root_tag) {
            self.warmed.start(&self.incus, &self.pool, plan, create, &job.host_log);
        }
    }

    fn abandon(&self, job: &JobPreview, interrupted: bool) -> Option<anyhow::Error> {
        let warm = self.warmed.take(&naming::instance_name(&job.run_id, &job.job_id))?;
        if interrupted {
            return warm.abandon();
        }
        self.warmed.abandon_in_background(warm);
        None
    }

    fn finish(&self) -> Vec<String> {
        let left = self.warmed.finish();
        if !crate::signals::interrupted() {
            // As many as the run used, up to the pool's size: a run of one lane keeps one.
            for (image, (log, used)) in std::mem::take(&mut *self.pool_images.lock().unwrap_or_else(|p| p.into_inner()))
            {
                let settings = PoolSettings { size: self.pool.settings().size.min(used), ..self.pool.settings() };
                pool::refill_detached(&self.state_root, self.incus.remote_host(), &image, settings, &log);
            }
        }
        left
    }
}

type EarlyProbe = std::thread::JoinHandle<Result<serde_json::Value>>;

static EARLY_PROBE: std::sync::Mutex<Option<EarlyProbe>> = std::sync::Mutex::new(None);

/// Ask this machine's Incus daemon whether it answers, in the background, so that the
/// answer is there when a run connects (after its snapshot and evaluation, which it
/// overlaps). The next local [`IncusRuntime::connect`] takes it instead of asking again.
pub fn probe_local_early() {
    let probe = std::thread::spawn(|| Incus::local().and_then(|incus| incus.server()));
    *EARLY_PROBE.lock().unwrap_or_else(|p| p.into_inner()) = Some(probe);
}

/// Wait for the early probe when no runtime took it (a run with nothing to run), so that
/// its `incus` call does not outlive pikaci.
pub fn end_early_probe() {
    let _ = take_early_probe();
}

fn take_early_probe() -> Option<Result<serde_json::Value>> {
    let probe = EARLY_PROBE.lock().unwrap_or_else(|p| p.into_inner()).take()?;
    probe.join().ok()
}

/// How a job's message begins when its instance could not be deleted; `pikaci gc` looks
/// for it in run records to warn when it cannot reap what such a run left.
pub const INSTANCE_NOT_DELETED: &str = "could not delete instance";

/// A job's instance while it exists. Deleted by [`JobInstance::delete`], or on drop.
pub struct JobInstance {
    incus: Incus,
    name: String,
    pub(super) log: HostLog,
    live: bool,
    /// Claimed from the warm pool: it has none of the job's tags and devices yet.
    from_pool: bool,
}

impl JobInstance {
    /// `incus init`: the instance exists, stopped, with its devices, when this returns
    /// `Ok`. On failure nothing is left behind.
    pub fn create(incus: &Incus, plan: &InstancePlan, log: &HostLog) -> Result<JobInstance> {
        let cmd = incus.init_cmd(&plan.image, &plan.name, &plan.spec);
        log.line(&format!(
            "instance `{}` config and devices (stdin of `incus init`): {}",
            plan.name,
            compact_json(&plan.spec.to_json())
        ));
        let mut instance = JobInstance {
            incus: incus.clone(),
            name: plan.name.clone(),
            log: log.clone(),
            live: false,
            from_pool: false,
        };
        match incus.run(&cmd, Some(log), Wait::ToCompletion(LIFECYCLE_TIMEOUT)) {
            Ok(_) => {
                instance.live = true;
                Ok(instance)
            }
            Err(e) => {
                // A failed create leaves nothing, unless the daemon failed halfway: check.
                if matches!(
                    incus.query(&instance_path(&plan.name), Some(log), Wait::ToCompletion(QUERY_TIMEOUT)),
                    Ok(Some(_))
                ) {
                    let _ = instance.delete_now();
                }
                Err(create_error(incus, plan, e))
            }
        }
    }

    /// A started instance made elsewhere (the warm pool's): this job's from now on, and
    /// deleted like one it created.
    pub fn adopt(incus: &Incus, name: &str, log: &HostLog) -> JobInstance {
        JobInstance { incus: incus.clone(), name: name.to_string(), log: log.clone(), live: true, from_pool: true }
    }

    /// Leave the instance running: the warm pool keeps it.
    pub fn keep(mut self) {
        self.live = false;
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Add the devices the plan has and a warmed (running) instance lacks, in one call
    /// (see [`warm`] for why that is safe: the container runs without `CAP_SYS_ADMIN`).
    /// An instance of the warm pool lacks them all, and the job's description and tags:
    /// the same call adds those.
    pub fn add_devices(&self, plan: &InstancePlan) -> Result<()> {
        let body = if self.from_pool {
            let tags: serde_json::Map<String, serde_json::Value> = (plan.spec.config.iter())
                .filter(|(k, _)| k.starts_with("user."))
                .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
                .collect();
            serde_json::json!({ "description": plan.spec.description, "config": tags, "devices": plan.spec.devices })
        } else {
            let devices = plan.later_devices();
            if devices.is_empty() {
                return Ok(());
            }
            serde_json::json!({ "devices": devices })
        };
        self.incus.patch(&self.name, &body, Some(&self.log)).map_err(|e| {
            let what = incus_failure(&e);
            let err = error::infra(format!("could not add the payloads to instance `{}`: {what}", self.name));
            if what.contains("Missing source path") { err.hint(VANISHED_HINT) } else { err }.into()
        })
    }

    /// `incus start`. On failure, the container's own log goes to `host.log` (the
    /// instance, and with it the log, is about to be deleted).
    pub fn start(&self) -> Result<()> {
        let cmd = self.incus.start_cmd(&self.name);
        let Err(e) = self.incus.run(&cmd, Some(&self.log), Wait::ToCompletion(LIFECYCLE_TIMEOUT)) else {
            return Ok(());
        };
        // The daemon may still be writing the log as the failed start returns: a second
        // try after a moment, and a line that says why when there is none.
        let show_log = || self.incus.run(&self.incus.show_log_cmd(&self.name), None, Wait::ToCompletion(QUERY_TIMEOUT));
        let shown = show_log().or_else(|_| {
            std::thread::sleep(Duration::from_millis(300));
            show_log()
        });
        if let Err(why) = &shown {
            self.log.line(&format!("could not read the container's log of `{}`: {}", self.name, incus_failure(why)));
        }
        if let Ok(out) = shown {
            self.log.line(&format!("container log of `{}` (its `lxc.log`):", self.name));
            for l in out
                .stdout_str()
                .lines()
                .filter(|l| !l.trim().is_empty())
                .rev()
                .take(40)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
            {
                self.log.line(&format!("    | {l}"));
            }
        }
        let what = incus_failure(&e);
        Err(if what.contains("Missing source path") {
            error::infra(format!("instance `{}` could not start: a device source vanished: {what}", self.name)).hint(VANISHED_HINT)
        } else {
            error::infra(format!("instance `{}` could not start: {what}", self.name))
                .hint("the container's log is in the job's `host.log` (`pikaci logs RUN --job JOB --host`); `pikaci doctor` checks the Incus setup; a job's container runs without CAP_SYS_ADMIN, so an image whose init needs it (systemd) does not start: use pikaci's image (`pikaci image import`) or one like it (docs/runtimes.md)")
        }
        .into())
    }

    /// `incus exec`: the lane's command, with its output streamed and its time limited.
    /// A non-zero exit is the command's own only while the instance still runs: `incus
    /// exec` also exits non-zero when the instance went away under it.
    pub fn exec(&self, plan: &InstancePlan, ctx: &HostContext, io: &JobIo) -> Result<GuestOutcome> {
        let cmd = self.incus.exec_cmd(&self.name, guest::WORKSPACE, &ctx.env, &plan.exec_argv);
        let outcome = process::run_guest(&cmd, &ctx.job_id, ctx.timeout, io)?;
        match outcome {
            GuestOutcome::Exited(0) | GuestOutcome::TimedOut | GuestOutcome::Interrupted => Ok(outcome),
            GuestOutcome::Exited(code) => {
                let state = self.incus.query(
                    &format!("{}/state", instance_path(&self.name)),
                    Some(&self.log),
                    Wait::Interruptible(QUERY_TIMEOUT),
                );
                match state {
                    Ok(Some(state)) if state["status"] == "Running" => {
                        if code == 127 {
                            self.log.line("exit 127: the command was not found in the guest (`incus exec` says `Error: Command not found`)");
                        }
                        Ok(outcome)
                    }
                    Ok(Some(state)) => Err(error::infra(format!(
                        "instance `{}` stopped (status {}) while the command ran; `incus exec` exited {code}",
                        self.name,
                        state["status"].as_str().unwrap_or("unknown")
                    ))
                    .into()),
                    Ok(None) => Err(error::infra(format!(
                        "instance `{}` was deleted while the command ran (by someone else: `incus delete`, `pikaci gc` of another state root?); `incus exec` exited {code}",
                        self.name
                    ))
                    .into()),
                    Err(e) if is_interrupted(&e) => Err(e),
                    // The state of an instance whose init is gone fails ("Invalid PID") while
                    // Incus stops and deletes it; a daemon that died fails too. Either way
                    // the exit code is not the command's.
                    Err(e) => Err(error::infra(format!(
                        "instance `{}` stopped or was deleted while the command ran; `incus exec` exited {code}, and its state: {}",
                        self.name,
                        incus_failure(&e)
                    ))
                    .into()),
                }
            }
            GuestOutcome::Signaled(sig) => Err(error::infra(format!(
                "the `incus exec` client of instance `{}` was killed by signal {sig}; the command's result is unknown",
                self.name
            ))
            .into()),
        }
    }

    /// `incus delete --force`, retried once; an instance that is already gone is fine.
    pub fn delete(mut self) -> Result<()> {
        self.live = false;
        match self.delete_now() {
            Ok(()) => Ok(()),
            Err(_) => {
                std::thread::sleep(Duration::from_millis(500));
                self.delete_now().map_err(|e| {
                    error::infra(format!("{INSTANCE_NOT_DELETED} `{}`: {}", self.name, incus_failure(&e)))
                        .hint(format!(
                            "`pikaci gc` removes it once this run has ended, or `incus delete --force {}`",
                            self.name
                        ))
                        .into()
                })
            }
        }
    }

    fn delete_now(&self) -> Result<()> {
        match self.incus.run(&self.incus.delete_cmd(&self.name), Some(&self.log), Wait::ToCompletion(LIFECYCLE_TIMEOUT))
        {
            Ok(_) => Ok(()),
            Err(e) if is_not_found(&e) => {
                self.log.line(&format!("instance `{}` was already gone", self.name));
                Ok(())
            }
            Err(e) => Err(e),
        }
    }
}

impl Drop for JobInstance {
    fn drop(&mut self) {
        if self.live {
            self.live = false;
            let _ = self.delete_now();
        }
    }
}

const VANISHED_HINT: &str = "a payload, the snapshot or the artifacts directory was removed before the job started \
     (a concurrent `pikaci gc` or `nix-store --delete`?); run the job again";

pub(super) fn instance_path(name: &str) -> String {
    format!("/1.0/instances/{}", crate::tools::incus::url_segment(name))
}

pub(super) fn check_interrupted(name: &str, when: &str) -> Result<()> {
    if signals::interrupted() {
        return Err(anyhow::Error::new(Interrupted).context(format!("interrupted {when} instance `{name}`")));
    }
    Ok(())
}

/// Why the daemon does not answer, and what to do about it.
pub fn daemon_error(incus: &Incus, err: anyhow::Error) -> anyhow::Error {
    if error::classification(&err).is_some() {
        // Already says what is missing and how to fix it (no `ssh`, a hung call).
        return err.context(format!("the Incus daemon on {} does not answer", incus.location()));
    }
    let what = incus_failure(&err);
    let hint = if what.to_ascii_lowercase().contains("permission denied") {
        "add your user to the `incus-admin` group (`usermod -aG incus-admin $USER`, then log in again), or use `--runtime bwrap`"
    } else if incus.is_local() {
        "start it: `scripts/bootstrap` starts lxcfs and incusd on hosts without systemd (`systemctl start incus` with systemd); or use `--runtime bwrap`"
    } else {
        "check `incus info` on that host (its daemon must run and the SSH user must be in `incus-admin`)"
    };
    error::infra(format!("the Incus daemon on {} does not answer: {what}", incus.location())).hint(hint).into()
}

/// Why `incus init` failed, with the fix when there is a known one.
fn create_error(incus: &Incus, plan: &InstancePlan, err: anyhow::Error) -> anyhow::Error {
    if is_interrupted(&err) || error::classification(&err).is_some() {
        return err.context(format!("create instance `{}` from image `{}`", plan.name, plan.image));
    }
    let what = incus_failure(&err);
    let lower = what.to_ascii_lowercase();
    if (lower.contains("image \"") || lower.contains("image alias")) && lower.contains("not found") {
        let on = incus.remote_host().map(|h| format!(" --remote {h}")).unwrap_or_default();
        let hint = if plan.image == DEFAULT_IMAGE {
            format!("import it: `pikaci image import{on}`")
        } else {
            format!(
                "import it: `pikaci image import{on} --alias {} --from TARBALL` (or `incus image import`); `incus image list` shows the images there are",
                plan.image
            )
        };
        return error::infra(format!(
            "image `{}` is not in the Incus image store on {}: {what}",
            plan.image,
            incus.location()
        ))
        .hint(hint)
        .into();
    }
    if what.contains("Missing source path") {
        return error::infra(format!(
            "instance `{}` could not be created: a device source vanished: {what}",
            plan.name
        ))
        .hint(VANISHED_HINT)
        .into();
    }
    error::infra(format!("instance `{}` could not be created from image `{}`: {what}", plan.name, plan.image))
        .hint("`pikaci doctor` checks the Incus setup (storage pool, profile, image)")
        .into()
}

/// "`incus start` failed (exit 1): <Incus' message>", without Incus' advice about
/// networks and `incus info` that does not apply to pikaci's instances.
pub fn incus_failure(err: &anyhow::Error) -> String {
    let Some(failed) = err.chain().find_map(|e| e.downcast_ref::<CommandFailed>()) else {
        return format!("{err:#}");
    };
    let noise =
        ["doesn't have any network attached", "To create a new network", "To attach a network", "Try `incus info"];
    let lines: Vec<&str> = failed
        .stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !noise.iter().any(|n| l.contains(n)))
        .collect();
    let code = failed.code.map(|c| format!("exit {c}")).unwrap_or_else(|| "killed by a signal".into());
    let tail = crate::tools::command::tail_lines(&lines.join("\n"), 6);
    if tail.is_empty() {
        format!("`{}` failed ({code})", failed.label)
    } else {
        format!("`{}` failed ({code}): {tail}", failed.label)
    }
}

fn compact_json(pretty: &str) -> String {
    serde_json::from_str::<serde_json::Value>(pretty).map(|v| v.to_string()).unwrap_or_else(|_| pretty.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incus_messages_drop_advice_that_does_not_apply() {
        let err: anyhow::Error = CommandFailed {
            label: "incus start".into(),
            code: Some(1),
            stderr: "The instance you are starting doesn't have any network attached to it.\n  To create a new network, use: incus network create\n  To attach a network to an instance, use: incus network attach\n\nError: Failed start validation for device \"payload-x\": Missing source path \"/nix/store/x\" for disk \"payload-x\"\nTry `incus info --show-log pikaci-r-j` for more info\n".into(),
        }
        .into();
        assert_eq!(
            incus_failure(&err),
            "`incus start` failed (exit 1): Error: Failed start validation for device \"payload-x\": Missing source path \"/nix/store/x\" for disk \"payload-x\""
        );
    }

    #[test]
    fn a_missing_image_says_how_to_import_it() {
        let incus = Incus::with_program("incus");
        let mut plan = InstancePlan {
            name: "pikaci-r-j".into(),
            image: DEFAULT_IMAGE.into(),
            spec: Default::default(),
            exec_argv: vec![],
        };
        let failed = || -> anyhow::Error {
            CommandFailed {
                label: "incus init".into(),
                code: Some(1),
                stderr: "Error: Image \"pikaci/busybox\" not found\n".into(),
            }
            .into()
        };
        let rendered = error::render(&create_error(&incus, &plan, failed()));
        assert!(rendered.contains("image `pikaci/busybox` is not in the Incus image store"), "{rendered}");
        assert!(rendered.ends_with("hint: import it: `pikaci image import`"), "{rendered}");
        plan.image = "team/rust".into();
        let rendered = error::render(&create_error(&incus, &plan, failed()));
        assert!(rendered.contains("`pikaci image import --alias team/rust --from TARBALL`"), "{rendered}");
        assert_eq!(error::kind_of(&create_error(&incus, &plan, failed())), error::ErrorKind::Infrastructure);
        // On a remote host, the fix names it.
        let remote = Incus::via_ssh(crate::tools::ssh::Ssh::with_program("ssh", "ci@build1"), "ci@build1");
        plan.image = DEFAULT_IMAGE.into();
        let rendered = error::render(&create_error(&remote, &plan, failed()));
        assert!(rendered.contains("is not in the Incus image store on `ci@build1`"), "{rendered}");
        assert!(rendered.ends_with("hint: import it: `pikaci image import --remote ci@build1`"), "{rendered}");
    }
}
