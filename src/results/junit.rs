//! JUnit XML as cargo-nextest writes it (`testsuites/testsuite/testcase`, with `failure`,
//! `error`, `skipped`, and `flakyFailure`/`flakyError`/`rerunFailure`/`rerunError` for
//! retries), and as `cargo2junit`-style tools and most other test runners write it.
//!
//! Counts: `passed` is every test whose last try passed, `flaky` those of them that failed
//! a try first (so flaky tests are counted in `passed` too, as nextest's summary does);
//! `failed` has a `failure` or `error`; `skipped` a `skipped` element.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use quick_xml::Reader;
use quick_xml::XmlVersion;
use quick_xml::events::{BytesStart, Event};
use serde::{Deserialize, Serialize};

/// A file larger than this is not read (a warning names it).
pub const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;
/// All files of a directory together; the rest are left out with a warning.
pub const MAX_TOTAL_BYTES: u64 = 64 * 1024 * 1024;
/// At most this many `*.xml` files are read.
pub const MAX_FILES: usize = 256;
/// Sub-directories deeper than this are not visited.
pub const MAX_DEPTH: usize = 8;
/// Failures kept with their details; the counts stay exact beyond it.
pub const MAX_FAILURES: usize = 1000;
/// A failure's `output`: its first lines, at most this many ...
pub const OUTPUT_LINES: usize = 20;
/// ... and at most this many bytes (cut at a character boundary).
pub const OUTPUT_BYTES: usize = 4096;
/// A failure's `message`, in bytes.
pub const MESSAGE_BYTES: usize = 512;
/// Text kept per element while parsing, before the bounds above are applied.
const CAPTURE_BYTES: usize = 64 * 1024;

/// The results of one job (or one file), as recorded in `job.json` under `tests`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestResults {
    pub passed: u64,
    pub failed: u64,
    pub skipped: u64,
    pub flaky: u64,
    pub failures: Vec<TestFailure>,
    /// The flaky tests (`suite`, `name`), for a summary that names them; not part of the
    /// recorded shape.
    #[serde(skip)]
    pub flaky_tests: Vec<(String, String)>,
}

/// One failed test.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestFailure {
    /// The test's own name (`tests::fails_one`), the form a test filter takes back.
    pub name: String,
    /// The suite it belongs to: nextest's binary id (`alpha`, `beta::fixture_file`).
    pub suite: String,
    /// The failure's message (its `message` attribute, else its first line), bounded.
    pub message: String,
    /// The first lines of the failure's text (or of the test's output), bounded.
    pub output: String,
}

impl TestResults {
    pub fn total(&self) -> u64 {
        self.passed + self.failed + self.skipped
    }

    /// Add another file's (or shard's) results to these.
    pub fn merge(&mut self, other: TestResults) {
        self.passed += other.passed;
        self.failed += other.failed;
        self.skipped += other.skipped;
        self.flaky += other.flaky;
        let room = MAX_FAILURES.saturating_sub(self.failures.len());
        self.failures.extend(other.failures.into_iter().take(room));
        self.flaky_tests.extend(other.flaky_tests);
    }
}

/// What a directory of JUnit files gave: the merged results (`None` when no file could be
/// read as JUnit, or there was none) and one warning per file left out.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JunitReport {
    pub results: Option<TestResults>,
    pub warnings: Vec<String>,
    /// The files that were parsed.
    pub files: Vec<PathBuf>,
}

/// Parse one JUnit document. The error says what is wrong and where (byte offset).
pub fn parse_junit(xml: &str) -> Result<TestResults, String> {
    let mut parser = Parser::default();
    let mut reader = Reader::from_str(xml);
    loop {
        let event =
            reader.read_event().map_err(|e| format!("not well-formed XML at byte {}: {e}", reader.error_position()))?;
        match event {
            Event::Start(e) => parser.open(&e, false)?,
            Event::Empty(e) => parser.open(&e, true)?,
            Event::End(_) => parser.close(),
            Event::Text(t) => parser.text(&t.xml_content(XmlVersion::Implicit1_0)),
            Event::CData(t) => parser.text(&t.xml_content(XmlVersion::Implicit1_0)),
            Event::GeneralRef(r) => {
                let resolved = match r.resolve_char_ref() {
                    Ok(Some(c)) => c.to_string(),
                    Ok(None) => quick_xml::escape::resolve_predefined_entity(&r.xml_content(XmlVersion::Implicit1_0))
                        .unwrap_or("")
                        .to_string(),
                    Err(e) => return Err(format!("bad character reference at byte {}: {e}", reader.buffer_position())),
                };
                parser.text(&resolved);
            }
            Event::Eof => break,
            _ => {}
        }
    }
    if !parser.stack.is_empty() {
        return Err(format!("the document ends inside <{}>", parser.stack.last().map(String::as_str).unwrap_or("?")));
    }
    if !parser.seen_root {
        return Err("no <testsuites>, <testsuite> or <testcase> element: not a JUnit report".into());
    }
    Ok(parser.results)
}

