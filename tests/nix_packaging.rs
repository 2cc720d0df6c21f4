//! The Nix packaging: `flake.nix`, `flake.lock`, the lane library (`nix/lib`), the guest
//! image and the NixOS module.
//!
//! nixpkgs and crane cannot be fetched where these tests run, so pikaci's flake is
//! evaluated and built with stand-ins for them (`tests/fixtures/nix-lib/stub`: real
//! derivations built by the host's `/bin/sh`, and a fake `cargo` that writes shell scripts
//! where cargo writes test binaries), and the module is evaluated against a stand-in for
//! the NixOS module system. pikaci then runs the library's lanes end to end.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;
use serde_json::{Value, json};

const SYSTEM: &str = "x86_64-linux";

/// The fixture flake, with pikaci's own files laid out beside it as in this repository
/// (pikaci's `flake.nix` as `pikaci-flake.nix`, which the fixture calls with stand-in
/// inputs).
fn packaging_fixture() -> tempfile::TempDir {
    require_nix();
    let dir = copy_fixture(&fixture_path("nix-lib"));
    let root = repo_root();
    std::fs::copy(root.join("flake.nix"), dir.path().join("pikaci-flake.nix")).unwrap();
    for file in ["Cargo.toml", "Cargo.lock"] {
        std::fs::copy(root.join(file), dir.path().join(file)).unwrap();
    }
    for tree in ["nix", "src", "examples"] {
        copy_tree(&root.join(tree), &dir.path().join(tree));
    }
    // The stand-in builders' PATH starts with a directory of links to the Nix on this PATH
    // (only Nix: its own directory may hold other tools).
    let bin = dir.path().join("host-nix");
    std::fs::create_dir(&bin).unwrap();
    for tool in ["nix", "nix-store"] {
        std::os::unix::fs::symlink(which(tool).unwrap(), bin.join(tool)).unwrap();
    }
    std::fs::write(dir.path().join("host-nix-bin"), bin.to_str().unwrap()).unwrap();
    dir
}

/// The stand-in nixpkgs (`stub/pkgs.nix`) builds with the host's `/bin/sh`, coreutils and
/// a fake `cargo` script, which Nix's sandbox hides (the real nixpkgs brings its tools from
/// the store). So the builds of this file run with the sandbox off, whatever nix.conf says.
const SANDBOX_OFF: (&str, &str) = ("NIX_CONFIG", "sandbox = false");

/// [`run_in`] with the sandbox off (see [`SANDBOX_OFF`]).
fn run_unsandboxed(flake: &Path, args: &[&str]) -> Run {
    let flake = format!("path:{}", flake.display());
    let out = pikaci().env(SANDBOX_OFF.0, SANDBOX_OFF.1).args(args).arg("--flake").arg(flake).output();
    out.expect("run pikaci").into()
}

fn nix(args: &[&str]) -> Output {
    Command::new("nix")
        .env(SANDBOX_OFF.0, SANDBOX_OFF.1)
        .args(["--extra-experimental-features", "nix-command flakes"])
        .args(args)
        .output()
        .expect("run nix")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// stdout of a nix call that must succeed.
fn nix_ok(args: &[&str]) -> String {
    let out = nix(args);
    assert!(out.status.success(), "`nix {}` failed:\n{}", args.join(" "), text(&out.stderr));
    text(&out.stdout)
}

/// stderr of a nix call that must fail.
fn nix_fails(args: &[&str]) -> String {
    let out = nix(args);
    assert!(!out.status.success(), "`nix {}` should have failed:\n{}", args.join(" "), text(&out.stdout));
    text(&out.stderr)
}

fn installable(dir: &Path, attr: &str) -> String {
    format!("path:{}#{attr}", dir.display())
}

fn eval_json(dir: &Path, attr: &str) -> Value {
    let out = nix_ok(&["eval", "--json", &installable(dir, attr)]);
    serde_json::from_str(&out).unwrap()
}

fn eval_apply(dir: &Path, attr: &str, apply: &str) -> Value {
    let out = nix_ok(&["eval", "--json", &installable(dir, attr), "--apply", apply]);
    serde_json::from_str(&out).unwrap()
}

/// Build attributes of the flake at `dir` (in one `nix build`, so in parallel); their
/// `out` paths, in the order asked (`nix build --json` lists them in its own order).
fn build(dir: &Path, attrs: &[&str]) -> Vec<PathBuf> {
    let installables: Vec<String> = attrs.iter().map(|a| installable(dir, a)).collect();
    let mut args = vec!["build", "--no-link"];
    args.extend(installables.iter().map(String::as_str));
    nix_ok(&args);
    attrs
        .iter()
        .map(|a| PathBuf::from(nix_ok(&["eval", "--raw", &installable(dir, &format!("{a}.outPath"))])))
        .collect()
}

fn build_one(dir: &Path, attr: &str) -> PathBuf {
    build(dir, &[attr]).remove(0)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn keys(value: &Value) -> Vec<&str> {
    value.as_object().unwrap_or_else(|| panic!("not an object: {value}")).keys().map(String::as_str).collect()
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false)
}

fn files_with_extension(dir: &Path, ext: &str, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if path.is_dir() {
            if !matches!(name.as_str(), "target" | ".git" | ".pikaci") {
                files_with_extension(&path, ext, found);
            }
        } else if name.ends_with(ext) {
            found.push(path);
        }
    }
}

