//! Typed calls to `git`: which files make up the work tree, and which changed since a rev.

use std::path::{Path, PathBuf};

use anyhow::Result;

use super::command::Cmd;
use crate::error;

fn git(label: &str, dir: &Path) -> Result<Cmd> {
    let program = which::which("git").map_err(|_| error::infra("`git` was not found on PATH").hint("install git"))?;
    Ok(Cmd::new(label, program).arg("-C").arg(dir))
}

/// Whether `dir` is inside a git work tree (false when git is missing, too).
pub fn is_work_tree(dir: &Path) -> bool {
    // Look for `.git` upwards first: the common no-git case then costs no process.
    let has_dot_git = dir.ancestors().any(|d| d.join(".git").exists());
    if !has_dot_git && std::env::var_os("GIT_DIR").is_none() {
        return false;
    }
    git("git rev-parse", dir)
        .and_then(|c| c.args(["rev-parse", "--is-inside-work-tree"]).run(None))
        .map(|o| o.stdout_str().trim() == "true")
        .unwrap_or(false)
}

/// The commit checked out in the work tree of `dir` (`git rev-parse HEAD`), or `None`
/// outside a git work tree (no process is started when there is no `.git` upwards).
pub fn head_revision(dir: &Path) -> Option<String> {
    if !dir.ancestors().any(|d| d.join(".git").exists()) && std::env::var_os("GIT_DIR").is_none() {
        return None;
    }
    let out = git("git rev-parse", dir).ok()?.args(["rev-parse", "--verify", "--quiet", "HEAD"]).run(None).ok()?;
    let rev = out.stdout_str().trim().to_string();
    (!rev.is_empty()).then_some(rev)
}

/// Tracked and untracked-not-ignored files below `dir`, relative to it. Tracked files
/// deleted from the work tree are still listed; callers skip what does not exist.
pub fn work_tree_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let out = git("git ls-files", dir)?
        .args(["ls-files", "-z", "--cached", "--others", "--exclude-standard", "--deduplicate"])
        .run(None)?;
    Ok(split_z(&out.stdout))
}

/// Which of `paths` (relative to `dir`; directories end in `/`) an ignore pattern matches,
/// itself or through a directory above it (`git check-ignore`).
pub fn ignored_by_pattern(dir: &Path, paths: &[&[u8]]) -> Result<Vec<PathBuf>> {
    let input: Vec<u8> = paths.iter().flat_map(|p| p.iter().copied().chain([0])).collect();
    let out =
        git("git check-ignore", dir)?.args(["check-ignore", "-z", "--stdin"]).stdin_bytes(input).run_unchecked(None)?;
    // Exit 1: none is ignored.
    match out.status.code() {
        Some(0 | 1) => Ok(split_z(&out.stdout)),
        _ => Err(error::infra(format!("`git check-ignore` in `{}` failed", dir.display()))
            .hint(format!("fix what git says: {}", out.stderr_str().trim()))
            .into()),
    }
}

/// `core.excludesFile` as configured for `dir` (absent when it is not set).
pub fn excludes_file(dir: &Path) -> Result<Option<PathBuf>> {
    let out = git("git config", dir)?.args(["config", "--path", "--get", "core.excludesFile"]).run_unchecked(None)?;
    // Exit 1: not set.
    match out.status.code() {
        Some(0) => Ok(Some(PathBuf::from(out.stdout_str().trim_end_matches('\n')))),
        Some(1) => Ok(None),
        _ => Err(error::infra(format!("`git config --get core.excludesFile` in `{}` failed", dir.display()))
            .hint(format!("fix what git says: {}", out.stderr_str().trim()))
            .into()),
    }
}

/// Files below `dir` (relative to it) that differ between the work tree and `rev`:
/// tracked changes (both sides of a rename) plus untracked-not-ignored files.
pub fn changed_files(dir: &Path, rev: &str) -> Result<Vec<String>> {
    let verify =
        git("git rev-parse", dir)?.args(["rev-parse", "--verify", "--quiet", &format!("{rev}^{{commit}}")]).run(None);
    if verify.is_err() {
        return Err(error::usage(format!("`--changed-since {rev}`: no such commit in `{}`", dir.display()))
            .hint("name a commit, branch or tag that exists locally (`git fetch` it first if it is remote)")
            .into());
    }
    let diff = git("git diff", dir)?
        .args(["diff", "--name-only", "--no-renames", "-z", "--relative", rev, "--", "."])
        .run(None)?;
    let untracked = git("git ls-files", dir)?.args(["ls-files", "-z", "--others", "--exclude-standard"]).run(None)?;
    let mut files: Vec<String> = split_z(&diff.stdout)
        .into_iter()
        .chain(split_z(&untracked.stdout))
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    files.sort();
    files.dedup();
    Ok(files)
}

fn split_z(bytes: &[u8]) -> Vec<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    bytes.split(|b| *b == 0).filter(|s| !s.is_empty()).map(|s| PathBuf::from(std::ffi::OsStr::from_bytes(s))).collect()
}
