//! Reporters: how a run's events and guest output reach the user. `human` (progress and
//! guest output on stdout), `jsonl` (one event per line on stdout, guest output on
//! stderr), `json` (the run record at the end; guest output on stderr).

use std::io::{IsTerminal, Write};
use std::sync::Mutex;

use crate::executor::{LineBatch, OutputSink};
use crate::run::Reporter;
use crate::state::events::{self, Event};
use crate::state::recorder::EventSink;
use crate::state::{JobStatus, RunStatus};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    Human,
    Json,
    Jsonl,
}

pub fn reporter(format: OutputFormat) -> std::sync::Arc<dyn Reporter> {
    match format {
        OutputFormat::Human => std::sync::Arc::new(Human::new()),
        OutputFormat::Json => std::sync::Arc::new(Quiet),
        OutputFormat::Jsonl => std::sync::Arc::new(Jsonl { lock: Mutex::new(()) }),
    }
}

/// Guest output on stderr, prefixed with the job, for the machine-readable formats: one
/// batch of lines, one write.
fn guest_lines_to_stderr(job_id: &str, lines: &LineBatch) {
    let prefix = format!("[{job_id}] ");
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, std::io::stderr().lock());
    for line in lines.iter() {
        let _ = out.write_all(prefix.as_bytes());
        let _ = super::terminal::write_neutralized(&mut out, line);
        let _ = out.write_all(b"\n");
    }
    let _ = out.flush();
}

struct Quiet;

impl OutputSink for Quiet {
    fn guest_lines(&self, job_id: &str, lines: &LineBatch) {
        guest_lines_to_stderr(job_id, lines);
    }
}
impl EventSink for Quiet {
    fn event(&self, _: &Event) {}
}

struct Jsonl {
    lock: Mutex<()>,
}

impl OutputSink for Jsonl {
    fn guest_lines(&self, job_id: &str, lines: &LineBatch) {
        guest_lines_to_stderr(job_id, lines);
    }
}
impl EventSink for Jsonl {
    fn event(&self, event: &Event) {
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{}", events::to_line(event));
        let _ = out.flush();
    }
}

struct Human {
    color: bool,
    /// Guest lines are buffered and flushed once per batch (what one read of the guest's
    /// output gave; not one write per line: 100 MB of short lines are millions of lines);
    /// events flush at once.
    out: Mutex<std::io::BufWriter<std::io::Stdout>>,
    /// Every job's test results so far, for the summary.
    tests: Mutex<TestTally>,
    /// Payload builds drawn in place, when stdout is a terminal.
    live: Option<super::progress::LiveBuilds>,
}

/// Tests counted across the jobs of a run, with the names the summary shows.
#[derive(Default)]
struct TestTally {
    jobs: usize,
    /// Per lane with several jobs (shards): its jobs and their sums.
    lanes: std::collections::BTreeMap<String, TestTally>,
    passed: u64,
    failed: u64,
    skipped: u64,
    flaky: u64,
    failed_tests: Vec<String>,
    flaky_tests: Vec<String>,
}

/// How many test names a summary lists before "and N more".
const NAMES_SHOWN: usize = 10;

/// `a, b, c and 7 more`, of at most [`NAMES_SHOWN`] names out of `total`.
fn some_names(names: &[String], total: u64) -> String {
    let shown: Vec<&str> = names.iter().take(NAMES_SHOWN).map(String::as_str).collect();
    let rest = total.saturating_sub(shown.len() as u64);
    if rest == 0 { shown.join(", ") } else { format!("{} and {rest} more", shown.join(", ")) }
}

impl TestTally {
    fn line(&self) -> String {
        let mut parts = vec![format!("{} passed", self.passed)];
        if self.failed > 0 {
            parts.insert(0, format!("{} failed", self.failed));
        }
        if self.skipped > 0 {
            parts.push(format!("{} skipped", self.skipped));
        }
        if self.flaky > 0 {
            parts.push(format!("{} flaky", self.flaky));
        }
        parts.join(", ")
    }
}

