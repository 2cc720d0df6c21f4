//! A lane: what one CI job runs, as the flake declares it, checked rule by rule.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::json::Json;
use super::{DEFAULT_TIMEOUT_SECS, REQUIRED_PAYLOADS, STAGED_LINUX_RUST};

/// Longest lane id (and payload name); keeps Incus instance and device names in bounds.
pub const MAX_ID_LEN: usize = 48;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lane {
    pub id: String,
    pub description: String,
    pub kind: String,
    /// `workspace-deps`, `workspace-build`, then any others by name.
    pub payloads: Vec<Payload>,
    /// argv, run in the guest with `/workspace` as the working directory.
    pub command: Vec<String>,
    /// Changed-file globs; empty means the lane always runs.
    pub paths: Vec<String>,
    pub timeout_secs: u64,
    pub env: BTreeMap<String, String>,
    /// `runtime.image`: the Incus image for this lane, if not the default.
    #[serde(default)]
    pub image: Option<String>,
    /// `retries`: how many times the command retries a failed test (the lane library
    /// passes it to nextest); informational for pikaci.
    #[serde(default)]
    pub retries: u32,
    /// `shards`: the lane runs as this many jobs, each with `PIKACI_SHARD=k/N`.
    #[serde(default = "one")]
    pub shards: u32,
    /// Whether the lane declares `testFilterArgs` (names -> arguments), so that a rerun can
    /// run only the failed tests (`filter::apply_expression`).
    #[serde(default)]
    pub test_filter: bool,
}

fn one() -> u32 {
    1
}

/// The most shards a lane may ask for.
pub const MAX_SHARDS: u64 = 64;

/// One staged payload: a derivation that becomes one `StagedPayloadMount`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payload {
    pub name: String,
    pub drv_path: String,
    /// Output name -> store path.
    pub outputs: BTreeMap<String, String>,
}

impl Payload {
    /// The output mounted at `/pikaci/payloads/<name>`: `out` when there is one.
    pub fn main_output(&self) -> Option<(&str, &str)> {
        self.outputs.get_key_value("out").or_else(|| self.outputs.iter().next()).map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

/// A broken rule of a lane.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LaneError {
    pub lane: String,
    pub rule: String,
}

impl fmt::Display for LaneError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "lane `{}`: {}", self.lane, self.rule)
    }
}

/// The id rule for lanes and payload names: `[a-z0-9][a-z0-9-]*`, at most 48 characters.
pub fn validate_id(id: &str) -> Result<(), String> {
    let mut chars = id.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let rest_ok = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !first_ok || !rest_ok {
        return Err("must match `[a-z0-9][a-z0-9-]*` (lowercase letters, digits and `-`, not starting with `-`)".into());
    }
    if id.len() > MAX_ID_LEN {
        return Err(format!("is {} characters long; at most {MAX_ID_LEN} are allowed", id.len()));
    }
    Ok(())
}

impl Lane {
    /// Check every rule; return all that are broken.
    pub fn from_json(id: &str, value: &Json) -> Result<Lane, Vec<LaneError>> {
        let mut errors = Vec::new();
        let mut err = |rule: String| errors.push(LaneError { lane: id.to_string(), rule });

        if let Err(why) = validate_id(id) {
            err(format!("the id {why}"));
        }
        let Json::Set(_) = value else {
            err(format!("must be an attribute set, got a {}", value.as_str().unwrap_or(value.type_name())));
            return Err(errors);
        };
        let fields = value;
        let field = |name: &str| v_of(fields, name);

        if let Some(Json::List(unknown)) = fields.get("unknown") {
            for name in unknown.iter().filter_map(Json::as_str) {
                err(format!(
                    "unknown field `{name}` (the fields are description, kind, payloads, command, paths, timeout, env, runtime, retries, shards, testFilterArgs)"
                ));
            }
        }
        let description = lane_description(fields, &mut err);
        let kind = lane_kind(fields, &mut err);
        let payloads = lane_payloads(fields, &kind, &mut err);
        let command = lane_command(fields, &mut err);
        let paths = lane_paths(fields, &mut err);
        let timeout_secs = lane_timeout(fields, &mut err);
        let env = lane_env(fields, &mut err);
        let image = lane_image(fields, &mut err);
        let retries = whole_number(field("retries"), 0, 0, 100).unwrap_or_else(|why| {
            err(format!("`retries` {why}"));
            0
        });
        let shards = whole_number(field("shards"), 1, 1, MAX_SHARDS).unwrap_or_else(|why| {
            err(format!("`shards` {why}"));
            1
        });
        let test_filter = lane_test_filter(fields, &mut err);

        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Lane {
            id: id.to_string(),
            description,
            kind,
            payloads,
            command,
            paths,
            timeout_secs,
            env,
            image,
            retries,
            shards,
            test_filter,
        })
    }
}

