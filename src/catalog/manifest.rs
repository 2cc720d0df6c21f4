//! `share/pikaci/payload-manifest.json` (schema 1): a payload's description of itself.
//! Optional; when present it is validated before anything runs: every path stays inside
//! the payload root, and extra mounts go only where they cannot shadow the guest view.

use std::path::{Component, Path, PathBuf};

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::error;

pub const MANIFEST_PATH: &str = "share/pikaci/payload-manifest.json";
pub const SCHEMA_VERSION: u32 = 1;

/// Guest paths an extra mount may not take or sit under: they hold the guest view itself
/// or the base system.
const RESERVED_GUEST_PATHS: &[&str] = &[
    "/workspace",
    "/pikaci/payloads",
    "/pikaci/artifacts",
    "/nix",
    "/proc",
    "/dev",
    "/sys",
    "/tmp",
    "/usr",
    "/bin",
    "/sbin",
    "/lib",
    "/lib64",
    "/etc",
    "/run",
];

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PayloadManifest {
    pub schema_version: u32,
    pub kind: String,
    /// Runnable files, relative to the payload root.
    #[serde(default)]
    pub entrypoints: Vec<String>,
    /// Extra sub-paths of the payload exposed at their own guest paths, read-only.
    #[serde(default)]
    pub mounts: Vec<ManifestMount>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestMount {
    /// Relative to the payload root; `.` is the root itself.
    pub path: String,
    /// Absolute path in the guest.
    pub guest_path: String,
}

/// An extra mount, resolved on the host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolvedMount {
    pub source: PathBuf,
    pub guest_path: String,
}

impl PayloadManifest {
    /// Read and validate the manifest of the payload `name` rooted at `root` (a realized
    /// store path). No manifest is fine: `Ok(None)`.
    pub fn load(root: &Path, name: &str) -> Result<Option<(PayloadManifest, Vec<ResolvedMount>)>> {
        let file = root.join(MANIFEST_PATH);
        let bytes = match std::fs::read(&file) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(anyhow::Error::new(e).context(format!("read `{}`", file.display()))),
        };
        let invalid = |why: String| -> anyhow::Error {
            error::config(format!("payload `{name}`: invalid `{MANIFEST_PATH}`: {why}"))
                .hint(format!("fix the derivation that writes `{}`", file.display()))
                .into()
        };
        let manifest: PayloadManifest = serde_json::from_slice(&bytes).map_err(|e| invalid(e.to_string()))?;
        if manifest.schema_version != SCHEMA_VERSION {
            return Err(invalid(format!(
                "`schema_version` is {}; this pikaci reads schema {SCHEMA_VERSION}",
                manifest.schema_version
            )));
        }
        let root = root.canonicalize().map_err(|e| invalid(format!("payload root `{}`: {e}", root.display())))?;
        for entry in &manifest.entrypoints {
            let resolved =
                resolve_inside(&root, entry).map_err(|why| invalid(format!("entrypoint `{entry}` {why}")))?;
            if !resolved.is_file() {
                return Err(invalid(format!("entrypoint `{entry}` is not a file")));
            }
        }
        let mut mounts = Vec::new();
        for mount in &manifest.mounts {
            let source = resolve_inside(&root, &mount.path)
                .map_err(|why| invalid(format!("mount path `{}` {why}", mount.path)))?;
            check_guest_path(&mount.guest_path)
                .map_err(|why| invalid(format!("mount guest_path `{}` {why}", mount.guest_path)))?;
            mounts.push(ResolvedMount { source, guest_path: mount.guest_path.clone() });
        }
        Ok(Some((manifest, mounts)))
    }
}

/// `root/rel`, canonicalized, provided that `rel` is relative, has no `..`, exists, and
/// does not leave `root` through a symlink.
fn resolve_inside(root: &Path, rel: &str) -> Result<PathBuf, String> {
    let path = Path::new(rel);
    if rel.is_empty() {
        return Err("is empty".into());
    }
    if path.is_absolute() {
        return Err("is absolute; paths in a payload manifest are relative to the payload root".into());
    }
    if path.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err("contains `..` and would escape the payload root".into());
    }
    let joined = root.join(path);
    let resolved = joined.canonicalize().map_err(|e| format!("does not exist in the payload ({e})"))?;
    if !resolved.starts_with(root) {
        return Err(format!("is a symlink out of the payload root (to `{}`)", resolved.display()));
    }
    Ok(resolved)
}

