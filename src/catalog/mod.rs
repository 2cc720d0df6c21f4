//! The catalog: every lane a flake declares under `pikaci.<system>.lanes`, read with one
//! `nix eval --json --apply` call (nothing is built), then validated in full so that every
//! broken lane is reported at once.

pub mod cache;
pub mod filter;
pub mod flake_url;
pub mod glob;
mod json;
mod lane;

use std::path::Path;

use anyhow::{Context, Result};

pub use cache::{CacheKey, CatalogCache};
pub use flake_url::path_url;
pub use json::Json;
pub use lane::{Lane, LaneError, MAX_TIMEOUT_SECS, Payload, validate_id};

use crate::error;
use crate::tools::command::CommandFailed;
use crate::tools::nix::Nix;

/// The only lane kind today.
pub const STAGED_LINUX_RUST: &str = "staged-linux-rust";
/// The payloads every staged-linux-rust lane declares.
pub const REQUIRED_PAYLOADS: [&str; 2] = ["workspace-deps", "workspace-build"];
/// Used when a lane sets no `timeout`.
pub const DEFAULT_TIMEOUT_SECS: u64 = 1800;

/// Applied to `pikaci.<system>.lanes`. Never fails on a malformed lane: it returns each
/// field as it is (or the Nix type where a set or derivation was expected) so that the
/// Rust side can report every broken rule. Derivations are reduced to their `.drv` path
/// and output paths, which instantiates them without building anything.
const APPLY: &str = r#"lanes:
let
  known = [ "description" "kind" "payloads" "command" "paths" "timeout" "env" "runtime" "retries" "shards" "testFilterArgs" ];
  payload = d:
    if builtins.isAttrs d && d ? drvPath then {
      drvPath = d.drvPath;
      outputs = builtins.listToAttrs
        (map (o: { name = o; value = d.${o}.outPath; }) (d.outputs or [ "out" ]));
    } else builtins.typeOf d;
  lane = l:
    if builtins.isAttrs l then {
      description = l.description or null;
      kind = l.kind or null;
      command = l.command or null;
      paths = l.paths or null;
      timeout = l.timeout or null;
      env = l.env or null;
      runtime = l.runtime or null;
      retries = l.retries or null;
      shards = l.shards or null;
      # A function cannot be returned as JSON: its type is (`lambda`), and pikaci calls it
      # with a second evaluation when it needs the arguments (filter::apply_expression).
      testFilterArgs = if l ? testFilterArgs then builtins.typeOf l.testFilterArgs else null;
      payloads =
        if builtins.isAttrs (l.payloads or null)
        then builtins.mapAttrs (_: payload) l.payloads
        else builtins.typeOf (l.payloads or null);
      unknown = builtins.attrNames (removeAttrs l known);
    } else builtins.typeOf l;
in
if builtins.isAttrs lanes then builtins.mapAttrs (_: lane) lanes else builtins.typeOf lanes
"#;

/// The Nix system pikaci runs lanes for (`x86_64-linux` on these hosts).
pub fn current_system() -> String {
    format!("{}-{}", std::env::consts::ARCH, std::env::consts::OS)
}

/// The lanes of a flake, validated.
#[derive(Clone, Debug)]
pub struct Catalog {
    pub lanes: Vec<Lane>,
}

impl Catalog {
    /// Evaluate `path:<dir>#pikaci.<system>.lanes` once. `flake_label` names the flake in
    /// messages (the user's spelling, not the snapshot directory it was read from).
    pub fn load(nix: &Nix, dir: &Path, system: &str, flake_label: &str) -> Result<Catalog> {
        let attr = format!("pikaci.{system}.lanes");
        let installable = format!("{}#{attr}", flake_url::path_url(dir));
        let raw = nix.eval_apply_output(&installable, APPLY).map_err(|err| eval_error(err, flake_label, &attr))?;
        let lanes = Catalog::from_output(&raw, &installable, &attr, flake_label)?;
        Ok(Catalog { lanes })
    }

    /// [`Catalog::load`] through `cache`: an unchanged snapshot (`snapshot_id`, its content
    /// hash) on the same system and Nix is not evaluated again while its `.drv` files
    /// exist. `refresh` evaluates in any case (and keeps the new result).
    pub fn load_cached(
        nix: &Nix,
        cache: &CatalogCache,
        snapshot: (&Path, &str),
        nix_version: &str,
        flake_label: &str,
        refresh: bool,
    ) -> Result<Catalog> {
        let system = current_system();
        let attr = format!("pikaci.{system}.lanes");
        let key = CacheKey { snapshot: snapshot.1, system: &system, apply: APPLY, nix_version };
        let cached = if refresh { None } else { cache.get(&key) };
        let installable = format!("{}#{attr}", flake_url::path_url(snapshot.0));
        let (raw, evaluated) = match cached {
            Some(raw) => (raw, false),
            None => {
                let raw =
                    nix.eval_apply_output(&installable, APPLY).map_err(|err| eval_error(err, flake_label, &attr))?;
                (raw, true)
            }
        };
        let lanes = Catalog::from_output(&raw, &installable, &attr, flake_label);
        // Kept as printed (nothing to serialize again), once it is known to be JSON, and
        // with its lanes' `.drv` paths when they are valid (a catalog with a broken lane
        // is evaluated again, and so reported again, until it is fixed).
        if evaluated && let Ok(lanes) = &lanes {
            let drv_paths = lanes.iter().flat_map(|l| &l.payloads).map(|p| p.drv_path.as_str());
            cache.put(&key, drv_paths, &raw);
        }
        Ok(Catalog { lanes: lanes? })
    }

