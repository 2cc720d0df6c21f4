//! `pikaci serve` over a state root with real runs (made by the real binary, on bwrap):
//! every page and JSON endpoint, live updates, paging of a large log, traversal attempts
//! and hostile names; and a browser test with headless Chromium.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// A state root with one run of each kind. The running run goes on until this is dropped.
struct Fixture {
    dir: tempfile::TempDir,
    /// `pass`, `fail` and `slow` (timed out): a failed run.
    mixed: String,
    /// `pass` only.
    passed: String,
    /// `ticker`, whose pikaci was killed with SIGKILL.
    interrupted: String,
    /// A copy of `mixed` whose `run.json` is cut short.
    corrupt: String,
    /// `ticker`, still running.
    running: String,
    running_child: Option<Child>,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if let Some(mut c) = self.running_child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Fixture {
    fn state(&self) -> PathBuf {
        self.dir.path().join(".pikaci")
    }
    fn run_dir(&self, id: &str) -> PathBuf {
        self.state().join("runs").join(id)
    }
}

fn run_ids(dir: &Path) -> Vec<String> {
    let mut ids: Vec<String> = std::fs::read_dir(dir.join(".pikaci/runs"))
        .map(|d| d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    ids.sort();
    ids
}

fn new_run(dir: &Path, before: &[String]) -> String {
    run_ids(dir).into_iter().find(|id| !before.contains(id)).expect("a new run")
}

/// Start `pikaci run ticker` and return once it has printed `tick N`.
fn start_ticker(dir: &Path, ticks: u32) -> Child {
    let mut child = pikaci()
        .args(["run", "ticker", "--runtime", "bwrap", "--flake"])
        .arg(format!("path:{}", dir.display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start pikaci run");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let want = format!("[ticker] tick {ticks}");
    for line in lines.by_ref() {
        if line.expect("read pikaci's output").contains(&want) {
            // Keep draining its output so that it never blocks on a full pipe.
            std::thread::spawn(move || for _ in lines {});
            return child;
        }
    }
    let _ = child.wait();
    panic!("the ticker run ended before `{want}`");
}

fn fixture() -> Fixture {
    require_nix();
    require_bwrap();
    let dir = copy_fixture(&fixture_path("web"));
    let out = run_in(dir.path(), &["run", "pass", "fail", "slow", "--runtime", "bwrap"]);
    assert_eq!(out.code, 1, "{out:?}");
    let mixed = run_ids(dir.path()).pop().unwrap();
    let before = run_ids(dir.path());
    let out = run_in(dir.path(), &["run", "pass", "--runtime", "bwrap"]);
    assert_eq!(out.code, 0, "{out:?}");
    let passed = new_run(dir.path(), &before);

    let before = run_ids(dir.path());
    let mut killed = start_ticker(dir.path(), 2);
    killed.kill().unwrap(); // SIGKILL: the record still says `running`.
    killed.wait().unwrap();
    let interrupted = new_run(dir.path(), &before);
    assert_eq!(read_json(&dir.path().join(format!(".pikaci/runs/{interrupted}/run.json")))["status"], "running");

    // A corrupt run: a copy of a real one (logs included) whose record is cut short.
    let corrupt = "20200101-000000-000-dead".to_string();
    let runs = dir.path().join(".pikaci/runs");
    copy_tree(&runs.join(&mixed).join("jobs"), &runs.join(&corrupt).join("jobs"));
    std::fs::write(runs.join(&corrupt).join("run.json"), "{\"schema_version\": 1, \"run_id\": \"2020").unwrap();

    let before = run_ids(dir.path());
    let running_child = Some(start_ticker(dir.path(), 3));
    let running = new_run(dir.path(), &before);
    Fixture { dir, mixed, passed, interrupted, corrupt, running, running_child }
}

/// `pikaci serve` on a free loopback port; killed when dropped.
struct Server {
    child: Child,
    addr: String,
    stderr: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(state: &Path) -> Server {
    let stderr = state.with_file_name(format!("serve-{}.stderr", std::process::id()));
    let mut child = pikaci()
        .args(["serve", "--listen", "127.0.0.1:0", "--state-root"])
        .arg(state)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .expect("start pikaci serve");
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut first).unwrap();
    let addr = first
        .split("http://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .unwrap_or_else(|| panic!("`pikaci serve` did not print its address: {first:?}"))
        .to_string();
    assert!(addr.starts_with("127.0.0.1:") && !addr.ends_with(":0"), "{first}");
    Server { child, addr, stderr }
}

/// A response, as a minimal HTTP/1.1 client over a TCP stream sees it.
#[derive(Debug)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

/// Send a request with the path exactly as given (no normalization), read the whole reply.
fn request(server: &Server, method: &str, path: &str, extra: &str) -> Resp {
    let mut s = TcpStream::connect(&server.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(s, "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n{extra}\r\n", server.addr).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("a header block");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers: Vec<(String, String)> =
        lines.filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim().to_string(), v.trim().to_string())).collect();
    let mut body = raw[split + 4..].to_vec();
    if headers.iter().any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v == "chunked") {
        body = dechunk(&body);
    }
    Resp { status, headers, body }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let eol = data.windows(2).position(|w| w == b"\r\n").unwrap();
        let size = usize::from_str_radix(std::str::from_utf8(&data[..eol]).unwrap().trim(), 16).unwrap();
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&data[eol + 2..eol + 2 + size]);
        data = &data[eol + 2 + size + 2..];
    }
}

fn get(server: &Server, path: &str) -> Resp {
    request(server, "GET", path, "")
}

/// The list of (path, size, mtime) of every file under a directory.
fn tree(dir: &Path) -> Vec<(PathBuf, u64, std::time::SystemTime)> {
    let mut all = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let meta = entry.path().symlink_metadata().unwrap();
        if meta.is_dir() {
            all.extend(tree(&entry.path()));
        } else {
            all.push((entry.path(), meta.len(), meta.modified().unwrap()));
        }
    }
    all.sort();
    all
}

