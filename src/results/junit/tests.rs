use std::os::unix::fs::symlink;

use super::*;

fn fixture(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/junit").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The JUnit cargo-nextest 0.9.143 wrote for tests/fixtures/rust-workspace with
/// `--retries 1`: one failed test (tried twice), one flaky, six passed at once.
#[test]
fn nextest_report_with_retries() {
    let r = parse_junit(&fixture("nextest-retries.xml")).unwrap();
    assert_eq!((r.passed, r.failed, r.skipped, r.flaky), (7, 1, 0, 1));
    assert_eq!(r.failures.len(), 1);
    let f = &r.failures[0];
    assert_eq!((f.name.as_str(), f.suite.as_str()), ("tests::fails_one", "alpha"));
    assert!(f.message.starts_with("thread 'tests::fails_one'"), "{}", f.message);
    assert!(f.output.contains("the answer is not 41"), "{}", f.output);
    assert!(f.output.lines().count() <= OUTPUT_LINES);
    assert_eq!(r.flaky_tests, [("alpha".to_string(), "tests::flaky_one".to_string())]);
}

#[test]
fn nextest_report_without_retries() {
    let r = parse_junit(&fixture("nextest-no-retries.xml")).unwrap();
    assert_eq!((r.passed, r.failed, r.skipped, r.flaky), (6, 2, 0, 0));
    let mut names: Vec<&str> = r.failures.iter().map(|f| f.name.as_str()).collect();
    names.sort();
    assert_eq!(names, ["tests::fails_one", "tests::flaky_one"]);
}

#[test]
fn serializes_to_the_recorded_shape() {
    let r = parse_junit(&fixture("nextest-retries.xml")).unwrap();
    let text = serde_json::to_string(&r).unwrap();
    assert!(
        text.starts_with(r#"{"passed":7,"failed":1,"skipped":0,"flaky":1,"failures":[{"name":"tests::fails_one","suite":"alpha","message":"thread 'tests::fails_one'"#),
        "{text}"
    );
    assert!(text.contains(r#"","output":"thread 'tests::fails_one'"#) && text.ends_with(r#""}]}"#), "{text}");
    let back: TestResults = serde_json::from_str(&text).unwrap();
    assert_eq!(back.failures, r.failures);
}

/// What cargo2junit writes, and a hand-written file from a lane that is not Rust.
#[test]
fn cargo2junit_style_and_hand_written() {
    let xml = r#"<?xml version="1.0" encoding="utf-8"?>
<testsuites>
  <testsuite id="0" name="greet" package="testsuite/greet" tests="4" errors="0" failures="1" hostname="localhost" timestamp="2024-01-01T00:00:00Z" time="0">
    <testcase name="tests::hello" classname="greet" time="0"/>
    <testcase name="tests::world" classname="greet" time="0">
      <failure type="assert" message="left != right"/>
      <system-out><![CDATA[---- tests::world stdout ----
thread 'tests::world' panicked at src/lib.rs:9:5:
left != right]]></system-out>
    </testcase>
    <testcase name="tests::later" classname="greet" time="0"><skipped/></testcase>
    <testcase name="tests::err" classname="greet"><error>crashed &amp; burned &#x2764;</error></testcase>
  </testsuite>
</testsuites>"#;
    let r = parse_junit(xml).unwrap();
    assert_eq!((r.passed, r.failed, r.skipped, r.flaky), (1, 2, 1, 0));
    assert_eq!(r.failures[0].name, "tests::world");
    assert_eq!(r.failures[0].message, "left != right");
    assert!(r.failures[0].output.contains("panicked at src/lib.rs:9:5"), "{:?}", r.failures[0]);
    assert_eq!(r.failures[1].message, "crashed & burned \u{2764}");

    // A shell lane's report: a single <testsuite> root, no classname.
    let hand = r#"<testsuite name="smoke"><testcase name="boots"/><testcase name="serves"><failure>port 80 closed</failure></testcase></testsuite>"#;
    let r = parse_junit(hand).unwrap();
    assert_eq!((r.passed, r.failed), (1, 1));
    assert_eq!((r.failures[0].suite.as_str(), r.failures[0].message.as_str()), ("smoke", "port 80 closed"));
}

#[test]
fn malformed_documents_are_errors_not_panics() {
    for (xml, needle) in [
        ("<testsuites><testsuite name=\"a\"><testcase name=\"x\"></testsuite></testsuites>", "not well-formed"),
        ("<testsuites><testcase name=\"x\">", "ends inside"),
        ("<html><body/></html>", "not a JUnit report"),
        ("", "not a JUnit report"),
        ("just text", "not a JUnit report"),
        ("<testsuites><testcase name=\"a\"><testcase name=\"b\"/></testcase></testsuites>", "inside a <testcase>"),
        ("<testsuites><testcase name=\"a\"><failure>&#0;</failure></testcase></testsuites>", "character reference"),
    ] {
        let err = parse_junit(xml).unwrap_err();
        assert!(err.contains(needle), "{xml:?}: {err}");
    }
}

#[test]
fn long_failures_are_bounded() {
    let long_line = "x".repeat(10_000);
    let many_lines: String = (0..500).map(|i| format!("line {i}\n")).collect();
    let xml = format!(
        r#"<testsuite name="s"><testcase name="t"><failure message="{long_line}">{many_lines}</failure></testcase></testsuite>"#
    );
    let r = parse_junit(&xml).unwrap();
    let f = &r.failures[0];
    assert_eq!(f.message.len(), MESSAGE_BYTES);
    assert_eq!(f.output.lines().count(), OUTPUT_LINES);
    assert!(f.output.starts_with("line 0\nline 1\n"));
    // Multi-byte text is cut at a character boundary.
    let wide = "é".repeat(OUTPUT_BYTES);
    let xml = format!(r#"<testsuite name="s"><testcase name="t"><failure>{wide}</failure></testcase></testsuite>"#);
    let f = &parse_junit(&xml).unwrap().failures[0];
    assert!(f.output.len() <= OUTPUT_BYTES && f.output.chars().all(|c| c == 'é'));
}

fn xml_of(cases: usize, failing_every: usize) -> String {
    let mut xml = String::from("<?xml version=\"1.0\"?>\n<testsuites><testsuite name=\"big\">\n");
    for i in 0..cases {
        if failing_every > 0 && i % failing_every == 0 {
            xml.push_str(&format!(
                "<testcase name=\"m::t{i}\" classname=\"big\"><failure message=\"boom {i}\">panicked\nat line {i}</failure><system-out>out</system-out></testcase>\n"
            ));
        } else {
            xml.push_str(&format!("<testcase name=\"m::t{i}\" classname=\"big\" time=\"0.001\"/>\n"));
        }
    }
    xml.push_str("</testsuite></testsuites>\n");
    xml
}

#[test]
fn many_failures_keep_exact_counts_and_a_bounded_list() {
    let r = parse_junit(&xml_of(3000, 1)).unwrap();
    assert_eq!(r.failed, 3000);
    assert_eq!(r.failures.len(), MAX_FAILURES);
}

#[test]
fn a_directory_merges_files_and_warns_about_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let junit = dir.path().join("junit");
    std::fs::create_dir_all(junit.join("sub")).unwrap();
    std::fs::write(junit.join("nextest.xml"), fixture("nextest-retries.xml")).unwrap();
    std::fs::write(junit.join("sub/ignored.xml"), r#"<testsuites><testsuite name="alpha"><testcase name="tests::ignored_one"><skipped/></testcase></testsuite></testsuites>"#).unwrap();
    std::fs::write(junit.join("broken.xml"), "<testsuites><testsuite>").unwrap();
    std::fs::write(junit.join("notes.txt"), "not xml, not read").unwrap();
    // A symlink out of the artifacts, to a valid report: never followed.
    let outside = dir.path().join("outside.xml");
    std::fs::write(&outside, fixture("nextest-no-retries.xml")).unwrap();
    symlink(&outside, junit.join("escape.xml")).unwrap();
    // A FIFO would block a reader that opened it.
    let fifo = junit.join("pipe.xml");
    assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());

    let report = read_junit_dir(&junit);
    let r = report.results.expect("results");
    assert_eq!((r.passed, r.failed, r.skipped, r.flaky), (7, 1, 1, 1), "{:?}", report.warnings);
    let warnings = report.warnings.join("\n");
    assert_eq!(report.warnings.len(), 3, "{warnings}");
    assert!(warnings.contains("broken.xml: ") && warnings.contains("ends inside"), "{warnings}");
    assert!(warnings.contains("escape.xml: a symlink; not followed"), "{warnings}");
    assert!(warnings.contains("pipe.xml: not a regular file"), "{warnings}");
    assert_eq!(report.files.len(), 2);
}

#[test]
fn a_directory_that_is_missing_a_symlink_or_holds_only_bad_files() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(read_junit_dir(&dir.path().join("absent")), JunitReport::default());

    let real = dir.path().join("real");
    std::fs::create_dir(&real).unwrap();
    std::fs::write(real.join("r.xml"), fixture("nextest-retries.xml")).unwrap();
    let link = dir.path().join("junit");
    symlink(&real, &link).unwrap();
    let report = read_junit_dir(&link);
    assert!(report.results.is_none());
    assert!(report.warnings[0].contains("a symlink"), "{:?}", report.warnings);

    std::fs::remove_file(real.join("r.xml")).unwrap();
    std::fs::write(real.join("bad.xml"), [0xff, 0xfe, 0x00]).unwrap();
    let report = read_junit_dir(&real);
    assert!(report.results.is_none());
    assert!(report.warnings[0].contains("not UTF-8"), "{:?}", report.warnings);
}

#[test]
fn huge_files_are_not_read() {
    let dir = tempfile::tempdir().unwrap();
    let file = File::create(dir.path().join("huge.xml")).unwrap();
    file.set_len(MAX_FILE_BYTES + 1).unwrap();
    std::fs::write(dir.path().join("small.xml"), r#"<testsuite name="s"><testcase name="t"/></testsuite>"#).unwrap();
    let report = read_junit_dir(dir.path());
    assert_eq!(report.results.unwrap().passed, 1);
    assert!(
        report.warnings[0].contains("huge.xml") && report.warnings[0].contains("over the limit"),
        "{:?}",
        report.warnings
    );
}

/// `cargo test --lib results::junit::tests::bench -- --ignored --nocapture`
#[test]
#[ignore = "a benchmark: prints the time to parse 10,000 test cases"]
fn bench_parse_10000_cases() {
    let xml = xml_of(10_000, 100);
    let runs = 20;
    let start = std::time::Instant::now();
    for _ in 0..runs {
        let r = parse_junit(&xml).unwrap();
        assert_eq!(r.total(), 10_000);
        serde_json::to_string(&r).unwrap();
    }
    let per = start.elapsed().as_secs_f64() * 1000.0 / runs as f64;
    println!("parse + serialize a JUnit file of 10,000 test cases ({} bytes): {per:.2} ms", xml.len());
}
