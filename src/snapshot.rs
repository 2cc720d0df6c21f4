//! Source snapshots: the work tree as a lane sees it (tracked and untracked-not-ignored
//! files; not `.git`, not the state root, not ignored build output), copied once into
//! `snapshots/<content-hash>/` and shared by every run with the same content.
//!
//! The content hash of each file is cached by its stat data (size, mtime, ctime, inode),
//! as git's index does, so an unchanged tree is recognised without reading its files. A
//! new snapshot reads each file once: the copy and its hash come from the same read.

use std::ffi::OsString;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::tools::fs::atomic_write;
use crate::tools::git;

mod git_listing;
mod unchanged;

/// The first line of the stat cache; another first line means another format.
const CACHE_HEADER: &str = "pikaci-snapshot-cache 2";
/// Files modified this recently are hashed again next time: their mtime may not yet
/// tell a later edit apart (git's "racily clean" entries).
const RACY_WINDOW: Duration = Duration::from_secs(2);
/// Below this share of files to hash, hash them first and look for an existing
/// snapshot before copying anything (a few edited files, or files only touched);
/// above it, hash while copying, in one read.
const HASH_FIRST_BELOW: usize = 4;

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
    /// Relative to the source, as bytes: compared and hashed as bytes (cheap), not as
    /// path components.
    rel: OsString,
    kind: EntryKind,
    stat: StatKey,
    /// `st_mode`, as `lstat` gave it.
    mode: u32,
    hash: Option<Digest32>,
}

/// A SHA-256 digest, kept as bytes (hex only in the cache file).
type Digest32 = [u8; 32];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct StatKey {
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
    ino: u64,
}

/// What `lstat` says of a path, as far as a snapshot cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Lstat {
    /// `st_mode`: the file type and permission bits.
    mode: u32,
    key: StatKey,
}

impl Lstat {
    fn of(meta: &fs::Metadata) -> Lstat {
        let key = StatKey {
            size: meta.size(),
            mtime_ns: meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128,
            ctime_ns: meta.ctime() as i128 * 1_000_000_000 + meta.ctime_nsec() as i128,
            ino: meta.ino(),
        };
        Lstat { mode: meta.mode(), key }
    }

    fn is_dir(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFDIR
    }
}

/// Take a snapshot of `source` into `snapshots_dir`, leaving out `exclude` (the state
/// root, when it lies inside the source).
pub fn take(source: &Path, snapshots_dir: &Path, cache_file: &Path, exclude: &[PathBuf]) -> Result<Snapshot> {
    // An unchanged git work tree is known from its stat data alone.
    if let Some(snapshot) = unchanged::check(source, cache_file, snapshots_dir) {
        return Ok(snapshot);
    }
    let started = SystemTime::now();
    let mut excluded: Vec<Vec<u8>> = vec![b".git".to_vec(), b".pikaci".to_vec()];
    excluded.extend(exclude.iter().map(|p| p.as_os_str().as_bytes().to_vec()));
    let under_excluded = |rel: &Path| {
        let rel = rel.as_os_str().as_bytes();
        excluded.iter().any(|p| rel.starts_with(p) && (rel.len() == p.len() || rel[p.len()] == b'/'))
    };
    // Parse the cache while the tree is walked.
    let cache_bytes = fs::read(cache_file).unwrap_or_default();
    let in_git = git::is_work_tree(source);
    let (mut entries, cache) = list_entries(source, in_git, &excluded, &under_excluded, &cache_bytes)?;
    let snapshot = snapshot_of(source, snapshots_dir, cache_file, &mut entries, &cache)?;
    if in_git {
        let listing = unchanged::Listing { entries: &entries, excluded: &under_excluded, started };
        unchanged::save(source, cache_file, &snapshot, &listing);
    }
    Ok(snapshot)
}