/// The hostile per-test results a lane could report (test names are not safe).
fn add_hostile_tests(job_json: &Path) {
    let mut job = read_json(job_json);
    job["tests"] = serde_json::json!({
        "passed": 41, "failed": 2, "skipped": 1, "flaky": 1,
        "failures": [
            { "name": "net::times_out", "suite": "integration", "message": "timed out after 60s", "output": "" },
            { "name": "parse::<img src=x onerror=alert(1)>", "suite": "unit<script>",
              "message": "assertion failed: <script>alert(2)</script>", "output": "left: 1\nright: <b>2</b>" }
        ]
    });
    job["host"] = serde_json::json!("builder-<b>2</b>");
    std::fs::write(job_json, serde_json::to_string_pretty(&job).unwrap()).unwrap();
}

#[test]
fn pages_and_json_show_every_kind_of_run_and_refuse_traversal() {
    let f = fixture();
    add_hostile_tests(&f.run_dir(&f.mixed).join("jobs/pass/job.json"));
    let artifacts = f.run_dir(&f.mixed).join("jobs/pass/artifacts");
    std::os::unix::fs::symlink("/etc/passwd", artifacts.join("leak.txt")).unwrap();
    std::os::unix::fs::symlink("../../..", artifacts.join("up")).unwrap();
    // A symlink to a file inside the state root is not followed either.
    std::os::unix::fs::symlink("../job.json", artifacts.join("inner.json")).unwrap();
    // A run directory that is a symlink to somewhere outside the state root.
    let outside = tempfile::tempdir().unwrap();
    copy_tree(&f.run_dir(&f.passed), outside.path());
    std::os::unix::fs::symlink(outside.path(), f.state().join("runs/20991231-000000-000-beef")).unwrap();
    let server = serve(&f.state());

    check_json_is_what_the_cli_prints(&f, &server);
    check_runs_page(&f, &server);
    check_run_page(&f, &server);
    check_logs_and_artifacts(&f, &server);
    check_traversal(&f, &server);

    // Read-only: the finished runs' files are as they were, and other methods are refused.
    let before = tree(&f.run_dir(&f.mixed));
    for path in ["/", &format!("/runs/{}", f.mixed), &format!("/api/runs/{}", f.mixed)] {
        for method in ["POST", "PUT", "DELETE", "PATCH"] {
            let r = request(&server, method, path, "Content-Length: 0\r\n");
            assert_eq!(r.status, 405, "{method} {path}");
            assert_eq!(r.header("Allow"), Some("GET, HEAD"));
        }
        let head = request(&server, "HEAD", path, "");
        assert_eq!(head.status, 200, "HEAD {path}");
        assert!(head.body.is_empty(), "HEAD has no body");
    }
    assert_eq!(before, tree(&f.run_dir(&f.mixed)), "serving changed the state root");
    let stderr = std::fs::read_to_string(&server.stderr).unwrap();
    assert!(!stderr.contains("panicked"), "{stderr}");
}

