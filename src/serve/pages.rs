//! The HTML pages. maud escapes every value it is given; the only pre-escaped HTML is the
//! constant style and script below and the output of `ansi`, which escapes its text.

use std::collections::BTreeMap;

use maud::{DOCTYPE, Markup, PreEscaped, html};

use super::paths::percent_encode;
use crate::state::query::Listed;
use crate::state::record::TestsRecord;
use crate::state::{JobRecord, RunRecord};

/// How many bytes of a log one page shows.
pub const LOG_PAGE_BYTES: u64 = 256 * 1024;

const STYLE: &str = include_str!("page.css");
const SCRIPT: &str = include_str!("page.js");

/// Only the page's own inline style and script may run, and only same-origin requests.
pub fn content_security_policy() -> String {
    format!(
        "default-src 'none'; style-src 'sha256-{}'; script-src 'sha256-{}'; connect-src 'self'; img-src 'self'; \
         base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        sha256_base64(STYLE),
        sha256_base64(SCRIPT)
    )
}

fn sha256_base64(text: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(text.as_bytes());
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in digest.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// One job of a run page.
#[derive(Default)]
pub struct JobView {
    pub job_id: String,
    pub record: Option<JobRecord>,
    /// Why the job record could not be read.
    pub error: Option<String>,
    pub logs: Vec<(String, u64)>,
    pub artifacts: Vec<(Vec<String>, u64)>,
}

pub struct RunView<'a> {
    pub record: &'a RunRecord,
    pub jobs: Vec<JobView>,
}

pub struct LogPage<'a> {
    pub run_id: &'a str,
    pub job_id: &'a str,
    pub name: &'a str,
    pub len: u64,
    pub start: u64,
    pub end: u64,
    /// The offset the page was asked for (its neighbours are one page size away).
    pub nominal: u64,
    /// The log's bytes as HTML, from `ansi`.
    pub html: String,
    pub live: bool,
}

fn layout(title: &str, crumbs: Markup, body_attrs: (bool, Option<String>), content: Markup) -> String {
    let (poll, follow) = body_attrs;
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · pikaci" }
                style { (PreEscaped(STYLE)) }
            }
            body data-poll[poll] data-follow=[follow] {
                header.top {
                    a.brand href="/" { "pikaci" }
                    nav.crumbs { (crumbs) }
                }
                main { (content) }
                script { (PreEscaped(SCRIPT)) }
            }
        }
    }
    .into_string()
}

/// A page with a heading and one paragraph (errors, not found).
pub fn message(title: &str, text: &str) -> String {
    layout(title, html! {}, (false, None), html! { h1 { (title) } p.note { (text) } })
}

/// `1m 05s`, `4.2s`, `850ms`.
pub fn duration(ms: u64) -> String {
    match ms {
        0..1000 => format!("{ms}ms"),
        1000..60_000 => format!("{:.1}s", ms as f64 / 1000.0),
        60_000..3_600_000 => format!("{}m {:02}s", ms / 60_000, ms / 1000 % 60),
        _ => format!("{}h {:02}m", ms / 3_600_000, ms / 60_000 % 60),
    }
}

/// An RFC 3339 time as `2026-11-26 20:01:56 UTC`.
fn when(at: &str) -> String {
    match at.parse::<jiff::Timestamp>() {
        Ok(t) => t.strftime("%Y-%m-%d %H:%M:%S UTC").to_string(),
        Err(_) => at.to_string(),
    }
}

fn ms_between(from: &str, to: Option<&str>) -> Option<u64> {
    let from: jiff::Timestamp = from.parse().ok()?;
    let to: jiff::Timestamp = match to {
        Some(t) => t.parse().ok()?,
        None => jiff::Timestamp::now(),
    };
    u64::try_from(to.as_millisecond() - from.as_millisecond()).ok()
}

fn badge(status: &str) -> Markup {
    html! { span class={ "badge s-" (status) } { (status.replace('_', " ")) } }
}

fn counts(record: &RunRecord) -> Markup {
    let mut by: BTreeMap<&str, usize> = BTreeMap::new();
    for j in &record.jobs {
        *by.entry(j.status.as_str()).or_default() += 1;
    }
    html! {
        span.counts {
            @for (status, n) in &by { span class={ "count s-" (status) } { (n) " " (status.replace('_', " ")) } }
            @if by.is_empty() { span.muted { "no jobs" } }
        }
    }
}

fn host(record: &RunRecord) -> String {
    record.remote.clone().unwrap_or_else(|| "local".into())
}

