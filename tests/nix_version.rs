//! Which Nix pikaci runs on: `doctor` names it, and a Nix older than 2.18 (nixpkgs'
//! minimum) is refused before anything is evaluated. The old Nix is a real one: Debian 12's
//! `nix-bin` 2.8 (`/usr/bin/nix`), which `scripts/bootstrap` keeps installed beside the
//! current Nix it puts first on PATH.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

const OLD_NIX: &str = "/usr/bin/nix";

/// A flake with one lane (evaluated only; nothing here is built).
fn write_flake(dir: &Path) {
    let flake = r#"{
  outputs = { self }:
    let
      system = "x86_64-linux";
      drv = name: derivation { inherit name system; builder = "/bin/sh"; args = [ "-c" "echo > $out" ]; };
    in {
      pikaci.${system}.lanes.unit = {
        kind = "staged-linux-rust";
        payloads = { workspace-deps = drv "v-deps"; workspace-build = drv "v-build"; };
        command = [ "/bin/true" ];
      };
    };
}
"#;
    std::fs::write(dir.join("flake.nix"), flake).unwrap();
}

/// A directory with Debian's real Nix 2.8 linked as `nix` and `nix-store`, and its version.
fn old_nix_dir() -> (tempfile::TempDir, String) {
    let version = Command::new(OLD_NIX).arg("--version").output().ok().filter(|o| o.status.success());
    let Some(version) = version else {
        panic!(
            "`{OLD_NIX}` (Debian 12's nix-bin, Nix 2.8) is required by this test: run `scripts/bootstrap`, which keeps it installed"
        );
    };
    let version = String::from_utf8_lossy(&version.stdout).trim().to_string();
    assert!(
        version.starts_with("nix (Nix) 2.") && !version.contains(" 2.18"),
        "`{OLD_NIX}` is {version}, not an old Nix"
    );
    let dir = tempfile::tempdir().unwrap();
    for tool in ["nix", "nix-store"] {
        std::os::unix::fs::symlink(Path::new("/usr/bin").join(tool), dir.path().join(tool)).unwrap();
    }
    (dir, version)
}

fn path_with_first(dir: &Path) -> String {
    format!("{}:{}", dir.display(), std::env::var("PATH").unwrap_or_default())
}

fn nix_on_path() -> PathBuf {
    require_nix();
    which("nix").unwrap()
}

#[test]
fn doctor_names_the_nix_it_found() {
    let nix = nix_on_path();
    let version = Command::new(&nix).arg("--version").output().unwrap();
    let version = String::from_utf8_lossy(&version.stdout).trim().to_string();
    let dir = tempfile::tempdir().unwrap();
    let out: Run = pikaci().arg("doctor").current_dir(dir.path()).output().unwrap().into();
    let line = out.stdout.lines().find(|l| l.contains(" nix ")).unwrap_or_else(|| panic!("no nix line: {out:?}"));
    assert!(line.starts_with("ok "), "{out:?}");
    assert!(line.contains(&version) && line.contains(&format!("`{}`", nix.display())), "{line}");
}

#[test]
fn a_nix_older_than_2_18_is_refused_with_the_fix() {
    let (old, version) = old_nix_dir();
    let path = path_with_first(old.path());
    let dir = tempfile::tempdir().unwrap();
    write_flake(dir.path());
    let flake = format!("path:{}", dir.path().display());
    let refused = |args: &[&str]| -> Run {
        pikaci().env("PATH", &path).args(args).arg("--flake").arg(&flake).output().unwrap().into()
    };

    for args in [&["lanes"][..], &["run", "--runtime", "bwrap"][..]] {
        let out = refused(args);
        assert_eq!(out.code, 3, "`pikaci {}` on {version}: {out:?}", args.join(" "));
        let err = &out.stderr;
        assert!(err.contains(&version) && err.contains("/nix`"), "names the Nix: {err}");
        assert!(err.contains("Nix 2.18 or newer"), "names the minimum: {err}");
        assert!(err.contains("scripts/bootstrap"), "names the fix: {err}");
    }
    assert!(
        !dir.path().join(".pikaci/runs").exists()
            || std::fs::read_dir(dir.path().join(".pikaci/runs")).unwrap().next().is_none(),
        "no run is recorded"
    );

    let out: Run = pikaci().env("PATH", &path).arg("doctor").current_dir(dir.path()).output().unwrap().into();
    assert_eq!(out.code, 3, "{out:?}");
    let line = out.stdout.lines().find(|l| l.contains(" nix ")).unwrap();
    assert!(line.starts_with("FAIL") && line.contains(&version) && line.contains("2.18"), "{out:?}");
    assert!(out.stdout.contains("fix: install a current Nix"), "{out:?}");

    // The same state root, back on the current Nix: the cached version of the old one
    // (`nix-version.json`, keyed by the binary) does not stick.
    let out = pikaci().args(["lanes", "--flake", &flake]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
}