impl Human {
    fn new() -> Human {
        let color = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
        Human {
            color,
            out: Mutex::new(std::io::BufWriter::with_capacity(64 * 1024, std::io::stdout())),
            tests: Mutex::new(TestTally::default()),
            live: std::io::stdout().is_terminal().then(super::progress::LiveBuilds::new),
        }
    }

    fn paint(&self, code: &str, text: &str) -> String {
        if self.color { format!("\x1b[{code}m{text}\x1b[0m") } else { text.to_string() }
    }

    /// A job's `test_results`: its counts and failed tests, added to the run's tally.
    fn job_tests(&self, event: &Event) {
        let Event::TestResults { job_id, lane, passed, failed, skipped, flaky, failed_tests, flaky_tests, .. } = event
        else {
            return;
        };
        let mut tally = self.tests.lock().unwrap_or_else(|p| p.into_inner());
        let job = TestTally {
            jobs: 1,
            passed: *passed,
            failed: *failed,
            skipped: *skipped,
            flaky: *flaky,
            failed_tests: failed_tests.clone(),
            flaky_tests: flaky_tests.clone(),
            ..TestTally::default()
        };
        let mut line = format!("{} {job_id}: {}", self.paint("2", "   TESTS"), job.line());
        if *failed > 0 {
            line.push_str(&format!("\n         failed: {}", some_names(failed_tests, *failed)));
        }
        if *flaky > 0 {
            line.push_str(&format!("\n         flaky: {}", some_names(flaky_tests, *flaky)));
        }
        let per_lane = tally.lanes.entry(lane.clone()).or_default();
        per_lane.jobs += 1;
        per_lane.passed += passed;
        per_lane.failed += failed;
        per_lane.skipped += skipped;
        per_lane.flaky += flaky;
        tally.jobs += 1;
        tally.passed += passed;
        tally.failed += failed;
        tally.skipped += skipped;
        tally.flaky += flaky;
        tally.failed_tests.extend(failed_tests.iter().cloned());
        tally.flaky_tests.extend(flaky_tests.iter().cloned());
        drop(tally);
        self.say(&line);
    }

    /// The tests of the whole run, before its summary line.
    fn tests_summary(&self) {
        let tally = self.tests.lock().unwrap_or_else(|p| p.into_inner());
        if tally.jobs > 0 {
            let mut line = String::new();
            // A lane of several jobs (shards): its jobs' tests added back up.
            for (lane, sums) in tally.lanes.iter().filter(|(_, t)| t.jobs > 1) {
                line.push_str(&format!(
                    "{} {lane} ({} jobs): {}\n",
                    self.paint("2", "   TESTS"),
                    sums.jobs,
                    sums.line()
                ));
            }
            line.push_str(&format!("{} {}", self.paint("1", "tests"), tally.line()));
            if tally.failed > 0 {
                line.push_str(&format!("\n         failed: {}", some_names(&tally.failed_tests, tally.failed)));
            }
            if tally.flaky > 0 {
                line.push_str(&format!("\n         flaky: {}", some_names(&tally.flaky_tests, tally.flaky)));
            }
            self.say(&line);
        }
    }

    fn say(&self, line: &str) {
        self.clear_of_builds(|| {
            let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
        });
    }

    /// Run `print` with the payload builds drawn on the terminal out of its way. The
    /// display's lock is taken before `out`'s, never the other way round.
    fn clear_of_builds(&self, print: impl FnOnce()) {
        match &self.live {
            Some(live) => live.print(print),
            None => print(),
        }
    }

    /// A `payload_build_*` event: drawn in place on a terminal, else a plain line.
    fn payload_build(&self, event: &Event) {
        let line = match &self.live {
            Some(live) => live.event(event),
            None => super::progress::plain_line(event),
        };
        if let Some(line) = line {
            self.say(&self.paint("2", &line));
        }
    }
}

pub fn seconds(ms: u64) -> String {
    format!("{:.2}s", ms as f64 / 1000.0)
}