// One function per field: each returns the field's value (a default when it is broken)
// and reports every broken rule through `err`.

/// A field of a lane; `null` (what the expression returns for a field not set) is none.
fn v_of<'j, 'a>(fields: &'j Json<'a>, name: &str) -> Option<&'j Json<'a>> {
    fields.get(name).filter(|v| !v.is_null())
}

fn lane_description(fields: &Json, err: &mut dyn FnMut(String)) -> String {
    match v_of(fields, "description") {
        None => String::new(),
        Some(Json::Str(s)) => s.to_string(),
        Some(other) => {
            err(format!("`description` must be a string, got a {}", other.type_name()));
            String::new()
        }
    }
}

fn lane_kind(fields: &Json, err: &mut dyn FnMut(String)) -> String {
    match v_of(fields, "kind") {
        Some(Json::Str(s)) if s == STAGED_LINUX_RUST => s.to_string(),
        Some(Json::Str(s)) => {
            err(format!("`kind` is `{s}`; the only kind is `{STAGED_LINUX_RUST}`"));
            s.to_string()
        }
        Some(other) => {
            err(format!("`kind` must be the string `{STAGED_LINUX_RUST}`, got a {}", other.type_name()));
            String::new()
        }
        None => {
            err(format!("`kind` is missing (set `kind = \"{STAGED_LINUX_RUST}\";`)"));
            String::new()
        }
    }
}

fn lane_payloads(fields: &Json, kind: &str, err: &mut dyn FnMut(String)) -> Vec<Payload> {
    let mut payloads = Vec::new();
    match v_of(fields, "payloads") {
        Some(Json::Set(map)) => {
            for (name, p) in map {
                if let Err(why) = validate_id(name) {
                    err(format!("payload name `{name}` {why}"));
                    continue;
                }
                match parse_payload(name, p) {
                    Ok(payload) => payloads.push(payload),
                    Err(rule) => err(rule),
                }
            }
            if kind == STAGED_LINUX_RUST {
                for required in REQUIRED_PAYLOADS {
                    if !map.iter().any(|(k, _)| k == required) {
                        err(format!(
                            "payload `{required}` is missing (a {STAGED_LINUX_RUST} lane declares both `workspace-deps` and `workspace-build`)"
                        ));
                    }
                }
            }
        }
        Some(Json::Str(t)) if t != "null" => {
            err(format!("`payloads` must be an attribute set of derivations, got a {t}"))
        }
        _ => err("`payloads` is missing (declare `workspace-deps` and `workspace-build`)".into()),
    }
    payloads.sort_by(|a, b| payload_order(&a.name).cmp(&payload_order(&b.name)));
    payloads
}

fn lane_command(fields: &Json, err: &mut dyn FnMut(String)) -> Vec<String> {
    match v_of(fields, "command") {
        Some(Json::List(items)) if !items.is_empty() => {
            let words: Vec<String> = items.iter().filter_map(|v| v.as_str().map(str::to_string)).collect();
            if words.len() != items.len() {
                err("`command` must be a list of strings".into());
            } else if words[0].is_empty() {
                err("`command`'s first word (the program) is empty".into());
            }
            words
        }
        Some(Json::List(_)) => {
            err("`command` is empty; it is the argv run in the guest, e.g. [ \"/pikaci/payloads/workspace-build/bin/run-tests\" ]".into());
            Vec::new()
        }
        Some(other) => {
            err(format!("`command` must be a list of strings (an argv), got a {}", other.type_name()));
            Vec::new()
        }
        None => {
            err("`command` is missing".into());
            Vec::new()
        }
    }
}

