//! The warm pool: a few started, empty instances kept between runs, so that a job whose
//! payloads are built already does not wait for `incus init` and `incus start` (0.5–1 s
//! on a `dir` storage pool) but only for its devices and its command.
//!
//! - **Never reused.** A pool instance is made for one job: a job claims it, adds its
//!   tags and devices, runs, and the instance is deleted like any other. The job's end
//!   starts a replacement, in the background, after its result is recorded.
//! - **Claimed once.** Each pool instance has an entry file in the state root
//!   (`incus-pool/<instance>.json`), written only once the instance runs. A job claims it
//!   by renaming the file (atomic: of two pikaci processes, one wins).
//! - **Gone when idle.** An instance left unclaimed powers itself off after
//!   [`PoolSettings::idle`] (a timer started in it; Incus then deletes the ephemeral
//!   instance); a job never claims one within [`claim_margin`] of that. An entry found
//!   expired is removed and its instance deleted, and `pikaci gc` drains the pool.
//! - **Made as a job's would be.** The same image (the alias still pointing at the
//!   fingerprint the instance was made from, checked at claim), the same
//!   [`super::spec::DROPPED_CAPABILITIES`] ([`POOL_RECIPE`] in the entry: an entry of
//!   an older recipe is not claimed).
//!
//! On this machine's daemon and on SSH hosts (each its own pool: an entry names where its
//! instance is), not on cluster members. `PIKACI_INCUS_POOL=0` turns it off; the size
//! defaults to `--jobs`.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::naming::{TAG_POOL, TAG_STATE_ROOT};
use super::spec::DROPPED_CAPABILITIES;
use super::{InstancePlan, JobInstance, check_interrupted};
use crate::error;
use crate::handoff as guest;
use crate::tools::incus::{Incus, InstanceInfo, InstanceSpec, QUERY_TIMEOUT, Wait};
use crate::tools::log::HostLog;

/// The directory of the entries, in the state root.
pub const POOL_DIR: &str = "incus-pool";

/// What a pool instance is made with, beyond its image; an entry of another recipe is
/// not claimed (a pikaci that drops other capabilities must not run jobs in it).
pub const POOL_RECIPE: &str = "1";

/// How long an unclaimed instance waits for a job by default.
pub const DEFAULT_IDLE: Duration = Duration::from_secs(600);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolSettings {
    /// The most unclaimed instances kept per image; 0: no pool.
    pub size: usize,
    pub idle: Duration,
}

impl PoolSettings {
    pub const OFF: PoolSettings = PoolSettings { size: 0, idle: DEFAULT_IDLE };

    /// `PIKACI_INCUS_POOL` (the size, `default_size` when unset) and
    /// `PIKACI_INCUS_POOL_IDLE` (seconds).
    pub fn from_env(default_size: usize) -> Result<PoolSettings> {
        let number = |var: &str| -> Result<Option<u64>> {
            match std::env::var(var) {
                Err(_) => Ok(None),
                Ok(v) => v.trim().parse::<u64>().map(Some).map_err(|_| {
                    error::usage(format!("`{var}` must be a whole number, not `{v}`"))
                        .hint("PIKACI_INCUS_POOL is how many started instances to keep (0: none); PIKACI_INCUS_POOL_IDLE is how many seconds they wait for a job")
                        .into()
                }),
            }
        };
        let size = number("PIKACI_INCUS_POOL")?.map(|n| n as usize).unwrap_or(default_size);
        let idle = number("PIKACI_INCUS_POOL_IDLE")?.map(Duration::from_secs).unwrap_or(DEFAULT_IDLE);
        if size > 0 && idle < Duration::from_secs(4) {
            return Err(error::usage("`PIKACI_INCUS_POOL_IDLE` must be at least 4 seconds")
                .hint("a pool instance is never claimed in the last quarter of its idle time")
                .into());
        }
        Ok(PoolSettings { size, idle })
    }
}

/// How close to its expiry an entry is no longer claimed: the claim, the alias check and
/// the PATCH of the job's tags take well under a second.
pub fn claim_margin(idle: Duration) -> Duration {
    (idle / 4).min(Duration::from_secs(30))
}

