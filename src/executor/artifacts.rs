//! What a lane leaves in `/pikaci/artifacts` reaches the host only as plain files,
//! directories and symlinks: after the command (and, on a remote host, after the tar came
//! back) the artifacts directory is walked without following links, setuid and setgid
//! bits are cleared, and device nodes, fifos and sockets are removed. Every change is
//! noted in the job's `host.log`. A file the guest made setuid-root (Incus maps its root
//! to the host's with `shift=true`; bwrap's guest is the host user who runs pikaci) would
//! otherwise be a way to the host's root for any user who can reach the state root.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use anyhow::{Context, Result};

use crate::tools::log::HostLog;

const SETID_BITS: u32 = 0o6000;

/// What sanitizing changed, for the log and the tests.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Sanitized {
    /// Paths (relative to the artifacts directory) whose setuid/setgid bits were cleared.
    pub cleared: Vec<String>,
    /// Paths removed, with what they were (`device`, `fifo`, `socket`).
    pub removed: Vec<(String, &'static str)>,
}

/// Walk `dir` (not following symlinks) and make it safe to keep on the host.
pub fn sanitize(dir: &Path, log: &HostLog) -> Result<Sanitized> {
    let mut done = Sanitized::default();
    if dir.symlink_metadata().is_err() {
        return Ok(done);
    }
    walk(dir, dir, &mut done)?;
    for path in &done.cleared {
        log.line(&format!("artifacts: cleared the setuid/setgid bits of `{path}`"));
    }
    for (path, what) in &done.removed {
        log.line(&format!("artifacts: removed `{path}` ({what}: never kept)"));
    }
    Ok(done)
}

fn walk(root: &Path, dir: &Path, done: &mut Sanitized) -> Result<()> {
    let meta = dir.symlink_metadata().with_context(|| format!("stat `{}`", dir.display()))?;
    if meta.is_dir() {
        clear_setid(root, dir, &meta, done)?;
        for entry in fs::read_dir(dir).with_context(|| format!("read `{}`", dir.display()))? {
            let entry = entry.with_context(|| format!("read `{}`", dir.display()))?;
            walk(root, &entry.path(), done)?;
        }
        return Ok(());
    }
    let ty = meta.file_type();
    let removed = if ty.is_char_device() || ty.is_block_device() {
        Some("device")
    } else if ty.is_fifo() {
        Some("fifo")
    } else if ty.is_socket() {
        Some("socket")
    } else {
        None
    };
    if let Some(what) = removed {
        fs::remove_file(dir).with_context(|| format!("remove the {what} `{}` from the artifacts", dir.display()))?;
        done.removed.push((relative(root, dir), what));
    } else if ty.is_file() {
        clear_setid(root, dir, &meta, done)?;
    }
    // Symlinks stay as they are: a link is never followed here, and its mode means nothing.
    Ok(())
}

/// Clear the bits through a descriptor opened without following links, so that a path
/// swapped for a link in between cannot redirect the `chmod`.
fn clear_setid(root: &Path, path: &Path, meta: &fs::Metadata, done: &mut Sanitized) -> Result<()> {
    let mode = meta.permissions().mode();
    if mode & SETID_BITS == 0 {
        return Ok(());
    }
    let cleared = fs::Permissions::from_mode(mode & 0o7777 & !SETID_BITS);
    let opened: std::io::Result<File> =
        OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK).open(path);
    match opened {
        Ok(file) => file.set_permissions(cleared),
        // An unreadable file (mode 4111, pikaci not root): by path, once more checked not
        // to be a link. The guest has ended, so nothing swaps it in between.
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied && !path.is_symlink() => {
            fs::set_permissions(path, cleared)
        }
        Err(e) => Err(e),
    }
    .with_context(|| format!("clear the setuid/setgid bits of `{}`", path.display()))?;
    done.cleared.push(relative(root, path));
    Ok(())
}

fn relative(root: &Path, path: &Path) -> String {
    path.strip_prefix(root).unwrap_or(path).display().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clears_setid_bits_and_removes_fifos_but_keeps_links_and_plain_files() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        fs::create_dir_all(d.join("a/b")).unwrap();
        fs::write(d.join("a/b/tool"), "x").unwrap();
        fs::set_permissions(d.join("a/b/tool"), fs::Permissions::from_mode(0o4755)).unwrap();
        fs::set_permissions(d.join("a"), fs::Permissions::from_mode(0o2775)).unwrap();
        fs::write(d.join("plain"), "p").unwrap();
        std::os::unix::fs::symlink("/etc/shadow", d.join("link")).unwrap();
        let fifo = std::ffi::CString::new(d.join("fifo").to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
        let log = HostLog::create(&d.join("host.log")).unwrap();
        let done = sanitize(d, &log).unwrap();
        assert_eq!(done.removed, [("fifo".to_string(), "fifo")]);
        let mut cleared = done.cleared.clone();
        cleared.sort();
        assert_eq!(cleared, ["a", "a/b/tool"]);
        assert_eq!(fs::metadata(d.join("a/b/tool")).unwrap().permissions().mode() & 0o7777, 0o755);
        assert_eq!(fs::read_to_string(d.join("plain")).unwrap(), "p");
        assert!(d.join("link").is_symlink());
        assert!(fs::read_to_string(d.join("host.log")).unwrap().contains("removed `fifo` (fifo: never kept)"));
    }
}