/// The snapshot of `entries`, with what the stat cache knew of them: an existing one when
/// the content is known, else a new copy.
fn snapshot_of(
    source: &Path,
    snapshots_dir: &Path,
    cache_file: &Path,
    entries: &mut [Entry],
    cache: &[CachedFile],
) -> Result<Snapshot> {
    entries.sort_unstable_by(|a, b| a.rel.as_bytes().cmp(b.rel.as_bytes()));
    // Both lists are sorted by path: walk them side by side.
    let mut cached = cache.iter().peekable();
    let mut misses = 0;
    for entry in entries.iter_mut() {
        while cached.next_if(|c| c.rel < entry.rel.as_bytes()).is_some() {}
        let hit = cached.next_if(|c| c.rel == entry.rel.as_bytes()).filter(|c| c.stat == entry.stat);
        entry.hash = match &entry.kind {
            EntryKind::Symlink { target } => Some(Sha256::digest(target.as_os_str().as_bytes()).into()),
            EntryKind::File { .. } => hit.map(|c| c.hash),
        };
        misses += entry.hash.is_none() as usize;
    }
    let files = entries.len();
    let bytes = entries.iter().map(|e| e.stat.size).sum();

    // Few files to hash: hash them, and an existing snapshot with this content is reused.
    if misses * HASH_FIRST_BELOW < files.max(1) {
        for entry in entries.iter_mut().filter(|e| e.hash.is_none()) {
            entry.hash = Some(hash_file(&source.join(&entry.rel))?);
        }
        let id = tree_id(entries);
        save_cache(cache_file, source, entries, misses > 0 || cache.len() != files);
        let dir = snapshots_dir.join(&id);
        if dir.is_dir() {
            return Ok(Snapshot { id, dir, files, bytes, reused: true });
        }
        return publish(source, snapshots_dir, entries, id, files, bytes);
    }
    // Many: copy everything, hashing the unknown files from the same read.
    let snapshot = publish_unknown(source, snapshots_dir, entries, files, bytes)?;
    save_cache(cache_file, source, entries, true);
    Ok(snapshot)
}

/// Copy into a temporary directory, then rename it to `snapshots/<id>`.
fn publish(
    source: &Path,
    snapshots_dir: &Path,
    entries: &mut [Entry],
    id: String,
    files: usize,
    bytes: u64,
) -> Result<Snapshot> {
    let tmp = temp_dir(snapshots_dir, &id)?;
    copy_entries(source, tmp.path(), entries)?;
    rename_into_place(tmp, snapshots_dir, id, files, bytes)
}

/// Like [`publish`], when the id is known only once the files are read.
fn publish_unknown(
    source: &Path,
    snapshots_dir: &Path,
    entries: &mut [Entry],
    files: usize,
    bytes: u64,
) -> Result<Snapshot> {
    let tmp = temp_dir(snapshots_dir, "new")?;
    copy_entries(source, tmp.path(), entries)?;
    let id = tree_id(entries);
    rename_into_place(tmp, snapshots_dir, id, files, bytes)
}

fn temp_dir(snapshots_dir: &Path, tag: &str) -> Result<tempfile::TempDir> {
    fs::create_dir_all(snapshots_dir).with_context(|| format!("create `{}`", snapshots_dir.display()))?;
    tempfile::Builder::new()
        .prefix(&format!(".tmp-{tag}-"))
        .tempdir_in(snapshots_dir)
        .with_context(|| format!("create a temporary directory in `{}`", snapshots_dir.display()))
}

fn rename_into_place(
    tmp: tempfile::TempDir,
    snapshots_dir: &Path,
    id: String,
    files: usize,
    bytes: u64,
) -> Result<Snapshot> {
    let dir = snapshots_dir.join(&id);
    let tmp_path = tmp.keep();
    match fs::rename(&tmp_path, &dir) {
        Ok(()) => Ok(Snapshot { id, dir, files, bytes, reused: false }),
        // The same content was published first (another run, or files that were only
        // touched): theirs is as good as ours.
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

/// What a snapshot leaves out, checked per directory entry as bytes (cheap).
struct Exclusions {
    /// Relative paths: `.git` and `.pikaci` anywhere at the top, the state root.
    paths: Vec<Vec<u8>>,
    /// Outside git: the usual build output at the top (`target`, `result*`).
    build_output: bool,
}

impl Exclusions {
    fn excludes(&self, rel: &[u8], top_level: bool) -> bool {
        if self.paths.iter().any(|p| p == rel) {
            return true;
        }
        top_level && self.build_output && (rel == b"target" || rel.starts_with(b"result"))
    }
}

/// The files that make up the work tree (`in_git`: as git lists them), with their stat
/// data; and the stat cache, parsed meanwhile.
fn list_entries<'a>(
    source: &Path,
    in_git: bool,
    excluded: &[Vec<u8>],
    under_excluded: &(dyn Fn(&Path) -> bool + Sync),
    cache_bytes: &'a [u8],
) -> Result<git_listing::Listed<'a>> {
    if !in_git {
        let exclusions = Exclusions { paths: excluded.to_vec(), build_output: true };
        // A small cache is parsed here: a thread would cost more.
        if cache_bytes.len() < 1 << 16 {
            return Ok((walk_parallel(source, &exclusions)?, parse_cache(cache_bytes, source)));
        }
        return std::thread::scope(|scope| {
            let parsing = scope.spawn(|| parse_cache(cache_bytes, source));
            let listed = walk_parallel(source, &exclusions);
            Ok((listed?, parsing.join().unwrap_or_default()))
        });
    }
    let in_git = Exclusions { paths: excluded.to_vec(), build_output: false };
    git_listing::git_entries(source, cache_bytes, &in_git, under_excluded)
}