/// Where text inside a test case goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sink {
    Failure,
    Out,
    Err,
    Ignore,
}

#[derive(Default)]
struct Case {
    name: String,
    suite: String,
    failed: bool,
    skipped: bool,
    retried: bool,
    message: Option<String>,
    failure_text: String,
    out: String,
    err: String,
}

#[derive(Default)]
struct Parser {
    results: TestResults,
    stack: Vec<String>,
    suites: Vec<String>,
    case: Option<Case>,
    /// The stack depth of the open test case, and of the element whose text is captured.
    case_depth: usize,
    sink: Option<(Sink, usize)>,
    seen_root: bool,
}

fn attr(e: &BytesStart, key: &str) -> Option<String> {
    e.attributes()
        .flatten()
        .find(|a| a.key.as_ref() == key)
        .and_then(|a| a.normalized_value(XmlVersion::Implicit1_0).ok().map(|v| v.into_owned()))
}

impl Parser {
    fn open(&mut self, e: &BytesStart, empty: bool) -> Result<(), String> {
        let tag = e.local_name().as_ref().to_string();
        if self.stack.is_empty() && !matches!(tag.as_str(), "testsuites" | "testsuite" | "testcase") {
            return Err(format!("the root element is <{tag}>, not <testsuites> or <testsuite>: not a JUnit report"));
        }
        match tag.as_str() {
            "testsuites" => self.seen_root = true,
            "testsuite" => {
                self.seen_root = true;
                if !empty {
                    self.suites.push(attr(e, "name").unwrap_or_default());
                }
            }
            "testcase" => {
                self.seen_root = true;
                if self.case.is_some() {
                    return Err("a <testcase> inside a <testcase>".into());
                }
                let suite = self.suites.last().cloned().filter(|s| !s.is_empty());
                let case = Case {
                    name: attr(e, "name").unwrap_or_default(),
                    suite: suite.or_else(|| attr(e, "classname")).unwrap_or_default(),
                    ..Case::default()
                };
                if empty {
                    self.finish(case);
                    return Ok(());
                }
                self.case = Some(case);
                self.case_depth = self.stack.len() + 1;
            }
            _ => self.open_in_case(e, &tag, empty),
        }
        if !empty {
            self.stack.push(tag);
        }
        Ok(())
    }

    /// An element inside a test case: its outcome, and whether its text is kept.
    fn open_in_case(&mut self, e: &BytesStart, tag: &str, empty: bool) {
        let depth = self.stack.len() + 1;
        let Some(case) = self.case.as_mut() else { return };
        let direct = depth == self.case_depth + 1;
        let sink = match tag {
            "failure" | "error" if direct => {
                case.failed = true;
                case.message = attr(e, "message").or(attr(e, "type"));
                Sink::Failure
            }
            "skipped" if direct => {
                case.skipped = true;
                Sink::Ignore
            }
            "flakyFailure" | "flakyError" | "rerunFailure" | "rerunError" if direct => {
                case.retried = true;
                Sink::Ignore
            }
            "system-out" if direct => Sink::Out,
            "system-err" if direct => Sink::Err,
            _ => Sink::Ignore,
        };
        // An empty element has no text, and no end event that would clear the sink.
        if self.sink.is_none() && !empty {
            self.sink = Some((sink, depth));
        }
    }

    fn close(&mut self) {
        let depth = self.stack.len();
        let Some(tag) = self.stack.pop() else { return };
        if self.sink.is_some_and(|(_, d)| d == depth) {
            self.sink = None;
        }
        match tag.as_str() {
            "testcase" if depth == self.case_depth => {
                if let Some(case) = self.case.take() {
                    self.finish(case);
                }
            }
            "testsuite" => {
                self.suites.pop();
            }
            _ => {}
        }
    }

    fn text(&mut self, text: &str) {
        let (Some((sink, _)), Some(case)) = (self.sink, self.case.as_mut()) else { return };
        let buf = match sink {
            Sink::Failure => &mut case.failure_text,
            Sink::Out => &mut case.out,
            Sink::Err => &mut case.err,
            Sink::Ignore => return,
        };
        if buf.len() < CAPTURE_BYTES {
            buf.push_str(cut(text, CAPTURE_BYTES - buf.len()));
        }
    }

    fn finish(&mut self, case: Case) {
        let r = &mut self.results;
        if case.failed {
            r.failed += 1;
            if r.failures.len() < MAX_FAILURES {
                r.failures.push(failure_of(case));
            }
        } else if case.skipped {
            r.skipped += 1;
        } else {
            r.passed += 1;
            if case.retried {
                r.flaky += 1;
                r.flaky_tests.push((case.suite, case.name));
            }
        }
    }
}

