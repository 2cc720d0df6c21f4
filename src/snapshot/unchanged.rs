//! An unchanged git work tree, recognised without starting `git`.
//!
//! After a snapshot of a git work tree, a record is kept beside the stat cache: the
//! snapshot's id, the stat data of every file it holds, of every directory git looks into
//! for untracked files (adding, removing or renaming a file changes its directory's
//! mtime), and of every file that decides what git lists: its index, its configuration and
//! ignore files, each `.gitignore` on the way. When all of them stat as recorded, git would
//! list the same files, with the same content, and the snapshot is the recorded one:
//! nothing is read and no `git` runs. The cost is the `lstat` of each file and directory,
//! which `git status` pays too.
//!
//! A record is written only when everything in it is older than the listing by more than
//! the racy window: a change made while the snapshot was taken, or later within the same
//! clock tick as what was recorded, would not show in the stat data.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::{Entry, Lstat, RACY_WINDOW, Snapshot, StatKey, is_racy_since, parse_stat};

const HEADER: &str = "pikaci-snapshot-tree 1";

/// Variables that move git's repository, index or configuration: with any of them set,
/// the record is neither used nor written.
const GIT_ENV: [&str; 12] = [
    "GIT_DIR",
    "GIT_WORK_TREE",
    "GIT_INDEX_FILE",
    "GIT_COMMON_DIR",
    "GIT_OBJECT_DIRECTORY",
    "GIT_CONFIG",
    "GIT_CONFIG_GLOBAL",
    "GIT_CONFIG_SYSTEM",
    "GIT_CONFIG_NOSYSTEM",
    "GIT_CONFIG_COUNT",
    "GIT_CONFIG_PARAMETERS",
    "GIT_CEILING_DIRECTORIES",
];

/// The record of the snapshot cache `cache_file`.
pub(super) fn record_file(cache_file: &Path) -> PathBuf {
    cache_file.with_extension("tree")
}

/// What the record's third line says of the environment: a change of `HOME` or
/// `XDG_CONFIG_HOME` moves git's user configuration.
fn environment() -> Option<String> {
    if GIT_ENV.iter().any(|v| std::env::var_os(v).is_some()) {
        return None;
    }
    let var = |name| std::env::var_os(name).map(|v| v.to_string_lossy().into_owned()).unwrap_or_default();
    Some(format!("HOME={} XDG_CONFIG_HOME={}", var("HOME"), var("XDG_CONFIG_HOME")))
}

/// The recorded snapshot, when the record exists and everything in it stats the same.
pub(super) fn check(source: &Path, cache_file: &Path, snapshots_dir: &Path) -> Option<Snapshot> {
    let env = environment()?;
    let text = fs::read(record_file(cache_file)).ok()?;
    let mut lines = text.split(|b| *b == b'\n');
    let header = [HEADER.as_bytes(), source.as_os_str().as_bytes(), env.as_bytes()];
    if !header.iter().all(|h| lines.next() == Some(*h)) {
        return None;
    }
    let summary = std::str::from_utf8(lines.next()?).ok()?;
    let mut fields = summary.split(' ');
    let id = fields.next()?.to_string();
    let files: usize = fields.next()?.parse().ok()?;
    let bytes: u64 = fields.next()?.parse().ok()?;
    let mut relative: Vec<(&[u8], Lstat)> = Vec::new();
    for line in lines.filter(|l| !l.is_empty()) {
        let (tag, rest) = line.split_at_checked(2)?;
        match tag {
            // An absolute path that must not exist.
            b"A " => {
                if fs::metadata(OsStr::from_bytes(rest)).is_ok() {
                    return None;
                }
            }
            b"a " => {
                let (stat, path) = parse_line(rest)?;
                let now = fs::metadata(OsStr::from_bytes(path)).ok()?;
                if Lstat::of(&now) != stat {
                    return None;
                }
            }
            b"r " => relative.push(parse_line(rest).map(|(stat, path)| (path, stat))?),
            _ => return None,
        }
    }
    let rels: Vec<&[u8]> = relative.iter().map(|(path, _)| *path).collect();
    let stats = super::git_listing::stat_all(source, &rels);
    if !stats.iter().zip(&relative).all(|(now, (_, then))| now.as_ref().is_ok_and(|now| now == then)) {
        return None;
    }
    let dir = snapshots_dir.join(&id);
    dir.is_dir().then_some(Snapshot { id, dir, files, bytes, reused: true })
}