/// One unclaimed instance, as its entry file records it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Entry {
    pub instance: String,
    /// Where it runs: [`location_key`] (empty in entries made before there was one: this
    /// machine).
    #[serde(default)]
    pub location: String,
    /// The image as a lane names it (an alias) and the fingerprint it pointed to.
    pub image: String,
    pub fingerprint: String,
    pub recipe: String,
    pub created_unix: u64,
    pub idle_secs: u64,
}

impl Entry {
    fn age(&self, now: u64) -> Duration {
        Duration::from_secs(now.saturating_sub(self.created_unix))
    }

    fn claimable(&self, image: &str, now: u64) -> bool {
        let idle = Duration::from_secs(self.idle_secs);
        self.image == image && self.recipe == POOL_RECIPE && self.age(now) + claim_margin(idle) < idle
    }
}

/// The pool of one state root on this machine's daemon.
pub struct Pool {
    dir: PathBuf,
    settings: PoolSettings,
    state_root_tag: String,
    /// The daemon's [`location_key`]: only its entries are this pool's.
    location: String,
}

/// Which daemon an entry's instance is on: `local`, or `ssh:<host>`.
pub fn location_key(incus: &Incus) -> String {
    incus.remote_host().map(|h| format!("ssh:{h}")).unwrap_or_else(|| "local".to_string())
}

/// What a look at the entries found: the one claimed, and the expired ones taken out
/// (their instances are to be deleted).
#[derive(Debug, Default)]
pub struct Claimed {
    pub entry: Option<Entry>,
    pub expired: Vec<String>,
}

impl Pool {
    pub fn new(state_root: &Path, state_root_tag: &str, settings: PoolSettings, incus: &Incus) -> Pool {
        Pool {
            dir: state_root.join(POOL_DIR),
            settings,
            state_root_tag: state_root_tag.to_string(),
            location: location_key(incus),
        }
    }

    pub fn enabled(&self) -> bool {
        self.settings.size > 0
    }

    pub fn settings(&self) -> PoolSettings {
        self.settings
    }

    /// Claim an unclaimed instance of `image`: its entry is renamed away, so no other job
    /// can have it. Entries that expired are taken out on the way.
    pub fn claim(&self, image: &str) -> Claimed {
        let mut claimed = Claimed::default();
        let now = unix_now();
        for (path, entry) in self.entries() {
            let idle = Duration::from_secs(entry.idle_secs);
            let expired = entry.age(now) + claim_margin(idle) >= idle || entry.recipe != POOL_RECIPE;
            if !expired && (claimed.entry.is_some() || !entry.claimable(image, now)) {
                continue;
            }
            // Whoever renames the entry owns the instance.
            let taken = path.with_extension(format!("claimed-{}", std::process::id()));
            if std::fs::rename(&path, &taken).is_err() {
                continue;
            }
            let _ = std::fs::remove_file(&taken);
            if expired {
                claimed.expired.push(entry.instance);
            } else {
                claimed.entry = Some(entry);
            }
        }
        claimed
    }

    /// Every entry of this pool's daemon, unclaimed (unreadable ones are ignored: gc
    /// removes them).
    fn entries(&self) -> Vec<(PathBuf, Entry)> {
        let here = |e: &Entry| e.location == self.location || (e.location.is_empty() && self.location == "local");
        self.all_entries().into_iter().filter(|(_, e)| here(e)).collect()
    }

    /// Every entry of every daemon.
    fn all_entries(&self) -> Vec<(PathBuf, Entry)> {
        let Ok(dir) = std::fs::read_dir(&self.dir) else { return Vec::new() };
        dir.filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .filter_map(|p| {
                let entry = serde_json::from_slice::<Entry>(&std::fs::read(&p).ok()?).ok()?;
                Some((p, entry))
            })
            .collect()
    }