#[test]
fn every_nix_file_and_shell_script_of_the_packaging_parses() {
    require_nix();
    let root = repo_root();
    let mut nix_files = Vec::new();
    files_with_extension(&root, ".nix", &mut nix_files);
    for expected in ["flake.nix", "nix/module.nix", "nix/lib/default.nix", "nix/guest-image.nix"] {
        assert!(nix_files.contains(&root.join(expected)), "{expected} was not found");
    }
    for file in &nix_files {
        let out = Command::new("nix-instantiate").arg("--parse").arg(file).output().unwrap();
        assert!(out.status.success(), "{} does not parse:\n{}", file.display(), text(&out.stderr));
    }
    let mut scripts = Vec::new();
    files_with_extension(&root.join("nix"), ".sh", &mut scripts);
    files_with_extension(&fixture_path("nix-lib"), ".sh", &mut scripts);
    assert!(scripts.len() >= 6, "{scripts:?}");
    for script in &scripts {
        // Scripts run under dash on Debian and busybox sh in the guest: POSIX only.
        let out = Command::new("sh").arg("-n").arg(script).output().unwrap();
        assert!(out.status.success(), "{} is not valid sh:\n{}", script.display(), text(&out.stderr));
    }
}

#[test]
fn flake_lock_pins_real_revisions_of_nixpkgs_and_crane() {
    let lock: Value = serde_json::from_str(&read(&repo_root().join("flake.lock"))).unwrap();
    assert_eq!(lock["version"], 7);
    assert_eq!(lock["root"], "root");
    assert_eq!(lock["nodes"]["root"]["inputs"], json!({"nixpkgs": "nixpkgs", "crane": "crane"}));
    let flake = read(&repo_root().join("flake.nix"));
    for (node, owner, repo, reference, url) in [
        ("nixpkgs", "NixOS", "nixpkgs", Some("nixos-unstable"), "github:NixOS/nixpkgs/nixos-unstable"),
        ("crane", "ipetkov", "crane", None, "github:ipetkov/crane"),
    ] {
        let n = &lock["nodes"][node];
        // What flake.nix asks for, or Nix would want to relock (and cannot, offline).
        assert!(flake.contains(&format!("{node}.url = \"{url}\"")), "flake.nix does not ask for {url}");
        let mut original = json!({"type": "github", "owner": owner, "repo": repo});
        if let Some(r) = reference {
            original["ref"] = json!(r);
        }
        assert_eq!(n["original"], original, "{node}");
        let locked = &n["locked"];
        assert_eq!(
            (locked["type"].as_str(), locked["owner"].as_str(), locked["repo"].as_str()),
            (Some("github"), Some(owner), Some(repo))
        );
        let rev = locked["rev"].as_str().unwrap();
        assert!(rev.len() == 40 && rev.chars().all(|c| c.is_ascii_hexdigit()), "{node} rev {rev}");
        let hash = locked["narHash"].as_str().unwrap();
        assert!(hash.starts_with("sha256-") && hash.len() == 51 && hash.ends_with('='), "{node} narHash {hash}");
        assert!(locked["lastModified"].as_u64().unwrap() > 1_700_000_000, "{node} lastModified");
        // crane takes its pkgs from `mkLib pkgs`; it has no inputs to follow.
        assert!(n.get("inputs").is_none(), "{node} has inputs: {n}");
    }
    assert_eq!(keys(&lock["nodes"]).len(), 3, "no node beyond root, nixpkgs and crane");
}

/// The real flake with its real lock: `lib` and `nixosModules` do not touch nixpkgs or
/// crane, so they evaluate here, where neither can be fetched (the package outputs cannot).
#[test]
fn the_real_flake_evaluates_lib_and_modules_without_fetching() {
    require_nix();
    let dir = tempfile::Builder::new().prefix("pikaci-flake-").tempdir().unwrap();
    let root = repo_root();
    for file in ["flake.nix", "flake.lock"] {
        std::fs::copy(root.join(file), dir.path().join(file)).unwrap();
    }
    copy_tree(&root.join("nix"), &dir.path().join("nix"));

    let lib = eval_apply(dir.path(), "lib", "builtins.attrNames");
    assert_eq!(
        lib,
        json!(["isValidId", "mkClippyLane", "mkLane", "mkLaneChecks", "mkPikaciCheck", "mkStagedLinuxRustLane"])
    );
    let ids = eval_apply(
        dir.path(),
        "lib",
        r#"l: map l.isValidId [ "unit" "example-hello" "0-a" "Unit" "-a" "a_b" "" (builtins.concatStringsSep "" (builtins.genList (_: "a") 49)) ]"#,
    );
    assert_eq!(ids, json!([true, true, true, false, false, false, false, false]));
    let modules = eval_apply(dir.path(), "nixosModules", "m: builtins.mapAttrs (_: builtins.isFunction) m");
    assert_eq!(modules, json!({"default": true, "pikaci": true}));
    // Nothing was relocked.
    assert_eq!(read(&dir.path().join("flake.lock")), read(&root.join("flake.lock")));
}

