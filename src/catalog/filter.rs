//! A lane's `testFilterArgs`: a Nix function from test names to the arguments that make
//! the lane's command run only those tests (the lane library's, for nextest:
//! `[ "-E" "test(=a) | test(=b)" ]`). The catalog's one evaluation cannot call it (the
//! names are known only when a rerun asks for the failed tests), so it records only that
//! the lane declares one ([`super::Lane::test_filter`]); a rerun evaluates
//! `pikaci.<system>.lanes.<id>` again with [`apply_expression`] and reads the words with
//! [`parse_args`].

use std::path::Path;

use anyhow::Result;
use serde_json::Value;

use crate::error;
use crate::tools::nix::Nix;

/// Evaluate lane `lane`'s `testFilterArgs` of the flake in `dir` (a snapshot) with `names`.
pub fn evaluate(nix: &Nix, dir: &Path, system: &str, lane: &str, names: &[String]) -> Result<Vec<String>> {
    let installable = format!("{}#pikaci.{system}.lanes.{lane}", super::path_url(dir));
    let value = nix.eval_json_apply(&installable, &apply_expression(names))?;
    parse_args(lane, &value).map_err(|why| error::config(why).into())
}

/// The `--apply` expression for `pikaci.<system>.lanes.<id>` that calls the lane's
/// `testFilterArgs` with `names`. The names travel as JSON inside a Nix string, escaped
/// so that no name can end the string or start an interpolation.
pub fn apply_expression(names: &[String]) -> String {
    let json = serde_json::to_string(names).expect("strings serialize");
    let mut quoted = String::with_capacity(json.len() + 2);
    quoted.push('"');
    for c in json.chars() {
        match c {
            '\\' => quoted.push_str("\\\\"),
            '"' => quoted.push_str("\\\""),
            '$' => quoted.push_str("\\$"),
            _ => quoted.push(c),
        }
    }
    quoted.push('"');
    format!("lane: lane.testFilterArgs (builtins.fromJSON {quoted})")
}

/// The words the evaluation returned: a list of strings, else what is wrong with it.
pub fn parse_args(lane: &str, value: &Value) -> Result<Vec<String>, String> {
    let items = value
        .as_array()
        .ok_or_else(|| format!("lane `{lane}`: `testFilterArgs` returned {value}, not a list of strings"))?;
    items
        .iter()
        .map(|v| {
            v.as_str()
                .map(str::to_string)
                .ok_or_else(|| format!("lane `{lane}`: `testFilterArgs` returned a list with {v}, not only strings"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_are_quoted_for_nix() {
        let e = apply_expression(&["tests::a".into(), r#"we"ird ${x} \n"#.into()]);
        assert_eq!(e, r#"lane: lane.testFilterArgs (builtins.fromJSON "[\"tests::a\",\"we\\\"ird \${x} \\\\n\"]")"#);
    }

    #[test]
    fn the_result_must_be_a_list_of_strings() {
        assert_eq!(parse_args("u", &json!(["-E", "test(=a)"])).unwrap(), ["-E", "test(=a)"]);
        assert!(parse_args("u", &json!("-E")).unwrap_err().contains("not a list of strings"));
        assert!(parse_args("u", &json!(["-E", 1])).unwrap_err().contains("not only strings"));
    }
}
