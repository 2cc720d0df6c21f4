//! Checks shared by the tests of `tests/fixtures/sandbox` on every runtime and placement.

use std::path::Path;

/// What `leave-setuid` left arrived as plain files, directories and links only: no
/// setuid/setgid bit, no device node, no fifo; the plain file and the link unchanged, and
/// `host.log` names what was changed.
pub fn assert_artifacts_safe(job_dir: &Path) {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let artifacts = job_dir.join("artifacts");
    let mut seen = Vec::new();
    let mut stack = vec![artifacts.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = path.symlink_metadata().unwrap();
            let ty = meta.file_type();
            let rel = path.strip_prefix(&artifacts).unwrap().display().to_string();
            assert!(
                !(ty.is_char_device() || ty.is_block_device() || ty.is_fifo() || ty.is_socket()),
                "`{rel}` reached the host as a special file"
            );
            if !ty.is_symlink() {
                let mode = meta.permissions().mode();
                assert_eq!(mode & 0o6000, 0, "`{rel}` reached the host with mode {mode:o}");
            }
            if ty.is_dir() {
                stack.push(path.clone());
            }
            seen.push(rel);
        }
    }
    seen.sort();
    let expected = [
        "link-to-shadow",
        "nested",
        "nested/deeper",
        "nested/deeper/sgid-shell",
        "plain.txt",
        "sgid-dir",
        "suid-shell",
    ];
    assert_eq!(seen, expected, "what the lane left, less the device node and the fifo");
    assert_eq!(std::fs::read_to_string(artifacts.join("plain.txt")).unwrap(), "plain\n");
    assert_eq!(std::fs::read_link(artifacts.join("link-to-shadow")).unwrap(), Path::new("/etc/shadow"));
    let host_log = std::fs::read_to_string(job_dir.join("host.log")).unwrap();
    for line in [
        "artifacts: cleared the setuid/setgid bits of `suid-shell`",
        "artifacts: cleared the setuid/setgid bits of `nested/deeper/sgid-shell`",
        "artifacts: removed `fifo` (fifo: never kept)",
    ] {
        assert!(host_log.contains(line), "host.log lacks `{line}`:\n{host_log}");
    }
}