fn check_json_is_what_the_cli_prints(f: &Fixture, server: &Server) {
    let state = f.state();
    for id in [&f.mixed, &f.passed, &f.interrupted] {
        let cli = pikaci().args(["status", id, "--json", "--state-root"]).arg(&state).output().unwrap();
        let api = get(server, &format!("/api/runs/{id}"));
        assert_eq!(api.status, 200);
        assert_eq!(api.header("Content-Type"), Some("application/json"));
        assert_eq!(api.text(), String::from_utf8_lossy(&cli.stdout), "`/api/runs/{id}` = `pikaci status {id} --json`");
        // The same JSON by content negotiation on the page's own address.
        let negotiated = request(server, "GET", &format!("/runs/{id}"), "Accept: application/json\r\n");
        assert_eq!(negotiated.text(), api.text());
    }
    let status = get(server, &format!("/api/runs/{}", f.interrupted)).json();
    assert_eq!(status["status"], "interrupted", "a run whose process died");
    assert_eq!(get(server, &format!("/api/runs/{}", f.running)).json()["status"], "running");
    let corrupt = get(server, &format!("/api/runs/{}", f.corrupt)).json();
    assert_eq!(corrupt["status"], "corrupt");
    assert!(corrupt["error"].as_str().unwrap().contains("is corrupt"), "{corrupt}");

    // `list --json` against `/api/runs`: the same entries (the running one's may move on).
    let cli = pikaci().args(["list", "--json", "--state-root"]).arg(&state).output().unwrap();
    let cli: serde_json::Value = serde_json::from_slice(&cli.stdout).unwrap();
    let api = get(server, "/api/runs").json();
    let ids = |v: &serde_json::Value| -> Vec<String> {
        v.as_array().unwrap().iter().map(|e| e["run_id"].as_str().unwrap().to_string()).collect()
    };
    assert_eq!(ids(&api), ids(&cli));
    assert_eq!(ids(&api), [&f.running, &f.interrupted, &f.passed, &f.mixed, &f.corrupt].map(|s| s.to_string()));
    for (a, c) in api.as_array().unwrap().iter().zip(cli.as_array().unwrap()) {
        if a["run_id"] != f.running.as_str() {
            assert_eq!(a, c);
        }
    }
    // A reader that cannot write the state root (the NixOS service is read-only) still
    // tells a live run from a dead one.
    let ro = Command::new("bwrap")
        .args(["--dev-bind", "/", "/", "--ro-bind"])
        .args([&state, &state])
        .arg(env!("CARGO_BIN_EXE_pikaci"))
        .args(["list", "--json", "--state-root"])
        .arg(&state)
        .output()
        .unwrap();
    let ro: serde_json::Value = serde_json::from_slice(&ro.stdout).unwrap();
    let status_of = |id: &str| ro.as_array().unwrap().iter().find(|e| e["run_id"] == id).unwrap()["status"].clone();
    assert_eq!(status_of(&f.running), "running", "read-only: {ro}");
    assert_eq!(status_of(&f.interrupted), "interrupted", "read-only: {ro}");
    let root = request(server, "GET", "/", "Accept: application/json\r\n").json();
    assert_eq!(ids(&root), ids(&api));
    let job = get(server, &format!("/api/runs/{}/jobs/fail", f.mixed));
    assert_eq!(job.text(), std::fs::read_to_string(f.run_dir(&f.mixed).join("jobs/fail/job.json")).unwrap());
}

