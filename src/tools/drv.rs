//! What a job's realisation builds, and for which of its payloads: read from the `.drv`
//! files themselves (Nix's ATerm text: `Derive([outputs],[input derivations],...)`), so
//! that no process is spent on it. One `nix-store --realise` builds every payload of a
//! job, and Nix's structured log names the derivation of each build but not the payload
//! it is for: [`Owners`] answers that.

use std::collections::{HashMap, HashSet};

/// The parts of a derivation that say where it sits in a build: its outputs (name, store
/// path; the path is empty for a content-addressed output) and the derivations it takes
/// as inputs.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Derivation {
    pub outputs: Vec<(String, String)>,
    pub input_drvs: Vec<String>,
}

/// A `.drv` file's text, read as far as its input derivations; `None` when it is not a
/// derivation. Both forms Nix writes are read: `Derive(...)` and the versioned
/// `DrvWithVersion("…",...)` of dynamic derivations.
pub fn parse(text: &str) -> Option<Derivation> {
    let mut p = Parser { bytes: text.as_bytes(), at: 0 };
    let versioned = if p.eat_word("Derive(") {
        false
    } else if p.eat_word("DrvWithVersion(") {
        true
    } else {
        return None;
    };
    if versioned {
        p.value()?;
        p.eat(b',')?;
    }
    let outputs = p.value()?;
    p.eat(b',')?;
    let inputs = p.value()?;
    let outputs = outputs
        .items()?
        .iter()
        .filter_map(|o| {
            let fields = o.items()?;
            Some((fields.first()?.text()?.to_string(), fields.get(1)?.text()?.to_string()))
        })
        .collect();
    let input_drvs = inputs.items()?.iter().filter_map(|i| Some(i.items()?.first()?.text()?.to_string())).collect();
    Some(Derivation { outputs, input_drvs })
}

enum Value {
    Text(String),
    /// A list `[...]` or a tuple `(...)`: the same to a reader of these two fields.
    Items(Vec<Value>),
}

impl Value {
    fn text(&self) -> Option<&str> {
        match self {
            Value::Text(t) => Some(t),
            Value::Items(_) => None,
        }
    }

    fn items(&self) -> Option<&[Value]> {
        match self {
            Value::Items(items) => Some(items),
            Value::Text(_) => None,
        }
    }
}

struct Parser<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Parser<'_> {
    fn eat_word(&mut self, word: &str) -> bool {
        let found = self.bytes[self.at..].starts_with(word.as_bytes());
        if found {
            self.at += word.len();
        }
        found
    }

    fn eat(&mut self, byte: u8) -> Option<()> {
        (self.bytes.get(self.at) == Some(&byte)).then(|| self.at += 1)
    }

    fn value(&mut self) -> Option<Value> {
        match *self.bytes.get(self.at)? {
            b'"' => self.string().map(Value::Text),
            open @ (b'[' | b'(') => {
                let close = if open == b'[' { b']' } else { b')' };
                self.at += 1;
                let mut items = Vec::new();
                if self.eat(close).is_some() {
                    return Some(Value::Items(items));
                }
                loop {
                    items.push(self.value()?);
                    if self.eat(close).is_some() {
                        return Some(Value::Items(items));
                    }
                    self.eat(b',')?;
                }
            }
            _ => None,
        }
    }

    /// A string in double quotes, with Nix's escapes (`\"`, `\\`, `\n`, `\r`, `\t`).
    fn string(&mut self) -> Option<String> {
        self.eat(b'"')?;
        let mut out = Vec::new();
        loop {
            match *self.bytes.get(self.at)? {
                b'"' => {
                    self.at += 1;
                    return String::from_utf8(out).ok();
                }
                b'\\' => {
                    let escaped = *self.bytes.get(self.at + 1)?;
                    out.push(match escaped {
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        other => other,
                    });
                    self.at += 2;
                }
                other => {
                    out.push(other);
                    self.at += 1;
                }
            }
        }
    }
}

