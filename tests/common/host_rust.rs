//! The host's Rust toolchain, C library and cargo-nextest, imported into the Nix store as
//! content-addressed paths (`nix-store --add-fixed --recursive sha256`), for the fixture
//! flakes whose crane-shaped stand-in runs the real cargo (`tests/fixtures/real-rust`).
//! The staged copies are kept under /var/tmp, keyed by the tools' versions, and imported
//! once: later calls find the store paths valid.

use std::path::{Path, PathBuf};
use std::process::Command;

fn stdout_of(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn sh(script: &str) {
    let status = Command::new("sh").arg("-ec").arg(script).status().unwrap();
    assert!(status.success(), "staging the host's tools failed: {script}");
}

const TRIPLE: &str = "x86_64-unknown-linux-gnu";

/// `host-tools.json` for the fixture: `{ "toolchain": {name, hash}, "glibc": ..., "nextest": ... }`.
pub fn host_tools_json() -> String {
    for tool in ["rustc", "cargo", "cargo-nextest", "nix-store", "cc", "zstd"] {
        assert!(
            super::which(tool).is_some(),
            "`{tool}` is required to build the real Rust fixture and is not on PATH: run `scripts/bootstrap`"
        );
    }
    let sysroot = PathBuf::from(stdout_of(Command::new("rustc").args(["--print", "sysroot"])));
    let version = stdout_of(Command::new("rustc").arg("-V"));
    let nextest = super::which("cargo-nextest").unwrap();
    let nextest_version = stdout_of(Command::new(&nextest).args(["nextest", "--version"]));
    let key: String = format!("{version} {nextest_version}")
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '.' { c } else { '-' })
        .collect();
    let stage = PathBuf::from("/var/tmp/pikaci-host-rust").join(&key[..key.len().min(120)]);
    let done = stage.join("host-tools.json");
    if let Ok(json) = std::fs::read_to_string(&done) {
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        let valid = v["paths"].as_array().unwrap().iter().all(|p| {
            Command::new("nix-store")
                .arg("--check-validity")
                .arg(p.as_str().unwrap())
                .status()
                .is_ok_and(|s| s.success())
        });
        if valid {
            return serde_json::to_string(&v["tools"]).unwrap();
        }
    }
    let _ = std::fs::remove_dir_all(&stage);
    std::fs::create_dir_all(&stage).unwrap();
    let q = |p: &Path| super::shell_quote_path(p);
    let (t, s) = (stage.join("host-rust-toolchain"), &sysroot);
    sh(&format!(
        "mkdir -p {t}/bin {t}/lib/rustlib/{TRIPLE}
         for b in cargo rustc rustdoc cargo-clippy clippy-driver cargo-fmt rustfmt; do cp -L {s}/bin/$b {t}/bin/; done
         cp -a {s}/lib/*.so* {t}/lib/
         cp -a {s}/lib/rustlib/{TRIPLE}/lib {s}/lib/rustlib/{TRIPLE}/bin {t}/lib/rustlib/{TRIPLE}/",
        t = q(&t),
        s = q(s)
    ));
    let g = stage.join("host-glibc");
    sh(&format!(
        "mkdir -p {g}/lib
         for l in ld-linux-x86-64.so.2 libc.so.6 libm.so.6 libgcc_s.so.1 libpthread.so.0 libdl.so.2 librt.so.1 libutil.so.1; do
           cp -L /lib/x86_64-linux-gnu/$l {g}/lib/
         done",
        g = q(&g)
    ));
    let n = stage.join("host-cargo-nextest");
    sh(&format!("mkdir -p {n}/bin && cp -L {x} {n}/bin/cargo-nextest", n = q(&n), x = q(&nextest)));

    let mut tools = serde_json::Map::new();
    let mut paths = Vec::new();
    for (attr, dir) in [("toolchain", &t), ("glibc", &g), ("nextest", &n)] {
        let path = stdout_of(Command::new("nix-store").args(["--add-fixed", "--recursive", "sha256"]).arg(dir));
        let hash = stdout_of(Command::new("nix-store").args(["--query", "--hash", &path]));
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        tools.insert(attr.into(), serde_json::json!({"name": name, "hash": hash}));
        paths.push(path);
    }
    let tools = serde_json::Value::Object(tools);
    std::fs::write(&done, serde_json::json!({"tools": tools, "paths": paths}).to_string()).unwrap();
    serde_json::to_string(&tools).unwrap()
}