fn check_runs_page(f: &Fixture, server: &Server) {
    let page = get(server, "/");
    assert_eq!(page.status, 200);
    assert_eq!(page.header("Content-Type"), Some("text/html; charset=utf-8"));
    let csp = page.header("Content-Security-Policy").unwrap();
    assert!(csp.contains("default-src 'none'") && csp.contains("script-src 'sha256-"), "{csp}");
    let html = page.text();
    for (id, status) in [
        (&f.mixed, "failed"),
        (&f.passed, "passed"),
        (&f.interrupted, "interrupted"),
        (&f.corrupt, "corrupt"),
        (&f.running, "running"),
    ] {
        let row = row_of(&html, id);
        assert!(row.contains(&format!("badge s-{status}")), "run {id} shows as {status}: {row}");
        assert!(row.contains(&format!("href=\"/runs/{id}\"")), "{row}");
    }
    let mixed = row_of(&html, &f.mixed);
    assert!(mixed.contains("1 failed") && mixed.contains("1 passed") && mixed.contains("1 timed out"), "{mixed}");
    assert!(mixed.contains(&format!("path:{}", f.dir.path().display())), "the flake: {mixed}");
    assert!(row_of(&html, &f.corrupt).contains("is corrupt"), "the reason is shown");
    assert!(!html.contains("20991231-000000-000-beef"), "a symlinked run directory is not listed");
    assert!(html.contains("<body data-poll"), "a page with a running run updates itself");
}

/// The table row of a run on the runs page.
fn row_of<'a>(html: &'a str, id: &str) -> &'a str {
    let start = html.find(&format!("data-run=\"{id}\"")).unwrap_or_else(|| panic!("no row for {id}"));
    let end = html[start..].find("</tr>").unwrap();
    &html[start..start + end]
}

fn check_run_page(f: &Fixture, server: &Server) {
    let html = get(server, &format!("/runs/{}", f.mixed)).text();
    for job in ["pass", "fail", "slow"] {
        assert!(html.contains(&format!("id=\"job-{job}\"")), "job {job} has a section");
    }
    assert!(html.contains("badge s-timed_out"), "slow timed out");
    assert!(html.contains("command exited with 3"), "the failure message");
    let job = read_json(&f.run_dir(&f.mixed).join("jobs/pass/job.json"));
    let store_path = job["payloads"][0]["mounted"].as_str().unwrap();
    assert!(html.contains(store_path), "the payload store path");
    let repro = job["reproduce"][0].as_str().unwrap();
    assert!(html.contains(&escape(repro)), "the reproduce lines");
    // Test results: failures first, and hostile names escaped.
    assert!(html.contains("2 failed") && html.contains("41 passed") && html.contains("1 flaky"));
    assert!(html.contains("builder-&lt;b&gt;2&lt;/b&gt;"), "the job's own host, escaped");
    assert!(html.contains("parse::&lt;img src=x onerror=alert(1)&gt;"), "a test name is escaped");
    assert!(html.contains("assertion failed: &lt;script&gt;alert(2)&lt;/script&gt;"));
    assert!(!html.contains("<img src=x") && !html.contains("<script>alert"), "nothing hostile is live HTML");
    // Artifacts: regular files only, hostile names escaped and encoded in links.
    assert!(html.contains("&lt;img src=x onerror=alert(1)&gt;.txt"));
    assert!(html.contains("artifacts/%3Cimg%20src%3Dx%20onerror%3Dalert%281%29%3E.txt"));
    assert!(html.contains("junit/unit.xml") && html.contains("report.txt"));
    assert!(
        !html.contains("leak.txt") && !html.contains("inner.json") && !html.contains("up/"),
        "symlinks are not listed"
    );
    assert!(!html.contains("<body data-poll"), "a finished run does not poll");

    let running = get(server, &format!("/runs/{}", f.running)).text();
    assert!(running.contains("<body data-poll") && running.contains("badge s-running"));
    let interrupted = get(server, &format!("/runs/{}", f.interrupted)).text();
    assert!(interrupted.contains("the pikaci process running this run died"), "{interrupted}");
    let corrupt = get(server, &format!("/runs/{}", f.corrupt));
    assert_eq!(corrupt.status, 200);
    assert!(corrupt.text().contains("badge s-corrupt") && corrupt.text().contains("is corrupt"));
    assert!(
        corrupt.text().contains(&format!("/runs/{}/jobs/pass/logs/guest.log", f.corrupt)),
        "its logs stay reachable"
    );
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&#39;")
}

