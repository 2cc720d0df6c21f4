//! What a lane sees of the source: the snapshot (tracked and untracked-not-ignored files,
//! content-addressed), and which lanes `--changed-since` selects.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

fn git(dir: &Path, args: &[&str]) {
    let out = Command::new("git")
        .args([
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "-c",
            "init.defaultBranch=main",
            "-c",
            "commit.gpgsign=false",
        ])
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn snapshot(dir: &Path) -> (std::path::PathBuf, String) {
    let out = run_in(dir, &["snapshot"]);
    assert_eq!(out.code, 0, "{out:?}");
    (out.stdout.trim().into(), out.stderr)
}

#[test]
fn the_snapshot_holds_tracked_and_untracked_files_but_not_ignored_git_or_state() {
    let dir = copy_fixture(&fixture_path("lanes"));
    let p = dir.path();
    std::fs::write(p.join(".gitignore"), "/target\n*.log\n").unwrap();
    git(p, &["init", "-q"]);
    git(p, &["add", "."]);
    git(p, &["commit", "-qm", "init"]);
    std::fs::write(p.join("untracked.txt"), "new").unwrap();
    std::fs::create_dir_all(p.join("target/debug")).unwrap();
    std::fs::write(p.join("target/debug/huge"), "build output").unwrap();
    std::fs::write(p.join("debug.log"), "ignored").unwrap();
    std::fs::remove_file(p.join("marker.txt")).unwrap(); // tracked, deleted in the work tree

    let (snap, _) = snapshot(p);
    assert!(snap.starts_with(p.join(".pikaci/snapshots")), "{}", snap.display());
    assert_eq!(std::fs::read_to_string(snap.join("untracked.txt")).unwrap(), "new");
    assert!(snap.join("flake.nix").is_file());
    assert!(snap.join("ci/check-view.sh").is_file());
    for absent in ["target", "debug.log", ".git", ".pikaci", "marker.txt"] {
        assert!(!snap.join(absent).exists(), "{absent} must not be in the snapshot");
    }
}

#[test]
fn an_unchanged_tree_is_not_copied_again_and_a_change_makes_a_new_snapshot() {
    let dir = copy_fixture(&fixture_path("lanes"));
    let p = dir.path();
    let (first, _) = snapshot(p);
    let (second, note) = snapshot(p);
    assert_eq!(first, second);
    assert!(note.contains("unchanged, reused"), "{note}");
    assert_eq!(std::fs::read_dir(p.join(".pikaci/snapshots")).unwrap().count(), 1);

    std::fs::write(p.join("marker.txt"), "marker-content changed").unwrap();
    let (third, note) = snapshot(p);
    assert_ne!(first, third);
    assert!(!note.contains("reused"), "{note}");
    assert_eq!(std::fs::read_to_string(third.join("marker.txt")).unwrap(), "marker-content changed");
    // The old snapshot is untouched: a rerun of an old run sees the old source.
    assert_eq!(std::fs::read_to_string(first.join("marker.txt")).unwrap(), "marker-content\n");
}

#[test]
fn changed_since_runs_only_lanes_whose_paths_match_and_records_why_others_were_skipped() {
    require_nix();
    require_bwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let salt = p.display();
    std::fs::write(
        p.join("flake.nix"),
        format!(
            r#"{{
  outputs = {{ self }}:
    let
      system = "x86_64-linux";
      sh = name: derivation {{ inherit name system; builder = "${{./tools}}/busybox"; args = [ "sh" "-c" "mkdir $out" ]; salt = "{salt}"; }};
      lane = paths: {{ kind = "staged-linux-rust"; payloads = {{ workspace-deps = sh "d"; workspace-build = sh "b"; }}; command = [ "/bin/true" ]; inherit paths; }};
    in {{
      pikaci.${{system}}.lanes = {{
        core = lane [ "src/**" "Cargo.lock" ];
        docs = lane [ "docs/*.md" ];
        always = lane [ ];
      }};
    }};
}}
"#
        ),
    )
    .unwrap();
    add_build_tools(p);
    std::fs::create_dir_all(p.join("src/inner")).unwrap();
    std::fs::create_dir_all(p.join("docs")).unwrap();
    std::fs::write(p.join("src/inner/lib.rs"), "fn a() {}").unwrap();
    std::fs::write(p.join("docs/guide.md"), "# guide").unwrap();
    std::fs::write(p.join(".gitignore"), "/.pikaci\n").unwrap();
    git(p, &["init", "-q"]);
    git(p, &["add", "."]);
    git(p, &["commit", "-qm", "init"]);

    std::fs::write(p.join("src/inner/lib.rs"), "fn b() {}").unwrap();
    let out = run_in(p, &["run", "--all", "--changed-since", "HEAD", "--runtime", "bwrap", "--output", "json"]);
    assert_eq!(out.code, 0, "skipped lanes do not fail a run: {out:?}");
    let record = out.json();
    assert_eq!(job_status(&record, "core"), "passed");
    assert_eq!(job_status(&record, "always"), "passed");
    // The run names the commit the work tree had checked out.
    let head = Command::new("git").arg("-C").arg(p).args(["rev-parse", "HEAD"]).output().unwrap();
    assert_eq!(record["git_rev"], String::from_utf8_lossy(&head.stdout).trim(), "{record}");
    assert!(run_in(p, &["status", "latest"]).stdout.contains("  revision  "));
    assert_eq!(job_status(&record, "docs"), "skipped");
    let docs = record["jobs"].as_array().unwrap().iter().find(|j| j["job_id"] == "docs").unwrap();
    assert_eq!(docs["message"], "no file changed since `HEAD` matches its paths (docs/*.md)");
    assert_eq!(record["changed"]["files"], serde_json::json!(["src/inner/lib.rs"]));

    // Untracked, not ignored: counts as changed.
    std::fs::write(p.join("docs/new.md"), "new").unwrap();
    let out = run_in(p, &["run", "docs", "--changed-since", "HEAD", "--runtime", "bwrap", "--output", "json"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(job_status(&out.json(), "docs"), "passed");

    let bad = run_in(p, &["run", "--all", "--changed-since", "no-such-rev"]);
    assert_eq!(bad.code, 2, "{bad:?}");
    assert!(bad.stderr.contains("`--changed-since no-such-rev`: no such commit"), "{}", bad.stderr);
}

/// A git work tree that was snapshotted once it had settled (older than the racy window),
/// so that the next snapshot is recognised from stat data alone, without `git`; then one
/// change each. Every change must show in the next snapshot.
#[test]
fn an_unchanged_git_tree_is_recognised_from_stat_data_and_every_change_still_shows() {
    type Change = fn(&Path);
    type Check = fn(&Path, &Path);
    let cases: [(&str, Change, Check); 8] = [
        // Same size, right after the snapshot: only the stat data tells.
        (
            "same-size edit",
            |p| std::fs::write(p.join("src/a.rs"), "fn b() {}\n").unwrap(),
            |_, s| assert_eq!(std::fs::read_to_string(s.join("src/a.rs")).unwrap(), "fn b() {}\n"),
        ),
        (
            "new untracked file",
            |p| std::fs::write(p.join("src/new.rs"), "new").unwrap(),
            |_, s| assert!(s.join("src/new.rs").is_file()),
        ),
        // A directory that held only ignored files: git looked into it, no listed file is in it.
        (
            "new file beside ignored ones",
            |p| std::fs::write(p.join("logs/kept.txt"), "kept").unwrap(),
            |_, s| assert!(s.join("logs/kept.txt").is_file()),
        ),
        (
            "new file in a new directory",
            |p| {
                std::fs::create_dir_all(p.join("src/deep/er")).unwrap();
                std::fs::write(p.join("src/deep/er/x.rs"), "x").unwrap();
            },
            |_, s| assert!(s.join("src/deep/er/x.rs").is_file()),
        ),
        (
            "deleted file",
            |p| std::fs::remove_file(p.join("src/a.rs")).unwrap(),
            |_, s| assert!(!s.join("src/a.rs").exists()),
        ),
        (
            "mode change",
            |p| {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(p.join("src/a.rs"), std::fs::Permissions::from_mode(0o755)).unwrap();
            },
            |_, s| {
                use std::os::unix::fs::PermissionsExt;
                assert!(std::fs::metadata(s.join("src/a.rs")).unwrap().permissions().mode() & 0o100 != 0)
            },
        ),
        (
            ".gitignore edit",
            |p| std::fs::write(p.join(".gitignore"), "").unwrap(),
            |_, s| assert!(s.join("logs/debug.log").is_file()),
        ),
        // Only the index changes: the file is untracked now, and ignored.
        (
            "git rm --cached",
            |p| git(p, &["rm", "-q", "--cached", "tracked.log"]),
            |_, s| assert!(!s.join("tracked.log").exists()),
        ),
    ];
    let trees: Vec<tempfile::TempDir> = cases
        .iter()
        .map(|_| {
            let dir = tempfile::Builder::new().prefix("pikaci-test-").tempdir().unwrap();
            let p = dir.path();
            std::fs::create_dir_all(p.join("src")).unwrap();
            std::fs::create_dir_all(p.join("logs")).unwrap();
            std::fs::write(p.join("flake.nix"), "{ outputs = { self }: { }; }\n").unwrap();
            std::fs::write(p.join("src/a.rs"), "fn a() {}\n").unwrap();
            std::fs::write(p.join("logs/debug.log"), "ignored").unwrap();
            std::fs::write(p.join("tracked.log"), "tracked though ignored").unwrap();
            std::fs::write(p.join(".gitignore"), "*.log\n").unwrap();
            git(p, &["init", "-q"]);
            git(p, &["add", "."]);
            git(p, &["add", "-f", "tracked.log"]);
            git(p, &["commit", "-qm", "init"]);
            snapshot(p); // creates the state root
            dir
        })
        .collect();
    // Past the racy window (2 s), so that the next snapshots are recorded.
    std::thread::sleep(std::time::Duration::from_millis(2300));
    for ((name, change, check), dir) in cases.iter().zip(&trees) {
        let p = dir.path();
        let (before, _) = snapshot(p);
        assert!(p.join(".pikaci/snapshot-cache.tree").is_file(), "{name}: the settled tree was not recorded");
        let (again, note) = snapshot(p);
        assert_eq!(before, again, "{name}");
        assert!(note.contains("unchanged, reused"), "{name}: {note}");
        change(p);
        let (after, _) = snapshot(p);
        assert_ne!(before, after, "{name}: the change was not seen");
        check(p, &after);
        // What changed is younger than the racy window: not recorded, so a second change
        // in the same clock tick could not hide behind the same stat data.
        assert!(!p.join(".pikaci/snapshot-cache.tree").exists(), "{name}: a racy tree was recorded");
    }
}