/// Which payload of a job each derivation built, and each store path fetched, in its
/// realisation is for: the payload whose derivation's closure holds it, and of several,
/// the one with the smallest closure (crane's `workspace-deps`, not the
/// `workspace-build` that takes it as an input). A payload's own derivation is always
/// its own. Read from the `.drv` files of this machine's store; a payload whose `.drv` is
/// not here (garbage-collected) owns its recorded outputs only.
#[derive(Debug, Default)]
pub struct Owners {
    by_path: HashMap<String, usize>,
}

impl Owners {
    /// `payloads`: each payload's `.drv` and recorded output paths, in the lane's order.
    pub fn of(payloads: &[(&str, Vec<&str>)]) -> Owners {
        let mut parsed: HashMap<String, Option<Derivation>> = HashMap::new();
        let closures: Vec<Vec<String>> = payloads.iter().map(|(drv, _)| closure(drv, &mut parsed)).collect();
        let mut order: Vec<usize> = (0..payloads.len()).collect();
        order.sort_by_key(|&i| (closures[i].len(), i));
        let mut by_path = HashMap::new();
        for (i, (drv, outputs)) in payloads.iter().enumerate() {
            by_path.insert(drv.to_string(), i);
            for output in outputs {
                by_path.insert(output.to_string(), i);
            }
        }
        for &i in &order {
            for drv in &closures[i] {
                by_path.entry(drv.clone()).or_insert(i);
                let outputs = parsed.get(drv).and_then(|d| d.as_ref()).map(|d| d.outputs.as_slice()).unwrap_or(&[]);
                for (_, path) in outputs.iter().filter(|(_, path)| !path.is_empty()) {
                    by_path.entry(path.clone()).or_insert(i);
                }
            }
        }
        Owners { by_path }
    }

    /// The payload (its index in the lane's order) that a derivation or store path is
    /// for, if any.
    pub fn owner(&self, path: &str) -> Option<usize> {
        self.by_path.get(path).copied()
    }
}

/// The derivations `drv` builds on, itself included (those whose `.drv` could be read),
/// `parsed` holding every `.drv` read so far.
fn closure(drv: &str, parsed: &mut HashMap<String, Option<Derivation>>) -> Vec<String> {
    let mut seen: HashSet<String> = HashSet::new();
    let mut queue = vec![drv.to_string()];
    let mut order = Vec::new();
    while let Some(next) = queue.pop() {
        if !seen.insert(next.clone()) {
            continue;
        }
        let derivation = parsed
            .entry(next.clone())
            .or_insert_with(|| std::fs::read_to_string(&next).ok().and_then(|text| parse(&text)));
        if let Some(d) = derivation {
            queue.extend(d.input_drvs.iter().filter(|i| !seen.contains(*i)).cloned());
            order.push(next);
        }
    }
    order
}