    /// Make a claimed instance the job's, once the lane's image alias is found to point
    /// at the image it was made from. Its tags and devices are added later, all in one
    /// `PATCH` ([`JobInstance::add_devices`]). On failure the instance is deleted.
    pub fn adopt(&self, incus: &Incus, entry: &Entry, plan: &InstancePlan, log: &HostLog) -> Result<JobInstance> {
        log.line(&format!(
            "incus: instance `{}` of the warm pool (started {}s ago) is the job's",
            entry.instance,
            entry.age(unix_now()).as_secs()
        ));
        check_interrupted(&entry.instance, "before the claim of")?;
        // The instance and the alias, asked at once.
        let (info, target) = std::thread::scope(|scope| {
            let alias = scope.spawn(|| incus.alias_target(&plan.image, Some(log)));
            let info = incus.get(&super::instance_path(&entry.instance), Some(log));
            (info, alias.join().unwrap_or_else(|_| Err(anyhow::anyhow!("asking for the image alias panicked"))))
        });
        let info = info?.context("it is not running (status: gone)")?;
        // An entry alone does not make an instance the pool's: its tags must (else it is
        // left alone, not deleted).
        anyhow::ensure!(
            is_unclaimed_pool_instance(&info["config"], &self.state_root_tag),
            "it is not an unclaimed pool instance of this state root"
        );
        let instance = JobInstance::adopt(incus, &entry.instance, log);
        // Still running (a reboot, or someone's `incus delete`, ends it), made as a job's
        // is, and from the image the lane's alias names now.
        let status = info["status"].as_str().unwrap_or("unknown");
        anyhow::ensure!(status == "Running", "it is not running (status: {status})");
        let config = |key: &str| info["config"][key].as_str();
        anyhow::ensure!(
            config("raw.lxc") == Some(DROPPED_CAPABILITIES)
                && config("volatile.base_image") == Some(entry.fingerprint.as_str()),
            "it was not made as a job's instance is now"
        );
        let target = target?;
        anyhow::ensure!(
            target.as_deref() == Some(entry.fingerprint.as_str()),
            "image `{}` now points at {}, not at the image it was made from",
            plan.image,
            target.as_deref().unwrap_or("nothing")
        );
        Ok(instance)
    }

    /// Delete the instance of an expired entry, when its tags make it this pool's.
    pub fn delete_expired(&self, incus: &Incus, name: &str, log: &HostLog) -> Result<()> {
        let Some(info) = incus.query(&super::instance_path(name), None, Wait::ToCompletion(QUERY_TIMEOUT))? else {
            return Ok(());
        };
        if is_unclaimed_pool_instance(&info["config"], &self.state_root_tag) {
            JobInstance::adopt(incus, name, log).delete()?;
        }
        Ok(())
    }

    /// How many replacements for `image` the pool wants: its size less the claimable
    /// entries.
    fn wanted(&self, image: &str) -> usize {
        let now = unix_now();
        let unclaimed = self.entries().iter().filter(|(_, e)| e.claimable(image, now)).count();
        self.settings.size.saturating_sub(unclaimed)
    }

    /// Fill the pool of `image` up to its size: the wanted instances are made at once,
    /// each created, started, given its idle timer, and only then entered. One refill at a
    /// time per state root (a lock file): a second waits, then counts again. On any
    /// failure the instance is deleted and no entry is written; the reasons are returned.
    pub fn refill(&self, incus: &Incus, image: &str, log: &HostLog) -> Result<Vec<String>> {
        std::fs::create_dir_all(&self.dir).with_context(|| format!("create `{}`", self.dir.display()))?;
        let lock_path = self.dir.join(".refill.lock");
        let lock = std::fs::File::create(&lock_path).with_context(|| format!("create `{}`", lock_path.display()))?;
        lock.lock().with_context(|| format!("lock `{}`", lock_path.display()))?;
        let wanted = self.wanted(image);
        log.line(&format!("incus: the warm pool of `{image}` wants {wanted} more instance(s)"));
        let failures = std::thread::scope(|scope| {
            let made: Vec<_> = (0..wanted).map(|_| scope.spawn(|| self.make(incus, image, log))).collect();
            made.into_iter()
                .filter_map(|h| match h.join() {
                    Ok(Ok(())) => None,
                    Ok(Err(e)) => Some(format!("{e:#}")),
                    Err(_) => Some("making a pool instance panicked".to_string()),
                })
                .collect::<Vec<String>>()
        });
        for why in &failures {
            log.line(&format!("incus: a pool instance was not made: {why}"));
        }
        Ok(failures)
    }

