//! The files of a git work tree with their stat data: `git ls-files` lists them (while
//! the stat cache is parsed), then they are `lstat`ed on every core, as `git status`
//! does. (`lstat`ing the cached paths while git still runs was measured slower on two
//! cores: it slows git's own walk, which is the longer of the two.)

use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use anyhow::Result;

use super::{CachedFile, Entry, Exclusions, entry_of, parse_cache, walk_dir};
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
    let listed: Vec<PathBuf> = listed?.into_iter().filter(|rel| !under_excluded(rel)).collect();
    let rels: Vec<&[u8]> = listed.iter().map(|rel| rel.as_os_str().as_bytes()).collect();
    let stats = stat_all(source, &rels);
    let mut out = Vec::with_capacity(listed.len());
    for (rel, stat) in listed.into_iter().zip(stats) {
        let full = source.join(&rel);
        let meta = match stat {
            Ok(m) => m,
            // Listed by git but deleted in the work tree: the lane sees it deleted.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(anyhow::Error::new(e).context(format!("stat `{}`", full.display()))),
        };
        if meta.is_dir() {
            // A submodule is listed as a directory: take its files too.
            let mut dirs = vec![rel];
            while let Some(dir) = dirs.pop() {
                walk_dir(source, &dir, in_git, &mut out, &mut dirs)?;
            }
        } else if let Some(entry) = entry_of(&|| full.clone(), rel.into_os_string(), &meta)? {
            out.push(entry);
        }
    }
    Ok((out, cache))
}

/// `lstat` every path (relative to `source`), in order, spread over the cores.
fn stat_all(source: &Path, rels: &[&[u8]]) -> Vec<std::io::Result<fs::Metadata>> {
    let workers = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).clamp(1, 8);
    let chunk = rels.len().div_ceil(workers).max(1);
    std::thread::scope(|scope| {
        let handles: Vec<_> = rels
            .chunks(chunk)
            .map(|part| {
                let stat = move || part.iter().map(|rel| source.join(OsStr::from_bytes(rel)).symlink_metadata());
                (part.len(), scope.spawn(move || stat().collect::<Vec<_>>()))
            })
            .collect();
        let panicked = |n: usize| (0..n).map(|_| Err(std::io::Error::other("stat thread panicked"))).collect();
        handles.into_iter().flat_map(|(n, h)| h.join().unwrap_or_else(|_| panicked(n))).collect()
    })
}