#[test]
fn every_flake_output_evaluates_and_builds_with_stand_in_inputs() {
    let dir = packaging_fixture();
    let d = dir.path();
    let s = eval_json(d, "summary");
    assert_eq!(
        s["outputs"],
        json!(["apps", "checks", "devShells", "lib", "nixosModules", "overlays", "packages", "pikaci"])
    );
    assert_eq!(s["systems"], json!(["aarch64-linux", "x86_64-linux"]));
    assert_eq!(keys(&s["packages"]), ["default", "guest-image", "pikaci"]);
    assert_eq!(s["packages"]["default"], s["packages"]["pikaci"]);
    assert_eq!(
        keys(&s["checks"]),
        [
            "examples",
            "examples-failing-lane",
            "fmt",
            "guest-image",
            "lane-clippy",
            "lane-example-hello",
            "lane-example-rust-workspace",
            "lane-unit",
            "nixos-module",
            "pikaci"
        ]
    );
    assert_eq!(s["checks"]["pikaci"], s["packages"]["pikaci"]);
    assert_eq!(keys(&s["devShells"]), ["default"]);
    assert_eq!(s["nixosModules"], json!(["default", "pikaci"]));
    assert_eq!(
        s["overlay"],
        json!({"pikaci": s["packages"]["pikaci"], "pikaci-guest-image": s["packages"]["guest-image"]})
    );
    assert_eq!(keys(&s["lanes"]), ["clippy", "example-hello", "example-rust-workspace", "unit"]);
    for (id, lane) in s["lanes"].as_object().unwrap() {
        assert_eq!(lane["kind"], "staged-linux-rust", "{id}");
        assert_eq!(keys(&lane["payloads"]), ["workspace-build", "workspace-deps"], "{id}");
    }
    assert_eq!(s["lanes"]["unit"]["command"], json!(["/pikaci/payloads/workspace-build/bin/run-tests"]));
    assert_eq!(s["lanes"]["clippy"]["command"], json!(["/pikaci/payloads/workspace-build/bin/run-report"]));
    assert_eq!(s["lanes"]["example-hello"]["paths"], json!(["examples/hello/**"]));
    assert_eq!(s["lanes"]["unit"]["hasFilter"], true);
    assert_eq!(s["lanes"]["clippy"]["hasFilter"], false);

    // Build every check (the package and the image among them) and the dev shell; the two
    // that run pikaci itself need a real pikaci, and are built in
    // `the_examples_checks_run_the_lanes_through_pikaci_in_the_build`. The test lanes'
    // checks (`lane-unit`, `lane-example-*`) need a real cargo and cargo-nextest, which
    // the stand-in here has not: they are instantiated above; tests/real_rust.rs builds
    // and runs such lanes with the real ones.
    let checks = ["fmt", "guest-image", "lane-clippy", "nixos-module", "pikaci"]
        .map(|c| format!("upstream.checks.{SYSTEM}.{c}"));
    let mut attrs: Vec<&str> = checks.iter().map(String::as_str).collect();
    let shell = format!("upstream.devShells.{SYSTEM}.default");
    attrs.push(&shell);
    let built = build(d, &attrs);
    let (image, pikaci) = (&built[1], &built[4]);

    // The apps run the wrapped binary, whose PATH ends with nix, bwrap, ssh and git.
    assert_eq!(s["apps"]["pikaci"], json!({"type": "app", "program": format!("{}/bin/pikaci", pikaci.display())}));
    assert_eq!(s["apps"]["default"], s["apps"]["pikaci"]);
    let out = Command::new(pikaci.join("bin/pikaci")).arg("--version").env("PATH", "/usr/bin:/bin").output().unwrap();
    let stdout = text(&out.stdout);
    assert!(stdout.starts_with("pikaci (stub build): --version"), "{stdout}");
    let path = stdout.lines().find_map(|l| l.strip_prefix("PATH=")).unwrap();
    let dirs: Vec<&str> = path.split(':').collect();
    assert_eq!(&dirs[..2], ["/usr/bin", "/bin"], "the host's tools come first: {path}");
    for (i, tool) in ["nix-stub", "bubblewrap-stub", "openssh-stub", "git-stub"].iter().enumerate() {
        assert!(dirs[2 + i].ends_with(&format!("-{tool}/bin")), "{path}");
    }

    // The guest image: a unified tarball with metadata, busybox as init, the guest view.
    let tarball = image.join("pikaci-guest-image.tar.xz");
    let list = Command::new("tar").arg("-tJf").arg(&tarball).output().unwrap();
    let entries = text(&list.stdout);
    for entry in [
        "metadata.yaml",
        "rootfs/bin/busybox",
        "rootfs/bin/sh",
        "rootfs/sbin/init",
        "rootfs/etc/inittab",
        "rootfs/workspace/",
        "rootfs/pikaci/payloads/",
        "rootfs/pikaci/artifacts/",
        "rootfs/nix/store/",
        "rootfs/tmp/",
    ] {
        assert!(entries.lines().any(|l| l == entry), "{entry} is not in the image:\n{entries}");
    }
    let metadata = Command::new("tar").arg("-xJOf").arg(&tarball).arg("metadata.yaml").output().unwrap();
    let metadata = text(&metadata.stdout);
    assert!(metadata.contains("architecture: x86_64\n") && metadata.contains("os: pikaci"), "{metadata}");
    // The same inputs give the same bytes.
    nix_ok(&["build", "--no-link", "--rebuild", &installable(d, &format!("upstream.packages.{SYSTEM}.guest-image"))]);
}