    fn make(&self, incus: &Incus, image: &str, log: &HostLog) -> Result<()> {
        let created_unix = unix_now();
        let name = instance_name();
        log.line(&format!(
            "incus: refilling the warm pool with `{name}` (unclaimed, it stops after {:?})",
            self.settings.idle
        ));
        let mut spec = InstanceSpec {
            description: "pikaci: a started instance waiting for one job".to_string(),
            ..Default::default()
        };
        spec.config.insert(TAG_STATE_ROOT.into(), self.state_root_tag.clone());
        spec.config.insert(TAG_POOL.into(), created_unix.to_string());
        spec.config.insert("raw.lxc".into(), DROPPED_CAPABILITIES.to_string());
        let plan = InstancePlan { name: name.clone(), image: image.to_string(), spec, exec_argv: Vec::new() };
        let instance = JobInstance::create(incus, &plan, log)?;
        check_interrupted(&name, "before the start of")?;
        instance.start()?;
        check_interrupted(&name, "before the idle timer of")?;
        let timer = ["/bin/sh".to_string(), "-c".to_string(), idle_timer(self.settings.idle)];
        incus
            .run(&incus.exec_cmd(&name, "/", &Default::default(), &timer), Some(log), Wait::ToCompletion(QUERY_TIMEOUT))
            .context("start the idle timer in the instance")?;
        let info = incus
            .query(&super::instance_path(&name), Some(log), Wait::ToCompletion(QUERY_TIMEOUT))?
            .context("the instance vanished as it was made")?;
        let fingerprint = info["config"]["volatile.base_image"].as_str().unwrap_or_default().to_string();
        anyhow::ensure!(!fingerprint.is_empty(), "Incus did not say which image the instance was made from");
        // A job claims it only while the alias still points there: an image named by
        // anything but an alias is not pooled.
        anyhow::ensure!(
            incus.alias_target(image, None)?.as_deref() == Some(fingerprint.as_str()),
            "`{image}` is not an image alias pointing at the image the instance was made from"
        );
        check_interrupted(&name, "before the entry of")?;
        let entry = Entry {
            instance: name.clone(),
            location: self.location.clone(),
            image: image.to_string(),
            fingerprint,
            recipe: POOL_RECIPE.to_string(),
            created_unix,
            idle_secs: self.settings.idle.as_secs(),
        };
        std::fs::create_dir_all(&self.dir).with_context(|| format!("create `{}`", self.dir.display()))?;
        let body = serde_json::to_vec_pretty(&entry).context("encode the pool entry")?;
        crate::tools::fs::atomic_write(&self.dir.join(format!("{name}.json")), &body, 0o640)?;
        instance.keep();
        Ok(())
    }
}

/// Whether an instance's config makes it an instance a refill of this state root made
/// and no job has claimed.
fn is_unclaimed_pool_instance(config: &serde_json::Value, state_root_tag: &str) -> bool {
    config[TAG_POOL].is_string()
        && config[super::naming::TAG_RUN].is_null()
        && config[TAG_STATE_ROOT].as_str() == Some(state_root_tag)
}

/// The log of the latest refill, in the pool's directory.
pub const REFILL_LOG: &str = "refill.log";

/// Refill the pool of `image` after the run, in a pikaci process of its own
/// (`pikaci pool-refill`, hidden) that outlives the run: the run's summary does not wait
/// for instances that only the next run needs. Its calls go to
/// `<state root>/incus-pool/refill.log`.
pub fn refill_detached(state_root: &Path, remote: Option<&str>, image: &str, settings: PoolSettings, log: &HostLog) {
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => return log.line(&format!("incus: the warm pool is not refilled: where is pikaci? {e}")),
    };
    let mut cmd = crate::tools::command::Cmd::new("pikaci pool-refill", exe)
        .arg("--state-root")
        .arg(state_root)
        .args(["pool-refill", "--image", image])
        .args(["--size", &settings.size.to_string(), "--idle", &settings.idle.as_secs().to_string()]);
    if let Some(host) = remote {
        cmd = cmd.args(["--remote", host]);
    }
    match cmd.spawn_detached() {
        Ok(()) => {
            log.line(&format!("incus: the warm pool of `{image}` is refilled in the background (`{}`)", cmd.display()))
        }
        Err(e) => log.line(&format!("incus: the warm pool is not refilled: {e:#}")),
    }
}

