//! The layout's rules (`docs/architecture.md`), checked on the source so that a change
//! cannot quietly break them: which top-level module may import which, no cycle between
//! top-level modules, no source file over 700 lines and no function over 80 lines. Each
//! failure names the offending file and line.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const MAX_FILE_LINES: usize = 700;
const MAX_FN_LINES: usize = 80;

/// (module, modules it must not import). `tools` is stricter: it may import only these.
const FORBIDDEN: &[(&str, &[&str])] = &[
    ("catalog", &["plan", "prepare", "executor", "state", "run", "cli"]),
    ("executor", &["catalog", "plan", "prepare", "gc", "doctor", "cli"]),
    ("state", &["catalog", "plan", "prepare", "executor"]),
];
const TOOLS_MAY_IMPORT: &[&str] = &["error", "signals", "tools"];

struct Source {
    path: PathBuf,
    /// The top-level module: `src/tools/nix.rs` -> `tools`, `src/plan.rs` -> `plan`.
    module: String,
    /// The code without comments, string and char literals (same line numbers), up to
    /// the first `#[cfg(test)]`: unit tests may import what they need.
    code: Vec<String>,
    lines: usize,
}

fn sources() -> Vec<Source> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    collect(&src, &mut files);
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).unwrap();
            let rel = path.strip_prefix(&src).unwrap();
            let first = rel.components().next().unwrap().as_os_str().to_string_lossy().into_owned();
            let module = first.trim_end_matches(".rs").to_string();
            let mut code: Vec<String> = strip(&text).lines().map(str::to_string).collect();
            if let Some(cut) = code.iter().position(|l| l.trim() == "#[cfg(test)]") {
                code.truncate(cut);
            }
            Source { lines: text.lines().count(), path: rel.to_path_buf(), module, code }
        })
        .collect()
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            collect(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Blank out comments, string and char literals, keeping every newline, so that braces
/// and `crate::` inside them do not count.
fn strip(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let blank = |c: char| if c == '\n' { '\n' } else { ' ' };
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            while i < chars.len() && !(chars[i] == '*' && chars.get(i + 1) == Some(&'/')) {
                out.push(blank(chars[i]));
                i += 1;
            }
            i += 2;
        } else if c == 'r' && (next == Some('"') || next == Some('#')) && !ident_char(chars.get(i.wrapping_sub(1))) {
            let mut hashes = 0;
            let mut j = i + 1;
            while chars.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if chars.get(j) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            i = j + 1;
            loop {
                if i >= chars.len() {
                    break;
                }
                if chars[i] == '"' && (0..hashes).all(|k| chars.get(i + 1 + k) == Some(&'#')) {
                    i += 1 + hashes;
                    break;
                }
                out.push(blank(chars[i]));
                i += 1;
            }
            out.push_str("\"\"");
        } else if c == '"' {
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                if chars[i] == '\\' {
                    i += 1;
                }
                if let Some(&ch) = chars.get(i) {
                    out.push(blank(ch));
                }
                i += 1;
            }
            i += 1;
            out.push_str("\"\"");
        } else if c == '\'' && char_literal_len(&chars[i..]).is_some() {
            i += char_literal_len(&chars[i..]).unwrap();
            out.push_str("' '");
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

fn ident_char(c: Option<&char>) -> bool {
    c.is_some_and(|c| c.is_alphanumeric() || *c == '_')
}

/// The length of a char literal starting at `s[0] == '\''`, or None for a lifetime.
fn char_literal_len(s: &[char]) -> Option<usize> {
    if s.get(1) == Some(&'\\') {
        let end = s.iter().skip(2).position(|c| *c == '\'')?;
        return Some(end + 3);
    }
    (s.get(2) == Some(&'\'')).then_some(3)
}

/// Every top-level module a line refers to through `crate::` (`use crate::{a, b::c}`
/// included).
fn crate_refs(line: &str) -> BTreeSet<String> {
    let mut refs = BTreeSet::new();
    let mut rest = line;
    while let Some(at) = rest.find("crate::") {
        let after = &rest[at + "crate::".len()..];
        if let Some(group) = after.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                let name: String = item.trim().chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                if !name.is_empty() && name != "self" {
                    refs.insert(name);
                }
            }
        } else {
            let name: String = after.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            if !name.is_empty() {
                refs.insert(name);
            }
        }
        rest = after;
    }
    refs
}

#[test]
fn modules_import_only_what_the_layout_allows() {
    let mut broken = Vec::new();
    for source in sources() {
        for (n, line) in source.code.iter().enumerate() {
            for target in crate_refs(line) {
                if target == source.module {
                    continue;
                }
                let allowed = if source.module == "tools" {
                    TOOLS_MAY_IMPORT.contains(&target.as_str())
                } else {
                    !FORBIDDEN.iter().any(|(m, deny)| *m == source.module && deny.contains(&target.as_str()))
                };
                if !allowed {
                    broken.push(format!(
                        "src/{}:{}: `{}` must not import `{target}`: {}",
                        source.path.display(),
                        n + 1,
                        source.module,
                        line.trim()
                    ));
                }
            }
        }
    }
    assert!(broken.is_empty(), "layout rules broken:\n{}", broken.join("\n"));
}

