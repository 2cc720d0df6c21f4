//! The files of a git work tree with their stat data: `git ls-files` lists them (while
//! the stat cache is parsed), then they are `lstat`ed on every core, as `git status`
//! does. (`lstat`ing the cached paths while git still runs was measured slower on two
//! cores: it slows git's own walk, which is the longer of the two.)

use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use anyhow::Result;

use super::{CachedFile, Entry, Exclusions, Lstat, StatKey, entry_of, parse_cache, walk_dir};
use crate::tools::git;

/// What [`git_entries`] found: the entries (unsorted) and the parsed stat cache.
pub(super) type Listed<'a> = (Vec<Entry>, Vec<CachedFile<'a>>);

/// Tracked and untracked-not-ignored files of the work tree at `source` (a submodule's
/// files too), less what `under_excluded` says; with the stat cache parsed meanwhile.
pub(super) fn git_entries<'a>(
    source: &Path,
    cache_bytes: &'a [u8],
    in_git: &Exclusions,
    under_excluded: &(dyn Fn(&Path) -> bool + Sync),
) -> Result<Listed<'a>> {
    let (listed, cache) = std::thread::scope(|scope| {
        let listing = scope.spawn(|| git::work_tree_files(source));
        let cache = parse_cache(cache_bytes, source);
        let listed = listing.join().unwrap_or_else(|_| Err(anyhow::anyhow!("`git ls-files` thread panicked")));
        (listed, cache)
    });
    let mut listed: Vec<PathBuf> = listed?.into_iter().filter(|rel| !under_excluded(rel)).collect();
    // By path, so that a directory's files come together (untracked files come last).
    listed.sort_unstable_by(|a, b| a.as_os_str().as_bytes().cmp(b.as_os_str().as_bytes()));
    let rels: Vec<&[u8]> = listed.iter().map(|rel| rel.as_os_str().as_bytes()).collect();
    let stats = stat_all(source, &rels);
    let mut out = Vec::with_capacity(listed.len());
    for (rel, stat) in listed.into_iter().zip(stats) {
        let full = || source.join(&rel);
        let meta = match stat {
            Ok(m) => m,
            // Listed by git but deleted in the work tree: the lane sees it deleted.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(anyhow::Error::new(e).context(format!("stat `{}`", full().display()))),
        };
        if meta.is_dir() {
            // A submodule is listed as a directory: take its files too.
            let mut dirs = vec![rel];
            while let Some(dir) = dirs.pop() {
                walk_dir(source, &dir, in_git, &mut out, &mut dirs)?;
            }
        } else if let Some(entry) = entry_of(source, rel.into_os_string(), &meta)? {
            out.push(entry);
        }
    }
    Ok((out, cache))
}

/// `lstat` every path (relative to `source`), in order, spread over the cores. Each is
/// looked up from its open directory, one name (a path's every component costs the kernel
/// a lookup and a permission check), so paths that share a directory had best come
/// together, as git lists them.
pub(super) fn stat_all(source: &Path, rels: &[&[u8]]) -> Vec<std::io::Result<Lstat>> {
    let workers = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).clamp(1, 8);
    let chunk = rels.len().div_ceil(workers).max(1);
    std::thread::scope(|scope| {
        let handles: Vec<_> =
            rels.chunks(chunk).map(|part| (part.len(), scope.spawn(move || stat_in_dirs(source, part)))).collect();
        let panicked = |n: usize| (0..n).map(|_| Err(std::io::Error::other("stat thread panicked"))).collect();
        handles.into_iter().flat_map(|(n, h)| h.join().unwrap_or_else(|_| panicked(n))).collect()
    })
}

/// [`stat_all`] on one thread: the directory of the previous path stays open.
fn stat_in_dirs(source: &Path, rels: &[&[u8]]) -> Vec<std::io::Result<Lstat>> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut open: Option<(&[u8], std::io::Result<fs::File>)> = None;
    let mut name = Vec::new();
    rels.iter()
        .map(|rel| {
            let (dir, file) = match rel.iter().rposition(|b| *b == b'/') {
                Some(i) => (&rel[..i], &rel[i + 1..]),
                None => (&b""[..], &rel[..]),
            };
            if open.as_ref().is_none_or(|(d, _)| *d != dir) {
                let path = source.join(OsStr::from_bytes(dir));
                let handle =
                    fs::OpenOptions::new().read(true).custom_flags(libc::O_PATH | libc::O_DIRECTORY).open(path);
                open = Some((dir, handle));
            }
            let Some((_, Ok(handle))) = &open else {
                // The directory is gone (or is no longer one): so is the file.
                return Err(std::io::ErrorKind::NotFound.into());
            };
            name.clear();
            name.extend_from_slice(file);
            name.push(0);
            fstatat_nofollow(handle, &name)
        })
        .collect()
}

/// `fstatat(dir, name, AT_SYMLINK_NOFOLLOW)`; `name` ends in its NUL.
fn fstatat_nofollow(dir: &fs::File, name: &[u8]) -> std::io::Result<Lstat> {
    use std::os::fd::AsRawFd;
    let name = std::ffi::CStr::from_bytes_with_nul(name).map_err(|_| std::io::ErrorKind::InvalidInput)?;
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `dir` is an open descriptor, `name` a NUL-terminated string, and `st` a
    // buffer of the size fstatat writes; it is read only when the call succeeded.
    let rc = unsafe { libc::fstatat(dir.as_raw_fd(), name.as_ptr(), st.as_mut_ptr(), libc::AT_SYMLINK_NOFOLLOW) };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        // A component that is no longer a directory: the file is gone.
        return Err(if err.raw_os_error() == Some(libc::ENOTDIR) { std::io::ErrorKind::NotFound.into() } else { err });
    }
    // SAFETY: fstatat succeeded, so it filled `st`.
    let st = unsafe { st.assume_init() };
    let ns = |secs: i64, nsec: i64| secs as i128 * 1_000_000_000 + nsec as i128;
    let key = StatKey {
        size: st.st_size as u64,
        mtime_ns: ns(st.st_mtime, st.st_mtime_nsec),
        ctime_ns: ns(st.st_ctime, st.st_ctime_nsec),
        ino: st.st_ino,
    };
    Ok(Lstat { mode: st.st_mode, key })
}