/// `mode size mtime ctime ino path`.
fn parse_line(line: &[u8]) -> Option<(Lstat, &[u8])> {
    let mut fields = line.splitn(2, |b| *b == b' ');
    let mode: u32 = std::str::from_utf8(fields.next()?).ok()?.parse().ok()?;
    let (key, path): (StatKey, &[u8]) = parse_stat(fields.next()?)?;
    Some((Lstat { mode, key }, path))
}

/// What the listing of a git work tree learnt, for the record.
pub(super) struct Listing<'a> {
    pub entries: &'a [Entry],
    /// Leaves out what the snapshot leaves out (the state root, `.git`).
    pub excluded: &'a (dyn Fn(&Path) -> bool + Sync),
    /// When the listing started.
    pub started: SystemTime,
}

/// Write the record of `snapshot`, just taken of the git work tree `source`; or remove the
/// old one when this snapshot cannot be recorded (something racy, a name with a newline,
/// a repository this module does not follow).
pub(super) fn save(source: &Path, cache_file: &Path, snapshot: &Snapshot, listing: &Listing) {
    let path = record_file(cache_file);
    match record(source, snapshot, listing) {
        Some(text) => {
            let _ = crate::tools::fs::atomic_write(&path, &text, crate::tools::fs::FILE_MODE);
        }
        None => {
            let _ = fs::remove_file(&path);
        }
    }
}

fn record(source: &Path, snapshot: &Snapshot, listing: &Listing) -> Option<Vec<u8>> {
    let env = environment()?;
    let fresh = |stat: &StatKey| is_racy_since(*stat, listing.started, RACY_WINDOW);
    if listing.entries.iter().any(|e| fresh(&e.stat)) {
        return None;
    }
    let mut out = Vec::with_capacity(listing.entries.len() * 100);
    for line in [HEADER.as_bytes(), source.as_os_str().as_bytes(), env.as_bytes()] {
        out.extend_from_slice(line);
        out.push(b'\n');
    }
    out.extend_from_slice(format!("{} {} {}\n", snapshot.id, snapshot.files, snapshot.bytes).as_bytes());
    for watched in git_files(source)? {
        match fs::metadata(&watched) {
            Ok(meta) if fresh(&Lstat::of(&meta).key) => return None,
            Ok(meta) => push_line(&mut out, b"a ", &Lstat::of(&meta), watched.as_os_str().as_bytes())?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                push_path(&mut out, b"A ", watched.as_os_str().as_bytes())?
            }
            Err(_) => return None,
        }
    }
    let mut relative: Vec<(Vec<u8>, Lstat)> = looked_into(source, listing)?;
    for entry in listing.entries {
        relative.push((entry.rel.as_bytes().to_vec(), Lstat { mode: entry.mode, key: entry.stat }));
    }
    if relative.iter().any(|(_, stat)| fresh(&stat.key)) {
        return None;
    }
    relative.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    for (rel, stat) in &relative {
        push_line(&mut out, b"r ", stat, rel)?;
    }
    Some(out)
}

fn push_path(out: &mut Vec<u8>, tag: &[u8], path: &[u8]) -> Option<()> {
    if path.contains(&b'\n') {
        return None;
    }
    out.extend_from_slice(tag);
    out.extend_from_slice(path);
    out.push(b'\n');
    Some(())
}

