//! URL -> reply. Each path segment is percent-decoded on its own (so an encoded `/` stays
//! inside its segment and is then refused by the name rules in `paths`).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};

use serde_json::Value;
use tiny_http::{Request, Response};

use super::pages::{self, JobView, LogPage, RunView};
use super::paths::{self, percent_decode};
use super::{header, stream};
use crate::state::query as inspect;
use crate::state::{JobRecord, StateRoot};

/// How many runs one page of the runs list shows.
pub const RUNS_PER_PAGE: usize = 100;

/// What a request gets back.
pub enum Reply {
    Html(u16, String),
    /// JSON text, serialized as `pikaci list --json` / `status --json` print it.
    Json(u16, String),
    Text(u16, String),
    /// A file streamed from an open handle: a log or an artifact.
    File {
        file: File,
        len: u64,
        content_type: &'static str,
        disposition: String,
    },
    /// Server-sent events with what a log gains.
    Follow {
        run_id: String,
        job_id: String,
        file: File,
        offset: u64,
    },
}

impl Reply {
    pub fn status(&self) -> u16 {
        match self {
            Reply::Html(code, _) | Reply::Json(code, _) | Reply::Text(code, _) => *code,
            Reply::File { .. } | Reply::Follow { .. } => 200,
        }
    }
}

fn json_reply<T: serde::Serialize>(code: u16, value: T) -> Reply {
    match serde_json::to_string_pretty(&value) {
        Ok(text) => Reply::Json(code, text + "\n"),
        Err(e) => Reply::Json(500, format!("{{\"error\": {:?}}}\n", e.to_string())),
    }
}

fn not_found(what: &str) -> Reply {
    Reply::Html(404, pages::message("Not found", &format!("{what} was not found in this state root.")))
}

fn query_u64(query: &str, key: &str) -> Option<u64> {
    query.split('&').filter_map(|kv| kv.split_once('=')).find(|(k, _)| *k == key).and_then(|(_, v)| v.parse().ok())
}

pub fn route(state: &StateRoot, url: &str, wants_json: bool) -> Reply {
    let (path, query) = url.split_once('?').unwrap_or((url, ""));
    let raw: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let Some(mut segs) = raw.iter().map(|s| percent_decode(s)).collect::<Option<Vec<String>>>() else {
        return Reply::Text(400, "bad percent-encoding in the URL\n".into());
    };
    if segs.last().is_some_and(String::is_empty) {
        segs.pop();
    }
    let api = segs.first().is_some_and(|s| s == "api");
    if api {
        segs.remove(0);
    }
    let json = api || wants_json;
    let s: Vec<&str> = segs.iter().map(String::as_str).collect();
    match s.as_slice() {
        [] if !api => runs_page(state, query_u64(query, "page").unwrap_or(0) as usize, json),
        ["runs"] => runs_page(state, 0, json),
        ["runs", run] => run_page(state, run, json),
        ["runs", run, "jobs", job] => job_json(state, run, job),
        ["runs", run, "jobs", job, "logs", name] if !api => log_page(state, run, job, name, query),
        ["runs", run, "jobs", job, "logs", name, "raw"] if !api => raw_log(state, run, job, name),
        ["runs", run, "jobs", job, "logs", name, "events"] if !api => follow(state, run, job, name, query),
        ["runs", run, "jobs", job, "artifacts", rest @ ..] if !api && !rest.is_empty() => {
            artifact(state, run, job, rest)
        }
        _ => not_found("This page"),
    }
}

fn runs_page(state: &StateRoot, page: usize, json: bool) -> Reply {
    if json {
        return match inspect::list_runs(state) {
            Ok(listed) => json_reply(200, listed.iter().map(inspect::Listed::to_json).collect::<Vec<Value>>()),
            Err(e) => json_reply(500, serde_json::json!({ "error": crate::error::render(&e) })),
        };
    }
    let mut ids = match state.run_ids() {
        Ok(ids) => ids,
        Err(e) => return Reply::Html(500, pages::message("Cannot read the state root", &crate::error::render(&e))),
    };
    ids.reverse();
    let total = ids.len();
    let shown: Vec<inspect::Listed> = ids
        .into_iter()
        .skip(page * RUNS_PER_PAGE)
        .take(RUNS_PER_PAGE)
        .map(|id| inspect::read_listed(state, id))
        .collect();
    Reply::Html(200, pages::runs(&state.root.display().to_string(), &shown, page, total))
}

