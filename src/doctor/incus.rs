//! `pikaci doctor`'s view of Incus: whether this machine can run the Incus runtime. Quiet
//! when Incus is simply not installed: it is optional when bubblewrap works.

use super::Check;
use crate::executor::runtime::incus::{DEFAULT_IMAGE, daemon_error, incus_failure, orphans};
use crate::state::StateRoot;
use crate::tools::incus::{Incus, Wait};

/// `pikaci doctor`'s view of Incus. Not installed: one line, not a list of failures.
pub fn doctor_checks(state: &StateRoot) -> Vec<Check> {
    let mut checks = Vec::new();
    let incus = match Incus::local() {
        Ok(incus) => incus,
        Err(_) => {
            checks.push(Check::fail(
                "incus",
                "`incus` is not on PATH (optional: `--runtime auto` uses bwrap without it)",
                "for container isolation install Incus: `scripts/bootstrap` (Debian 12) or the NixOS module",
            ));
            return checks;
        }
    };
    checks.push(Check::ok("incus", format!("client {}", incus.client())));
    let server = match incus.server() {
        Ok(server) => server,
        Err(e) => {
            let err = daemon_error(&incus, e);
            let fix = crate::error::classification(&err)
                .and_then(|c| c.hint.clone())
                .unwrap_or_else(|| "start the Incus daemon".into());
            checks.push(Check::fail("incus daemon", format!("{err:#}"), fix));
            return checks;
        }
    };
    let env = &server["environment"];
    let text = |v: &serde_json::Value| v.as_str().unwrap_or("?").to_string();
    checks.push(Check::ok(
        "incus daemon",
        format!(
            "Incus {} answers (driver {} {}, storage {})",
            text(&env["server_version"]),
            text(&env["driver"]),
            text(&env["driver_version"]),
            text(&env["storage"])
        ),
    ));
    if env["kernel_features"]["idmapped_mounts"] == "true" {
        checks.push(Check::ok("incus idmap", "idmapped mounts work (`shift=true` disk devices)"));
    } else {
        checks.push(Check::fail(
            "incus idmap",
            "the kernel has no idmapped mounts, which `shift=true` disk devices need",
            "use a kernel 5.12 or newer (with idmapped mounts for the pool's and the host's filesystems)",
        ));
    }
    checks.push(storage_check(&incus));
    checks.push(image_check(&incus));
    match orphans(&incus, state) {
        Ok(list) if list.is_empty() => {
            checks.push(Check::ok("incus orphans", "no instances left behind by runs of this state root"))
        }
        Ok(list) => checks.push(Check::ok(
            "incus orphans",
            format!(
                "{} instance(s) left behind by runs that died: {} (`pikaci gc` removes them)",
                list.len(),
                list.iter().map(|i| i.name.as_str()).collect::<Vec<_>>().join(", ")
            ),
        )),
        Err(e) => {
            checks.push(Check::fail("incus orphans", format!("could not list instances: {e:#}"), "check `incus list`"))
        }
    }
    checks
}

/// The default profile gives instances a root disk in a pool that exists.
pub fn storage_check(incus: &Incus) -> Check {
    let fix = "create a storage pool and a default profile with a root disk: `incus admin init --preseed` (see `scripts/bootstrap`)";
    let wait = Wait::Interruptible(crate::tools::incus::QUERY_TIMEOUT);
    let profile = match incus.query("/1.0/profiles/default", None, wait) {
        Ok(Some(p)) => p,
        Ok(None) => return Check::fail("incus storage", "there is no `default` profile", fix),
        Err(e) => {
            return Check::fail(
                "incus storage",
                format!("could not read the `default` profile: {}", incus_failure(&e)),
                fix,
            );
        }
    };
    let root = profile["devices"].as_object().and_then(|devices| {
        devices
            .values()
            .find(|d| d["type"] == "disk" && d["path"] == "/")
            .and_then(|d| d["pool"].as_str().map(str::to_string))
    });
    let Some(pool) = root else {
        return Check::fail("incus storage", "the `default` profile has no root disk device", fix);
    };
    match incus.query(&format!("/1.0/storage-pools/{}", crate::tools::incus::url_segment(&pool)), None, wait) {
        Ok(Some(p)) => Check::ok(
            "incus storage",
            format!("the `default` profile's root disk is in pool `{pool}` ({})", p["driver"].as_str().unwrap_or("?")),
        ),
        Ok(None) => Check::fail(
            "incus storage",
            format!("the `default` profile's root disk names pool `{pool}`, which does not exist"),
            fix,
        ),
        Err(e) => Check::fail("incus storage", format!("could not read pool `{pool}`: {}", incus_failure(&e)), fix),
    }
}

/// The default image is imported (on the host `incus` reaches).
pub fn image_check(incus: &Incus) -> Check {
    let fix = match incus.remote_host() {
        Some(host) => format!("`pikaci image import --remote {host}`"),
        None => "`pikaci image import`".to_string(),
    };
    match incus.alias_target(DEFAULT_IMAGE, None) {
        Ok(Some(fingerprint)) => Check::ok(
            "incus image",
            format!("`{DEFAULT_IMAGE}` is imported ({})", &fingerprint[..fingerprint.len().min(12)]),
        ),
        Ok(None) => Check::fail("incus image", format!("the default image `{DEFAULT_IMAGE}` is not imported"), fix),
        Err(e) => {
            Check::fail("incus image", format!("could not look up `{DEFAULT_IMAGE}`: {}", incus_failure(&e)), fix)
        }
    }
}
