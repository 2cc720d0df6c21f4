//! The guest image: `pikaci image import` builds pikaci's default image from the host's
//! static busybox (no image server is needed, or reachable, on a CI host), or imports a
//! tarball built elsewhere (the flake's `guest-image`), under an alias.
//!
//! The built image matches `nix/guest-image.nix`: busybox and its applet links, busybox
//! `init` as PID 1 doing nothing but reaping (`/sbin/init` must exist or the container
//! does not start), `/etc/passwd` and `/etc/group`, and the guest view's mount points.
//! Fixed owners, order and times make it reproducible: the same busybox gives the same
//! tarball, so the same fingerprint.

use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

use super::daemon_error;
use crate::error;
use crate::tools::command::Cmd;
use crate::tools::incus::{Incus, LIFECYCLE_TIMEOUT, QUERY_TIMEOUT, Wait, url_segment};

/// Directories of the rootfs: the usual ones, then the guest view's mount points.
const ROOTFS_DIRS: &[&str] = &[
    "bin",
    "sbin",
    "etc",
    "root",
    "tmp",
    "run",
    "var",
    "var/tmp",
    "proc",
    "sys",
    "dev",
    "mnt",
    "usr/bin",
    "usr/sbin",
    "workspace",
    "pikaci/payloads",
    "pikaci/artifacts",
    "pikaci/home",
    "nix/store",
];

/// PID 1 does nothing but reap; every command comes through `incus exec`.
const INITTAB: &str = "::sysinit:/bin/mkdir -p /run /tmp\n::respawn:/bin/sleep 2147483647\n";
const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n";
const GROUP: &str = "root:x:0:\nnogroup:x:65534:\n";
const HOSTS: &str = "127.0.0.1 localhost\n::1 localhost\n";

/// Import an image under `alias` and return its fingerprint: the tarball `from` (a file,
/// or a directory holding exactly one tarball, like a `nix build` result), or else
/// pikaci's default image, built here. With the alias already present and no `force`,
/// nothing happens. With `force`, the alias moves to the new image, and the image it
/// left is deleted when no other alias names it. With `remote`, into that SSH host's
/// Incus: the tarball is sent there first.
pub fn import_image(alias: &str, from: Option<&Path>, force: bool, remote: Option<&str>) -> Result<String> {
    if alias.trim().is_empty() {
        return Err(error::usage("the image alias is empty").hint("pass `--alias NAME`").into());
    }
    let remote = remote.filter(|h| !crate::executor::placement::ssh_host_is_local(Some(h)));
    let incus = match remote {
        Some(host) => Incus::via_ssh(crate::tools::ssh::Ssh::new(host)?, host),
        None => Incus::local()?,
    };
    incus.server().map_err(|e| daemon_error(&incus, e))?;
    let existing = incus.alias_target(alias, None)?;
    if let Some(fingerprint) = &existing
        && !force
    {
        return Ok(fingerprint.clone());
    }

    let work = tempfile::Builder::new().prefix("pikaci-image-").tempdir().context("create a temporary directory")?;
    let tarball = match from {
        Some(path) => resolve_tarball(path)?,
        None => build_default_image(work.path())?,
    };
    let mut fingerprint = sha256_file(&tarball)?;
    if incus.image(&fingerprint)?.is_none() {
        let sent = match remote {
            Some(host) => Some(super::remote_image::SentTarball::send(host, &tarball)?),
            None => None,
        };
        let path = sent.as_ref().map_or_else(|| tarball.to_string_lossy().into_owned(), |s| s.path.clone());
        let cmd = incus.command("incus image import", &["image", "import", &path]);
        let out = incus
            .run(&cmd, None, Wait::Interruptible(LIFECYCLE_TIMEOUT))
            .with_context(|| format!("import `{}` into Incus", tarball.display()))?;
        // Incus names the fingerprint it computed; trust it over ours.
        if let Some(fp) = out.stdout_str().split("fingerprint:").nth(1).map(str::trim).filter(|s| !s.is_empty()) {
            fingerprint = fp.to_string();
        }
    }

    match existing {
        Some(old) if old == fingerprint => {}
        Some(old) => {
            // Move the alias in one call, so that it never names nothing.
            let body = serde_json::json!({ "target": fingerprint, "description": "" }).to_string();
            let path = format!("/1.0/images/aliases/{}", url_segment(alias));
            let cmd = incus.command("incus query", &["query", "-X", "PUT", "--data", &body, &path]);
            incus
                .run(&cmd, None, Wait::Interruptible(QUERY_TIMEOUT))
                .with_context(|| format!("point alias `{alias}` at the new image"))?;
            let unused =
                incus.image(&old)?.is_some_and(|image| image["aliases"].as_array().is_none_or(|a| a.is_empty()));
            if unused {
                let cmd = incus.command("incus image delete", &["image", "delete", &old]);
                incus
                    .run(&cmd, None, Wait::Interruptible(LIFECYCLE_TIMEOUT))
                    .with_context(|| format!("delete the replaced image `{old}`"))?;
            }
        }
        None => {
            let cmd = incus.command("incus image alias create", &["image", "alias", "create", alias, &fingerprint]);
            if let Err(e) = incus.run(&cmd, None, Wait::Interruptible(QUERY_TIMEOUT)) {
                // Another `pikaci image import` may have won the race: that is success.
                return match incus.alias_target(alias, None)? {
                    Some(target) => Ok(target),
                    None => Err(e.context(format!("create alias `{alias}`"))),
                };
            }
        }
    }
    Ok(fingerprint)
}

