//! `share/pikaci/payload-manifest.json` (schema 1): a payload's description of itself.
//! Optional; when present it is validated before anything runs: every path stays inside
//! the payload root, and extra mounts go only where they cannot shadow the guest view.

use std::path::{Component, Path};

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::error;
use crate::executor::Placement;
use crate::executor::placement::{PayloadFile, Probed};
use crate::tools::log::HostLog;

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

/// An extra mount, resolved on the host: the hand-off's [`ExtraMount`].
pub use crate::handoff::ExtraMount as ResolvedMount;

impl PayloadManifest {
    /// Parse a manifest and check what needs no files: the schema, that every path is
    /// relative without `..`, and that guest paths are allowed. `file` names it in errors.
    pub fn parse(bytes: &[u8], name: &str, file: &str) -> Result<PayloadManifest> {
        let manifest: PayloadManifest =
            serde_json::from_slice(bytes).map_err(|e| invalid(name, file, e.to_string()))?;
        if manifest.schema_version != SCHEMA_VERSION {
            let why =
                format!("`schema_version` is {}; this pikaci reads schema {SCHEMA_VERSION}", manifest.schema_version);
            return Err(invalid(name, file, why));
        }
        for entry in &manifest.entrypoints {
            check_relative(entry).map_err(|why| invalid(name, file, format!("entrypoint `{entry}` {why}")))?;
        }
        for mount in &manifest.mounts {
            check_relative(&mount.path)
                .map_err(|why| invalid(name, file, format!("mount path `{}` {why}", mount.path)))?;
            check_guest_path(&mount.guest_path)
                .map_err(|why| invalid(name, file, format!("mount guest_path `{}` {why}", mount.guest_path)))?;
        }
        Ok(manifest)
    }

    /// Every path the manifest names, relative to the payload root: entrypoints, then mounts.
    pub fn paths(&self) -> Vec<&str> {
        self.entrypoints.iter().map(String::as_str).chain(self.mounts.iter().map(|m| m.path.as_str())).collect()
    }

    /// Check the named paths against what `probe` found of them (one answer per entry of
    /// [`PayloadManifest::paths`], joined to `root`): each exists, stays inside `root`
    /// (a symlink out is rejected), and entrypoints are files. Extra mounts are returned
    /// with their source under `link`, the job's GC-root link to the payload, so that
    /// placement can map them to the host that runs the job.
    pub fn resolve(
        &self,
        name: &str,
        file: &str,
        root: &Path,
        link: &Path,
        probed: &[Probed],
    ) -> Result<Vec<ResolvedMount>> {
        let paths = self.paths();
        for (i, rel) in paths.iter().enumerate() {
            let what = if i < self.entrypoints.len() { "entrypoint" } else { "mount path" };
            let Some(Some((canonical, is_file))) = probed.get(i) else {
                return Err(invalid(name, file, format!("{what} `{rel}` does not exist in the payload")));
            };
            if !canonical.starts_with(root) {
                let why = format!("{what} `{rel}` is a symlink out of the payload root (to `{}`)", canonical.display());
                return Err(invalid(name, file, why));
            }
            if what == "entrypoint" && !is_file {
                return Err(invalid(name, file, format!("entrypoint `{rel}` is not a file")));
            }
        }
        Ok(self
            .mounts
            .iter()
            .map(|m| ResolvedMount { source: link.join(&m.path), guest_path: m.guest_path.clone() })
            .collect())
    }

    /// Read and validate, on the placement's host, the manifest of the payload `name` at
    /// `root` (a realized store path, reached through the job's `link`). No manifest is
    /// fine: `Ok(None)`.
    pub fn load(
        placement: &Placement,
        root: &str,
        link: &Path,
        name: &str,
        log: &HostLog,
    ) -> Result<Option<(PayloadManifest, Vec<ResolvedMount>)>> {
        let file = format!("{root}/{MANIFEST_PATH}");
        let label = match placement {
            Placement::Local => file.clone(),
            Placement::Remote(remote) => format!("{}:{file}", remote.host),
        };
        // No link is followed anywhere under the root (`share`, `share/pikaci`, the file):
        // a link could point anywhere on the host (`/etc/shadow`, `/dev/zero`).
        let bytes = match placement.read_payload_file(root, MANIFEST_PATH, MAX_MANIFEST_BYTES, log)? {
            PayloadFile::Missing => return Ok(None),
            PayloadFile::Link(rel) => {
                return Err(invalid(name, &label, format!("`{rel}` is a symbolic link, and links are not followed")));
            }
            PayloadFile::NotRegular { directory } => {
                let what = if directory { "a directory" } else { "not a regular file" };
                return Err(invalid(name, &label, format!("it is {what}; it must be a JSON file")));
            }
            PayloadFile::Bytes(bytes) => bytes,
        };
        check_manifest_size(bytes.len() as u64, name, &label)?;
        let manifest = PayloadManifest::parse(&bytes, name, &label)?;
        // The root first, so that it is compared in its canonical form too.
        let mut paths = vec![root.to_string()];
        paths.extend(manifest.paths().iter().map(|rel| format!("{root}/{rel}")));
        let mut probed = placement.probe(&paths, log)?;
        let canonical_root = match probed.remove(0) {
            Some((canonical, _)) => canonical,
            None => anyhow::bail!("payload root `{root}` does not exist on `{}`", placement.host_name()),
        };
        let mounts = manifest.resolve(name, &label, &canonical_root, link, &probed)?;
        Ok(Some((manifest, mounts)))
    }
}

