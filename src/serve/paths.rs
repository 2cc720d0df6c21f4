//! What a URL may name, and how a name becomes a file: run ids and job ids by their grammar,
//! file names as plain names, every file opened without following a symlink, and checked to
//! be inside the state root after canonicalization. Nothing from a URL reaches the
//! filesystem before it passed these checks.

use std::fs::{File, Metadata, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::state::StateRoot;

/// `YYYYMMDD-HHMMSS-mmm-xxxx`, the form `new_run_id` makes.
pub fn valid_run_id(id: &str) -> bool {
    let b = id.as_bytes();
    let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
    b.len() == 24
        && digits(0..8)
        && b[8] == b'-'
        && digits(9..15)
        && b[15] == b'-'
        && digits(16..19)
        && b[19] == b'-'
        && b[20..].iter().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
}

/// A job id: a lane id (`[a-z0-9][a-z0-9-]*`), possibly with a shard suffix (`.` or `_`).
pub fn valid_job_id(id: &str) -> bool {
    let b = id.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'-' | b'.' | b'_'))
        && !id.contains("..")
}

/// One path component from a URL: not empty, not `.` or `..`, no `/` or NUL.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\0']) && name.len() <= 255
}

/// Percent-decode one path segment or query value; None when it is not valid UTF-8.
pub fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3)?;
            if !hex.iter().all(u8::is_ascii_hexdigit) {
                return None;
            }
            out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Percent-encode a file name for a link.
pub fn percent_encode(s: &str) -> String {
    crate::tools::url::percent_encode(s.as_bytes(), b"")
}

/// A run's directory, when the id is well-formed and the run exists as a real directory.
pub fn run_dir(state: &StateRoot, run_id: &str) -> Option<PathBuf> {
    if !valid_run_id(run_id) {
        return None;
    }
    let dir = state.run_dir(run_id);
    is_real_dir(&dir).then_some(dir).filter(|d| inside(state, d))
}

/// A job's directory in a run, under the same rules.
pub fn job_dir(state: &StateRoot, run_id: &str, job_id: &str) -> Option<PathBuf> {
    run_dir(state, run_id)?;
    if !valid_job_id(job_id) {
        return None;
    }
    let dir = state.job_dir(run_id, job_id);
    (is_real_dir(&state.run_dir(run_id).join("jobs")) && is_real_dir(&dir) && inside(state, &dir)).then_some(dir)
}

fn is_real_dir(path: &Path) -> bool {
    std::fs::symlink_metadata(path).map(|m| m.is_dir()).unwrap_or(false)
}

/// Whether the path, canonicalized, is under the canonical state root.
fn inside(state: &StateRoot, path: &Path) -> bool {
    match (state.root.canonicalize(), path.canonicalize()) {
        (Ok(root), Ok(p)) => p.starts_with(root),
        _ => false,
    }
}

/// Open a regular file below `base` by relative components, following no symlink on the
/// way: each directory is checked with `lstat`, the file is opened with `O_NOFOLLOW`, and
/// the opened file must be a regular file inside the state root.
pub fn open_below(state: &StateRoot, base: &Path, parts: &[String]) -> Option<(File, Metadata, PathBuf)> {
    if parts.is_empty() || !parts.iter().all(|p| valid_name(p)) {
        return None;
    }
    let mut path = base.to_path_buf();
    for dir in &parts[..parts.len() - 1] {
        path.push(dir);
        if !is_real_dir(&path) {
            return None;
        }
    }
    path.push(&parts[parts.len() - 1]);
    let file = OpenOptions::new().read(true).custom_flags(libc_o_nofollow()).open(&path).ok()?;
    let meta = file.metadata().ok()?;
    (meta.is_file() && inside(state, &path)).then_some((file, meta, path))
}

/// `O_NOFOLLOW` on Linux (the only platform pikaci runs on).
const fn libc_o_nofollow() -> i32 {
    0o400000
}

