//! The catalog: one `nix eval`, every invalid lane reported, clear errors for bad flakes.

mod common;

use std::path::Path;

use common::*;

fn write_flake(dir: &Path, lanes: &str) {
    let flake = format!(
        r#"{{
  outputs = {{ self }}:
    let
      system = "x86_64-linux";
      sh = name: script: derivation {{
        inherit name system; builder = "/bin/sh"; args = [ "-c" script ]; PATH = "/usr/bin:/bin";
        salt = "{salt}";
      }};
      deps = sh "cat-deps" "mkdir $out";
      build = sh "cat-build" "mkdir $out";
      ok = {{ kind = "staged-linux-rust"; payloads = {{ workspace-deps = deps; workspace-build = build; }}; command = [ "/bin/true" ]; }};
    in {{
      pikaci.${{system}}.lanes = {lanes};
    }};
}}
"#,
        salt = dir.display()
    );
    std::fs::write(dir.join("flake.nix"), flake).unwrap();
}

#[test]
fn lanes_json_describes_each_lane_without_building_anything() {
    require_nix();
    let dir = tempfile::tempdir().unwrap();
    write_flake(
        dir.path(),
        r#"{ unit = ok // { description = "unit tests"; paths = [ "crates/**" ]; timeout = 30; env.A = "b"; }; }"#,
    );
    let out = run_in(dir.path(), &["lanes", "--json"]);
    assert_eq!(out.code, 0, "{out:?}");
    let lanes = out.json();
    let unit = &lanes[0];
    assert_eq!(unit["id"], "unit");
    assert_eq!(unit["description"], "unit tests");
    assert_eq!(unit["kind"], "staged-linux-rust");
    assert_eq!(unit["timeout_secs"], 30);
    assert_eq!(unit["env"]["A"], "b");
    assert_eq!(unit["paths"][0], "crates/**");
    let payloads = unit["payloads"].as_array().unwrap();
    assert_eq!(payloads[0]["name"], "workspace-deps");
    assert_eq!(payloads[1]["name"], "workspace-build");
    let drv = payloads[1]["drv_path"].as_str().unwrap();
    assert!(drv.starts_with("/nix/store/") && drv.ends_with("-cat-build.drv"), "{drv}");
    let out_path = payloads[1]["outputs"]["out"].as_str().unwrap();
    // Evaluated, not built.
    assert!(Path::new(drv).exists());
    assert!(!Path::new(out_path).exists(), "{out_path} was built by `lanes`");

    let human = run_in(dir.path(), &["lanes"]);
    assert_eq!(human.code, 0);
    assert!(
        human.stdout.contains("unit") && human.stdout.contains("workspace-deps, workspace-build"),
        "{}",
        human.stdout
    );
}