/// A manifest larger than this is refused unread (it lists a few paths).
pub const MAX_MANIFEST_BYTES: u64 = 1024 * 1024;

pub fn check_manifest_size(len: u64, name: &str, label: &str) -> Result<()> {
    if len > MAX_MANIFEST_BYTES {
        return Err(invalid(name, label, format!("it is larger than {MAX_MANIFEST_BYTES} bytes")));
    }
    Ok(())
}

/// Two extra mounts of one job (of one payload or of several) at the same guest path, or
/// one inside another: bwrap would let the last win and Incus would refuse, so it is
/// refused here, the same for both.
pub fn check_mounts_apart(mounts: &[ResolvedMount], lane: &str) -> Result<()> {
    for (i, a) in mounts.iter().enumerate() {
        for b in &mounts[i + 1..] {
            let (pa, pb) = (Path::new(&a.guest_path), Path::new(&b.guest_path));
            if pa.starts_with(pb) || pb.starts_with(pa) {
                let what = if pa == pb {
                    format!("two payload manifest mounts have the same guest_path `{}`", a.guest_path)
                } else {
                    let (outer, inner) = if pb.starts_with(pa) { (a, b) } else { (b, a) };
                    format!(
                        "payload manifest mount guest_path `{}` is inside `{}`, another mount's",
                        inner.guest_path, outer.guest_path
                    )
                };
                return Err(error::config(format!("lane `{lane}`: {what}"))
                    .hint("give each manifest mount its own guest_path, none inside another")
                    .into());
            }
        }
    }
    Ok(())
}

fn invalid(name: &str, file: &str, why: String) -> anyhow::Error {
    error::config(format!("payload `{name}`: invalid `{MANIFEST_PATH}`: {why}"))
        .hint(format!("fix the derivation that writes `{file}`"))
        .into()
}

/// A manifest path: relative to the payload root, without `..`.
fn check_relative(rel: &str) -> Result<(), String> {
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
    Ok(())
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

    /// Load through this machine's placement, as prepare does for a local job.
    fn load(root: &Path, link: &Path, name: &str) -> Result<Option<(PayloadManifest, Vec<ResolvedMount>)>> {
        let logs = tempfile::tempdir().unwrap();
        let log = HostLog::create(&logs.path().join("host.log")).unwrap();
        PayloadManifest::load(&Placement::Local, root.to_str().unwrap(), link, name, &log)
    }

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
        assert!(load(dir.path(), dir.path(), "p").unwrap().is_none());
    }

    #[test]
    fn valid_manifest_resolves_mounts() {
        let dir = payload(
            r#"{"schema_version":1,"kind":"k","entrypoints":["bin/run-tests"],"mounts":[{"path":"share/assets","guest_path":"/opt/assets"}]}"#,
        );
        let link = Path::new("/state/runs/r/jobs/j/staged-linux-rust/p");
        let (m, mounts) = load(dir.path(), link, "p").unwrap().unwrap();
        assert_eq!(m.entrypoints, ["bin/run-tests"]);
        // Through the job's link to the payload, so that placement can map it.
        assert_eq!(mounts[0].source, link.join("share/assets"));
        assert_eq!(mounts[0].guest_path, "/opt/assets");
    }

    fn rejected(manifest: &str) -> String {
        let dir = payload(manifest);
        crate::error::render(&load(dir.path(), dir.path(), "workspace-build").unwrap_err())
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
        let e = crate::error::render(&load(dir.path(), dir.path(), "p").unwrap_err());
        assert!(e.contains("mount path `share/out` is a symlink out of the payload root (to `/etc`)"), "{e}");
    }
}