/// `pikaci pool-refill`: make the instances the pool of `image` lacks, on this machine's
/// daemon or `remote`'s (through SSH), logging to [`REFILL_LOG`].
pub fn refill_now(state_root: &Path, remote: Option<&str>, image: &str, settings: PoolSettings) -> Result<()> {
    let dir = state_root.join(POOL_DIR);
    std::fs::create_dir_all(&dir).with_context(|| format!("create `{}`", dir.display()))?;
    let log_path = dir.join(REFILL_LOG);
    // The latest refills only: the log starts over once it is large.
    if std::fs::metadata(&log_path).is_ok_and(|m| m.len() > 256 * 1024) {
        let _ = std::fs::remove_file(&log_path);
    }
    let log = HostLog::create(&log_path)?;
    let incus = Incus::locate(remote)?;
    log.line(&format!(
        "refill of `{image}` on {} at {} (Unix seconds), pid {}",
        incus.location(),
        unix_now(),
        std::process::id()
    ));
    let tag = super::reap::canonical_tag(state_root);
    let failures = Pool::new(state_root, &tag, settings, &incus).refill(&incus, image, &log)?;
    anyhow::ensure!(failures.is_empty(), "{} pool instance(s) were not made: {}", failures.len(), failures.join("; "));
    Ok(())
}

/// How old a pool instance without an entry or a run's tags must be for `gc` ([`leftovers`]) to take
/// it as left behind (by a pikaci killed while making it) rather than in the making.
const UNENTERED_GRACE: Duration = Duration::from_secs(120);

/// What emptying the state root's pool on `incus`' daemon deletes, among `instances`
/// (that daemon's): every entry is taken out and its instance named, and so is every
/// instance tagged with the state root that has neither an entry nor a run's tags, once
/// older than [`UNENTERED_GRACE`] (a pikaci killed while making it). Only instances whose
/// tags make them this pool's are named.
pub fn leftovers(incus: &Incus, instances: &[InstanceInfo], state_root: &Path, state_root_tag: &str) -> Vec<String> {
    let pool = Pool::new(state_root, state_root_tag, PoolSettings::OFF, incus);
    let mut entered: Vec<String> = Vec::new();
    for (path, entry) in pool.entries() {
        if std::fs::remove_file(&path).is_ok() {
            entered.push(entry.instance);
        }
    }
    let now = unix_now();
    instances
        .iter()
        .filter(|i| is_unclaimed_pool_instance(&serde_json::to_value(&i.config).unwrap_or_default(), state_root_tag))
        .filter(|i| {
            // One without an entry that is young is being made by a refill (or was claimed
            // by a run a moment ago and is about to get its tags).
            let made = i.config.get(TAG_POOL).and_then(|t| t.parse::<u64>().ok()).unwrap_or(0);
            entered.contains(&i.name) || now.saturating_sub(made) > UNENTERED_GRACE.as_secs()
        })
        .map(|i| i.name.clone())
        .collect()
}

