//! Instances started ahead of their jobs, and deleted after them, in the background.
//!
//! A job's instance is created and started (with the devices whose sources exist before
//! its payloads do) while the payloads are realized; the job then adds its payload and
//! store devices to the running instance in one call and runs its command. A read-only
//! disk added to a *running* container is not locked read-only by the kernel: a guest
//! root with `CAP_SYS_ADMIN` could remount it read-write and write the host's files (seen
//! with Incus 6.0 here). So every job's container runs without that capability
//! ([`super::spec::DROPPED_CAPABILITIES`], init included): nothing in it can remount
//! or unmount, and in a user namespace of its own the kernel locks the mounts it
//! inherits. `incus_holds_the_host_mounts` tries both. After the command, the job's
//! result is recorded and printed while its instance is deleted (`incus delete --force`
//! costs about half a second, most of it lxcfs' stop hook). [`Warmed::finish`] waits
//! for every deletion and removes what was warmed for jobs that never ran; `pikaci gc`
//! reaps what a killed pikaci leaves, by its tags.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use anyhow::Result;

use super::pool::Pool;
use super::{InstancePlan, JobInstance, check_interrupted};
use crate::tools::command::is_interrupted;
use crate::tools::incus::Incus;
use crate::tools::log::HostLog;

#[derive(Default)]
pub struct Warmed {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// By instance name.
    /// `Ok(None)`: nothing was got ready (a remote job with no pool instance to claim).
    starting: HashMap<String, JoinHandle<Result<Option<JobInstance>>>>,
    deleting: Vec<JoinHandle<Option<String>>>,
}

/// An instance being started for a job.
pub struct Warm(JoinHandle<Result<Option<JobInstance>>>);

impl Warmed {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Get the instance of `plan` ready in the background: one of the warm pool's when
    /// there is one to claim, else (when `create`) one created and started now. Its calls
    /// go to the job's `host.log`, like every other of the job's calls.
    pub fn start(&self, incus: &Incus, pool: &Arc<Pool>, plan: InstancePlan, create: bool, log: &HostLog) {
        let log = log.clone();
        let incus = incus.clone();
        let name = plan.name.clone();
        let claimed = if pool.enabled() { pool.claim(&plan.image) } else { Default::default() };
        for expired in claimed.expired {
            log.line(&format!("incus: `{expired}` of the warm pool idled too long; deleting it"));
            let (incus, pool, log) = (incus.clone(), pool.clone(), log.clone());
            let handle = std::thread::spawn(move || {
                // Not the run's own: told in the job's log only (it idles out, or gc takes it).
                if let Err(e) = pool.delete_expired(&incus, &expired, &log) {
                    log.line(&format!("incus: `{expired}` of the warm pool was not deleted: {e:#}"));
                }
                None
            });
            self.lock().deleting.push(handle);
        }
        let pool = pool.clone();
        let handle = std::thread::spawn(move || {
            if let Some(entry) = claimed.entry {
                match pool.adopt(&incus, &entry, &plan, &log) {
                    Ok(instance) => return Ok(Some(instance)),
                    Err(e) if is_interrupted(&e) => return Err(e),
                    Err(e) => {
                        log.line(&format!("incus: `{}` of the warm pool cannot be this job's: {e:#}", entry.instance))
                    }
                }
            }
            if !create {
                return Ok(None);
            }
            log.line(&format!("incus: creating instance `{}` while the job's payloads are realized", plan.name));
            check_interrupted(&plan.name, "before the creation of")?;
            let instance = JobInstance::create(&incus, &plan, &log)?;
            // An early return drops the instance, which deletes it.
            check_interrupted(&plan.name, "before the start of")?;
            instance.start()?;
            Ok(Some(instance))
        });
        self.lock().starting.insert(name, handle);
    }

    pub fn take(&self, name: &str) -> Option<Warm> {
        self.lock().starting.remove(name).map(Warm)
    }

    /// Delete the instance without waiting for it.
    pub fn delete_in_background(&self, instance: JobInstance) {
        let handle = std::thread::spawn(move || {
            let log = instance.log.clone();
            let failed = instance.delete().err().map(|e| format!("{e:#}"));
            if let Some(why) = &failed {
                log.line(why);
            }
            failed
        });
        self.lock().deleting.push(handle);
    }

    /// Drop the instance warmed for a job that will not run, without waiting for it.
    pub fn abandon_in_background(&self, warm: Warm) {
        let handle = std::thread::spawn(move || {
            warm.abandon();
            None
        });
        self.lock().deleting.push(handle);
    }

    /// Wait for every deletion; delete the instances warmed for jobs that never ran.
    /// Returns the deletions that failed (their messages start with
    /// [`super::INSTANCE_NOT_DELETED`], which `pikaci gc` looks for).
    pub fn finish(&self) -> Vec<String> {
        let (starting, deleting) = {
            let mut inner = self.lock();
            (std::mem::take(&mut inner.starting), std::mem::take(&mut inner.deleting))
        };
        for (_, handle) in starting {
            let _ = Warm(handle).abandon();
        }
        deleting.into_iter().filter_map(|h| h.join().ok().flatten()).collect()
    }
}

impl Warm {
    fn join(self) -> Result<Option<JobInstance>> {
        self.0.join().unwrap_or_else(|payload| {
            Err(crate::error::internal(format!(
                "starting an instance ahead of its job panicked: {}",
                crate::error::panic_message(payload.as_ref())
            ))
            .into())
        })
    }

    /// The instance started ahead, with the job's other devices added; `None` when none
    /// was got ready.
    pub fn ready(self, plan: &InstancePlan, log: &HostLog) -> Result<Option<JobInstance>> {
        let Some(instance) = self.join()? else { return Ok(None) };
        log.line(&format!("incus: instance `{}` was started ahead; adding the job's devices", instance.name()));
        check_interrupted(instance.name(), "before the devices were added to")?;
        instance.add_devices(plan)?;
        Ok(Some(instance))
    }

    /// The job will not run: delete the instance. Returns the warm-up's error when it
    /// was interrupted, which says more than the job's own interruption.
    pub fn abandon(self) -> Option<anyhow::Error> {
        match self.join() {
            Ok(instance) => {
                drop(instance);
                None
            }
            Err(e) if is_interrupted(&e) => Some(e),
            Err(_) => None,
        }
    }
}