    /// Read and validate what `nix eval` printed for [`APPLY`] (`installable` names the
    /// evaluation in a message about output that is not JSON).
    fn from_output(raw: &[u8], installable: &str, attr: &str, flake_label: &str) -> Result<Vec<Lane>> {
        let json = Json::parse(raw).with_context(|| format!("parse the JSON printed by `nix eval {installable}`"))?;
        Catalog::from_json(&json, attr, flake_label)
    }

    /// Validate what [`APPLY`] returned; every broken rule of every lane is reported.
    pub fn from_json(raw: &Json, attr: &str, flake_label: &str) -> Result<Vec<Lane>> {
        let Json::Set(object) = raw else {
            return Err(error::config(format!(
                "`{attr}` of flake `{flake_label}` is a {}, not an attribute set of lanes",
                raw.type_name()
            ))
            .into());
        };
        let mut lanes = Vec::with_capacity(object.len());
        let mut errors = Vec::new();
        for (id, value) in object {
            match Lane::from_json(id, value) {
                Ok(lane) => lanes.push(lane),
                Err(mut errs) => errors.append(&mut errs),
            }
        }
        if !errors.is_empty() {
            let n = errors.iter().map(|e| &e.lane).collect::<std::collections::BTreeSet<_>>().len();
            let lines: Vec<String> = errors.iter().map(|e| format!("  {e}")).collect();
            return Err(error::config(format!(
                "flake `{flake_label}` declares {n} invalid lane{}:\n{}",
                if n == 1 { "" } else { "s" },
                lines.join("\n")
            ))
            .hint("fix the lanes in the flake; the lane contract is in docs/lanes.md")
            .into());
        }
        lanes.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(lanes)
    }

    pub fn get(&self, id: &str) -> Option<&Lane> {
        self.lanes.iter().find(|l| l.id == id)
    }
}

/// Turn a failed `nix eval` into a message about the flake, keeping Nix's own words.
fn eval_error(err: anyhow::Error, flake_label: &str, attr: &str) -> anyhow::Error {
    let Some(failed) = err.downcast_ref::<CommandFailed>() else {
        return err;
    };
    let stderr = failed.stderr.clone();
    if stderr.contains("does not provide attribute") {
        return error::config(format!("flake `{flake_label}` has no `{attr}` output"))
            .hint("declare lanes under `pikaci.<system>.lanes` in the flake's outputs (docs/lanes.md)")
            .into();
    }
    let message = nix_error_message(&stderr);
    error::config(format!("evaluating the lanes of flake `{flake_label}` failed:\n{message}"))
        .hint(format!("run `nix eval --show-trace '{flake_label}#{attr}'` for the full trace"))
        .into()
}

/// Nix's error text without the trailing "(use '--show-trace' ...)" advice.
fn nix_error_message(stderr: &str) -> String {
    stderr
        .lines()
        .filter(|l| !l.contains("--show-trace") && !l.trim().is_empty() && !l.starts_with("warning:"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The flake source a run evaluates: a local directory with a `flake.nix`.
#[derive(Clone, Debug)]
pub struct FlakeSource {
    /// Absolute, canonical directory of the flake.
    pub dir: std::path::PathBuf,
    /// How the user named it (`path:examples/hello`), for messages.
    pub label: String,
}

impl FlakeSource {
    /// Resolve `--flake` (a `path:` URL or a plain directory); without it, the nearest
    /// ancestor of the current directory that has a `flake.nix`.
    pub fn resolve(flake: Option<&str>) -> Result<FlakeSource> {
        let cwd = std::env::current_dir().context("read the current directory")?;
        let (dir, label) = match flake {
            Some(spec) => {
                // A `path:` URL is decoded as Nix would; a plain directory is taken as it is
                // (it may hold `?`, `#` or `%`).
                let path = match spec.strip_prefix("path:") {
                    Some(url) => flake_url::url_path(url).ok_or_else(|| {
                        error::usage(format!("`--flake {spec}`: a malformed `%` escape"))
                            .hint("write `%` as `%25` in a `path:` URL, or pass the directory itself")
                    })?,
                    None if spec.contains(':') => {
                        return Err(error::usage(format!("`--flake {spec}`: pikaci runs lanes of a local flake"))
                            .hint("pass a directory or a `path:` URL, e.g. `--flake path:.`")
                            .into());
                    }
                    None => std::path::PathBuf::from(spec),
                };
                (cwd.join(path), spec.to_string())
            }
            None => {
                let found = cwd.ancestors().find(|d| d.join("flake.nix").is_file()).map(Path::to_path_buf);
                let dir = found.ok_or_else(|| {
                    error::usage(format!("no `flake.nix` in `{}` or any parent directory", cwd.display()))
                        .hint("run pikaci inside a flake, or pass `--flake path:DIR`")
                })?;
                (dir, ".".to_string())
            }
        };
        if !dir.join("flake.nix").is_file() {
            return Err(error::usage(format!(
                "no flake at `{label}`: `{}` does not exist",
                dir.join("flake.nix").display()
            ))
            .hint("pass the directory that holds the project's `flake.nix`")
            .into());
        }
        let dir = dir.canonicalize().with_context(|| format!("resolve `{}`", dir.display()))?;
        Ok(FlakeSource { dir, label })
    }
}