/// The guest's idle timer: after `idle`, unless a job's artifacts directory is mounted
/// (a job claimed the instance), power the container off; Incus then deletes it (it is
/// ephemeral). Shell builtins apart from `sleep` and `poweroff` (busybox init's own
/// signal when there is no `poweroff`). Detached, so `incus exec` returns at once.
fn idle_timer(idle: Duration) -> String {
    let mounted = format!(r#"*" {} "*"#, guest::ARTIFACTS);
    format!(
        "(sleep {secs}; while read -r line; do case $line in {mounted}) exit 0;; esac; done </proc/self/mountinfo; poweroff -f || kill -USR2 1) </dev/null >/dev/null 2>&1 &",
        secs = idle.as_secs()
    )
}

/// `pikaci-pool-<12 hex digits>`: unique per process and moment.
fn instance_name() -> String {
    use sha2::{Digest, Sha256};
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or_default();
    let seed = format!("{nanos}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst));
    let digest = Sha256::digest(seed.as_bytes());
    let hex: String = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
    format!("pikaci-pool-{hex}")
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(instance: &str, image: &str, age: u64, idle: u64) -> Entry {
        Entry {
            instance: instance.into(),
            image: image.into(),
            fingerprint: "f".into(),
            location: "local".into(),
            recipe: POOL_RECIPE.into(),
            created_unix: unix_now() - age,
            idle_secs: idle,
        }
    }

    /// A pool of two on this machine's daemon.
    fn local_pool(state_root: &Path) -> Pool {
        let settings = PoolSettings { size: 2, idle: Duration::from_secs(600) };
        Pool::new(state_root, "/state", settings, &Incus::with_program("incus"))
    }

    fn write(pool: &Pool, e: &Entry) {
        std::fs::create_dir_all(&pool.dir).unwrap();
        std::fs::write(pool.dir.join(format!("{}.json", e.instance)), serde_json::to_vec(e).unwrap()).unwrap();
    }

    #[test]
    fn a_claim_takes_one_fresh_entry_of_the_image_and_clears_expired_ones() {
        let dir = tempfile::tempdir().unwrap();
        let pool = local_pool(dir.path());
        write(&pool, &entry("other-image", "team/rust", 10, 600));
        write(&pool, &entry("expired", "pikaci/busybox", 590, 600));
        let mut old_recipe = entry("old-recipe", "pikaci/busybox", 10, 600);
        old_recipe.recipe = "0".into();
        write(&pool, &old_recipe);
        write(&pool, &entry("fresh", "pikaci/busybox", 10, 600));
        // Another daemon's instance: not this pool's to claim or to delete.
        let mut remote = entry("on-a-host", "pikaci/busybox", 10, 600);
        remote.location = "ssh:ci@build1".into();
        write(&pool, &remote);

        let claimed = pool.claim("pikaci/busybox");
        assert_eq!(claimed.entry.map(|e| e.instance).as_deref(), Some("fresh"));
        let mut expired = claimed.expired;
        expired.sort();
        assert_eq!(expired, ["expired", "old-recipe"]);
        // Claimed once: nothing of that image is left; the other image's entry is.
        assert!(pool.claim("pikaci/busybox").entry.is_none());
        let left: Vec<String> = pool.entries().into_iter().map(|(_, e)| e.instance).collect();
        assert_eq!(left, ["other-image"]);
        let mut all: Vec<String> = pool.all_entries().into_iter().map(|(_, e)| e.instance).collect();
        all.sort();
        assert_eq!(all, ["on-a-host", "other-image"]);
    }

    #[test]
    fn the_pool_wants_what_its_size_lacks() {
        let dir = tempfile::tempdir().unwrap();
        let pool = local_pool(dir.path());
        assert_eq!(pool.wanted("pikaci/busybox"), 2);
        write(&pool, &entry("a", "pikaci/busybox", 10, 600));
        write(&pool, &entry("b", "pikaci/busybox", 599, 600));
        assert_eq!(pool.wanted("pikaci/busybox"), 1, "an entry about to expire does not count");
        write(&pool, &entry("c", "pikaci/busybox", 10, 600));
        write(&pool, &entry("d", "pikaci/busybox", 10, 600));
        assert_eq!(pool.wanted("pikaci/busybox"), 0);
        assert_eq!(pool.wanted("team/rust"), 2);
    }

    #[test]
    fn the_idle_timer_spares_a_claimed_instance() {
        let script = idle_timer(Duration::from_secs(0)).replace("poweroff -f || kill -USR2 1", "echo off");
        let script = script.trim_end_matches('&').replace("</dev/null >/dev/null 2>&1", "");
        let run = |mountinfo: &str| {
            let dir = tempfile::tempdir().unwrap();
            let file = dir.path().join("mountinfo");
            std::fs::write(&file, mountinfo).unwrap();
            let script = script.replace("/proc/self/mountinfo", &file.to_string_lossy());
            let out = std::process::Command::new("/bin/sh").args(["-c", &script]).output().unwrap();
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        assert_eq!(run("1 0 0:1 / / rw - ext4 x rw\n"), "off\n");
        assert_eq!(run("1 0 0:1 / / rw - ext4 x rw\n9 1 0:2 /a /pikaci/artifacts rw - ext4 y rw\n"), "");
    }
}