/// `nix` on PATH is a logging front for the real one: pikaci must call it once for the
/// whole catalog, however many lanes there are.
#[test]
fn the_catalog_is_read_with_one_nix_eval_for_any_number_of_lanes() {
    require_nix();
    let real_nix = which("nix").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let flake = dir.path().join("flake");
    std::fs::create_dir(&flake).unwrap();
    write_flake(
        &flake,
        "builtins.listToAttrs (map (i: { name = \"lane-${toString i}\"; value = ok; }) (builtins.genList (i: i) 40))",
    );
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let log = dir.path().join("nix-calls.log");
    let front = format!("#!/bin/sh\necho \"$*\" >> '{}'\nexec '{}' \"$@\"\n", log.display(), real_nix.display());
    std::fs::write(bin.join("nix"), front).unwrap();
    std::fs::set_permissions(bin.join("nix"), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    // nix-store is looked up next to nix; give the real one there too.
    std::os::unix::fs::symlink(real_nix.parent().unwrap().join("nix-store"), bin.join("nix-store")).unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let out = pikaci().env("PATH", path).args(["lanes", "--json", "--flake"]).arg(&flake).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lanes: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(lanes.as_array().unwrap().len(), 40);
    let calls = std::fs::read_to_string(&log).unwrap();
    let evals = calls.lines().filter(|l| l.contains(" eval ")).count();
    assert_eq!(evals, 1, "nix calls:\n{calls}");
}

#[test]
fn every_invalid_lane_is_reported_with_its_rule() {
    require_nix();
    let dir = tempfile::tempdir().unwrap();
    write_flake(
        dir.path(),
        r#"{
          good = ok;
          Bad_Id = ok;
          no-build = ok // { payloads = { workspace-deps = deps; }; };
          empty-command = ok // { command = [ ]; };
          zero-timeout = ok // { timeout = 0; };
          other-kind = ok // { kind = "docker"; };
          typo = ok // { comand = [ "x" ]; };
          not-a-drv = ok // { payloads = { workspace-deps = deps; workspace-build = 42; }; };
        }"#,
    );
    let out = run_in(dir.path(), &["lanes"]);
    assert_eq!(out.code, 2, "{out:?}");
    for expected in [
        "declares 7 invalid lanes",
        "lane `Bad_Id`: the id must match `[a-z0-9][a-z0-9-]*`",
        "lane `no-build`: payload `workspace-build` is missing",
        "lane `empty-command`: `command` is empty",
        "lane `zero-timeout`: `timeout` must be a positive whole number of seconds, got 0",
        "lane `other-kind`: `kind` is `docker`",
        "lane `typo`: unknown field `comand`",
        "lane `not-a-drv`: payload `workspace-build` must be a derivation, got a int",
        "hint: ",
    ] {
        assert!(out.stderr.contains(expected), "missing {expected:?} in:\n{}", out.stderr);
    }
    assert!(!out.stderr.contains("lane `good`"), "{}", out.stderr);
    // A run refuses too, before anything is recorded.
    let run = run_in(dir.path(), &["run", "good"]);
    assert_eq!(run.code, 2);
    assert!(
        !dir.path().join(".pikaci/runs").exists()
            || std::fs::read_dir(dir.path().join(".pikaci/runs")).unwrap().count() == 0
    );
}

#[test]
fn a_directory_without_a_flake_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_in(dir.path(), &["lanes"]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("no flake at") && out.stderr.contains("flake.nix` does not exist"), "{}", out.stderr);
    assert!(out.stderr.contains("hint:"), "{}", out.stderr);
}

#[test]
fn a_flake_without_lanes_says_which_output_is_missing() {
    require_nix();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("flake.nix"), "{ outputs = { self }: { packages = { }; }; }\n").unwrap();
    let out = run_in(dir.path(), &["lanes"]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("has no `pikaci.x86_64-linux.lanes` output"), "{}", out.stderr);
}

#[test]
fn an_evaluation_error_shows_nix_own_message() {
    require_nix();
    let dir = tempfile::tempdir().unwrap();
    write_flake(dir.path(), r#"{ unit = ok // { command = throw "boom from the fixture"; }; }"#);
    let out = run_in(dir.path(), &["run", "unit"]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("evaluating the lanes of flake"), "{}", out.stderr);
    assert!(out.stderr.contains("boom from the fixture"), "{}", out.stderr);
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
}

#[test]
fn an_unknown_lane_lists_the_known_ones() {
    require_nix();
    let dir = tempfile::tempdir().unwrap();
    write_flake(dir.path(), "{ unit = ok; lint = ok; }");
    let out = run_in(dir.path(), &["run", "nope"]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("error: unknown lane `nope`"), "{}", out.stderr);
    assert!(out.stderr.contains("hint: the flake's lanes are: lint, unit"), "{}", out.stderr);
    let none = run_in(dir.path(), &["run"]);
    assert_eq!(none.code, 2);
    assert!(none.stderr.contains("no lanes named"), "{}", none.stderr);
}

#[test]
fn zero_jobs_at_a_time_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    for args in [["run", "--all", "--jobs", "0"], ["rerun", "latest", "--jobs", "0"]] {
        let out = run_in(dir.path(), &args);
        assert_eq!(out.code, 2, "{out:?}");
        assert!(out.stderr.contains("at least one job must run at a time"), "{}", out.stderr);
    }
    assert!(!dir.path().join(".pikaci").exists(), "nothing is written for a usage error");
}

