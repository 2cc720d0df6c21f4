//! Source snapshots: the work tree as a lane sees it (tracked and untracked-not-ignored
//! files; not `.git`, not the state root, not ignored build output), copied once into
//! `snapshots/<content-hash>/` and shared by every run with the same content.
//!
//! The content hash of each file is cached by its stat data (size, mtime, ctime, inode),
//! as git's index does, so an unchanged tree is recognised without reading its files.

use std::collections::HashMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::state::atomic_write;
use crate::tools::git;

const CACHE_SCHEMA: u32 = 1;
/// Files modified this recently are hashed again next time: their mtime may not yet
/// tell a later edit apart (git's "racily clean" entries).
const RACY_WINDOW: Duration = Duration::from_secs(2);

/// A snapshot on disk.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// The content hash; also the directory name.
    pub id: String,
    pub dir: PathBuf,
    pub files: usize,
    pub bytes: u64,
    /// True when a snapshot with this content already existed and nothing was copied.
    #[serde(default)]
    pub reused: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum EntryKind {
    File { executable: bool },
    Symlink { target: PathBuf },
}

#[derive(Clone, Debug)]
struct Entry {
    rel: PathBuf,
    kind: EntryKind,
    size: u64,
    stat: StatKey,
    hash: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct StatKey {
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
    ino: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct StatCache {
    schema_version: u32,
    source: PathBuf,
    entries: HashMap<PathBuf, (StatKey, String)>,
}

/// Take a snapshot of `source` into `snapshots_dir`, leaving out `exclude` (the state
/// root, when it lies inside the source).
pub fn take(source: &Path, snapshots_dir: &Path, cache_file: &Path, exclude: &[PathBuf]) -> Result<Snapshot> {
    let rels = list_files(source, exclude)?;
    let mut cache = load_cache(cache_file, source);
    let now = SystemTime::now();
    let mut entries = Vec::with_capacity(rels.len());
    for rel in rels {
        if let Some(entry) = stat_entry(source, &rel)? {
            entries.push(entry);
        }
    }
    entries.sort_by(|a, b| a.rel.cmp(&b.rel));

    // Hash what the cache does not vouch for.
    let mut cache_dirty = false;
    for entry in &mut entries {
        match &entry.kind {
            EntryKind::Symlink { target } => {
                entry.hash = Some(hex(&Sha256::digest(target.as_os_str().as_encoded_bytes())))
            }
            EntryKind::File { .. } => {
                if let Some((key, hash)) = cache.entries.get(&entry.rel)
                    && *key == entry.stat
                {
                    entry.hash = Some(hash.clone());
                    continue;
                }
                let hash = hash_file(&source.join(&entry.rel))?;
                if !is_racy(entry.stat, now) {
                    cache.entries.insert(entry.rel.clone(), (entry.stat, hash.clone()));
                    cache_dirty = true;
                }
                entry.hash = Some(hash);
            }
        }
    }
    if cache_dirty || cache.entries.len() > entries.len() {
        let live: std::collections::HashSet<&PathBuf> = entries.iter().map(|e| &e.rel).collect();
        cache.entries.retain(|k, _| live.contains(k));
        cache.schema_version = CACHE_SCHEMA;
        cache.source = source.to_path_buf();
        // The cache only saves time; failing to write it must not fail a run.
        if let Ok(bytes) = serde_json::to_vec(&cache) {
            let _ = atomic_write(cache_file, &bytes);
        }
    }

    let id = tree_id(&entries);
    let files = entries.len();
    let bytes = entries.iter().map(|e| e.size).sum();
    let dir = snapshots_dir.join(&id);
    if dir.is_dir() {
        return Ok(Snapshot { id, dir, files, bytes, reused: true });
    }
    fs::create_dir_all(snapshots_dir).with_context(|| format!("create `{}`", snapshots_dir.display()))?;
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".tmp-{id}-"))
        .tempdir_in(snapshots_dir)
        .with_context(|| format!("create a temporary directory in `{}`", snapshots_dir.display()))?;
    copy_entries(source, tmp.path(), &entries)?;
    let tmp_path = tmp.keep();
    match fs::rename(&tmp_path, &dir) {
        Ok(()) => Ok(Snapshot { id, dir, files, bytes, reused: false }),
        // Another run published the same content first: theirs is as good as ours.
        Err(_) if dir.is_dir() => {
            let _ = fs::remove_dir_all(&tmp_path);
            Ok(Snapshot { id, dir, files, bytes, reused: true })
        }
        Err(e) => {
            let _ = fs::remove_dir_all(&tmp_path);
            Err(anyhow::Error::new(e).context(format!("publish snapshot `{}`", dir.display())))
        }
    }
}