fn check_logs_and_artifacts(f: &Fixture, server: &Server) {
    let base = format!("/runs/{}/jobs/pass", f.mixed);
    let log = get(server, &format!("{base}/logs/guest.log")).text();
    assert!(log.contains("<span class=\"b f2\">green bold</span> plain <span class=\"f1\">red</span>"), "{log}");
    assert!(log.contains("cursormoves gone"), "control sequences are dropped: {log}");
    assert!(log.contains("&lt;script&gt;alert(&quot;log&quot;)&lt;/script&gt;"), "a log line is escaped");
    assert!(!log.contains("<script>alert"));
    let host_log = get(server, &format!("{base}/logs/host.log"));
    assert_eq!(host_log.status, 200);
    let raw = get(server, &format!("{base}/logs/guest.log/raw"));
    assert_eq!(raw.body, std::fs::read(f.run_dir(&f.mixed).join("jobs/pass/guest.log")).unwrap());
    assert_eq!(raw.header("Content-Type"), Some("text/plain; charset=utf-8"));

    let hostile = get(server, &format!("{base}/artifacts/%3Cimg%20src%3Dx%20onerror%3Dalert%281%29%3E.txt"));
    assert_eq!(hostile.status, 200);
    assert_eq!(hostile.text(), "hostile\n");
    let disposition = hostile.header("Content-Disposition").unwrap();
    assert!(disposition.starts_with("attachment; filename=\"_img"), "{disposition}");
    assert_eq!(hostile.header("Content-Type"), Some("application/octet-stream"));
    let nested = get(server, &format!("{base}/artifacts/junit/unit.xml"));
    assert_eq!((nested.status, nested.text().as_str()), (200, "<testsuite/>\n"));
}

fn check_traversal(f: &Fixture, server: &Server) {
    let run = &f.mixed;
    let attempts = [
        "/runs/..%2f..%2fetc/passwd".to_string(),
        "/runs/..%2f..%2f..%2f..%2f..%2fetc%2fpasswd".into(),
        "/runs/%2e%2e/%2e%2e/etc/passwd".into(),
        "/runs/../../../../etc/passwd".into(),
        "/api/runs/..%252f..%252fetc%252fpasswd".into(),
        "/runs/20991231-000000-000-beef".into(),
        "/api/runs/20991231-000000-000-beef".into(),
        format!("/runs/{run}%00"),
        format!("/runs/{run}/jobs/..%2f..%2f..%2f..%2fetc/logs/passwd.log"),
        format!("/runs/{run}/jobs/pass/logs/..%2f..%2fjob.json"),
        format!("/runs/{run}/jobs/pass/logs/..%2ffail%2fguest.log"),
        format!("/runs/{run}/jobs/pass/logs/job.json"),
        format!("/runs/{run}/jobs/pass/artifacts/..%2fjob.json"),
        format!("/runs/{run}/jobs/pass/artifacts/../job.json"),
        format!("/runs/{run}/jobs/pass/artifacts/%2fetc%2fpasswd"),
        format!("/runs/{run}/jobs/pass/artifacts/%00"),
        format!("/runs/{run}/jobs/pass/artifacts/leak.txt"),
        format!("/runs/{run}/jobs/pass/artifacts/inner.json"),
        format!("/runs/{run}/jobs/pass/artifacts/up/run.json"),
        format!("/runs/{run}/jobs/pass/artifacts/junit"),
        format!("/runs/{run}/jobs/pass/artifacts/%zz"),
    ];
    for path in &attempts {
        let r = get(server, path);
        assert!(matches!(r.status, 400 | 404), "{path} gave {}: {}", r.status, r.text());
        let body = r.text();
        assert!(!body.contains("root:x:0:0") && !body.contains("schema_version"), "{path} leaked: {body}");
    }
}

/// Read server-sent events until `until` returns true for the data so far.
fn read_events(server: &Server, path: &str, until: impl Fn(&str, bool) -> bool) -> (String, bool) {
    let mut s = TcpStream::connect(&server.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n").unwrap();
    let mut reader = BufReader::new(s);
    let mut status = String::new();
    reader.read_line(&mut status).unwrap();
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    let (mut data, mut ended, mut event) = (String::new(), false, String::new());
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap() == 0 {
            break;
        }
        let line = line.trim_end_matches('\n');
        if let Some(name) = line.strip_prefix("event: ") {
            event = name.to_string();
            ended |= event == "end";
        } else if let Some(d) = line.strip_prefix("data: ")
            && event == "line"
        {
            data.push_str(d);
            data.push('\n');
        }
        if until(&data, ended) {
            break;
        }
    }
    (data, ended)
}