fn run_page(state: &StateRoot, run_id: &str, json: bool) -> Reply {
    if paths::run_dir(state, run_id).is_none() {
        return if json {
            json_reply(404, serde_json::json!({ "error": "no such run" }))
        } else {
            not_found("The run")
        };
    }
    let record = match inspect::status_record(state, run_id) {
        Ok(r) => r,
        Err(e) => {
            let why = crate::error::render(&e);
            return if json {
                json_reply(200, serde_json::json!({ "run_id": run_id, "status": "corrupt", "error": why }))
            } else {
                Reply::Html(200, pages::corrupt_run(run_id, &why, &job_dirs(state, run_id)))
            };
        }
    };
    if json {
        return match inspect::status_json(state, &record) {
            Ok(value) => json_reply(200, value),
            Err(e) => json_reply(500, serde_json::json!({ "error": crate::error::render(&e) })),
        };
    }
    let jobs = record.plan.iter().map(|p| job_view(state, run_id, &p.job_id)).collect();
    Reply::Html(200, pages::run(&RunView { record: &record, jobs }))
}

/// The job directories of a run whose record cannot be read, so their logs stay reachable.
fn job_dirs(state: &StateRoot, run_id: &str) -> Vec<(String, Vec<(String, u64)>)> {
    let Ok(entries) = std::fs::read_dir(state.run_dir(run_id).join("jobs")) else { return Vec::new() };
    let mut jobs: Vec<_> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter(|j| paths::job_dir(state, run_id, j).is_some())
        .map(|j| {
            let logs = log_files(&state.job_dir(run_id, &j));
            (j, logs)
        })
        .collect();
    jobs.sort();
    jobs
}

fn log_files(job_dir: &std::path::Path) -> Vec<(String, u64)> {
    paths::regular_files(job_dir).into_iter().filter(|(n, _)| n.ends_with(".log")).collect()
}

fn job_view(state: &StateRoot, run_id: &str, job_id: &str) -> JobView {
    let Some(dir) = paths::job_dir(state, run_id, job_id) else {
        return JobView { job_id: job_id.to_string(), ..JobView::default() };
    };
    let (record, error) = match JobRecord::read(&dir) {
        Ok(r) => (Some(r), None),
        Err(e) => (None, Some(crate::error::render(&e))),
    };
    JobView {
        job_id: job_id.to_string(),
        record,
        error,
        logs: log_files(&dir),
        artifacts: paths::walk_files(&dir.join("artifacts"), 1000),
    }
}

fn job_json(state: &StateRoot, run_id: &str, job_id: &str) -> Reply {
    let Some(dir) = paths::job_dir(state, run_id, job_id) else {
        return json_reply(404, serde_json::json!({ "error": "no such job" }));
    };
    // The record as written, byte for byte (with any fields this version does not know,
    // such as `tests`), once it is known to be JSON.
    match std::fs::read(JobRecord::path(&dir)) {
        Ok(bytes) => match serde_json::from_slice::<Value>(&bytes) {
            Ok(_) => Reply::Json(200, String::from_utf8_lossy(&bytes).into_owned()),
            Err(e) => {
                json_reply(200, serde_json::json!({ "job_id": job_id, "status": "corrupt", "error": e.to_string() }))
            }
        },
        Err(e) => json_reply(404, serde_json::json!({ "job_id": job_id, "error": e.to_string() })),
    }
}

/// A log file of a job: a `*.log` regular file directly in the job directory.
fn open_log(state: &StateRoot, run_id: &str, job_id: &str, name: &str) -> Option<(File, u64)> {
    if !name.ends_with(".log") {
        return None;
    }
    let dir = paths::job_dir(state, run_id, job_id)?;
    let (file, meta, _) = paths::open_below(state, &dir, &[name.to_string()])?;
    Some((file, meta.len()))
}

/// One page of a log: the bytes from `offset` (or the last page), cut at line ends.
fn log_page(state: &StateRoot, run_id: &str, job_id: &str, name: &str, query: &str) -> Reply {
    let Some((mut file, len)) = open_log(state, run_id, job_id, name) else { return not_found("The log") };
    let page = pages::LOG_PAGE_BYTES;
    let nominal = query_u64(query, "offset").unwrap_or(len.saturating_sub(page)).min(len);
    let start = snap_to_line(&mut file, nominal, len);
    let end = snap_to_line(&mut file, nominal.saturating_add(page), len);
    let mut bytes = Vec::new();
    if file.seek(SeekFrom::Start(start)).is_err()
        || (&mut file).take(end.saturating_sub(start)).read_to_end(&mut bytes).is_err()
    {
        return Reply::Html(500, pages::message("Cannot read the log", name));
    }
    let live = end >= len && job_is_running(state, run_id, job_id);
    let view = LogPage { run_id, job_id, name, len, start, end, nominal, html: super::ansi::to_html(&bytes), live };
    Reply::Html(200, pages::log(&view))
}