/// The catalog of an unchanged source is not evaluated again: the real `nix` is reached
/// through a shim on PATH that notes each call, and `lanes` on the same source starts no
/// `nix eval` until the source changes, a `.drv` it names is collected, or `--refresh`.
#[test]
fn an_unchanged_source_is_not_evaluated_again() {
    require_nix();
    let dir = tempfile::tempdir().unwrap();
    let flake = dir.path().join("flake");
    std::fs::create_dir(&flake).unwrap();
    write_flake(&flake, r#"{ unit = ok; }"#);
    let shim_dir = dir.path().join("bin");
    std::fs::create_dir(&shim_dir).unwrap();
    let calls = dir.path().join("calls");
    let real = which("nix").unwrap();
    std::fs::write(
        shim_dir.join("nix"),
        format!("#!/bin/sh\necho \"$*\" >> '{}'\nexec '{}' \"$@\"\n", calls.display(), real.display()),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(shim_dir.join("nix"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!("{}:{}", shim_dir.display(), std::env::var("PATH").unwrap());
    let lanes = |extra: &[&str]| -> Run {
        pikaci()
            .args(["lanes", "--json", "--flake"])
            .arg(&flake)
            .args(extra)
            .env("PATH", &path)
            .output()
            .unwrap()
            .into()
    };
    let evals = || std::fs::read_to_string(&calls).unwrap_or_default().lines().filter(|l| l.contains(" eval ")).count();

    let first = lanes(&[]);
    assert_eq!(first.code, 0, "{first:?}");
    assert_eq!(evals(), 1);
    let second = lanes(&[]);
    assert_eq!(second.stdout, first.stdout);
    assert_eq!(evals(), 1, "the cached catalog started `nix eval`");
    assert_eq!(lanes(&["--refresh"]).code, 0);
    assert_eq!(evals(), 2, "--refresh evaluates");

    // A `.drv` the catalog names was collected: evaluated again (and instantiated again).
    let listed: serde_json::Value = serde_json::from_str(&first.stdout).unwrap();
    let drv = listed[0]["payloads"][0]["drv_path"].as_str().unwrap().to_string();
    let deleted = std::process::Command::new("nix-store").args(["--delete", &drv]).output().unwrap();
    assert!(deleted.status.success(), "{}", String::from_utf8_lossy(&deleted.stderr));
    assert_eq!(lanes(&[]).code, 0);
    assert_eq!(evals(), 3, "a collected .drv invalidates the cache");
    assert!(std::path::Path::new(&drv).exists(), "the evaluation instantiated it again");

    // A changed source is another snapshot: evaluated.
    write_flake(&flake, r#"{ unit = ok; other = ok; }"#);
    let changed = lanes(&[]);
    assert!(changed.stdout.contains("\"other\""), "{changed:?}");
    assert_eq!(evals(), 4);
}

#[test]
fn durations_env_names_and_paths_that_cannot_work_are_config_errors() {
    require_nix();
    let dir = tempfile::tempdir().unwrap();
    write_flake(
        dir.path(),
        r#"{
          huge-timeout = ok // { timeout = 9223372036854775807; };
          bad-env = ok // { env = { "A B" = "1"; "X\nY" = "2"; }; };
          never-paths = ok // { paths = [ "" "/abs/**" "../up" ]; };
        }"#,
    );
    let out = run_in(dir.path(), &["lanes"]);
    assert_eq!(out.code, 2, "{out:?}");
    for expected in [
        "declares 3 invalid lanes",
        "lane `huge-timeout`: `timeout` is 9223372036854775807 seconds, more than the most a lane may take (604800, 7 days)",
        "lane `bad-env`: `env` name `A B` is not a variable name (`[A-Za-z_][A-Za-z0-9_]*`)",
        "lane `bad-env`: `env` name `X\\nY` is not a variable name",
        "lane `never-paths`: `paths` entry `` can never match a changed file: it is empty",
        "lane `never-paths`: `paths` entry `/abs/**` can never match a changed file: it is absolute",
        "lane `never-paths`: `paths` entry `../up` can never match a changed file: it has a `..`",
    ] {
        assert!(out.stderr.contains(expected), "missing {expected:?} in:\n{}", out.stderr);
    }
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
}