fn lane_paths(fields: &Json, err: &mut dyn FnMut(String)) -> Vec<String> {
    match v_of(fields, "paths") {
        None => Vec::new(),
        Some(Json::List(items)) => {
            let mut globs = Vec::new();
            for item in items {
                match item.as_str() {
                    Some(glob) if let Err(why) = check_path_glob(glob) => {
                        err(format!("`paths` entry `{glob}` can never match a changed file: {why}"))
                    }
                    Some(glob) => match super::glob::compile_glob(glob) {
                        Ok(_) => globs.push(glob.to_string()),
                        Err(why) => err(format!("`paths` entry `{glob}` is not a valid glob: {why}")),
                    },
                    None => err(format!("`paths` entries must be strings, got a {}", item.type_name())),
                }
            }
            globs
        }
        Some(other) => {
            err(format!("`paths` must be a list of globs, got a {}", other.type_name()));
            Vec::new()
        }
    }
}

fn lane_timeout(fields: &Json, err: &mut dyn FnMut(String)) -> u64 {
    match v_of(fields, "timeout") {
        None => DEFAULT_TIMEOUT_SECS,
        Some(Json::Number(n)) => match n.as_u64() {
            Some(secs) if secs > MAX_TIMEOUT_SECS => {
                err(format!(
                    "`timeout` is {secs} seconds, more than the most a lane may take ({MAX_TIMEOUT_SECS}, 7 days)"
                ));
                DEFAULT_TIMEOUT_SECS
            }
            Some(secs) if secs > 0 => secs,
            _ => {
                err(format!("`timeout` must be a positive whole number of seconds, got {n}"));
                DEFAULT_TIMEOUT_SECS
            }
        },
        Some(other) => {
            err(format!("`timeout` must be a positive whole number of seconds, got a {}", other.type_name()));
            DEFAULT_TIMEOUT_SECS
        }
    }
}

fn lane_env(fields: &Json, err: &mut dyn FnMut(String)) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    match v_of(fields, "env") {
        None => {}
        Some(Json::Set(map)) => {
            for (k, v) in map {
                if !is_env_name(k) {
                    err(format!("`env` name `{}` is not a variable name (`[A-Za-z_][A-Za-z0-9_]*`)", k.escape_debug()));
                }
                match v.as_str() {
                    Some(s) => {
                        env.insert(k.to_string(), s.to_string());
                    }
                    None => err(format!("`env.{k}` must be a string, got a {} (write it in quotes)", v.type_name())),
                }
            }
        }
        Some(other) => err(format!("`env` must be an attribute set of strings, got a {}", other.type_name())),
    }
    env
}

fn lane_image(fields: &Json, err: &mut dyn FnMut(String)) -> Option<String> {
    let mut image = None;
    match v_of(fields, "runtime") {
        None => {}
        Some(Json::Set(map)) => {
            for (k, v) in map {
                match (k.as_ref(), v) {
                    ("image", Json::Str(s)) if !s.is_empty() => image = Some(s.to_string()),
                    ("image", other) => {
                        err(format!("`runtime.image` must be a non-empty string, got a {}", other.type_name()))
                    }
                    (other, _) => err(format!("unknown field `runtime.{other}` (the only one is `image`)")),
                }
            }
        }
        Some(other) => err(format!("`runtime` must be an attribute set, got a {}", other.type_name())),
    }
    image
}

fn lane_test_filter(fields: &Json, err: &mut dyn FnMut(String)) -> bool {
    match v_of(fields, "testFilterArgs") {
        None => false,
        Some(Json::Str(t)) if t == "lambda" => true,
        Some(other) => {
            err(format!(
                "`testFilterArgs` must be a function from a list of test names to a list of arguments, got a {}",
                other.as_str().unwrap_or(other.type_name())
            ));
            false
        }
    }
}

/// An optional whole number in `min..=max`; `default` when absent.
fn whole_number(value: Option<&Json>, default: u32, min: u64, max: u64) -> Result<u32, String> {
    match value {
        None => Ok(default),
        Some(Json::Number(n)) => match n.as_u64() {
            Some(v) if (min..=max).contains(&v) => Ok(v as u32),
            _ => Err(format!("must be a whole number from {min} to {max}, got {n}")),
        },
        Some(other) => Err(format!("must be a whole number from {min} to {max}, got a {}", other.type_name())),
    }
}

/// The longest `timeout` a lane may declare: 7 days. Longer is a mistake (and a deadline
/// that far would overflow the clock arithmetic).
pub const MAX_TIMEOUT_SECS: u64 = 7 * 24 * 3600;

