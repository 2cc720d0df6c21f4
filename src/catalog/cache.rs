//! The catalog, cached: the evaluation of a snapshot is kept per (snapshot content,
//! system, the `--apply` expression, the Nix version), so that `pikaci lanes` and a run of
//! an unchanged tree start no `nix` at all. A cached evaluation is used only while every
//! `.drv` it names is still in the store (a garbage collection may have removed them);
//! otherwise, or with `--refresh`, the flake is evaluated again.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
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
        format!("{hex}.json")
    }
}

#[derive(Serialize, Deserialize)]
struct Entry {
    schema_version: u32,
    /// The `.drv` files the evaluation instantiated; all must still exist.
    drv_paths: Vec<String>,
    raw: serde_json::Value,
}

/// [`Entry`] as written.
#[derive(Serialize)]
struct EntryRef<'a> {
    schema_version: u32,
    drv_paths: Vec<&'a str>,
    raw: &'a serde_json::Value,
}

const ENTRY_VERSION: u32 = 1;

/// The cache directory of a state root's catalogs.
pub struct CatalogCache {
    pub dir: PathBuf,
}

impl CatalogCache {
    /// The recorded evaluation, when there is one and every `.drv` it names is there.
    pub fn get(&self, key: &CacheKey) -> Option<serde_json::Value> {
        let bytes = std::fs::read(self.dir.join(key.file_name())).ok()?;
        let entry: Entry = serde_json::from_slice(&bytes).ok()?;
        (entry.schema_version == ENTRY_VERSION && entry.drv_paths.iter().all(|d| Path::new(d).is_file()))
            .then_some(entry.raw)
    }

    /// Keep an evaluation. Failing to write is not an error: the next run evaluates again.
    pub fn put(&self, key: &CacheKey, raw: &serde_json::Value) {
        // Serialized from a borrow: the catalog of a large flake is not copied.
        let entry = EntryRef { schema_version: ENTRY_VERSION, drv_paths: drv_paths(raw), raw };
        let Ok(bytes) = serde_json::to_vec(&entry) else { return };
        if std::fs::create_dir_all(&self.dir).is_ok() {
            let _ = write_unsynced(&self.dir.join(key.file_name()), &bytes);
        }
    }
}

/// Every `drvPath` in an evaluation's result.
/// Written beside and renamed, without `fsync` (a large catalog's entry is megabytes, and
/// syncing it costs more than evaluating): an entry a crash left torn does not parse, and
/// the catalog is evaluated again.
fn write_unsynced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new().prefix(".tmp-").tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

fn drv_paths(raw: &serde_json::Value) -> Vec<&str> {
    let mut out = Vec::new();
    let mut stack = vec![raw];
    while let Some(v) = stack.pop() {
        match v {
            serde_json::Value::Object(map) => {
                if let Some(serde_json::Value::String(d)) = map.get("drvPath") {
                    out.push(d.as_str());
                }
                stack.extend(map.values());
            }
            serde_json::Value::Array(items) => stack.extend(items),
            _ => {}
        }
    }
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn key<'a>(snapshot: &'a str, nix_version: &'a str) -> CacheKey<'a> {
        CacheKey { snapshot, system: "x86_64-linux", apply: "lanes: lanes", nix_version }
    }

    #[test]
    fn an_entry_is_used_only_while_its_derivations_exist_and_only_for_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let drv = dir.path().join("x.drv");
        std::fs::write(&drv, "Derive(...)").unwrap();
        let raw = json!({"unit": {"payloads": {"workspace-build": {"drvPath": drv, "outputs": {}}}}});
        let cache = CatalogCache { dir: dir.path().join("cache") };
        assert!(cache.get(&key("s1", "2.34.8")).is_none());
        cache.put(&key("s1", "2.34.8"), &raw);
        assert_eq!(cache.get(&key("s1", "2.34.8")), Some(raw.clone()));
        assert!(cache.get(&key("s2", "2.34.8")).is_none(), "another snapshot");
        assert!(cache.get(&key("s1", "2.31.2")).is_none(), "another Nix");
        std::fs::remove_file(&drv).unwrap();
        assert!(cache.get(&key("s1", "2.34.8")).is_none(), "a collected .drv invalidates the entry");
    }
}