/// The files that make up the work tree, relative to `source`.
fn list_files(source: &Path, exclude: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let excluded = |rel: &Path| -> bool {
        rel.components().next().is_some_and(|c| c.as_os_str() == ".git" || c.as_os_str() == ".pikaci")
            || exclude.iter().any(|x| rel.starts_with(x))
    };
    let mut out = Vec::new();
    if git::is_work_tree(source) {
        for rel in git::work_tree_files(source)? {
            if excluded(&rel) {
                continue;
            }
            let full = source.join(&rel);
            // A submodule is listed as a directory: take its files too.
            if full.symlink_metadata().is_ok_and(|m| m.is_dir()) {
                walk(source, &rel, &excluded, &mut out)?;
            } else {
                out.push(rel);
            }
        }
    } else {
        walk(source, Path::new(""), &|rel: &Path| excluded(rel) || is_build_output(rel), &mut out)?;
    }
    Ok(out)
}

/// Outside git there is no ignore list; leave out what is always build output.
fn is_build_output(rel: &Path) -> bool {
    let first = rel.components().next().map(|c| c.as_os_str().to_string_lossy().into_owned()).unwrap_or_default();
    rel.components().count() == 1 && (first == "result" || first.starts_with("result-")) || first == "target"
}

fn walk(source: &Path, rel: &Path, excluded: &dyn Fn(&Path) -> bool, out: &mut Vec<PathBuf>) -> Result<()> {
    let dir = source.join(rel);
    for entry in fs::read_dir(&dir).with_context(|| format!("read directory `{}`", dir.display()))? {
        let entry = entry?;
        let child = rel.join(entry.file_name());
        if excluded(&child) || entry.file_name() == ".git" {
            continue;
        }
        if entry.file_type()?.is_dir() {
            walk(source, &child, excluded, out)?;
        } else {
            out.push(child);
        }
    }
    Ok(())
}

fn stat_entry(source: &Path, rel: &Path) -> Result<Option<Entry>> {
    let full = source.join(rel);
    let meta = match full.symlink_metadata() {
        Ok(m) => m,
        // Listed by git but deleted in the work tree: the lane sees it deleted.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(anyhow::Error::new(e).context(format!("stat `{}`", full.display()))),
    };
    let stat = StatKey {
        size: meta.size(),
        mtime_ns: meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128,
        ctime_ns: meta.ctime() as i128 * 1_000_000_000 + meta.ctime_nsec() as i128,
        ino: meta.ino(),
    };
    let kind = if meta.file_type().is_symlink() {
        EntryKind::Symlink { target: fs::read_link(&full).with_context(|| format!("read link `{}`", full.display()))? }
    } else if meta.is_file() {
        EntryKind::File { executable: meta.permissions().mode() & 0o111 != 0 }
    } else {
        // Sockets, fifos, devices: not source.
        return Ok(None);
    };
    Ok(Some(Entry { rel: rel.to_path_buf(), kind, size: meta.size(), stat, hash: None }))
}

fn is_racy(stat: StatKey, now: SystemTime) -> bool {
    let now_ns = now.duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as i128).unwrap_or(0);
    now_ns - stat.mtime_ns.max(stat.ctime_ns) < RACY_WINDOW.as_nanos() as i128
}