/// A name both runtimes pass on unchanged: `[A-Za-z_][A-Za-z0-9_]*`.
fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `paths` globs match paths relative to the repository root, as git names changed files:
/// an empty, absolute or `..` entry never matches, and the lane would silently never run
/// with `--changed-since`.
fn check_path_glob(glob: &str) -> Result<(), &'static str> {
    if glob.is_empty() {
        return Err("it is empty");
    }
    if glob.starts_with('/') {
        return Err("it is absolute; paths are relative to the repository root");
    }
    if glob.split('/').any(|part| part == "..") {
        return Err("it has a `..`; paths are inside the repository");
    }
    Ok(())
}

fn parse_payload(name: &str, value: &Json) -> Result<Payload, String> {
    let Json::Set(_) = value else {
        return Err(format!(
            "payload `{name}` must be a derivation, got a {}",
            value.as_str().unwrap_or(value.type_name())
        ));
    };
    let drv_path =
        value.get("drvPath").and_then(Json::as_str).ok_or_else(|| format!("payload `{name}` has no `drvPath`"))?;
    let outputs: BTreeMap<String, String> = match value.get("outputs") {
        Some(Json::Set(m)) => {
            m.iter().filter_map(|(k, v)| v.as_str().map(|s| (k.to_string(), s.to_string()))).collect()
        }
        _ => BTreeMap::new(),
    };
    if outputs.is_empty() {
        return Err(format!("payload `{name}` has no outputs"));
    }
    Ok(Payload { name: name.to_string(), drv_path: drv_path.to_string(), outputs })
}