fn run_link(id: &str) -> String {
    format!("/runs/{id}")
}

pub fn runs(root: &str, listed: &[Listed], page: usize, total: usize) -> String {
    let live = listed.iter().any(|l| matches!(l, Listed::Run(r) if r.status.as_str() == "running"));
    let pages = total.div_ceil(super::routes::RUNS_PER_PAGE).max(1);
    let content = html! {
        h1 { "Runs" }
        p.muted { (total) " runs in " code { (root) } }
        @if listed.is_empty() {
            p.empty { "No runs yet. Start one with " code { "pikaci run" } "." }
        } @else {
            table.runs {
                thead { tr { th { "Run" } th { "Status" } th { "Jobs" } th { "Flake" } th { "Started" } th { "Duration" } th { "Host" } th { "Runtime" } } }
                tbody {
                    @for l in listed { (run_row(l)) }
                }
            }
        }
        @if pages > 1 {
            nav.pager {
                @if page > 0 { a href={ "/?page=" (page - 1) } { "← newer" } }
                span.muted { "page " (page + 1) " of " (pages) }
                @if page + 1 < pages { a href={ "/?page=" (page + 1) } { "older →" } }
            }
        }
    };
    layout("Runs", html! {}, (live, None), content)
}

fn run_row(l: &Listed) -> Markup {
    match l {
        Listed::Corrupt { run_id, error } => html! {
            tr.corrupt data-run=(run_id) {
                td { a.mono href=(run_link(run_id)) { (run_id) } }
                td { (badge("corrupt")) }
                td colspan="6" { span.error { (error) } }
            }
        },
        Listed::Run(r) => {
            let took =
                r.duration_ms.or_else(|| ms_between(&r.created_at, None).filter(|_| r.status.as_str() == "running"));
            html! {
                tr data-run=(r.run_id) data-status=(r.status.as_str()) {
                    td {
                        a.mono href=(run_link(&r.run_id)) { (r.run_id) }
                        @if let Some(of) = &r.rerun_of { div.sub { "rerun of " a.mono href=(run_link(of)) { (of) } } }
                    }
                    td { (badge(r.status.as_str())) }
                    td { (counts(r)) }
                    td {
                        span.mono { (r.flake) }
                        @if let Some(rev) = &r.git_rev { " " span.mono.sub title=(rev) { "@" (&rev[..rev.len().min(12)]) } }
                        @if let Some(c) = &r.changed { div.sub { "changed since " code { (c.since) } } }
                    }
                    td { (when(&r.created_at)) }
                    td {
                        @if let Some(ms) = took { (duration(ms)) } @else { span.muted { "—" } }
                        @if r.status.as_str() == "running" { span.muted { " so far" } }
                    }
                    td { (host(r)) }
                    td { (r.runtime) }
                }
            }
        }
    }
}

pub fn run(view: &RunView) -> String {
    let r = view.record;
    let live = r.status.as_str() == "running";
    let crumbs = html! { span { "/" } a.mono href=(run_link(&r.run_id)) { (r.run_id) } };
    let content = html! {
        h1 { "Run " span.mono { (r.run_id) } " " (badge(r.status.as_str())) }
        @if let Some(m) = &r.message { p.note { (m) } }
        dl.facts {
            dt { "Jobs" } dd { (counts(r)) }
            dt { "Flake" } dd.mono { (r.flake) }
            @if let Some(rev) = &r.git_rev { dt { "Revision" } dd.mono { (rev) } }
            @if let Some(c) = &r.changed { dt { "Changed" } dd { (c.files.len()) " file(s) since " code { (c.since) } } }
            dt { "Started" } dd { (when(&r.created_at)) }
            @if let Some(f) = &r.finished_at { dt { "Finished" } dd { (when(f)) } }
            @if let Some(ms) = r.duration_ms { dt { "Duration" } dd { (duration(ms)) } }
            dt { "Host" } dd { (host(r)) }
            dt { "Runtime" } dd { (r.runtime) @if let Some(i) = &r.image { " (image " code { (i) } ")" } }
            dt { "Snapshot" } dd { code { (r.snapshot.id) } " · " (r.snapshot.files) " files" }
            @if let Some(n) = &r.nix_version { dt { "Nix" } dd { (n) } }
            dt { "pikaci" } dd { (r.pikaci_version) }
            @if let Some(of) = &r.rerun_of { dt { "Rerun of" } dd { a.mono href=(run_link(of)) { (of) } } }
        }
        h2 { "Jobs" }
        table.jobs {
            thead { tr { th { "Job" } th { "Status" } th { "Exit" } th { "Queued" } th { "Ran" } th { "Tests" } th { "Logs" } } }
            tbody { @for j in &view.jobs { (job_row(r, j)) } }
        }
        @for j in &view.jobs { (job_section(r, j)) }
    };
    layout(&format!("Run {}", r.run_id), crumbs, (live, None), content)
}