/// The regular files of a directory (no symlinks, no directories), sorted.
pub fn regular_files(dir: &Path) -> Vec<(String, u64)> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut files: Vec<(String, u64)> = entries
        .filter_map(|e| {
            let e = e.ok()?;
            let meta = e.path().symlink_metadata().ok()?;
            meta.is_file().then(|| (e.file_name().to_string_lossy().into_owned(), meta.len()))
        })
        .collect();
    files.sort();
    files
}

/// Every regular file below a directory, as relative component lists, without following
/// symlinks; at most `limit` of them.
pub fn walk_files(dir: &Path, limit: usize) -> Vec<(Vec<String>, u64)> {
    let mut found = Vec::new();
    let mut stack = vec![(dir.to_path_buf(), Vec::<String>::new())];
    while let Some((d, prefix)) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let Ok(meta) = e.path().symlink_metadata() else { continue };
            let Some(name) = e.file_name().to_str().map(str::to_string) else { continue };
            let mut parts = prefix.clone();
            parts.push(name);
            if meta.is_dir() {
                stack.push((e.path(), parts));
            } else if meta.is_file() && found.len() < limit {
                found.push((parts, meta.len()));
            }
        }
    }
    found.sort();
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_ids_follow_their_grammar() {
        assert!(valid_run_id("20261121-163300-123-9f3a"));
        for bad in
            ["", "latest", "..", "20261121-163300-123-9f3", "20261121-163300-123-9F3A", "20261121/163300-123-9f3a"]
        {
            assert!(!valid_run_id(bad), "{bad}");
        }
    }

    #[test]
    fn job_ids_and_names_reject_traversal() {
        assert!(valid_job_id("unit") && valid_job_id("unit.1") && valid_job_id("a-b_2"));
        for bad in ["", "..", "a..b", "a/b", "-x", "A", "a\0b", ".hidden"] {
            assert!(!valid_job_id(bad), "{bad}");
        }
        for bad in ["", ".", "..", "a/b", "a\0b"] {
            assert!(!valid_name(bad), "{bad}");
        }
        assert!(valid_name("..a") && valid_name("<img onerror=x>"));
    }

    #[test]
    fn percent_decoding_is_strict() {
        assert_eq!(percent_decode("..%2f..%2Fetc").as_deref(), Some("../../etc"));
        assert_eq!(percent_decode("%3Cimg%3E").as_deref(), Some("<img>"));
        assert_eq!(percent_decode("a%00b").as_deref(), Some("a\0b"));
        assert_eq!(percent_decode("%"), None);
        assert_eq!(percent_decode("%2"), None);
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%+f"), None);
        assert_eq!(percent_decode("%ff"), None);
        assert_eq!(percent_encode("<a b>/"), "%3Ca%20b%3E%2F");
    }

    #[test]
    fn open_below_refuses_symlinks_and_directories() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateRoot { root: dir.path().to_path_buf() };
        let base = dir.path().join("a");
        std::fs::create_dir_all(base.join("sub")).unwrap();
        std::fs::write(base.join("sub/f"), "x").unwrap();
        std::fs::write(dir.path().join("outside"), "secret").unwrap();
        std::os::unix::fs::symlink(dir.path().join("outside"), base.join("link")).unwrap();
        std::os::unix::fs::symlink(base.join("sub"), base.join("dirlink")).unwrap();
        let part = |s: &[&str]| s.iter().map(|p| p.to_string()).collect::<Vec<_>>();
        assert!(open_below(&state, &base, &part(&["sub", "f"])).is_some());
        assert!(open_below(&state, &base, &part(&["link"])).is_none());
        assert!(open_below(&state, &base, &part(&["dirlink", "f"])).is_none());
        assert!(open_below(&state, &base, &part(&["sub"])).is_none());
        assert!(open_below(&state, &base, &part(&["..", "outside"])).is_none());
        assert_eq!(walk_files(&base, 10), vec![(part(&["sub", "f"]), 1)]);
    }
}