impl OutputSink for Human {
    /// One lock and one pass for the batch: the prefix made once, each line made visible
    /// straight into the buffer, the buffer flushed at the end (a write per 64 KiB).
    fn guest_lines(&self, job_id: &str, lines: &LineBatch) {
        let prefix = format!("{} ", self.paint("2", &format!("[{job_id}]")));
        // With payload builds drawn on the terminal, the whole batch is written while
        // they are out of its way (the display's lock before `out`'s).
        self.clear_of_builds(|| {
            let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
            for line in lines.iter() {
                let _ = out.write_all(prefix.as_bytes());
                let _ = super::terminal::write_neutralized(&mut *out, line);
                let _ = out.write_all(b"\n");
            }
            let _ = out.flush();
        });
    }
}

impl EventSink for Human {
    fn event(&self, event: &Event) {
        match event {
            Event::RunStarted { run_id, runtime, snapshot, jobs, rerun_of, flake, eval_ms, .. } => {
                let rerun = rerun_of.as_deref().map(|r| format!(", rerun of {r}")).unwrap_or_default();
                let eval = eval_ms.map(|ms| format!(", evaluated in {}", seconds(ms))).unwrap_or_default();
                self.say(&format!(
                    "{} {run_id}: {} job{} of `{flake}` on {runtime}, snapshot {}{eval}{rerun}",
                    self.paint("1", "run"),
                    jobs.len(),
                    if jobs.len() == 1 { "" } else { "s" },
                    &snapshot[..snapshot.len().min(12)],
                ));
            }
            Event::JobStarted { job_id, .. } => self.say(&format!("{} {job_id}", self.paint("36", "   START"))),
            Event::PayloadRealized { job_id, payload, store_path, duration_ms, built_by, waited_ms, .. } => {
                let shared = match (built_by, waited_ms) {
                    (Some(job), Some(ms)) => format!("; built by job `{job}`, waited {}", seconds(*ms)),
                    (Some(job), None) => format!("; built by job `{job}`"),
                    (None, Some(ms)) => format!("; waited {} for another build of it", seconds(*ms)),
                    (None, None) => String::new(),
                };
                self.say(&format!(
                    "{} {job_id} {payload} {store_path} ({}{shared})",
                    self.paint("2", " PAYLOAD"),
                    seconds(*duration_ms)
                ))
            }
            Event::PayloadBuildStarted { .. }
            | Event::PayloadBuildProgress { .. }
            | Event::PayloadBuildFinished { .. } => self.payload_build(event),
            Event::JobFinished { job_id, status, duration_ms, message, run_id, .. } => {
                let (label, code) = match status {
                    JobStatus::Passed => ("    PASS", "32"),
                    JobStatus::Failed => ("    FAIL", "31"),
                    JobStatus::TimedOut => (" TIMEOUT", "31"),
                    JobStatus::Skipped => ("    SKIP", "33"),
                    JobStatus::Interrupted => ("   INTER", "33"),
                    _ => ("   ERROR", "31"),
                };
                let took = duration_ms.map(|d| format!(" ({})", seconds(d))).unwrap_or_default();
                let why = message.as_deref().map(|m| format!(": {}", first_line(m))).unwrap_or_default();
                let mut line = format!("{} {job_id}{took}{why}", self.paint(code, label));
                if matches!(status, JobStatus::Failed | JobStatus::TimedOut | JobStatus::Error) {
                    for l in message.as_deref().unwrap_or_default().lines().skip(1) {
                        line.push_str(&format!("\n         {l}"));
                    }
                    line.push_str(&format!("\n         logs: `pikaci logs {run_id} --job {job_id}`"));
                }
                self.say(&line);
            }
            Event::TestResults { .. } => self.job_tests(event),
            Event::RunFinished { run_id, status, duration_ms, counts, .. } => {
                self.tests_summary();
                let parts: Vec<String> = counts.iter().map(|(k, v)| format!("{v} {k}")).collect();
                let code = if *status == RunStatus::Passed { "32" } else { "31" };
                self.say(&format!(
                    "{} {}: {} in {} (run {run_id})",
                    self.paint("1", "summary"),
                    self.paint(code, status.as_str()),
                    parts.join(", "),
                    seconds(*duration_ms)
                ));
            }
        }
    }
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or("")
}
