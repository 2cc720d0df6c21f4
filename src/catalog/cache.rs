//! The catalog, cached: the evaluation of a snapshot is kept per (snapshot content,
//! system, the `--apply` expression, the Nix version), so that `pikaci lanes` and a run of
//! an unchanged tree start no `nix` at all. A cached evaluation is used only while every
//! `.drv` it names is still in the store (a garbage collection may have removed them);
//! otherwise, or with `--refresh`, the flake is evaluated again.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// What makes one evaluation the same as another.
pub struct CacheKey<'a> {
    pub snapshot: &'a str,
    pub system: &'a str,
    pub apply: &'a str,
    pub nix_version: &'a str,
}

impl CacheKey<'_> {
    fn file_name(&self) -> String {
        let mut h = Sha256::new();
        for part in [self.snapshot, self.system, self.apply, self.nix_version] {
            h.update(part.as_bytes());
            h.update([0]);
        }
        let digest = h.finalize();
        let hex: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
        format!("{hex}.catalog")
    }
}

/// The first line of an entry; another first line is another format (and is not used).
const ENTRY_HEADER: &[u8] = b"pikaci-catalog-cache 2\n";

/// The cache directory of a state root's catalogs.
pub struct CatalogCache {
    pub dir: PathBuf,
}

impl CatalogCache {
    /// The recorded evaluation (what `nix eval` printed), when there is one and every
    /// `.drv` it names is there.
    pub fn get(&self, key: &CacheKey) -> Option<Vec<u8>> {
        let mut bytes = std::fs::read(self.dir.join(key.file_name())).ok()?;
        let rest = bytes.strip_prefix(ENTRY_HEADER)?;
        // The `.drv` paths, one a line, then an empty line, then the output as printed.
        let mut offset = ENTRY_HEADER.len();
        let mut rest = rest;
        // Each line ends in a newline (one that does not is a torn entry).
        while let Some(end) = rest.iter().position(|b| *b == b'\n') {
            let line = &rest[..end];
            offset += end + 1;
            rest = &rest[end + 1..];
            if line.is_empty() {
                bytes.drain(..offset);
                return Some(bytes);
            }
            if !Path::new(std::ffi::OsStr::from_bytes(line)).is_file() {
                return None;
            }
        }
        None
    }

    /// Keep an evaluation: `raw`, what `nix eval` printed, and the `.drv` files it names.
    /// Failing to write is not an error: the next run evaluates again.
    pub fn put<'a>(&self, key: &CacheKey, drv_paths: impl IntoIterator<Item = &'a str>, raw: &[u8]) {
        let mut head = ENTRY_HEADER.to_vec();
        for drv in drv_paths {
            if drv.is_empty() || drv.contains('\n') {
                return;
            }
            head.extend_from_slice(drv.as_bytes());
            head.push(b'\n');
        }
        head.push(b'\n');
        if std::fs::create_dir_all(&self.dir).is_ok() {
            let _ = write_unsynced(&self.dir.join(key.file_name()), &[&head, raw]);
        }
    }
}

/// Written beside and renamed, without `fsync` (a large catalog's entry is megabytes, and
/// syncing it costs more than evaluating): an entry a crash left torn does not parse, and
/// the catalog is evaluated again.
fn write_unsynced(path: &Path, parts: &[&[u8]]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new().prefix(".tmp-").tempfile_in(dir)?;
    for part in parts {
        tmp.write_all(part)?;
    }
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key<'a>(snapshot: &'a str, nix_version: &'a str) -> CacheKey<'a> {
        CacheKey { snapshot, system: "x86_64-linux", apply: "lanes: lanes", nix_version }
    }

    #[test]
    fn an_entry_is_used_only_while_its_derivations_exist_and_only_for_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let drv = dir.path().join("x.drv");
        std::fs::write(&drv, "Derive(...)").unwrap();
        let drv = drv.to_str().unwrap();
        let raw = format!(r#"{{"unit":{{"payloads":{{"workspace-build":{{"drvPath":"{drv}","outputs":{{}}}}}}}}}}"#);
        let cache = CatalogCache { dir: dir.path().join("cache") };
        assert!(cache.get(&key("s1", "2.34.8")).is_none());
        cache.put(&key("s1", "2.34.8"), [drv], raw.as_bytes());
        assert_eq!(cache.get(&key("s1", "2.34.8")).as_deref(), Some(raw.as_bytes()));
        assert!(cache.get(&key("s2", "2.34.8")).is_none(), "another snapshot");
        assert!(cache.get(&key("s1", "2.31.2")).is_none(), "another Nix");
        std::fs::remove_file(drv).unwrap();
        assert!(cache.get(&key("s1", "2.34.8")).is_none(), "a collected .drv invalidates the entry");
    }

    #[test]
    fn an_entry_of_another_format_or_cut_short_is_not_used() {
        let dir = tempfile::tempdir().unwrap();
        let cache = CatalogCache { dir: dir.path().to_path_buf() };
        let path = dir.path().join(key("s", "v").file_name());
        cache.put(&key("s", "v"), [], b"{}");
        assert_eq!(cache.get(&key("s", "v")).as_deref(), Some(&b"{}"[..]));
        std::fs::write(&path, b"pikaci-catalog-cache 1\n\n{}").unwrap();
        assert!(cache.get(&key("s", "v")).is_none(), "another format");
        std::fs::write(&path, b"pikaci-catalog-cache 2\n").unwrap();
        assert!(cache.get(&key("s", "v")).is_none(), "no end of the .drv list");
    }
}