fn push_line(out: &mut Vec<u8>, tag: &[u8], stat: &Lstat, path: &[u8]) -> Option<()> {
    let k = stat.key;
    let fields = format!("{} {} {} {} {} ", stat.mode, k.size, k.mtime_ns, k.ctime_ns, k.ino);
    push_path(out, tag, &[fields.as_bytes(), path].concat())
}

/// The files outside the work tree that decide what git lists: the repository's index,
/// configuration and excludes, the user's and the system's configuration and excludes, and
/// the `.gitignore` files above `source` up to the top of the work tree. None when the
/// repository is not a plain `.git` directory (a linked worktree or a submodule).
fn git_files(source: &Path) -> Option<Vec<PathBuf>> {
    let top = source.ancestors().find(|d| d.join(".git").exists())?;
    let dot_git = top.join(".git");
    if !dot_git.is_dir() {
        return None;
    }
    let mut files = vec![dot_git.join("index"), dot_git.join("config"), dot_git.join("info/exclude")];
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let xdg =
        std::env::var_os("XDG_CONFIG_HOME").map(PathBuf::from).or_else(|| home.as_ref().map(|h| h.join(".config")));
    files.extend(home.map(|h| h.join(".gitconfig")));
    files.extend(xdg.iter().flat_map(|x| [x.join("git/config"), x.join("git/ignore")]));
    files.push(PathBuf::from("/etc/gitconfig"));
    files.extend(crate::tools::git::excludes_file(source).ok()?);
    files.extend(source.ancestors().skip(1).take_while(|d| d.starts_with(top)).map(|d| d.join(".gitignore")));
    Some(files)
}

/// The directories git looks into for untracked files (all below `source` but `.git`,
/// what the snapshot leaves out and what an ignore pattern names), and every `.gitignore`
/// in them, with their stat data, relative to `source` (`.` for itself). A directory that
/// holds a listed file is looked into; of the others, `git check-ignore` says which an
/// ignore pattern names, a level at a time.
fn looked_into(source: &Path, listing: &Listing) -> Option<Vec<(Vec<u8>, Lstat)>> {
    let mut holding: HashSet<&[u8]> = HashSet::new();
    for entry in listing.entries {
        let mut rel = entry.rel.as_bytes();
        while let Some(i) = rel.iter().rposition(|b| *b == b'/') {
            rel = &rel[..i];
            if !holding.insert(rel) {
                break;
            }
        }
    }
    let mut found = vec![(b".".to_vec(), Lstat::of(&fs::symlink_metadata(source).ok()?))];
    let mut pending = vec![PathBuf::new()];
    while !pending.is_empty() {
        let mut others = Vec::new();
        while let Some(dir) = pending.pop() {
            for entry in fs::read_dir(source.join(&dir)).ok()? {
                let entry = entry.ok()?;
                let rel = dir.join(entry.file_name());
                if entry.file_type().ok()?.is_dir() {
                    if entry.file_name() == ".git" || (listing.excluded)(&rel) {
                        continue;
                    }
                    if !holding.contains(rel.as_os_str().as_bytes()) {
                        others.push(rel);
                        continue;
                    }
                    pending.push(rel.clone());
                } else if entry.file_name() != ".gitignore" {
                    continue;
                }
                found.push((rel.into_os_string().into_vec(), Lstat::of(&entry.metadata().ok()?)));
            }
        }
        if others.is_empty() {
            break;
        }
        let names: Vec<Vec<u8>> = others.iter().map(|d| [d.as_os_str().as_bytes(), b"/"].concat()).collect();
        let names: Vec<&[u8]> = names.iter().map(Vec::as_slice).collect();
        let ignored: HashSet<PathBuf> =
            crate::tools::git::ignored_by_pattern(source, &names).ok()?.into_iter().collect();
        for dir in others.into_iter().filter(|d| !ignored.contains(d)) {
            found
                .push((dir.as_os_str().as_bytes().to_vec(), Lstat::of(&fs::symlink_metadata(source.join(&dir)).ok()?)));
            pending.push(dir);
        }
    }
    Some(found)
}