/// The required payloads first, in the contract's order, then the rest by name.
fn payload_order(name: &str) -> (usize, &str) {
    let rank = REQUIRED_PAYLOADS.iter().position(|r| *r == name).unwrap_or(REQUIRED_PAYLOADS.len());
    (rank, name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    /// A lane as Nix would print it.
    fn from_value(id: &str, value: &Value) -> Result<Lane, Vec<LaneError>> {
        let text = serde_json::to_vec(value).unwrap();
        Lane::from_json(id, &Json::parse(&text).unwrap())
    }

    fn good() -> Value {
        json!({
            "description": "unit tests",
            "kind": "staged-linux-rust",
            "command": ["/pikaci/payloads/workspace-build/bin/run-tests", "--quiet"],
            "paths": ["crates/**", "Cargo.lock"],
            "timeout": 60,
            "env": {"RUST_BACKTRACE": "1"},
            "runtime": null,
            "unknown": [],
            "payloads": {
                "workspace-build": {"drvPath": "/nix/store/aaaa-b.drv", "outputs": {"out": "/nix/store/aaaa-b"}},
                "extra": {"drvPath": "/nix/store/aaaa-e.drv", "outputs": {"out": "/nix/store/aaaa-e", "dev": "/nix/store/aaaa-e-dev"}},
                "workspace-deps": {"drvPath": "/nix/store/aaaa-d.drv", "outputs": {"out": "/nix/store/aaaa-d"}}
            }
        })
    }

    #[test]
    fn valid_lane_parses_with_payloads_in_contract_order() {
        let lane = from_value("unit", &good()).unwrap();
        let names: Vec<&str> = lane.payloads.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["workspace-deps", "workspace-build", "extra"]);
        assert_eq!(lane.timeout_secs, 60);
        assert_eq!(lane.env["RUST_BACKTRACE"], "1");
        assert_eq!(lane.payloads[2].main_output(), Some(("out", "/nix/store/aaaa-e")));
    }

    #[test]
    fn ids() {
        assert!(validate_id("unit").is_ok());
        assert!(validate_id("0-a-b").is_ok());
        assert!(validate_id(&"a".repeat(48)).is_ok());
        assert!(validate_id(&"a".repeat(49)).unwrap_err().contains("49 characters"));
        for bad in ["", "-a", "Unit", "a_b", "a.b", "a b", "ü"] {
            assert!(validate_id(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn every_broken_rule_is_reported() {
        let mut v = good();
        v["kind"] = json!("docker");
        v["command"] = json!([]);
        v["timeout"] = json!(0);
        v["env"] = json!({"N": 1});
        v["paths"] = json!(["crates/{a"]);
        v["unknown"] = json!(["comand"]);
        v["payloads"].as_object_mut().unwrap().remove("workspace-deps");
        let errs = from_value("Bad_Id", &v).unwrap_err();
        let text: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        let all = text.join("\n");
        for needle in [
            "lane `Bad_Id`: the id must match",
            "unknown field `comand`",
            "`kind` is `docker`",
            "`command` is empty",
            "`timeout` must be a positive whole number of seconds, got 0",
            "`env.N` must be a string",
            "`paths` entry `crates/{a` is not a valid glob",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
        }
        // workspace-deps is only required of staged-linux-rust lanes; this one has another kind.
        assert!(!all.contains("workspace-deps` is missing"));
    }

    #[test]
    fn missing_required_payload_and_non_derivation_payload() {
        let mut v = good();
        v["payloads"] = json!({"workspace-build": "int"});
        let all: Vec<String> = from_value("unit", &v).unwrap_err().iter().map(|e| e.to_string()).collect();
        assert!(
            all.iter().any(|e| e == "lane `unit`: payload `workspace-build` must be a derivation, got a int"),
            "{all:?}"
        );
        assert!(all.iter().any(|e| e.contains("payload `workspace-deps` is missing")), "{all:?}");
    }

    #[test]
    fn retries_shards_and_test_filter() {
        let lane = from_value("unit", &good()).unwrap();
        assert_eq!((lane.retries, lane.shards, lane.test_filter), (0, 1, false));
        let mut v = good();
        v["retries"] = json!(2);
        v["shards"] = json!(4);
        v["testFilterArgs"] = json!("lambda");
        let lane = from_value("unit", &v).unwrap();
        assert_eq!((lane.retries, lane.shards, lane.test_filter), (2, 4, true));

        v["retries"] = json!(-1);
        v["shards"] = json!(0);
        v["testFilterArgs"] = json!("list");
        let all: Vec<String> = from_value("unit", &v).unwrap_err().iter().map(|e| e.to_string()).collect();
        assert_eq!(
            all,
            [
                "lane `unit`: `retries` must be a whole number from 0 to 100, got -1",
                "lane `unit`: `shards` must be a whole number from 1 to 64, got 0",
                "lane `unit`: `testFilterArgs` must be a function from a list of test names to a list of arguments, got a list",
            ]
        );
        v["shards"] = json!("2");
        let all: Vec<String> = from_value("unit", &v).unwrap_err().iter().map(|e| e.to_string()).collect();
        assert!(
            all.iter().any(|e| e.ends_with("`shards` must be a whole number from 1 to 64, got a string")),
            "{all:?}"
        );
    }

    #[test]
    fn durations_env_names_and_paths_that_cannot_work_are_refused() {
        let mut v = good();
        v["timeout"] = json!(9223372036854775807u64);
        v["env"] = json!({"A B": "1", "X\nY": "2", "1A": "3", "_OK_1": "4"});
        v["paths"] = json!(["", "/abs/**", "../up", "a/../b", "crates/**"]);
        let all: Vec<String> = from_value("unit", &v).unwrap_err().iter().map(|e| e.to_string()).collect();
        let all = all.join("\n");
        for needle in [
            "`timeout` is 9223372036854775807 seconds, more than the most a lane may take (604800, 7 days)",
            "`env` name `A B` is not a variable name",
            "`env` name `X\\nY` is not a variable name",
            "`env` name `1A` is not a variable name",
            "`paths` entry `` can never match a changed file: it is empty",
            "`paths` entry `/abs/**` can never match a changed file: it is absolute",
            "`paths` entry `../up` can never match a changed file: it has a `..`",
            "`paths` entry `a/../b` can never match",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
        }
        assert!(!all.contains("_OK_1") && !all.contains("crates/**"), "{all}");
        v["timeout"] = json!(MAX_TIMEOUT_SECS);
        v["env"] = json!({});
        v["paths"] = json!([]);
        assert_eq!(from_value("unit", &v).unwrap().timeout_secs, MAX_TIMEOUT_SECS);
    }

    #[test]
    fn lane_that_is_not_a_set() {
        let errs = from_value("unit", &json!("list")).unwrap_err();
        assert_eq!(errs[0].to_string(), "lane `unit`: must be an attribute set, got a list");
    }
}