#[test]
fn a_running_log_is_followed_live_and_a_large_log_is_paged() {
    require_nix();
    require_bwrap();
    let dir = copy_fixture(&fixture_path("web"));
    let mut ticker = start_ticker(dir.path(), 2);
    let run = run_ids(dir.path()).pop().unwrap();
    let server = serve(&dir.path().join(".pikaci"));
    let page = get(&server, &format!("/runs/{run}/jobs/ticker/logs/guest.log")).text();
    let follow = page.split("data-follow=\"").nth(1).expect("a running job's log page follows it").split('"').next();
    let follow = follow.unwrap().replace("&amp;", "&");
    assert!(follow.starts_with(&format!("/runs/{run}/jobs/ticker/logs/guest.log/events?offset=")), "{follow}");
    let shown = page.matches("tick ").count();
    // New lines arrive as events, each line once and in order, after the ones shown.
    let (data, _) = read_events(&server, &follow, |d, _| d.contains(&format!("tick {}\n", shown + 5)));
    let ticks: Vec<u32> = data.lines().filter_map(|l| l.strip_prefix("tick ")?.parse().ok()).collect();
    assert_eq!(ticks.first(), Some(&(shown as u32 + 1)), "{data}");
    assert!(ticks.windows(2).all(|w| w[1] == w[0] + 1), "{data}");
    // Once the run ends, the stream ends with an `end` event.
    ticker.kill().unwrap();
    ticker.wait().unwrap();
    let (_, ended) = read_events(&server, &follow, |_, ended| ended);
    assert!(ended, "the stream says when the job is over");

    // A log of several pages: the pages tile the file, and each is small.
    let log = dir.path().join(format!(".pikaci/runs/{run}/jobs/ticker/guest.log"));
    let mut big = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    for i in 0..60_000 {
        writeln!(big, "line {i:06} \x1b[32mgreen\x1b[0m <b>not bold</b>").unwrap();
    }
    drop(big);
    let len = std::fs::metadata(&log).unwrap().len();
    let base = format!("/runs/{run}/jobs/ticker/logs/guest.log");
    let last = get(&server, &base).text();
    assert!(last.len() < 600 * 1024, "one page is bounded: {} bytes", last.len());
    assert!(last.contains("line 059999") && !last.contains("line 000000"));
    assert!(last.contains("&lt;b&gt;not bold&lt;/b&gt;"));
    let (mut offset, mut covered, mut pages) = (0u64, 0u64, 0);
    loop {
        let html = get(&server, &format!("{base}?offset={offset}")).text();
        let range = html.split("bytes ").nth(1).unwrap().split(" of ").next().unwrap().to_string();
        let (a, b) = range.split_once('–').unwrap();
        let (a, b): (u64, u64) = (a.parse().unwrap(), b.parse().unwrap());
        assert_eq!(a, covered, "page at {offset} starts where the last ended");
        covered = b;
        pages += 1;
        match html
            .split("?offset=")
            .skip(1)
            .filter_map(|s| s.split('"').next())
            .find(|s| s.parse::<u64>().unwrap() > offset)
        {
            Some(next) if html.contains("later →") => offset = next.parse().unwrap(),
            _ => break,
        }
    }
    assert_eq!(covered, len, "the pages cover the whole log");
    assert!(pages >= 8, "{pages} pages");
}