/// Walk the whole source on every core: directories are handed out from a shared list,
/// since stat-ing each file is most of the work.
fn walk_parallel(source: &Path, exclusions: &Exclusions) -> Result<Vec<Entry>> {
    use std::sync::Mutex;
    // The top directory first, here: a tree without subdirectories starts no thread.
    let (mut all, mut dirs) = (Vec::new(), Vec::new());
    walk_dir(source, Path::new(""), exclusions, &mut all, &mut dirs)?;
    if dirs.is_empty() {
        return Ok(all);
    }
    let pending = Mutex::new((dirs, 0usize)); // (directories to read, readers busy)
    let workers = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).clamp(1, 8);
    let results: Vec<Result<Vec<Entry>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                scope.spawn(|| -> Result<Vec<Entry>> {
                    let mut out = Vec::new();
                    let mut found = Vec::new();
                    loop {
                        let dir = {
                            let mut guard = pending.lock().unwrap_or_else(|p| p.into_inner());
                            match guard.0.pop() {
                                Some(dir) => {
                                    guard.1 += 1;
                                    dir
                                }
                                // Nothing queued and nobody reading: the walk is done.
                                None if guard.1 == 0 => return Ok(out),
                                None => {
                                    drop(guard);
                                    std::thread::yield_now();
                                    continue;
                                }
                            }
                        };
                        let result = walk_dir(source, &dir, exclusions, &mut out, &mut found);
                        let mut guard = pending.lock().unwrap_or_else(|p| p.into_inner());
                        guard.0.append(&mut found);
                        guard.1 -= 1;
                        if result.is_err() {
                            // Stop the others: the walk failed.
                            guard.0.clear();
                        }
                        result?;
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(anyhow::anyhow!("snapshot walk panicked"))))
            .collect()
    });
    for r in results {
        all.append(&mut r?);
    }
    Ok(all)
}

/// Read one directory: its files go to `out` (stat-ed relative to the open directory,
/// not by full path), its subdirectories to `dirs`.
fn walk_dir(
    source: &Path,
    rel: &Path,
    exclusions: &Exclusions,
    out: &mut Vec<Entry>,
    dirs: &mut Vec<PathBuf>,
) -> Result<()> {
    let dir = source.join(rel);
    let top_level = rel.as_os_str().is_empty();
    for entry in fs::read_dir(&dir).with_context(|| format!("read directory `{}`", dir.display()))? {
        let entry = entry?;
        let child = rel.join(entry.file_name());
        if entry.file_name() == ".git" || exclusions.excludes(child.as_os_str().as_bytes(), top_level) {
            continue;
        }
        if entry.file_type()?.is_dir() {
            dirs.push(child);
            continue;
        }
        let meta = entry.metadata().with_context(|| format!("stat `{}`", entry.path().display()))?;
        if let Some(e) = entry_of(source, child.into_os_string(), &Lstat::of(&meta))? {
            out.push(e);
        }
    }
    Ok(())
}

/// The entry for a file or symlink at `rel` in `source`.
fn entry_of(source: &Path, rel: OsString, stat: &Lstat) -> Result<Option<Entry>> {
    let kind = if stat.mode & libc::S_IFMT == libc::S_IFLNK {
        let full = source.join(&rel);
        EntryKind::Symlink { target: fs::read_link(&full).with_context(|| format!("read link `{}`", full.display()))? }
    } else if stat.mode & libc::S_IFMT == libc::S_IFREG {
        EntryKind::File { executable: stat.mode & 0o111 != 0 }
    } else {
        // Sockets, fifos, devices: not source.
        return Ok(None);
    };
    Ok(Some(Entry { rel, kind, stat: stat.key, mode: stat.mode, hash: None }))
}