/// A tarball given on the command line: the file, or the only tarball in a directory.
fn resolve_tarball(path: &Path) -> Result<PathBuf> {
    let meta = fs::metadata(path).map_err(|e| {
        error::usage(format!("image tarball `{}` cannot be read: {e}", path.display()))
            .hint("pass a unified image tarball (metadata.yaml + rootfs/), e.g. `result/pikaci-guest-image.tar.xz`")
    })?;
    if meta.is_file() {
        return Ok(path.to_path_buf());
    }
    let tarballs: Vec<PathBuf> = fs::read_dir(path)
        .with_context(|| format!("read `{}`", path.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file() && is_tarball_name(&p.to_string_lossy()))
        .collect();
    match tarballs.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(error::usage(format!(
            "`{}` holds no image tarball (`*.tar`, `*.tar.gz`, `*.tar.xz`, `*.tar.zst`)",
            path.display()
        ))
        .into()),
        many => Err(error::usage(format!("`{}` holds {} tarballs; name one", path.display(), many.len())).into()),
    }
}

fn is_tarball_name(name: &str) -> bool {
    [".tar", ".tar.gz", ".tgz", ".tar.xz", ".tar.zst", ".tar.bz2"].iter().any(|ext| name.ends_with(ext))
}

/// Build pikaci's default image into `work` and return the tarball's path.
pub fn build_default_image(work: &Path) -> Result<PathBuf> {
    let busybox = find_static_busybox()?;
    let version = busybox_version(&busybox)?;
    let epoch = fs::metadata(&busybox)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_secs())
        .unwrap_or(315_532_800);

    let root = work.join("rootfs");
    for dir in ROOTFS_DIRS {
        let path = root.join(dir);
        fs::create_dir_all(&path).with_context(|| format!("create `{}`", path.display()))?;
    }
    for (dir, mode) in [("tmp", 0o1777), ("var/tmp", 0o1777), ("root", 0o700)] {
        set_mode(&root.join(dir), mode)?;
    }
    let target = root.join("bin/busybox");
    fs::copy(&busybox, &target).with_context(|| format!("copy `{}` into the image", busybox.display()))?;
    set_mode(&target, 0o755)?;
    let list = Cmd::new("busybox --list-full", &target).arg("--list-full").run(None)?;
    for applet in list.stdout_str().lines().map(str::trim).filter(|l| !l.is_empty() && !l.contains("..")) {
        let link = root.join(applet.trim_start_matches('/'));
        if link.symlink_metadata().is_ok() {
            continue;
        }
        if let Some(parent) = link.parent() {
            fs::create_dir_all(parent).with_context(|| format!("create `{}`", parent.display()))?;
        }
        std::os::unix::fs::symlink("/bin/busybox", &link).with_context(|| format!("link `{}`", link.display()))?;
    }
    if root.join("sbin/init").symlink_metadata().is_err() {
        anyhow::bail!("`{}` has no `init` applet; the container could not start", busybox.display());
    }
    for (file, text) in [
        ("etc/inittab", INITTAB),
        ("etc/passwd", PASSWD),
        ("etc/group", GROUP),
        ("etc/hosts", HOSTS),
        ("etc/hostname", "pikaci-guest\n"),
    ] {
        let path = root.join(file);
        fs::write(&path, text).with_context(|| format!("write `{}`", path.display()))?;
        set_mode(&path, 0o644)?;
    }
    fs::write(work.join("metadata.yaml"), metadata_yaml(std::env::consts::ARCH, epoch, &version))
        .context("write metadata.yaml")?;

    let (ext, compress) = if which::which("zstd").is_ok() { ("tar.zst", "--zstd") } else { ("tar.gz", "--gzip") };
    let tarball = work.join(format!("pikaci-guest-image.{ext}"));
    Cmd::new("tar", which::which("tar").map_err(|_| error::infra("`tar` was not found on PATH"))?)
        .arg("-C")
        .arg(work)
        .args([
            "--sort=name",
            "--owner=0",
            "--group=0",
            "--numeric-owner",
            &format!("--mtime=@{epoch}"),
            compress,
            "-cf",
        ])
        .arg(&tarball)
        .args(["metadata.yaml", "rootfs"])
        .run(None)
        .context("pack the guest image")?;
    Ok(tarball)
}