#[test]
fn the_lane_library_builds_the_documented_payloads() {
    let dir = packaging_fixture();
    let d = dir.path();
    let lanes = eval_apply(
        d,
        &format!("pikaci.{SYSTEM}.lanes"),
        "builtins.mapAttrs (_: l: removeAttrs l [ \"testFilterArgs\" ] // { payloads = builtins.attrNames l.payloads; hasFilter = l ? testFilterArgs; })",
    );
    assert_eq!(lanes["lint"]["command"], json!(["/pikaci/payloads/workspace-build/bin/run-report"]));
    assert_eq!(lanes["lint"]["payloads"], json!(["workspace-build", "workspace-deps"]));
    assert_eq!(lanes["lint"]["hasFilter"], false);
    // pikaci's own test lane, from the library: nextest, with a filter for reruns.
    assert_eq!(lanes["own-unit"]["command"], json!(["/pikaci/payloads/workspace-build/bin/run-tests"]));
    assert_eq!(lanes["own-unit"]["hasFilter"], true);
    assert!(lanes["own-unit"].get("shards").is_none() && lanes["own-unit"].get("retries").is_none());

    let lane = |id: &str, payload: &str| format!("pikaci.{SYSTEM}.lanes.{id}.payloads.{payload}");
    let built = build(d, &[&lane("lint", "workspace-build"), &lane("lint-warns", "workspace-build")]);

    // Clippy's report and status are kept, a lint is not a build failure.
    let (lint, warns) = (&built[0], &built[1]);
    let lint_manifest: Value = serde_json::from_str(&read(&lint.join("share/pikaci/payload-manifest.json"))).unwrap();
    assert_eq!(lint_manifest, json!({"schema_version": 1, "kind": "cargo-report", "entrypoints": ["bin/run-report"]}));
    assert_eq!(read(&lint.join("share/pikaci/status")).trim(), "0");
    assert_eq!(read(&warns.join("share/pikaci/status")).trim(), "101");
    assert!(read(&warns.join("share/pikaci/report.log")).contains("fake lint"));
    assert!(is_executable(&warns.join("bin/run-report")));
}

