//! Names and tags of what pikaci creates in Incus: deterministic (the same run and job
//! always give the same name), within Incus' rules, and collision-free.
//!
//! - Instance: `pikaci-<run>-<job>`. Incus allows 1–63 letters, digits and hyphens, a
//!   letter first, no hyphen last. A name that is too long or would need a character
//!   replaced becomes its first 50 characters (trailing hyphens trimmed), `-`, and 12 hex
//!   digits of the SHA-256 of the full name: still readable, still unique.
//! - Devices: `payload-<device_prefix>` per staged payload, `extra-<n>-<guest path>` per
//!   manifest mount, and the fixed `workspace`, `nix-store`, `artifacts`. Incus allows
//!   1–63 characters of letters, digits, `-`, `_`, `.` (and `:` `/`, which pikaci does
//!   not use). The prefixes keep the three families apart; the same hashing rule keeps
//!   payload names unique when one must be shortened, and a long guest path readable.

use sha2::{Digest, Sha256};

/// `user.pikaci.run`: the run that created the instance.
pub const TAG_RUN: &str = "user.pikaci.run";
/// `user.pikaci.job`: the job the instance runs.
pub const TAG_JOB: &str = "user.pikaci.job";
/// `user.pikaci.state_root`: the canonical state root of that run; `pikaci gc` of this
/// state root reaps the instance once the run is no longer live.
pub const TAG_STATE_ROOT: &str = "user.pikaci.state_root";
/// `user.pikaci.pool`: on an instance of the warm pool, when it was made (Unix seconds).
/// One without [`TAG_RUN`] waits for a job; a job that claims it adds its own tags.
pub const TAG_POOL: &str = "user.pikaci.pool";

pub const MAX_INSTANCE_NAME: usize = 63;
pub const MAX_DEVICE_NAME: usize = 63;
const HASH_HEX: usize = 12;

pub const DEVICE_WORKSPACE: &str = "workspace";
pub const DEVICE_NIX_STORE: &str = "nix-store";
pub const DEVICE_ARTIFACTS: &str = "artifacts";

/// The instance of a job: `pikaci-<run>-<job>`, shortened with a hash when needed.
pub fn instance_name(run_id: &str, job_id: &str) -> String {
    let full = format!("pikaci-{run_id}-{job_id}");
    let clean: String = full.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '-' }).collect();
    bounded(&full, &clean, MAX_INSTANCE_NAME)
}

/// The disk device of one store path of the guest's closure (`/nix/store/<base>`).
pub fn store_device(base: &str) -> String {
    let full = format!("store-{base}");
    let clean: String = full.chars().map(device_char).collect();
    bounded(&full, &clean, MAX_DEVICE_NAME)
}

/// The disk device of a staged payload.
pub fn payload_device(device_prefix: &str) -> String {
    let full = format!("payload-{device_prefix}");
    let clean: String = full.chars().map(device_char).collect();
    bounded(&full, &clean, MAX_DEVICE_NAME)
}

/// The disk device of the `index`-th manifest mount: the index makes it unique, the
/// guest path makes it readable.
pub fn extra_device(index: usize, guest_path: &str) -> String {
    let readable: String = guest_path.trim_matches('/').chars().map(device_char).collect();
    let name = format!("extra-{index}-{readable}");
    let name = name.trim_end_matches(['-', '.']);
    if name.len() <= MAX_DEVICE_NAME {
        return name.to_string();
    }
    // Too long: a readable stem and a hash of the whole guest path (device_char keeps
    // everything ASCII, so the byte cut falls on a character boundary).
    let stem = &name[..MAX_DEVICE_NAME - 1 - HASH_HEX];
    format!("{}-{}", stem.trim_end_matches(['-', '.', '_']), short_hash(guest_path))
}

fn device_char(c: char) -> char {
    if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') { c } else { '-' }
}

/// `clean` when it is `full` unchanged and fits; else its shortened, hashed form.
fn bounded(full: &str, clean: &str, max: usize) -> String {
    if clean == full && full.len() <= max && !full.ends_with('-') {
        return full.to_string();
    }
    let hash = short_hash(full);
    let stem_len = max - 1 - HASH_HEX;
    let stem: String = clean.chars().take(stem_len).collect();
    format!("{}-{hash}", stem.trim_end_matches(['-', '.', '_']))
}