fn hash_file(path: &Path) -> Result<String> {
    let mut file = fs::File::open(path).with_context(|| format!("read `{}`", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buf).with_context(|| format!("read `{}`", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

/// The snapshot id: a hash over every entry's path, kind, mode and content hash.
fn tree_id(entries: &[Entry]) -> String {
    let mut hasher = Sha256::new();
    for e in entries {
        let kind = match e.kind {
            EntryKind::File { executable: true } => "x",
            EntryKind::File { executable: false } => "f",
            EntryKind::Symlink { .. } => "l",
        };
        hasher.update(kind.as_bytes());
        hasher.update(b" ");
        hasher.update(e.rel.as_os_str().as_encoded_bytes());
        hasher.update(b"\0");
        hasher.update(e.hash.as_deref().unwrap_or("").as_bytes());
        hasher.update(b"\n");
    }
    hex(&hasher.finalize())[..32].to_string()
}

fn copy_entries(source: &Path, dest: &Path, entries: &[Entry]) -> Result<()> {
    let mut dirs: Vec<&Path> =
        entries.iter().filter_map(|e| e.rel.parent()).filter(|p| !p.as_os_str().is_empty()).collect();
    dirs.sort();
    dirs.dedup();
    for d in dirs {
        fs::create_dir_all(dest.join(d)).with_context(|| format!("create `{}`", dest.join(d).display()))?;
    }
    // Copying many small files is syscall-bound: spread it over the cores.
    let workers = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).clamp(1, 8);
    let chunk = entries.len().div_ceil(workers).max(1);
    std::thread::scope(|scope| {
        let handles: Vec<_> = entries
            .chunks(chunk)
            .map(|part| scope.spawn(move || part.iter().try_for_each(|e| copy_entry(source, dest, e))))
            .collect();
        handles
            .into_iter()
            .try_for_each(|h| h.join().unwrap_or_else(|_| Err(anyhow::anyhow!("snapshot copy thread panicked"))))
    })
}

fn copy_entry(source: &Path, dest: &Path, entry: &Entry) -> Result<()> {
    let to = dest.join(&entry.rel);
    match &entry.kind {
        EntryKind::Symlink { target } => {
            std::os::unix::fs::symlink(target, &to).with_context(|| format!("create link `{}`", to.display()))?;
        }
        EntryKind::File { .. } => {
            let from = source.join(&entry.rel);
            fs::copy(&from, &to).with_context(|| format!("copy `{}` into the snapshot", from.display()))?;
        }
    }
    Ok(())
}

fn load_cache(path: &Path, source: &Path) -> StatCache {
    let cache: Option<StatCache> = fs::read(path).ok().and_then(|b| serde_json::from_slice(&b).ok());
    match cache {
        Some(c) if c.schema_version == CACHE_SCHEMA && c.source == source => c,
        _ => StatCache::default(),
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        fs::create_dir_all(p.join("src/deep")).unwrap();
        fs::write(p.join("Cargo.toml"), "[workspace]\n").unwrap();
        fs::write(p.join("src/deep/lib.rs"), "pub fn f() {}\n").unwrap();
        fs::write(p.join("run.sh"), "#!/bin/sh\n").unwrap();
        fs::set_permissions(p.join("run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::symlink("Cargo.toml", p.join("link")).unwrap();
        fs::create_dir_all(p.join("target/debug")).unwrap();
        fs::write(p.join("target/debug/big"), "x").unwrap();
        fs::create_dir_all(p.join(".pikaci/runs")).unwrap();
        fs::write(p.join(".pikaci/runs/x"), "state").unwrap();
        dir
    }

    #[test]
    fn copies_the_tree_without_state_or_build_output_and_reuses_it() {
        let src = tree();
        let state = tempfile::tempdir().unwrap();
        let snaps = state.path().join("snapshots");
        let cache = state.path().join("cache.json");
        let first = take(src.path(), &snaps, &cache, &[]).unwrap();
        assert!(!first.reused);
        assert_eq!(first.files, 4);
        assert_eq!(fs::read_to_string(first.dir.join("src/deep/lib.rs")).unwrap(), "pub fn f() {}\n");
        assert_eq!(fs::read_link(first.dir.join("link")).unwrap(), Path::new("Cargo.toml"));
        assert!(fs::metadata(first.dir.join("run.sh")).unwrap().permissions().mode() & 0o100 != 0);
        assert!(!first.dir.join("target").exists());
        assert!(!first.dir.join(".pikaci").exists());

        let second = take(src.path(), &snaps, &cache, &[]).unwrap();
        assert!(second.reused);
        assert_eq!(second.id, first.id);

        fs::write(src.path().join("src/deep/lib.rs"), "pub fn g() {}\n").unwrap();
        let third = take(src.path(), &snaps, &cache, &[]).unwrap();
        assert_ne!(third.id, first.id);
        assert_eq!(fs::read_to_string(third.dir.join("src/deep/lib.rs")).unwrap(), "pub fn g() {}\n");
    }

    #[test]
    fn mode_change_changes_the_id() {
        let src = tree();
        let state = tempfile::tempdir().unwrap();
        let a = take(src.path(), &state.path().join("s"), &state.path().join("c"), &[]).unwrap();
        fs::set_permissions(src.path().join("run.sh"), fs::Permissions::from_mode(0o644)).unwrap();
        let b = take(src.path(), &state.path().join("s"), &state.path().join("c"), &[]).unwrap();
        assert_ne!(a.id, b.id);
    }

    #[test]
    fn a_stale_cache_entry_with_other_stat_data_is_not_trusted() {
        let src = tree();
        let state = tempfile::tempdir().unwrap();
        let cache = state.path().join("c");
        let a = take(src.path(), &state.path().join("s"), &cache, &[]).unwrap();
        // Same size, new content: the stat key (mtime/ctime) differs, so it is re-hashed.
        std::thread::sleep(Duration::from_millis(10));
        fs::write(src.path().join("Cargo.toml"), "[workspacX\n").unwrap();
        let b = take(src.path(), &state.path().join("s"), &cache, &[]).unwrap();
        assert_ne!(a.id, b.id);
    }
}
