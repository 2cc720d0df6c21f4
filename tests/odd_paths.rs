//! A flake directory (and so the state root and the snapshots in it) whose path holds a
//! space, `#`, `?`, `%` and a non-ASCII character: `lanes` and `run` work, and Nix
//! evaluates that directory, not the prefix before the `?` (a decoy flake sits there).

mod common;

use std::path::Path;

use common::*;

const ODD: &str = "p?q a#b%c é";

/// `<tmp>/p?q a#b%c é` holding the `lanes` fixture, beside a decoy flake at `<tmp>/p`
/// whose only lane is `decoy`.
fn odd_flake() -> (tempfile::TempDir, std::path::PathBuf) {
    require_nix();
    let parent = tempfile::Builder::new().prefix("pikaci-odd-").tempdir().unwrap();
    let flake = parent.path().join(ODD);
    copy_tree(&fixture_path("lanes"), &flake);
    add_build_tools(&flake);
    std::fs::write(flake.join("salt"), parent.path().file_name().unwrap().to_string_lossy().as_bytes()).unwrap();
    let decoy = parent.path().join("p");
    std::fs::create_dir(&decoy).unwrap();
    std::fs::write(
        decoy.join("flake.nix"),
        r#"{ outputs = { self }: { pikaci.x86_64-linux.lanes.decoy = { kind = "staged-linux-rust"; payloads = { }; command = [ "/bin/true" ]; }; }; }"#,
    )
    .unwrap();
    (parent, flake)
}

/// The percent-encoded `path:` URL of a directory, as a user would write it.
fn encoded(dir: &Path) -> String {
    let mut url = String::from("path:");
    for b in dir.to_str().unwrap().bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            url.push(b as char);
        } else {
            url.push_str(&format!("%{b:02X}"));
        }
    }
    url
}

#[test]
fn lanes_and_run_work_in_a_directory_with_url_characters() {
    let (_parent, flake) = odd_flake();
    // `--flake DIR`: a plain directory, taken as it is.
    let lanes = pikaci().args(["lanes", "--json", "--flake"]).arg(&flake).current_dir(&flake).output().unwrap();
    let lanes: Run = lanes.into();
    assert_eq!(lanes.code, 0, "{lanes:?}");
    let ids: Vec<String> =
        lanes.json().as_array().unwrap().iter().map(|l| l["id"].as_str().unwrap().to_string()).collect();
    assert!(ids.contains(&"view".to_string()) && !ids.contains(&"decoy".to_string()), "{ids:?}");

    // `--flake path:URL`, percent-encoded; the view lane checks the snapshot's content.
    let run = pikaci().args(["run", "view", "--runtime", "bwrap", "--flake"]).arg(encoded(&flake)).output().unwrap();
    let run: Run = run.into();
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("[view] VIEW OK"), "{}", run.stdout);
    assert!(flake.join(".pikaci/runs").is_dir(), "the state root is in the odd directory");
}
