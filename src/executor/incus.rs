//! The Incus runtime (in progress).

use anyhow::Result;

use super::{GuestOutcome, HostContext, JobIo, Placement, Runtime, RuntimeReport};
use crate::error;

pub struct IncusRuntime;

impl IncusRuntime {
    pub fn connect(_placement: &Placement, _image: Option<&str>) -> Result<IncusRuntime> {
        Err(error::infra("the incus runtime is not available in this build").into())
    }
}

impl Runtime for IncusRuntime {
    fn name(&self) -> &'static str {
        "incus"
    }
    fn run(&self, _ctx: &HostContext, _io: &JobIo, _report: &mut RuntimeReport) -> Result<GuestOutcome> {
        Err(error::infra("the incus runtime is not available in this build").into())
    }
}

pub const DEFAULT_IMAGE: &str = "pikaci/busybox";

pub fn import_image(_alias: &str, _from: Option<&std::path::Path>, _force: bool) -> Result<String> {
    Err(error::infra("the incus runtime is not available in this build").into())
}

pub fn reap_orphans(_state: &crate::state::StateRoot) -> Result<Vec<String>> {
    Ok(Vec::new())
}

pub fn doctor_checks(_state: &crate::state::StateRoot) -> Vec<crate::doctor::Check> {
    Vec::new()
}