fn is_racy(stat: StatKey, now: SystemTime) -> bool {
    is_racy_since(stat, now, RACY_WINDOW)
}

/// Whether the file was modified (or its inode changed) later than `window` before `since`.
fn is_racy_since(stat: StatKey, since: SystemTime, window: Duration) -> bool {
    let since_ns = since.duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as i128).unwrap_or(0);
    since_ns - stat.mtime_ns.max(stat.ctime_ns) < window.as_nanos() as i128
}

fn hash_file(path: &Path) -> Result<Digest32> {
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
    Ok(hasher.finalize().into())
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
        hasher.update(e.rel.as_bytes());
        hasher.update(b"\0");
        hasher.update(e.hash.unwrap_or_default());
        hasher.update(b"\n");
    }
    hex(&hasher.finalize())[..32].to_string()
}

fn copy_entries(source: &Path, dest: &Path, entries: &mut [Entry]) -> Result<()> {
    let mut dirs: Vec<&Path> =
        entries.iter().filter_map(|e| Path::new(&e.rel).parent()).filter(|p| !p.as_os_str().is_empty()).collect();
    dirs.sort_unstable();
    dirs.dedup();
    for d in dirs {
        fs::create_dir_all(dest.join(d)).with_context(|| format!("create `{}`", dest.join(d).display()))?;
    }
    // Copying many small files is syscall-bound: spread it over the cores.
    let workers = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).clamp(1, 8);
    let chunk = entries.len().div_ceil(workers).max(1);
    std::thread::scope(|scope| {
        let handles: Vec<_> = entries
            .chunks_mut(chunk)
            .map(|part| scope.spawn(move || part.iter_mut().try_for_each(|e| copy_entry(source, dest, e))))
            .collect();
        handles
            .into_iter()
            .try_for_each(|h| h.join().unwrap_or_else(|_| Err(anyhow::anyhow!("snapshot copy thread panicked"))))
    })
}

/// Copy one entry; a file whose hash is not known yet is hashed from the bytes copied.
fn copy_entry(source: &Path, dest: &Path, entry: &mut Entry) -> Result<()> {
    let to = dest.join(&entry.rel);
    let from = source.join(&entry.rel);
    match &entry.kind {
        EntryKind::Symlink { target } => {
            std::os::unix::fs::symlink(target, &to).with_context(|| format!("create link `{}`", to.display()))?;
        }
        EntryKind::File { .. } if entry.hash.is_some() => {
            fs::copy(&from, &to).with_context(|| format!("copy `{}` into the snapshot", from.display()))?;
        }
        EntryKind::File { executable } => {
            let copy = || -> std::io::Result<Digest32> {
                let mut input = fs::File::open(&from)?;
                let mode = if *executable { 0o755 } else { 0o644 };
                let mut output = fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(&to)?;
                let mut hasher = Sha256::new();
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let n = input.read(&mut buf)?;
                    if n == 0 {
                        break;
                    }
                    hasher.update(&buf[..n]);
                    output.write_all(&buf[..n])?;
                }
                Ok(hasher.finalize().into())
            };
            entry.hash = Some(copy().with_context(|| format!("copy `{}` into the snapshot", from.display()))?);
        }
    }
    Ok(())
}

/// One line of the stat cache, borrowed from the file's bytes.
struct CachedFile<'a> {
    rel: &'a [u8],
    stat: StatKey,
    hash: Digest32,
}

/// The stat cache: one line per file, `size mtime_ns ctime_ns ino hash path`, sorted by
/// path. A cache of another format or another source is empty.
fn parse_cache<'a>(bytes: &'a [u8], source: &Path) -> Vec<CachedFile<'a>> {
    let mut lines = bytes.split(|b| *b == b'\n');
    if lines.next() != Some(CACHE_HEADER.as_bytes()) || lines.next() != Some(source.as_os_str().as_bytes()) {
        return Vec::new();
    }
    let parse = |line: &'a [u8]| -> Option<CachedFile<'a>> {
        let (stat, rest) = parse_stat(line)?;
        let (hash, rel) = rest.split_at_checked(64)?;
        let rel = rel.strip_prefix(b" ")?;
        Some(CachedFile { rel, stat, hash: unhex(std::str::from_utf8(hash).ok()?)? })
    };
    let cache: Vec<CachedFile> = lines.filter_map(parse).collect();
    // Written sorted; a cache edited by hand is not trusted.
    if cache.windows(2).all(|w| w[0].rel < w[1].rel) { cache } else { Vec::new() }
}