fn short_hash(text: &str) -> String {
    let digest = Sha256::digest(text.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect::<String>()[..HASH_HEX].to_string()
}

/// Incus' rule for instance names, for tests and assertions.
pub fn is_valid_instance_name(name: &str) -> bool {
    (1..=MAX_INSTANCE_NAME).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_alphabetic())
        && !name.ends_with('-')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

/// Incus' rule for device names (the subset pikaci produces).
pub fn is_valid_device_name(name: &str) -> bool {
    (1..=MAX_DEVICE_NAME).contains(&name.len())
        && !name.starts_with('.')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    const RUN: &str = "20261121-163300-123-9f3a";

    #[test]
    fn short_names_are_the_plain_form() {
        assert_eq!(instance_name(RUN, "unit"), "pikaci-20261121-163300-123-9f3a-unit");
        assert_eq!(payload_device("workspace-build"), "payload-workspace-build");
        assert_eq!(extra_device(0, "/opt/assets"), "extra-0-opt-assets");
    }

    #[test]
    fn the_longest_job_id_is_shortened_with_a_hash_and_stays_valid() {
        let job = "a".repeat(48);
        let name = instance_name(RUN, &job);
        assert_eq!(name.len(), MAX_INSTANCE_NAME, "{name}");
        assert!(is_valid_instance_name(&name), "{name}");
        assert!(name.starts_with("pikaci-20261121-163300-123-9f3a-aaaa"), "{name}");
        // Deterministic.
        assert_eq!(name, instance_name(RUN, &job));
    }

    #[test]
    fn names_that_share_the_shortened_stem_do_not_collide() {
        let base = "x".repeat(40);
        let mut seen = HashSet::new();
        for suffix in ["", "-a", "-b", "-c1", "-c2"] {
            let job = format!("{base}{suffix}");
            let name = instance_name(RUN, &job);
            assert!(is_valid_instance_name(&name), "{name}");
            assert!(seen.insert(name.clone()), "collision: {name}");
        }
        // Same job, other run: another name.
        assert_ne!(instance_name(RUN, &base), instance_name("20261121-163300-124-0000", &base));
    }

    #[test]
    fn every_length_of_job_id_gives_a_valid_name() {
        let mut seen = HashSet::new();
        for len in 1..=48 {
            for job in ["j".repeat(len), format!("{}-", "k".repeat(len - 1)), format!("{}9", "-".repeat(len - 1))] {
                let name = instance_name(RUN, &job);
                assert!(is_valid_instance_name(&name), "job {job:?} gave {name:?}");
                assert!(seen.insert(name), "collision for {job:?}");
            }
        }
    }

    #[test]
    fn characters_incus_refuses_are_replaced_and_the_name_hashed() {
        let a = instance_name("run_1", "unit");
        let b = instance_name("run-1", "unit");
        assert!(is_valid_instance_name(&a), "{a}");
        assert_ne!(a, b, "replacing `_` must not make two runs share a name");
        assert_eq!(b, "pikaci-run-1-unit");
    }

    #[test]
    fn a_long_guest_path_gives_a_valid_distinct_device_name() {
        let long = format!("/opt/{}", "very-long-directory-name/".repeat(8));
        let other = format!("{long}x");
        let (a, b) = (extra_device(0, &long), extra_device(0, &other));
        assert!(is_valid_device_name(&a), "{a} ({} chars)", a.len());
        assert_eq!(a.len(), MAX_DEVICE_NAME);
        assert!(a.starts_with("extra-0-opt-very-long-directory-name"), "{a}");
        assert_ne!(a, b);
        assert_eq!(a, extra_device(0, &long), "deterministic");
        assert_eq!(extra_device(1, "/opt/assets"), "extra-1-opt-assets");
    }

    #[test]
    fn device_names_are_valid_unique_and_never_fixed_names() {
        let fixed = [DEVICE_WORKSPACE, DEVICE_NIX_STORE, DEVICE_ARTIFACTS, "root"];
        let mut seen: HashSet<String> = fixed.iter().map(|s| s.to_string()).collect();
        let long = "p".repeat(60);
        for prefix in ["workspace-deps", "workspace-build", "extra", "workspace", "root", long.as_str(), "a/b", "a-b"] {
            let name = payload_device(prefix);
            assert!(is_valid_device_name(&name), "{prefix} gave {name}");
            assert!(seen.insert(name.clone()), "collision for {prefix}: {name}");
        }
        for (i, path) in ["/opt/assets", "/opt/assets", "/srv/a-b", "/srv/a/b", &format!("/opt/{}", "z".repeat(80))]
            .iter()
            .enumerate()
        {
            let name = extra_device(i, path);
            assert!(is_valid_device_name(&name), "{path} gave {name}");
            assert!(seen.insert(name.clone()), "collision for {path}: {name}");
        }
    }
}