fn job_row(r: &RunRecord, j: &JobView) -> Markup {
    let summary = r.job(&j.job_id);
    let status = summary.map(|s| s.status.as_str()).unwrap_or("pending");
    let started = j.record.as_ref().and_then(|rec| rec.started_at.as_deref());
    let queued = started.and_then(|s| ms_between(&r.created_at, Some(s)));
    let ran = summary.and_then(|s| s.duration_ms).or_else(|| {
        started.and_then(|s| ms_between(s, None)).filter(|_| !summary.is_some_and(|s| s.status.is_final()))
    });
    html! {
        tr data-job=(j.job_id) data-status=(status) {
            td { a.mono href={ "#job-" (j.job_id) } { (j.job_id) } }
            td { (badge(status)) }
            td { @if let Some(c) = summary.and_then(|s| s.exit_code) { (c) } }
            td { @if let Some(q) = queued { (duration(q)) } }
            td { @if let Some(ms) = ran { (duration(ms)) } }
            td { @if let Some(t) = j.record.as_ref().and_then(|r| r.tests.as_ref()) { (test_counts(t)) } }
            td { @for (name, _) in &j.logs { a href=(log_link(&r.run_id, &j.job_id, name)) { (name) } " " } }
        }
    }
}

fn test_counts(t: &TestsRecord) -> Markup {
    html! {
        span.counts {
            @if t.failed > 0 { span.count.s-failed { (t.failed) " failed" } }
            span.count.s-passed { (t.passed) " passed" }
            @if t.flaky > 0 { span.count.s-timed_out { (t.flaky) " flaky" } }
            @if t.skipped > 0 { span.count.s-skipped { (t.skipped) " skipped" } }
        }
    }
}

fn log_link(run_id: &str, job_id: &str, name: &str) -> String {
    format!("/runs/{run_id}/jobs/{job_id}/logs/{}", percent_encode(name))
}

fn job_section(r: &RunRecord, j: &JobView) -> Markup {
    let summary = r.job(&j.job_id);
    let status = summary.map(|s| s.status.as_str()).unwrap_or("pending");
    html! {
        section.job id={ "job-" (j.job_id) } {
            h2 { span.mono { (j.job_id) } " " (badge(status)) }
            @if let Some(m) = summary.and_then(|s| s.message.as_deref()) { pre.message { (m) } }
            @if let Some(e) = &j.error { p.error { "job record unreadable: " (e) } }
            @if let Some(rec) = &j.record { (job_facts(r, rec, rec.host.as_deref())) }
            @if let Some(t) = j.record.as_ref().and_then(|r| r.tests.as_ref()) { (tests(t)) }
            @if !j.logs.is_empty() {
                h3 { "Logs" }
                ul.files { @for (name, size) in &j.logs {
                    li { a href=(log_link(&r.run_id, &j.job_id, name)) { (name) } " " span.muted { (bytes(*size)) } }
                } }
            }
            @if !j.artifacts.is_empty() {
                h3 { "Artifacts" }
                ul.files { @for (parts, size) in &j.artifacts {
                    li.artifact {
                        a href=(artifact_link(&r.run_id, &j.job_id, parts)) download { (parts.join("/")) }
                        " " span.muted { (bytes(*size)) }
                    }
                } }
            }
            @if let Some(rec) = &j.record && !rec.reproduce.is_empty() {
                h3 { "Reproduce" }
                pre.reproduce { @for line in &rec.reproduce { (line) "\n" } }
            }
        }
    }
}

fn job_facts(r: &RunRecord, rec: &JobRecord, job_host: Option<&str>) -> Markup {
    html! {
        dl.facts {
            @if !rec.lane.description.is_empty() { dt { "Lane" } dd { (rec.lane.id) " — " (rec.lane.description) } }
            dt { "Command" } dd { code { (rec.lane.command.join(" ")) } }
            dt { "Host" } dd { (job_host.map(str::to_string).unwrap_or_else(|| host(r))) }
            dt { "Runtime" } dd { (rec.runtime) @if let Some(i) = &rec.instance { " · instance " code { (i) } } }
            @if let Some(s) = &rec.started_at { dt { "Started" } dd { (when(s)) } }
            @if let Some(ms) = rec.duration_ms { dt { "Duration" } dd { (duration(ms)) } }
            @if let Some(c) = rec.exit_code { dt { "Exit code" } dd { (c) } }
            @for p in &rec.payloads {
                dt { "Payload " code { (p.name) } }
                dd { code.store { (p.mounted) } " " span.muted { "built in " (duration(p.duration_ms)) } }
            }
        }
    }
}