/// The image's `metadata.yaml`.
pub fn metadata_yaml(rust_arch: &str, creation_date: u64, busybox_version: &str) -> String {
    let architecture = match rust_arch {
        "x86" => "i686",
        "arm" => "armv7l",
        other => other,
    };
    format!(
        "architecture: {architecture}\ncreation_date: {creation_date}\nproperties:\n  description: pikaci guest (busybox {busybox_version})\n  os: pikaci\n  release: \"{busybox_version}\"\n"
    )
}

/// The host's busybox, provided that it is static (a dynamic one would not run in an
/// image without its libraries).
fn find_static_busybox() -> Result<PathBuf> {
    let fix = "install a static busybox (`apt-get install busybox-static`), or import the flake's image: \
               `nix build .#guest-image && pikaci image import --from result`";
    let candidates = [Some(PathBuf::from("/bin/busybox")), which::which("busybox").ok()];
    let Some(path) = candidates.into_iter().flatten().find(|p| p.is_file()) else {
        return Err(error::infra("no `busybox` to build the guest image from").hint(fix).into());
    };
    let mut head = Vec::new();
    fs::File::open(&path)
        .and_then(|f| f.take(64 * 1024).read_to_end(&mut head))
        .with_context(|| format!("read `{}`", path.display()))?;
    match elf_is_static(&head) {
        Some(true) => Ok(path),
        Some(false) => Err(error::infra(format!(
            "`{}` is dynamically linked; the guest image needs a static busybox",
            path.display()
        ))
        .hint(fix)
        .into()),
        None => Err(error::infra(format!("`{}` is not an ELF executable", path.display())).hint(fix).into()),
    }
}

fn busybox_version(busybox: &Path) -> Result<String> {
    // `busybox` alone prints "BusyBox v1.35.0 (Debian ...) multi-call binary." first.
    let out = Cmd::new("busybox", busybox).run_unchecked(None)?;
    let text = out.stdout_str() + &out.stderr_str();
    Ok(text
        .split_whitespace()
        .find_map(|w| w.strip_prefix('v').filter(|v| v.starts_with(|c: char| c.is_ascii_digit())))
        .unwrap_or("unknown")
        .to_string())
}