#[test]
fn top_level_modules_have_no_cycle() {
    let mut graph: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for source in sources() {
        for (n, line) in source.code.iter().enumerate() {
            for target in crate_refs(line) {
                if target != source.module && source.module != "main" && source.module != "lib" {
                    graph
                        .entry(source.module.clone())
                        .or_default()
                        .entry(target)
                        .or_insert_with(|| format!("src/{}:{}", source.path.display(), n + 1));
                }
            }
        }
    }
    // Depth-first search for a back edge; report the cycle with where each edge is.
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeMap<String, String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(pos) = stack.iter().position(|s| s == node) {
            let mut cycle = stack[pos..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if !done.insert(node.to_string()) {
            return None;
        }
        stack.push(node.to_string());
        for next in graph.get(node).map(|m| m.keys().cloned().collect::<Vec<_>>()).unwrap_or_default() {
            if let Some(cycle) = visit(&next, graph, stack, done) {
                return Some(cycle);
            }
        }
        stack.pop();
        None
    }
    let mut done = BTreeSet::new();
    for node in graph.keys() {
        if let Some(cycle) = visit(node, &graph, &mut Vec::new(), &mut done) {
            let edges: Vec<String> =
                cycle.windows(2).map(|w| format!("{} -> {} ({})", w[0], w[1], graph[&w[0]][&w[1]])).collect();
            panic!("a cycle between top-level modules:\n{}", edges.join("\n"));
        }
    }
}

#[test]
fn no_file_is_too_long() {
    let long: Vec<String> = sources()
        .iter()
        .filter(|s| s.lines > MAX_FILE_LINES)
        .map(|s| format!("src/{}: {} lines (at most {MAX_FILE_LINES})", s.path.display(), s.lines))
        .collect();
    assert!(long.is_empty(), "{}", long.join("\n"));
}

#[test]
fn no_function_is_too_long() {
    let mut long = Vec::new();
    for source in sources() {
        for (start, name, len) in functions(&source.code) {
            if len > MAX_FN_LINES {
                long.push(format!(
                    "src/{}:{}: fn `{name}` is {len} lines (at most {MAX_FN_LINES})",
                    source.path.display(),
                    start + 1
                ));
            }
        }
    }
    assert!(long.is_empty(), "{}", long.join("\n"));
}

/// (first line, name, length in lines) of every function with a body.
fn functions(code: &[String]) -> Vec<(usize, String, usize)> {
    let mut found = Vec::new();
    for (i, line) in code.iter().enumerate() {
        let Some(name) = fn_name(line) else { continue };
        // The body opens at the first `{` after the signature (or there is none: `;`).
        let mut depth = 0i64;
        let mut opened = false;
        'lines: for (j, l) in code.iter().enumerate().skip(i) {
            for c in l.chars() {
                match c {
                    ';' if !opened && depth == 0 => break 'lines,
                    '{' => {
                        depth += 1;
                        opened = true;
                    }
                    '}' => {
                        depth -= 1;
                        if opened && depth == 0 {
                            found.push((i, name.clone(), j - i + 1));
                            break 'lines;
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    found
}

fn fn_name(line: &str) -> Option<String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let at = words.iter().position(|w| *w == "fn")?;
    if !words[..at].iter().all(|w| {
        matches!(*w, "pub" | "const" | "async" | "unsafe" | "extern") || w.starts_with("pub(") || w.starts_with('"')
    }) {
        return None;
    }
    let name: String = words.get(at + 1)?.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
    (!name.is_empty()).then_some(name)
}

#[test]
fn the_checker_sees_what_it_checks() {
    // The checks above can only fail if these helpers find things; prove they do.
    assert_eq!(
        crate_refs("use crate::{doctor, gc::collect, self};"),
        BTreeSet::from(["doctor".to_string(), "gc".to_string()])
    );
    assert_eq!(crate_refs("let x = crate::tools::nix::Nix::locate();"), BTreeSet::from(["tools".to_string()]));
    let code: Vec<String> =
        strip("fn a() {\n    let s = \"}\";\n    let c = '{';\n}\nfn b();\n").lines().map(str::to_string).collect();
    assert_eq!(functions(&code), vec![(0, "a".to_string(), 4)]);
    assert!(strip("// crate::plan\nx").starts_with("\nx"), "comments are not code");
    assert!(!strip(r##"r#"crate::plan"#"##).contains("crate::"), "raw strings are not code");
}