fn tests(t: &TestsRecord) -> Markup {
    html! {
        h3 { "Tests " (test_counts(t)) }
        @if !t.failures.is_empty() {
            ul.failures { @for f in &t.failures {
                li.failure {
                    details {
                        summary {
                            span.test-name { (f.name) }
                            @if !f.suite.is_empty() { " " span.muted { "in " (f.suite) } }
                            @if !f.message.is_empty() { div.test-message { (f.message) } }
                        }
                        @if !f.output.is_empty() { pre.log { (f.output) } }
                    }
                }
            } }
        }
    }
}

fn artifact_link(run_id: &str, job_id: &str, parts: &[String]) -> String {
    let path: Vec<String> = parts.iter().map(|p| percent_encode(p)).collect();
    format!("/runs/{run_id}/jobs/{job_id}/artifacts/{}", path.join("/"))
}

fn bytes(n: u64) -> String {
    match n {
        0..1024 => format!("{n} B"),
        1024..1_048_576 => format!("{:.1} KiB", n as f64 / 1024.0),
        _ => format!("{:.1} MiB", n as f64 / 1_048_576.0),
    }
}

/// A run whose `run.json` cannot be read: say why, and keep its job logs reachable.
pub fn corrupt_run(run_id: &str, why: &str, jobs: &[(String, Vec<(String, u64)>)]) -> String {
    let content = html! {
        h1 { "Run " span.mono { (run_id) } " " (badge("corrupt")) }
        p.error { (why) }
        @if !jobs.is_empty() {
            h2 { "Job logs" }
            ul.files { @for (job, logs) in jobs { @for (name, size) in logs {
                li { span.mono { (job) } " " a href=(log_link(run_id, job, name)) { (name) } " " span.muted { (bytes(*size)) } }
            } } }
        }
    };
    layout(&format!("Run {run_id}"), html! { span { "/" } span.mono { (run_id) } }, (false, None), content)
}

pub fn log(v: &LogPage) -> String {
    let base = log_link(v.run_id, v.job_id, v.name);
    let page = LOG_PAGE_BYTES;
    let follow = v.live.then(|| format!("{base}/events?offset={}", v.end));
    let crumbs = html! {
        span { "/" } a.mono href=(run_link(v.run_id)) { (v.run_id) }
        span { "/" } a.mono href={ (run_link(v.run_id)) "#job-" (v.job_id) } { (v.job_id) }
        span { "/" } span { (v.name) }
    };
    let content = html! {
        h1 { span.mono { (v.job_id) } " · " (v.name) }
        nav.pager {
            @if v.start > 0 {
                a href={ (base) "?offset=0" } { "first" }
                a href={ (base) "?offset=" (v.nominal.saturating_sub(page)) } { "← earlier" }
            }
            span.muted { "bytes " (v.start) "–" (v.end) " of " (v.len) " (" (bytes(v.len)) ")" }
            @if v.end < v.len {
                a href={ (base) "?offset=" (v.nominal + page) } { "later →" }
                a href=(base) { "last" }
            }
            a href={ (base) "/raw" } { "raw" }
            @if v.live { span.live #follow-state { "following live" } }
        }
        pre.log #log { (PreEscaped(&v.html)) }
    };
    layout(&format!("{} {}", v.job_id, v.name), crumbs, (false, follow), content)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_base64_sha256() {
        // sha256("") in base64, as a CSP source expects it.
        assert_eq!(sha256_base64(""), "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=");
        assert_eq!(sha256_base64("abc"), "ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0=");
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(duration(850), "850ms");
        assert_eq!(duration(4210), "4.2s");
        assert_eq!(duration(65_000), "1m 05s");
        assert_eq!(duration(3_720_000), "1h 02m");
    }

    #[test]
    fn messages_are_escaped() {
        let page = message("<b>x</b>", "<script>alert(1)</script>");
        assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"), "{page}");
        assert!(!page.contains("<script>alert"), "{page}");
    }
}