fn failure_of(case: Case) -> TestFailure {
    let body = case.failure_text.trim();
    let message = case
        .message
        .filter(|m| !m.trim().is_empty())
        .or_else(|| body.lines().find(|l| !l.trim().is_empty()).map(str::to_string))
        .unwrap_or_default();
    let output = if !body.is_empty() {
        body.to_string()
    } else {
        [case.err.trim(), case.out.trim()].into_iter().filter(|s| !s.is_empty()).collect::<Vec<_>>().join("\n")
    };
    TestFailure {
        name: case.name,
        suite: case.suite,
        message: cut(message.trim(), MESSAGE_BYTES).to_string(),
        output: first_lines(&output, OUTPUT_LINES, OUTPUT_BYTES),
    }
}

/// At most `max` bytes of `s`, cut at a character boundary.
fn cut(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn first_lines(s: &str, lines: usize, bytes: usize) -> String {
    let kept: Vec<&str> = s.lines().take(lines).collect();
    cut(&kept.join("\n"), bytes).to_string()
}

/// Read every `*.xml` file under `dir` (its sub-directories too) and merge their results.
/// Never fails: a missing directory gives no results and no warning; a symlink, a special
/// file, a file too large or not JUnit is left out with a warning naming it.
pub fn read_junit_dir(dir: &Path) -> JunitReport {
    let mut report = JunitReport::default();
    match std::fs::symlink_metadata(dir) {
        Err(_) => return report,
        Ok(m) if m.file_type().is_symlink() => {
            report
                .warnings
                .push(format!("{}: a symlink; JUnit files are read only from the job's own artifacts", dir.display()));
            return report;
        }
        Ok(m) if !m.is_dir() => {
            report.warnings.push(format!("{}: not a directory", dir.display()));
            return report;
        }
        Ok(_) => {}
    }
    let mut files = Vec::new();
    collect(dir, 0, &mut files, &mut report.warnings);
    files.sort();
    let mut total: u64 = 0;
    let mut merged: Option<TestResults> = None;
    for (i, (path, len)) in files.into_iter().enumerate() {
        if i >= MAX_FILES {
            report.warnings.push(format!("{}: left out, more than {MAX_FILES} JUnit files", path.display()));
            continue;
        }
        if len > MAX_FILE_BYTES {
            report
                .warnings
                .push(format!("{}: {len} bytes, over the limit of {MAX_FILE_BYTES}; not read", path.display()));
            continue;
        }
        if total + len > MAX_TOTAL_BYTES {
            report
                .warnings
                .push(format!("{}: left out, the JUnit files together exceed {MAX_TOTAL_BYTES} bytes", path.display()));
            continue;
        }
        total += len;
        match read_regular(&path).and_then(|text| parse_junit(&text)) {
            Ok(results) => {
                merged.get_or_insert_with(TestResults::default).merge(results);
                report.files.push(path);
            }
            Err(why) => report.warnings.push(format!("{}: {why}", path.display())),
        }
    }
    report.results = merged;
    report
}

/// The `*.xml` regular files under `dir`, with their sizes; symlinks and special files are
/// named in `warnings` and never followed.
fn collect(dir: &Path, depth: usize, files: &mut Vec<(PathBuf, u64)>, warnings: &mut Vec<String>) {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            warnings.push(format!("{}: cannot be listed: {e}", dir.display()));
            return;
        }
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else { continue };
        let ft = meta.file_type();
        if ft.is_dir() {
            if depth < MAX_DEPTH {
                collect(&path, depth + 1, files, warnings);
            } else {
                warnings.push(format!("{}: deeper than {MAX_DEPTH} levels; not read", path.display()));
            }
            continue;
        }
        if path.extension().is_none_or(|e| e != "xml") {
            continue;
        }
        if ft.is_symlink() {
            warnings.push(format!("{}: a symlink; not followed (write the JUnit file itself)", path.display()));
        } else if !ft.is_file() {
            warnings.push(format!("{}: not a regular file; not read", path.display()));
        } else {
            files.push((path, meta.len()));
        }
    }
}

/// The file's text, checked again after opening: still the regular file that was listed
/// (not replaced by a symlink meanwhile), and no longer than the limit.
fn read_regular(path: &Path) -> Result<String, String> {
    use std::os::unix::fs::MetadataExt;
    let before = std::fs::symlink_metadata(path).map_err(|e| format!("cannot be read: {e}"))?;
    let file = File::open(path).map_err(|e| format!("cannot be read: {e}"))?;
    let after = file.metadata().map_err(|e| format!("cannot be read: {e}"))?;
    if !before.file_type().is_file() || before.ino() != after.ino() || before.dev() != after.dev() {
        return Err("changed while being read (a symlink or another file now); not read".into());
    }
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes).map_err(|e| format!("cannot be read: {e}"))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(format!("over the limit of {MAX_FILE_BYTES} bytes; not read"));
    }
    String::from_utf8(bytes).map_err(|_| "not UTF-8 text; not read".to_string())
}

#[cfg(test)]
mod tests;