#[test]
fn the_lane_library_rejects_bad_lanes_with_the_rule() {
    require_nix();
    let lib = repo_root().join("nix/lib");
    let cases = [
        (
            r#"lib.mkLane { description = "d"; payloads = p // { Bad_Name = { }; }; command = c; }"#,
            "payload name `Bad_Name` is invalid",
        ),
        (
            r#"lib.mkLane { description = "d"; payloads = { workspace-deps = { }; }; command = c; }"#,
            "needs the payload `workspace-build`",
        ),
        (
            r#"lib.mkLane { description = "d"; payloads = p; command = "run-tests"; }"#,
            "`command` must be a non-empty list of strings",
        ),
        (
            r#"lib.mkLane { description = "d"; payloads = p; command = c; timeout = 0; }"#,
            "`timeout` must be a positive number",
        ),
        (r#"lib.mkLane { description = "d"; payloads = p; command = c; env.N = 1; }"#, "`env.N` must be a string"),
        (r#"lib.mkLane { description = "d"; payloads = p; command = c; paths = "src/**"; }"#, "`paths` must be a list"),
        (
            r#"lib.mkStagedLinuxRustLane { craneLib = { }; src = ./.; extraPayloads.workspace-deps = { }; }"#,
            "`extraPayloads` may not redefine `workspace-deps`",
        ),
    ];
    // crane arguments that would be silently ignored are refused, naming what to use.
    let refused = [
        (
            r#"lib.mkStagedLinuxRustLane { craneLib = { }; src = ./.; cargoTestExtraArgs = "--x"; }"#,
            "`cargoTestExtraArgs` is not an option: use `cargoTestArgs`",
        ),
        (
            r#"lib.mkStagedLinuxRustLane { craneLib = { }; src = ./.; craneArgs.cargoExtraArgs = "--x"; }"#,
            "`craneArgs.cargoExtraArgs` is not used by this lane: pass it as the lane's own `cargoExtraArgs`",
        ),
        (
            r#"lib.mkStagedLinuxRustLane { craneLib = { }; src = ./.; cargoClippyExtraArgs = "--x"; }"#,
            "`cargoClippyExtraArgs` is not an option: this lane runs tests; `mkClippyLane` takes `clippyArgs`",
        ),
        (
            r#"lib.mkStagedLinuxRustLane { craneLib = { }; src = ./.; retries = -1; }"#,
            "`retries` must be a whole number >= 0",
        ),
        (
            r#"lib.mkStagedLinuxRustLane { craneLib = { }; src = ./.; shards = 0; }"#,
            "`shards` must be a whole number >= 1",
        ),
        (
            r#"lib.mkClippyLane { craneLib = { }; src = ./.; cargoClippyExtraArgs = "--x"; }"#,
            "mkClippyLane: `cargoClippyExtraArgs` is not used by this lane: use `clippyArgs`",
        ),
        (
            r#"lib.mkLane { description = "d"; payloads = p; command = c; testFilterArgs = [ ]; }"#,
            "`testFilterArgs` must be a function",
        ),
    ];
    for (expr, message) in cases.into_iter().chain(refused) {
        let full = format!(
            r#"let lib = import {}; p = {{ workspace-deps = {{ }}; workspace-build = {{ }}; }}; c = [ "/x" ]; in builtins.attrNames ({expr})"#,
            lib.display()
        );
        let out = Command::new("nix-instantiate").args(["--eval", "--strict", "--expr", &full]).output().unwrap();
        let stderr = text(&out.stderr);
        assert!(!out.status.success() && stderr.contains(message), "{expr}\nexpected `{message}`, got:\n{stderr}");
        assert!(stderr.contains("pikaci lane: "), "{stderr}");
    }
}

/// The checks of the clippy lanes here; tests/real_rust.rs checks a test lane's.
#[test]
fn lane_checks_run_each_lane_command_against_its_payloads() {
    let dir = packaging_fixture();
    let d = dir.path();
    let check = |id: &str| format!("checks.{SYSTEM}.lane-{id}");
    let built = build(d, &[&check("lint")]);
    assert_eq!(read(&built[0].join("artifacts/report.log")).lines().count(), 1);
    let warns = nix_fails(&["build", "--no-link", &installable(d, &check("lint-warns"))]);
    assert!(warns.contains("fake lint") && warns.contains("exit code 101"), "{warns}");
}

#[test]
fn the_nixos_module_evaluates_against_a_stand_in_module_system() {
    let dir = packaging_fixture();
    let d = dir.path();
    let host = |case: &str| eval_json(d, &format!("nixos.{case}"));

    let disabled = host("disabled");
    for option in ["systemd", "users", "environment", "assertions"] {
        assert_eq!(disabled[option], Value::Null, "a disabled module defines `{option}`");
    }

    let c = host("defaults");
    assert_eq!(c["failedAssertions"], json!([]));
    assert_eq!(c["warnings"], json!([]));
    let pikaci = c["services"]["pikaci"]["package"].as_str().unwrap();
    let image = c["services"]["pikaci"]["image"]["package"].as_str().unwrap();
    assert!(pikaci.ends_with("-pikaci-0.1.0") && image.ends_with("-pikaci-guest-image"), "{pikaci} {image}");
    assert_eq!(c["environment"]["systemPackages"], json!([pikaci]));
    assert_eq!(c["nix"]["settings"], json!({"extra-experimental-features": ["nix-command", "flakes"]}));
    assert_eq!(c["users"], json!({"groups": {"pikaci": {}}}));
    assert_eq!(c["systemd"]["tmpfiles"]["rules"], json!(["d /var/lib/pikaci 0750 root pikaci - -"]));
    assert_eq!(c["networking"], json!({"nftables": {"enable": true}}));
    let incus = &c["virtualisation"]["incus"];
    assert_eq!(incus["enable"], true);
    assert_eq!(incus["preseed"]["storage_pools"], json!([{"name": "pikaci", "driver": "dir", "config": {}}]));
    assert_eq!(
        incus["preseed"]["profiles"],
        json!([{"name": "default", "description": "pikaci lane instances", "config": {},
                "devices": {"root": {"path": "/", "pool": "pikaci", "type": "disk"}}}])
    );
    let import = &c["systemd"]["services"]["pikaci-image-import"];
    assert_eq!(
        import["serviceConfig"]["ExecStart"],
        format!(
            "{pikaci}/bin/pikaci image import --force --alias pikaci/busybox --from {image}/pikaci-guest-image.tar.xz"
        )
    );
    assert_eq!(import["serviceConfig"]["Type"], "oneshot");
    assert_eq!(import["wantedBy"], json!(["multi-user.target"]));
    assert_eq!(import["requires"], json!(["incus.service"]));
    assert_eq!(import["path"], json!([incus["package"]]));
    let gc = &c["systemd"]["services"]["pikaci-gc"];
    assert_eq!(gc["serviceConfig"]["ExecStart"], format!("{pikaci}/bin/pikaci gc --keep 20"));
    assert_eq!(gc["serviceConfig"]["User"], "root");
    assert_eq!(gc["environment"], json!({"PIKACI_STATE_ROOT": "/var/lib/pikaci"}));
    assert_eq!(c["systemd"]["timers"]["pikaci-gc"]["timerConfig"], json!({"OnCalendar": "daily", "Persistent": true}));
    assert_eq!(c["services"]["openssh"], Value::Null, "no SSH without the runner");
    assert_eq!(c["nix"]["gc"], json!({"automatic": false, "dates": "03:15", "options": ""}), "NixOS's defaults");

    let r = host("runner");
    assert_eq!(r["failedAssertions"], json!([]));
    assert_eq!(r["warnings"], json!([]));
    let user = &r["users"]["users"]["pikaci"];
    assert_eq!(
        user["openssh"]["authorizedKeys"]["keys"],
        json!(["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFAKEFAKEFAKE orchestrator"])
    );
    assert_eq!(user["extraGroups"], json!(["incus-admin"]));
    // Payloads built on one host of a run are copied to the others as the runner.
    assert_eq!(r["nix"]["settings"]["trusted-users"], json!(["pikaci"]), "{:#}", r["nix"]);
    assert_eq!(
        (&user["isSystemUser"], &user["group"], &user["home"]),
        (&json!(true), &json!("pikaci"), &json!("/var/lib/pikaci"))
    );
    assert!(user["shell"].as_str().unwrap().ends_with("-bash-stub"), "a login shell: {user}");
    assert_eq!(r["services"]["openssh"]["enable"], true);
    assert_eq!(
        r["systemd"]["tmpfiles"]["rules"],
        json!(["d /var/lib/pikaci 0750 pikaci pikaci - -", "d /var/tmp/pikaci 0750 pikaci pikaci 7d -"])
    );
    let profile = &r["virtualisation"]["incus"]["preseed"]["profiles"][0];
    assert_eq!(profile["config"], json!({"limits.cpu": "2"}));
    assert_eq!(
        profile["devices"],
        json!({"eth0": {"type": "nic", "network": "incusbr0"}, "root": {"path": "/", "pool": "pikaci", "type": "disk"}})
    );
    assert_eq!(
        r["systemd"]["services"]["pikaci-gc"]["serviceConfig"]["ExecStart"].as_str().unwrap().rsplit(' ').next(),
        Some("5")
    );
    assert_eq!(r["systemd"]["services"]["pikaci-gc"]["serviceConfig"]["User"], "pikaci");
    assert_eq!(r["nix"]["gc"], json!({"automatic": true, "dates": "weekly", "options": "--delete-older-than 14d"}));
    assert_eq!(
        r["systemd"]["services"]["nix-gc"],
        json!({"wants": ["pikaci-gc.service"], "after": ["pikaci-gc.service"]})
    );

    let nokeys = host("runner-without-keys");
    assert!(nokeys["warnings"][0].as_str().unwrap().contains("without authorizedKeys"), "{}", nokeys["warnings"]);
    let no_incus = host("no-incus");
    assert_eq!(
        no_incus["failedAssertions"],
        json!(["services.pikaci.image.enable needs services.pikaci.incus.enable: the image is imported into Incus."])
    );
    assert_eq!(no_incus["systemd"]["services"].get("pikaci-image-import"), None);
    assert_eq!(no_incus["virtualisation"]["incus"].get("enable"), None);
    let volatile = host("volatile-state");
    assert!(
        volatile["failedAssertions"][0]
            .as_str()
            .unwrap()
            .contains("services.pikaci.stateDir must be an absolute path that survives a reboot")
    );
    let wrong = nix_fails(&["eval", "--json", &installable(d, "nixos.wrong-type")]);
    assert!(wrong.contains("`services.pikaci.gc.keep` is not of type int"), "{wrong}");
}

/// Settings hosts commonly write beside the module, in the forms NixOS accepts: each once
/// failed to evaluate or silently lost a value (the stand-in merges as NixOS's types do;
/// the same hosts were checked against nixpkgs' real `lib.evalModules`, docs/nixos.md).
#[test]
fn the_nixos_module_leaves_a_hosts_own_settings_alone() {
    let dir = packaging_fixture();
    let d = dir.path();
    let host = |case: &str| eval_json(d, &format!("nixos.{case}"));

    // The string form of `experimental-features` does not merge with a list.
    let s = host("host-string-features");
    assert_eq!(s["nix"]["settings"]["experimental-features"], "nix-command flakes");
    assert_eq!(s["nix"]["settings"]["extra-experimental-features"], json!(["nix-command", "flakes"]));
    let l = host("host-list-features");
    assert_eq!(l["nix"]["settings"]["experimental-features"], json!(["ca-derivations"]));

    // A host's own `nix.gc` schedule wins over `nixGc`'s defaults instead of conflicting.
    let g = host("host-nix-gc");
    assert_eq!(g["nix"]["gc"], json!({"automatic": true, "dates": "Sun 04:00", "options": "--delete-older-than 30d"}));
    assert_eq!(g["systemd"]["services"]["nix-gc"]["after"], json!(["pikaci-gc.service"]));

    // A host that preseeds Incus keeps its one `default` profile; pikaci adds its pool only.
    let p = host("host-preseed");
    let preseed = &p["virtualisation"]["incus"]["preseed"];
    let profiles: Vec<&str> =
        preseed["profiles"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(profiles, ["default"], "{preseed:#}");
    assert_eq!(preseed["profiles"][0]["devices"]["root"]["pool"], "default", "the host's profile: {preseed:#}");
    let mut pools: Vec<&str> =
        preseed["storage_pools"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    pools.sort();
    assert_eq!(pools, ["default", "pikaci"]);

    // Naming another profile was a trap (pikaci launches with `default`): the option is gone.
    let err = nix_fails(&["eval", "--json", &installable(d, "nixos.profile-name")]);
    assert!(err.contains("the option `services.pikaci.incus.profile.name` does not exist"), "{err}");
}

/// pikaci's catalog reads the library's lanes (pikaci's own among them) and runs the
/// clippy lanes; tests/real_rust.rs runs test lanes built with the real cargo.
#[test]
fn pikaci_lists_and_runs_the_library_lanes_with_bwrap() {
    let dir = packaging_fixture();
    require_bwrap();
    let d = dir.path();
    let listed = run_unsandboxed(d, &["lanes", "--json"]);
    assert_eq!(listed.code, 0, "{listed:?}");
    for id in ["lint", "lint-warns", "own-clippy", "own-example-hello", "own-example-rust-workspace", "own-unit"] {
        assert!(listed.stdout.contains(&format!("\"{id}\"")), "{id} is not listed:\n{}", listed.stdout);
    }

    let lanes = ["lint", "own-clippy"];
    let mut args = vec!["run"];
    args.extend(lanes);
    args.extend(["--runtime", "bwrap", "--jobs", "1"]);
    let out = run_unsandboxed(d, &args);
    assert_eq!(out.code, 0, "{out:?}");
    let run = only_run(d);
    let record = read_json(&run.join("run.json"));
    for id in lanes {
        assert_eq!(job_status(&record, id), "passed", "{id}");
    }
    assert!(read(&run.join("jobs/lint/artifacts/report.log")).contains("fake clippy"));
    let job = read_json(&run.join("jobs/lint/job.json"));
    let manifests: Vec<&Value> = job["payloads"].as_array().unwrap().iter().map(|p| &p["manifest"]["kind"]).collect();
    assert_eq!(manifests, [&json!("workspace-deps"), &json!("cargo-report")]);

    // A lint is a failed job (exit 1), not an infrastructure error.
    std::fs::remove_dir_all(d.join(".pikaci")).unwrap();
    let out = run_unsandboxed(d, &["run", "lint-warns", "--runtime", "bwrap", "--jobs", "1"]);
    assert_eq!(out.code, 1, "{out:?}");
    let run = only_run(d);
    let record = read_json(&run.join("run.json"));
    assert_eq!(job_status(&record, "lint-warns"), "failed");
    assert!(read(&run.join("jobs/lint-warns/artifacts/report.log")).contains("fake lint"));
}

#[test]
fn pikaci_imports_the_nix_built_image_and_runs_a_lane_in_it_on_incus() {
    let dir = packaging_fixture();
    require_incus();
    let d = dir.path();
    let image = build_one(d, &format!("upstream.packages.{SYSTEM}.guest-image"));
    let alias = format!("pikaci-test/nix-guest-{}", std::process::id());
    let tarball = image.join("pikaci-guest-image.tar.xz");
    let imported = pikaci().args(["image", "import", "--alias", &alias, "--from"]).arg(&tarball).output().unwrap();
    let delete_image = || {
        let _ = Command::new("incus").args(["image", "delete", &alias]).output();
    };
    if !imported.status.success() {
        delete_image();
        panic!("`pikaci image import --from` failed:\n{}", text(&imported.stderr));
    }
    let out = run_unsandboxed(d, &["run", "lint", "--runtime", "incus", "--image", &alias]);
    delete_image();
    assert_eq!(out.code, 0, "{out:?}");
    let run = only_run(d);
    assert!(read(&run.join("jobs/lint/artifacts/report.log")).contains("fake clippy"));
    assert!(read(&run.join("jobs/lint/guest.log")).contains("fake clippy"));
}

/// `nix build` with `recursive-nix`, which the checks that run pikaci itself need.
fn nix_recursive(args: &[&str]) -> Output {
    let mut all = vec!["--extra-experimental-features", "recursive-nix"];
    all.extend(args);
    nix(&all)
}

/// Regular files below `dir`, as paths relative to it; symlinks listed apart.
fn tree_entries(dir: &Path) -> (Vec<String>, Vec<String>) {
    let (mut files, mut links) = (Vec::new(), Vec::new());
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            let rel = path.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if meta.file_type().is_symlink() {
                links.push(rel);
            } else if meta.is_dir() {
                stack.push(path);
            } else {
                files.push(rel);
            }
        }
    }
    (files, links)
}

#[test]
fn the_examples_checks_run_the_lanes_through_pikaci_in_the_build() {
    let dir = packaging_fixture();
    require_bwrap();
    let d = dir.path();
    std::fs::copy(env!("CARGO_BIN_EXE_pikaci"), d.join("stub/pikaci-bin")).unwrap();
    // A state root and build output beside the example are not part of what the check
    // runs; a `target` deeper down is.
    for junk in [".pikaci/runs/stale/run.json", "target/debug/junk", "crates/target/kept"] {
        let path = d.join("examples/hello").join(junk);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, "{}").unwrap();
    }

    // Both checks of pikaci's flake, with the pikaci cargo built: evaluated, payloads
    // realized and lanes run in bubblewrap by pikaci, inside the Nix build.
    let checks = ["examples", "examples-failing-lane"]
        .map(|c| installable(d, &format!("upstreamWithPikaci.checks.{SYSTEM}.{c}")));
    let out = nix_recursive(&["build", "--no-link", "--print-build-logs", &checks[0], &checks[1]]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let log = text(&out.stderr);
    assert!(log.contains("test greet(Ferris) ... ok") && log.contains("PASS report"), "{log}");
    let outs: Vec<PathBuf> =
        checks.iter().map(|c| PathBuf::from(nix_ok(&["eval", "--raw", &format!("{c}.outPath")]))).collect();

    // The record is the output: one run, its jobs, their logs and artifacts, and no
    // GC-root links (the payloads stay referenced by job.json).
    // The exit code, and the only run's directory and record.
    let recorded = |out: &Path, code: &str, status: &str| -> (PathBuf, Value) {
        assert_eq!(read(&out.join("exit-code")), format!("{code}\n"));
        let runs: Vec<PathBuf> = out.join("runs").read_dir().unwrap().map(|e| e.unwrap().path()).collect();
        let [run] = runs.try_into().unwrap();
        let record = read_json(&run.join("run.json"));
        assert_eq!(record["status"], status, "{record}");
        (run, record)
    };
    let passing = &outs[0];
    let (run, record) = recorded(passing, "0", "passed");
    assert_eq!(job_status(&record, "unit"), "passed");
    assert_eq!(job_status(&record, "report"), "passed");
    assert_eq!(record["jobs"].as_array().unwrap().len(), 2, "{record}");
    let source = PathBuf::from(record["source_dir"].as_str().unwrap());
    assert!(source.join("flake.nix").is_file() && source.join("crates/target/kept").is_file(), "{source:?}");
    assert!(!source.join(".pikaci").exists() && !source.join("target").exists(), "{source:?}");
    assert_eq!(read(&run.join("jobs/report/artifacts/report.txt")).lines().count(), 3000);
    assert!(read(&run.join("jobs/unit/guest.log")).contains("test result: 2 passed; 0 failed"));
    let job = read_json(&run.join("jobs/unit/job.json"));
    assert!(
        job["payloads"].as_array().unwrap().iter().all(|p| p["drv_path"].as_str().unwrap().ends_with(".drv")),
        "{job}"
    );
    let (files, links) = tree_entries(passing);
    assert!(links.is_empty(), "links left in the output: {links:?}");
    assert!(files.iter().any(|f| f.ends_with("jobs/unit/host.log")), "{files:?}");

    let (_, record) = recorded(&outs[1], "1", "failed");
    assert_eq!(job_status(&record, "pending"), "failed");

    // A run that does not end as the check expects fails the build, and says why.
    let out = nix_recursive(&["build", "--no-link", &installable(d, "expectsPassOnFailingLane")]);
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("FAIL pending") && stderr.contains("pikaci exited with 1; this check expects 0"),
        "{stderr}"
    );
}

#[test]
fn the_nixos_module_serves_the_web_page_when_asked() {
    let dir = packaging_fixture();
    let d = dir.path();
    let defaults = eval_json(d, "nixos.defaults");
    assert_eq!(defaults["systemd"]["services"].get("pikaci-web"), None, "off unless enabled");
    let c = eval_json(d, "nixos.web");
    assert_eq!(c["failedAssertions"], json!([]));
    let pikaci = c["services"]["pikaci"]["package"].as_str().unwrap();
    let web = &c["systemd"]["services"]["pikaci-web"];
    assert_eq!(web["serviceConfig"]["ExecStart"], format!("{pikaci}/bin/pikaci serve --listen 127.0.0.1:9090"));
    assert_eq!(web["serviceConfig"]["User"], "pikaci", "runs as the runner user");
    assert_eq!(web["serviceConfig"]["Group"], "pikaci");
    assert_eq!(web["serviceConfig"]["ProtectSystem"], "strict", "read-only by construction");
    assert_eq!(web["environment"], json!({"PIKACI_STATE_ROOT": "/var/lib/pikaci"}));
    assert_eq!(web["wantedBy"], json!(["multi-user.target"]));
}