/// Whether an ELF file (its first bytes) has no program interpreter, i.e. is static.
/// `None` when it is not ELF or the program headers are not in `head`.
pub fn elf_is_static(head: &[u8]) -> Option<bool> {
    if head.len() < 0x40 || &head[..4] != b"\x7fELF" {
        return None;
    }
    let is64 = head[4] == 2;
    let le = head[5] == 1;
    let read = |off: usize, len: usize| -> Option<u64> {
        let bytes = head.get(off..off + len)?;
        let mut v: u64 = 0;
        for i in 0..len {
            let b = if le { bytes[len - 1 - i] } else { bytes[i] };
            v = (v << 8) | u64::from(b);
        }
        Some(v)
    };
    let (phoff, phentsize, phnum) = if is64 {
        (read(0x20, 8)?, read(0x36, 2)?, read(0x38, 2)?)
    } else {
        (read(0x1C, 4)?, read(0x2A, 2)?, read(0x2C, 2)?)
    };
    const PT_INTERP: u64 = 3;
    for i in 0..phnum {
        let off = usize::try_from(phoff + i * phentsize).ok()?;
        if read(off, 4)? == PT_INTERP {
            return Some(false);
        }
    }
    Some(true)
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).with_context(|| format!("chmod `{}`", path.display()))
}

/// SHA-256 of a file, hex: Incus' fingerprint of a unified image tarball.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file = fs::File::open(path).with_context(|| format!("open `{}`", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf).with_context(|| format!("read `{}`", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal 64-bit little-endian ELF header with `types` as program headers.
    fn elf64(types: &[u32]) -> Vec<u8> {
        let mut b = vec![0u8; 0x40 + 56 * types.len()];
        b[..4].copy_from_slice(b"\x7fELF");
        b[4] = 2;
        b[5] = 1;
        b[0x20..0x28].copy_from_slice(&0x40u64.to_le_bytes());
        b[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        b[0x38..0x3A].copy_from_slice(&(types.len() as u16).to_le_bytes());
        for (i, t) in types.iter().enumerate() {
            b[0x40 + 56 * i..0x40 + 56 * i + 4].copy_from_slice(&t.to_le_bytes());
        }
        b
    }

    #[test]
    fn static_and_dynamic_elf_are_told_apart() {
        assert_eq!(elf_is_static(&elf64(&[6, 1, 1])), Some(true));
        assert_eq!(elf_is_static(&elf64(&[6, 3, 1])), Some(false));
        assert_eq!(
            elf_is_static(b"#!/bin/sh\necho not elf, but long enough to have a header of sixty-four bytes"),
            None
        );
    }

    #[test]
    fn metadata_names_the_architecture_date_and_version() {
        let yaml = metadata_yaml("x86_64", 1_700_000_000, "1.35.0");
        assert_eq!(
            yaml,
            "architecture: x86_64\ncreation_date: 1700000000\nproperties:\n  description: pikaci guest (busybox 1.35.0)\n  os: pikaci\n  release: \"1.35.0\"\n"
        );
        assert!(metadata_yaml("aarch64", 1, "x").starts_with("architecture: aarch64\n"));
    }

    #[test]
    fn a_directory_with_one_tarball_names_it() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("pikaci-guest-image.tar.xz"), b"x").unwrap();
        fs::write(dir.path().join("README"), b"x").unwrap();
        assert_eq!(resolve_tarball(dir.path()).unwrap(), dir.path().join("pikaci-guest-image.tar.xz"));
        fs::write(dir.path().join("other.tar.zst"), b"x").unwrap();
        assert!(resolve_tarball(dir.path()).unwrap_err().to_string().contains("holds 2 tarballs"));
        let err = resolve_tarball(&dir.path().join("absent.tar")).unwrap_err();
        assert_eq!(error::kind_of(&err), error::ErrorKind::Usage);
    }

    #[test]
    fn fingerprint_is_the_sha256_of_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("t");
        fs::write(&f, b"abc").unwrap();
        assert_eq!(sha256_file(&f).unwrap(), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }
}