fn check_guest_path(guest: &str) -> Result<(), String> {
    let path = Path::new(guest);
    if !path.is_absolute() {
        return Err("must be absolute".into());
    }
    if path.components().any(|c| matches!(c, Component::ParentDir | Component::CurDir)) {
        return Err("must not contain `.` or `..`".into());
    }
    if path == Path::new("/") {
        return Err("must not be `/`".into());
    }
    if let Some(reserved) = RESERVED_GUEST_PATHS.iter().find(|r| path.starts_with(r) || Path::new(r).starts_with(path))
    {
        return Err(format!(
            "collides with `{reserved}`, which the guest view reserves; use a path under `/opt` or `/srv`"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn payload(manifest: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("share/pikaci")).unwrap();
        fs::create_dir_all(dir.path().join("bin")).unwrap();
        fs::write(dir.path().join("bin/run-tests"), "#!/bin/sh\n").unwrap();
        fs::create_dir_all(dir.path().join("share/assets")).unwrap();
        fs::write(dir.path().join(MANIFEST_PATH), manifest).unwrap();
        dir
    }

    #[test]
    fn absent_manifest_is_fine() {
        let dir = tempfile::tempdir().unwrap();
        assert!(PayloadManifest::load(dir.path(), "p").unwrap().is_none());
    }

    #[test]
    fn valid_manifest_resolves_mounts() {
        let dir = payload(
            r#"{"schema_version":1,"kind":"k","entrypoints":["bin/run-tests"],"mounts":[{"path":"share/assets","guest_path":"/opt/assets"}]}"#,
        );
        let (m, mounts) = PayloadManifest::load(dir.path(), "p").unwrap().unwrap();
        assert_eq!(m.entrypoints, ["bin/run-tests"]);
        assert_eq!(mounts[0].source, dir.path().canonicalize().unwrap().join("share/assets"));
        assert_eq!(mounts[0].guest_path, "/opt/assets");
    }

    fn rejected(manifest: &str) -> String {
        let dir = payload(manifest);
        crate::error::render(&PayloadManifest::load(dir.path(), "workspace-build").unwrap_err())
    }

    #[test]
    fn escapes_are_rejected_with_the_path() {
        let e = rejected(r#"{"schema_version":1,"kind":"k","entrypoints":["../../etc/passwd"]}"#);
        assert!(e.contains("entrypoint `../../etc/passwd` contains `..`"), "{e}");
        let e = rejected(r#"{"schema_version":1,"kind":"k","entrypoints":["/bin/sh"]}"#);
        assert!(e.contains("entrypoint `/bin/sh` is absolute"), "{e}");
        let e = rejected(
            r#"{"schema_version":1,"kind":"k","mounts":[{"path":"share/assets","guest_path":"/workspace/x"}]}"#,
        );
        assert!(e.contains("collides with `/workspace`"), "{e}");
        let e = rejected(r#"{"schema_version":1,"kind":"k","mounts":[{"path":"share/assets","guest_path":"opt"}]}"#);
        assert!(e.contains("must be absolute"), "{e}");
        let e = rejected(r#"{"schema_version":2,"kind":"k"}"#);
        assert!(e.contains("`schema_version` is 2"), "{e}");
        let e = rejected(r#"{"kind":"#);
        assert!(e.contains("payload `workspace-build`: invalid `share/pikaci/payload-manifest.json`"), "{e}");
    }

    #[test]
    fn symlink_out_of_the_root_is_rejected() {
        let dir = payload(r#"{"schema_version":1,"kind":"k","mounts":[{"path":"share/out","guest_path":"/opt/x"}]}"#);
        std::os::unix::fs::symlink("/etc", dir.path().join("share/out")).unwrap();
        let e = crate::error::render(&PayloadManifest::load(dir.path(), "p").unwrap_err());
        assert!(e.contains("mount path `share/out` is a symlink out of the payload root (to `/etc`)"), "{e}");
    }
}