/// `size mtime_ns ctime_ns ino REST`: the stat data, and REST.
fn parse_stat(line: &[u8]) -> Option<(StatKey, &[u8])> {
    let mut fields = line.splitn(5, |b| *b == b' ');
    let mut number = || -> Option<i128> { std::str::from_utf8(fields.next()?).ok()?.parse().ok() };
    let (size, mtime_ns, ctime_ns, ino) = (number()?, number()?, number()?, number()?);
    let stat = StatKey { size: u64::try_from(size).ok()?, mtime_ns, ctime_ns, ino: u64::try_from(ino).ok()? };
    Some((stat, fields.next()?))
}

/// Write the cache when something changed. Files modified within the racy window, and
/// names with a newline, are left out (hashed again next time).
fn save_cache(path: &Path, source: &Path, entries: &[Entry], changed: bool) {
    if !changed {
        return;
    }
    let now = SystemTime::now();
    let mut out = Vec::with_capacity(entries.len() * 120);
    out.extend_from_slice(CACHE_HEADER.as_bytes());
    out.push(b'\n');
    out.extend_from_slice(source.as_os_str().as_bytes());
    out.push(b'\n');
    for e in entries {
        let (EntryKind::File { .. }, Some(hash)) = (&e.kind, &e.hash) else { continue };
        if is_racy(e.stat, now) || e.rel.as_bytes().contains(&b'\n') {
            continue;
        }
        let s = e.stat;
        out.extend_from_slice(format!("{} {} {} {} {} ", s.size, s.mtime_ns, s.ctime_ns, s.ino, hex(hash)).as_bytes());
        out.extend_from_slice(e.rel.as_bytes());
        out.push(b'\n');
    }
    // The cache only saves time; failing to write it must not fail a run.
    let _ = atomic_write(path, &out, crate::tools::fs::FILE_MODE);
}

fn unhex(text: &str) -> Option<Digest32> {
    let bytes = text.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let nibble = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks(2).enumerate() {
        out[i] = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Some(out)
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
    use std::os::unix::fs::PermissionsExt;

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
    fn an_unchanged_file_is_not_read_again_its_cached_hash_is_trusted() {
        let src = tree();
        // Past the racy window, so that the first take caches every file.
        std::thread::sleep(RACY_WINDOW + Duration::from_millis(100));
        let state = tempfile::tempdir().unwrap();
        let (snaps, cache) = (state.path().join("s"), state.path().join("c"));
        let first = take(src.path(), &snaps, &cache, &[]).unwrap();
        let text = fs::read_to_string(&cache).unwrap();
        assert!(text.starts_with(CACHE_HEADER), "{text}");
        let line = text.lines().find(|l| l.ends_with(" Cargo.toml")).expect("Cargo.toml is cached");
        let hash = line.split(' ').nth(4).unwrap();
        // Claim other content for Cargo.toml: if the cache is trusted, the id changes
        // although the file did not.
        fs::write(&cache, text.replace(hash, &"0".repeat(64))).unwrap();
        let second = take(src.path(), &snaps, &cache, &[]).unwrap();
        assert_ne!(second.id, first.id, "the cached hash was not used");
        // And a cache for another source is ignored.
        let other = tree();
        let third = take(other.path(), &snaps, &cache, &[]).unwrap();
        assert_eq!(third.id, first.id, "same content, same id, whatever the cache says");
    }

    #[test]
    fn the_walk_leaves_out_state_build_output_and_nested_git() {
        let src = tree();
        let p = src.path();
        fs::create_dir_all(p.join("sub/.git")).unwrap();
        fs::write(p.join("sub/.git/HEAD"), "ref").unwrap();
        fs::write(p.join("sub/kept.rs"), "x").unwrap();
        std::os::unix::fs::symlink("/nix/store/x", p.join("result")).unwrap();
        fs::create_dir_all(p.join("deep/state/runs")).unwrap();
        fs::write(p.join("deep/state/runs/r"), "x").unwrap();
        let state = tempfile::tempdir().unwrap();
        let snap = take(p, &state.path().join("s"), &state.path().join("c"), &[PathBuf::from("deep/state")]).unwrap();
        assert!(snap.dir.join("sub/kept.rs").is_file());
        for absent in ["sub/.git", "result", "deep/state", "target", ".pikaci"] {
            assert!(!snap.dir.join(absent).exists(), "{absent}");
        }
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