/// The first path of the store `store` (`/nix/store/`) in `text` (a message of Nix's),
/// without what follows its name.
pub fn store_path_in<'t>(text: &'t str, store: &str) -> Option<&'t str> {
    let start = text.find(store)?;
    let rest = &text[start..];
    let end = rest[store.len()..]
        .find(|c: char| !(c.is_ascii_alphanumeric() || "+-._?=".contains(c)))
        .map(|n| n + store.len())
        .unwrap_or(rest.len());
    Some(&rest[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    const C: &str = "/nix/store/gj20lyhkxipdncjalg4nkw0rspzh90i3-c.drv";

    #[test]
    fn outputs_and_input_derivations_of_both_forms() {
        let text = format!(
            r#"Derive([("dev","/nix/store/aaaa-x-dev","",""),("out","/nix/store/bbbb-x","","")],[("{C}",["out"]),("/nix/store/dddd-d.drv",["lib","out"])],["/nix/store/eeee-src"],"x86_64-linux","/bin/sh",["-c","echo \"(],\" \\ done"],[("out","/nix/store/bbbb-x")])"#
        );
        let d = parse(&text).unwrap();
        assert_eq!(
            d.outputs,
            [("dev".into(), "/nix/store/aaaa-x-dev".into()), ("out".into(), "/nix/store/bbbb-x".into())]
        );
        assert_eq!(d.input_drvs, [C, "/nix/store/dddd-d.drv"]);
        let versioned = r#"DrvWithVersion("xp-dyn-drv",[("out","","r:sha256","")],[("/nix/store/dddd-d.drv",(["out"],[]))],[],"x","b",[],[])"#;
        let d = parse(versioned).unwrap();
        assert_eq!(d.outputs, [("out".into(), String::new())]);
        assert_eq!(d.input_drvs, ["/nix/store/dddd-d.drv"]);
        assert!(parse("not a derivation").is_none());
        assert!(parse("Derive([(\"out\"").is_none());
    }

    #[test]
    fn a_derivation_belongs_to_the_smallest_payload_closure_that_holds_it() {
        // build -> deps -> c; build -> b; extra alone.
        let dir = tempfile::tempdir().unwrap();
        let drv = |name: &str, inputs: &[&str]| {
            let path = dir.path().join(format!("{name}.drv"));
            let inputs: Vec<String> = inputs.iter().map(|i| format!("(\"{}\",[\"out\"])", i)).collect();
            let text = format!(
                "Derive([(\"out\",\"/nix/store/out-{name}\",\"\",\"\")],[{}],[],\"s\",\"b\",[],[])",
                inputs.join(",")
            );
            std::fs::write(&path, text).unwrap();
            path.to_string_lossy().into_owned()
        };
        let c = drv("c", &[]);
        let b = drv("b", &[]);
        let deps = drv("deps", &[&c]);
        let build = drv("build", &[&deps, &b]);
        let extra = drv("extra", &[]);
        let owners = Owners::of(&[(&build, vec![]), (&deps, vec![]), (&extra, vec!["/nix/store/recorded-extra"])]);
        assert_eq!(owners.owner(&build), Some(0));
        assert_eq!(owners.owner(&b), Some(0));
        assert_eq!(owners.owner(&deps), Some(1));
        assert_eq!(owners.owner(&c), Some(1));
        assert_eq!(owners.owner("/nix/store/out-c"), Some(1));
        assert_eq!(owners.owner(&extra), Some(2));
        assert_eq!(owners.owner("/nix/store/recorded-extra"), Some(2));
        assert_eq!(owners.owner("/nix/store/out-elsewhere"), None);
    }

    #[test]
    fn store_paths_in_messages() {
        let waiting = "waiting for lock on '/nix/store/7hj84bn7vk3yxygm1vgv0fb2za8mzi6c-waitme'";
        let store = "/nix/store/";
        assert_eq!(store_path_in(waiting, store), Some("/nix/store/7hj84bn7vk3yxygm1vgv0fb2za8mzi6c-waitme"));
        let failed = format!("error: Cannot build '{C}'.\n       Reason: builder failed");
        assert_eq!(store_path_in(&failed, store), Some(C));
        assert_eq!(store_path_in("nothing here", store), None);
    }

    /// `cargo test --lib tools::drv::tests::bench -- --ignored --nocapture`
    #[test]
    #[ignore = "a benchmark: prints the time to read the closures of a large build"]
    fn bench_owners_of_3000_derivations() {
        // 3,000 made-up `.drv`s of 4 KB each, each taking up to 8 of the ones before it as
        // inputs; two payloads on top, one on the other.
        let dir = tempfile::tempdir().unwrap();
        let path = |i: usize| dir.path().join(format!("{i:05}-d.drv")).to_string_lossy().into_owned();
        let env = "x".repeat(4000);
        for i in 0..3000 {
            let inputs: Vec<String> =
                (1..=8).filter(|k| i >= k * k).map(|k| format!("(\"{}\",[\"out\"])", path(i - k * k))).collect();
            let text = format!(
                "Derive([(\"out\",\"/nix/store/o{i}\",\"\",\"\")],[{}],[],\"s\",\"b\",[],[(\"e\",\"{env}\")])",
                inputs.join(",")
            );
            std::fs::write(path(i), text).unwrap();
        }
        let (deps, build) = (path(2990), path(2999));
        let started = std::time::Instant::now();
        let owners = Owners::of(&[(&deps, vec![]), (&build, vec![])]);
        let took = started.elapsed();
        assert_eq!(owners.owner(&path(0)), Some(0));
        println!("Owners::of a closure of 3,000 derivations of 4 KB: {:.1} ms", took.as_secs_f64() * 1000.0);
    }
}