#[test]
fn listen_takes_an_address_and_port_and_sigterm_stops_the_server() {
    let out = pikaci().args(["serve", "--listen", "localhost"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("ADDR:PORT"));

    let dir = tempfile::tempdir().unwrap();
    let mut server = serve(&dir.path().join(".pikaci"));
    let page = get(&server, "/");
    assert_eq!(page.status, 200, "an empty state root is a page too");
    assert!(page.text().contains("No runs yet"), "{}", page.text());
    assert_eq!(get(&server, "/api/runs").text(), "[]\n");
    let term = Command::new("kill").args(["-TERM", &server.child.id().to_string()]).status().unwrap();
    assert!(term.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "`pikaci serve` did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(0));
}

/// Headless Chromium with a fresh profile; `args` add the action (`--dump-dom`, ...).
fn chromium(profile: &Path, args: &[String]) -> String {
    let Some(bin) = which("chromium") else {
        panic!(
            "`chromium` is required by the browser test and is not on PATH: run `scripts/bootstrap` \
             (it installs Debian's `chromium` unless PIKACI_BOOTSTRAP_BROWSER=0), or `apt-get install chromium`"
        );
    };
    let out = Command::new(bin)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        .args(["--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars"])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .output()
        .expect("run chromium");
    assert!(out.status.success(), "chromium failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn max_tick(html: &str) -> u32 {
    html.split("tick ")
        .skip(1)
        .filter_map(|s| s.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
        .max()
        .unwrap_or(0)
}

#[test]
fn a_browser_renders_the_runs_page_a_run_page_and_a_live_log() {
    if which("chromium").is_none() {
        chromium(Path::new("/nonexistent"), &[]);
    }
    let f = fixture();
    add_hostile_tests(&f.run_dir(&f.mixed).join("jobs/pass/job.json"));
    let server = serve(&f.state());
    let url = |path: &str| format!("http://{}{path}", server.addr);
    let profile = tempfile::tempdir().unwrap();
    let shots = repo_root().join("target/test-artifacts/serve");
    std::fs::create_dir_all(&shots).unwrap();

    // The runs page: one row per run, each with its status, and nothing hostile is live.
    let dom = chromium(profile.path(), &["--dump-dom".into(), url("/")]);
    assert_eq!(dom.matches("data-run=").count(), 5, "{dom}");
    for status in ["failed", "passed", "interrupted", "corrupt", "running"] {
        assert!(dom.contains(&format!("badge s-{status}")), "{status}: {dom}");
    }
    // The run page: jobs, test failures and artifacts as text, never as elements.
    let run = url(&format!("/runs/{}", f.mixed));
    let dom = chromium(profile.path(), &["--dump-dom".into(), run.clone()]);
    for job in ["pass", "fail", "slow"] {
        assert!(dom.contains(&format!("id=\"job-{job}\"")), "{job}");
    }
    assert!(dom.contains("parse::&lt;img src=x onerror=alert(1)&gt;"), "{dom}");
    assert!(!dom.contains("<img") && !dom.contains("<script>alert"), "{dom}");
    assert_eq!(dom.matches("<script>").count(), 1, "only the page's own script");

    // A running job's log grows in the browser without a reload (server-sent events).
    let log = url(&format!("/runs/{}/jobs/ticker/logs/guest.log", f.running));
    let served = max_tick(&get(&server, &format!("/runs/{}/jobs/ticker/logs/guest.log", f.running)).text());
    let dom = chromium(profile.path(), &["--timeout=4000".into(), "--dump-dom".into(), log.clone()]);
    assert!(max_tick(&dom) > served + 2, "the log grew live: {} then {}", served, max_tick(&dom));

    for (name, address) in
        [("runs", url("/")), ("run", run), ("log", url(&format!("/runs/{}/jobs/pass/logs/guest.log", f.mixed)))]
    {
        let file = shots.join(format!("{name}.png"));
        let _ = std::fs::remove_file(&file);
        chromium(
            profile.path(),
            &[format!("--screenshot={}", file.display()), "--window-size=1400,1000".into(), address],
        );
        let png = std::fs::read(&file).unwrap_or_else(|e| panic!("no screenshot {}: {e}", file.display()));
        assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "{}", file.display());
    }

    // The runs page updates itself: the running run dies while the page is open, and the
    // page shows it interrupted (and stops polling) without a reload.
    let mut f = f;
    let mut running = f.running_child.take().unwrap();
    let profile = profile.path().to_path_buf();
    let runs_url = url("/");
    let browser = std::thread::spawn(move || {
        chromium(&profile, &["--virtual-time-budget=600000".into(), "--dump-dom".into(), runs_url])
    });
    // Once the browser has the page (the server logs each request), the run dies. The page
    // polls every two seconds of (virtual) time, each poll a real request, until nothing on
    // it runs; the browser dumps the page when polling stops or the budget is spent.
    let requests_of_root = || std::fs::read_to_string(&server.stderr).unwrap().matches("GET / 200").count();
    let before = requests_of_root();
    let deadline = Instant::now() + Duration::from_secs(30);
    while requests_of_root() == before {
        assert!(Instant::now() < deadline, "the browser never asked for the page");
        std::thread::sleep(Duration::from_millis(20));
    }
    running.kill().unwrap();
    running.wait().unwrap();
    let dom = browser.join().unwrap();
    assert!(requests_of_root() >= before + 2, "the page asked again");
    let row = row_of(&dom, &f.running);
    assert!(row.contains("badge s-interrupted"), "the page caught up: {row}");
    assert!(!dom.contains("<body data-poll"), "and stopped polling");
}