/// The first line start at or after `pos` (searching at most 64 KiB), or `pos`.
fn snap_to_line(file: &mut File, pos: u64, len: u64) -> u64 {
    if pos == 0 || pos >= len {
        return pos.min(len);
    }
    let mut buf = vec![0u8; 64 * 1024 + 1];
    if file.seek(SeekFrom::Start(pos - 1)).is_err() {
        return pos;
    }
    let n = file.read(&mut buf).unwrap_or(0);
    match buf[..n].iter().position(|b| *b == b'\n') {
        Some(i) => pos - 1 + i as u64 + 1,
        None => pos,
    }
}

/// Whether the job may still write to its logs: the run is live and the job not final.
pub fn job_is_running(state: &StateRoot, run_id: &str, job_id: &str) -> bool {
    match inspect::status_record(state, run_id) {
        Ok(record) => record.job(job_id).is_some_and(|j| !j.status.is_final()),
        Err(_) => false,
    }
}

fn raw_log(state: &StateRoot, run_id: &str, job_id: &str, name: &str) -> Reply {
    let Some((file, len)) = open_log(state, run_id, job_id, name) else { return not_found("The log") };
    let disposition = format!("inline; filename=\"{}-{}\"", job_id, ascii_name(name));
    Reply::File { file, len, content_type: "text/plain; charset=utf-8", disposition }
}

fn follow(state: &StateRoot, run_id: &str, job_id: &str, name: &str, query: &str) -> Reply {
    let Some((file, len)) = open_log(state, run_id, job_id, name) else { return not_found("The log") };
    let offset = query_u64(query, "offset").unwrap_or(len).min(len);
    Reply::Follow { run_id: run_id.into(), job_id: job_id.into(), file, offset }
}

fn artifact(state: &StateRoot, run_id: &str, job_id: &str, parts: &[&str]) -> Reply {
    let Some(dir) = paths::job_dir(state, run_id, job_id) else { return not_found("The job") };
    let base = dir.join("artifacts");
    let parts: Vec<String> = parts.iter().map(|p| p.to_string()).collect();
    let Some((file, meta, _)) = paths::open_below(state, &base, &parts) else { return not_found("The artifact") };
    let name = parts.last().map(String::as_str).unwrap_or("artifact");
    let disposition =
        format!("attachment; filename=\"{}\"; filename*=UTF-8''{}", ascii_name(name), paths::percent_encode(name));
    Reply::File { file, len: meta.len(), content_type: "application/octet-stream", disposition }
}

/// A file name safe inside a quoted header value: ASCII letters, digits, `.`, `-`, `_`.
fn ascii_name(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') { c } else { '_' }).collect()
}

/// Security headers for every reply: nothing is loaded from elsewhere, and the inline
/// script and style are allowed by their hashes only.
fn secure<R: Read>(r: Response<R>) -> Response<R> {
    r.with_header(header("X-Content-Type-Options", "nosniff"))
        .with_header(header("Content-Security-Policy", &pages::content_security_policy()))
        .with_header(header("Referrer-Policy", "no-referrer"))
        .with_header(header("Cache-Control", "no-store"))
}

pub fn send(state: &StateRoot, request: Request, reply: Reply) {
    let html = "text/html; charset=utf-8";
    let _ = match reply {
        Reply::Html(code, body) => request.respond(secure(
            Response::from_string(body).with_status_code(code).with_header(header("Content-Type", html)),
        )),
        Reply::Json(code, body) => {
            let r = Response::from_string(body).with_status_code(code);
            request.respond(secure(r.with_header(header("Content-Type", "application/json"))))
        }
        Reply::Text(code, body) => request.respond(secure(Response::from_string(body).with_status_code(code))),
        Reply::File { file, len, content_type, disposition } => {
            let size = usize::try_from(len).unwrap_or(usize::MAX);
            let r = Response::new(200.into(), Vec::new(), file.take(len), Some(size), None)
                .with_header(header("Content-Type", content_type))
                .with_header(header("Content-Disposition", &disposition));
            request.respond(secure(r))
        }
        Reply::Follow { run_id, job_id, file, offset } => {
            if *request.method() == tiny_http::Method::Head {
                let r = Response::empty(200).with_header(header("Content-Type", "text/event-stream"));
                request.respond(secure(r))
            } else {
                stream::follow(state, request.into_writer(), &run_id, &job_id, file, offset);
                Ok(())
            }
        }
    };
}
