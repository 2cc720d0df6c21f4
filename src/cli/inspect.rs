//! `lanes`, `list`, `status`, `logs`: reading the catalog and the state root.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};

use super::output::seconds;
use crate::catalog::Catalog;
use crate::error;
use crate::error::exit;
use crate::state::{JobStatus, RunRecord, RunStatus, StateRoot};

pub fn print_lanes(catalog: &Catalog, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(&catalog.lanes)?);
        return Ok(());
    }
    if catalog.lanes.is_empty() {
        println!("the flake declares no lanes");
        return Ok(());
    }
    let rows: Vec<[String; 5]> = catalog
        .lanes
        .iter()
        .map(|l| {
            [
                l.id.clone(),
                l.payloads.iter().map(|p| p.name.as_str()).collect::<Vec<_>>().join(", "),
                format!("{}s", l.timeout_secs),
                if l.paths.is_empty() { "(always)".into() } else { l.paths.join(", ") },
                l.description.clone(),
            ]
        })
        .collect();
    print_table(&["LANE", "PAYLOADS", "TIMEOUT", "PATHS", "DESCRIPTION"], &rows);
    Ok(())
}

fn print_table<const N: usize>(header: &[&str; N], rows: &[[String; N]]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == N {
                s.push_str(cell);
            } else {
                s.push_str(&format!("{cell:<w$}  "));
            }
        }
        println!("{}", s.trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

/// The status as it is now: a `running` record whose process is gone was interrupted.
pub fn effective(state: &StateRoot, mut record: RunRecord) -> RunRecord {
    if record.status == RunStatus::Running && !state.run_is_live(&record.run_id) {
        record.status = RunStatus::Interrupted;
        record.message.get_or_insert_with(|| "the pikaci process running this run died".to_string());
        for job in &mut record.jobs {
            if !job.status.is_final() {
                job.status = JobStatus::Interrupted;
            }
        }
    }
    record
}

fn job_counts(record: &RunRecord) -> String {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for j in &record.jobs {
        *counts.entry(j.status.as_str()).or_default() += 1;
    }
    if counts.is_empty() {
        return "no jobs".into();
    }
    counts.iter().map(|(k, v)| format!("{v} {k}")).collect::<Vec<_>>().join(", ")
}

/// One run as `list` shows it: its record as it is now, or why the record cannot be read.
pub enum Listed {
    Run(Box<RunRecord>),
    Corrupt { run_id: String, error: String },
}

impl Listed {
    /// The entry of `list --json` (and of the web page's `/api/runs`).
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Listed::Run(record) => serde_json::json!({
                "run_id": record.run_id,
                "status": record.status,
                "created_at": record.created_at,
                "duration_ms": record.duration_ms,
                "flake": record.flake,
                "runtime": record.runtime,
                "jobs": record.jobs,
            }),
            Listed::Corrupt { run_id, error } => {
                serde_json::json!({ "run_id": run_id, "status": "corrupt", "error": error })
            }
        }
    }
}

/// Every run, newest first, with its effective status. One bad record must not hide the
/// others: it is listed as corrupt, with the reason.
pub fn list_runs(state: &StateRoot) -> Result<Vec<Listed>> {
    let mut ids = state.run_ids()?;
    ids.reverse();
    Ok(ids.into_iter().map(|id| read_listed(state, id)).collect())
}

/// One run as `list` shows it.
pub fn read_listed(state: &StateRoot, id: String) -> Listed {
    match RunRecord::read(&state.run_dir(&id)) {
        Ok(record) => Listed::Run(Box::new(effective(state, record))),
        Err(e) => {
            let why = error::render(&e).lines().next().unwrap_or_default().trim_start_matches("error: ").to_string();
            Listed::Corrupt { run_id: id, error: why }
        }
    }
}

/// The record `status` shows: as written, with the liveness of its process applied.
pub fn status_record(state: &StateRoot, run_id: &str) -> Result<RunRecord> {
    Ok(effective(state, RunRecord::read(&state.run_dir(run_id))?))
}

pub fn list(state: &StateRoot, json: bool) -> Result<()> {
    let listed = list_runs(state)?;
    let entries: Vec<serde_json::Value> = listed.iter().map(Listed::to_json).collect();
    let rows: Vec<[String; 5]> = listed
        .iter()
        .map(|l| match l {
            Listed::Run(record) => [
                record.run_id.clone(),
                record.status.as_str().to_string(),
                job_counts(record),
                record.created_at.clone(),
                record.flake.clone(),
            ],
            Listed::Corrupt { run_id, error } => {
                [run_id.clone(), "corrupt".into(), String::new(), String::new(), error.clone()]
            }
        })
        .collect();
    if json {
        println!("{}", serde_json::to_string_pretty(&entries)?);
    } else if rows.is_empty() {
        println!("no runs in `{}`", state.root.display());
    } else {
        print_table(&["RUN", "STATUS", "JOBS", "CREATED", "FLAKE"], &rows);
    }
    Ok(())
}

/// Prints the run; the exit code says how it ended, as `run` would have.
pub fn status(state: &StateRoot, spec: &str, json: bool) -> Result<i32> {
    let run_id = state.find_run(spec)?;
    let record = status_record(state, &run_id)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&record)?);
    } else {
        println!("run {}: {}", record.run_id, record.status.as_str());
        println!("  flake     {}", record.flake);
        println!("  created   {}", record.created_at);
        if let Some(ms) = record.duration_ms {
            println!("  duration  {}", seconds(ms));
        }
        println!("  runtime   {}", record.runtime.as_str());
        let hosts = record.remote_hosts();
        if !hosts.is_empty() {
            println!("  hosts     {}", hosts.join(", "));
        }
        println!("  snapshot  {} ({} files)", record.snapshot.id, record.snapshot.files);
        if let Some(n) = &record.nix_version {
            println!("  nix       {n}");
        }
        if let Some(r) = &record.rerun_of {
            println!("  rerun of  {r}");
        }
        if let Some(c) = &record.changed {
            println!("  changed   {} file(s) since `{}`", c.files.len(), c.since);
        }
        if let Some(m) = &record.message {
            println!("  note      {m}");
        }
        for job in &record.jobs {
            let code = job.exit_code.map(|c| format!(" exit {c}")).unwrap_or_default();
            let took = job.duration_ms.map(|d| format!(" {}", seconds(d))).unwrap_or_default();
            let why =
                job.message.as_deref().and_then(|m| m.lines().next()).map(|m| format!("  {m}")).unwrap_or_default();
            let on = job.host.as_deref().filter(|_| hosts.len() > 1).map(|h| format!(" on {h}")).unwrap_or_default();
            println!("  {:<12} {}{on}{code}{took}{why}", job.status.as_str(), job.job_id);
        }
    }
    Ok(match record.status {
        RunStatus::Running => exit::SUCCESS,
        other => other.exit_code(),
    })
}

pub fn logs(state: &StateRoot, spec: &str, job: Option<&str>, host: bool, follow: bool) -> Result<()> {
    let run_id = state.find_run(spec)?;
    let record = RunRecord::read(&state.run_dir(&run_id))?;
    let jobs: Vec<&str> = match job {
        Some(j) if record.plan.iter().any(|p| p.job_id == j) => vec![j],
        Some(j) => {
            let known: Vec<&str> = record.plan.iter().map(|p| p.job_id.as_str()).collect();
            return Err(error::usage(format!("run `{run_id}` has no job `{j}`"))
                .hint(format!("its jobs are: {}", known.join(", ")))
                .into());
        }
        None => record.plan.iter().map(|p| p.job_id.as_str()).collect(),
    };
    let file = if host { "host.log" } else { "guest.log" };
    let files: Vec<(String, PathBuf)> =
        jobs.iter().map(|j| (j.to_string(), state.job_dir(&run_id, j).join(file))).collect();
    let prefix = files.len() > 1;
    if !follow {
        let mut out = std::io::stdout().lock();
        for (job, path) in &files {
            if prefix {
                writeln!(out, "==> {job}: {file} <==")?;
            }
            match std::fs::read(path) {
                Ok(bytes) => out.write_all(&bytes)?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    let status = record.job(job).map(|j| j.status.as_str()).unwrap_or("unknown");
                    writeln!(out, "(no {file}: job `{job}` is {status})")?;
                }
                Err(e) => return Err(anyhow::Error::new(e).context(format!("read `{}`", path.display()))),
            }
        }
        return Ok(());
    }
    follow_files(state, &run_id, &files, prefix)
}

/// Print what each file gains until the run is no longer live, then the rest.
fn follow_files(state: &StateRoot, run_id: &str, files: &[(String, PathBuf)], prefix: bool) -> Result<()> {
    let mut offsets = vec![0u64; files.len()];
    let mut partial: Vec<Vec<u8>> = vec![Vec::new(); files.len()];
    loop {
        // Read liveness first: whatever was written before the run ended is then printed.
        let live = state.run_is_live(run_id);
        let mut out = std::io::stdout().lock();
        for (i, (job, path)) in files.iter().enumerate() {
            let Ok(mut f) = std::fs::File::open(path) else { continue };
            f.seek(SeekFrom::Start(offsets[i]))?;
            let mut buf = Vec::new();
            f.read_to_end(&mut buf).with_context(|| format!("read `{}`", path.display()))?;
            offsets[i] += buf.len() as u64;
            if !prefix {
                out.write_all(&buf)?;
                continue;
            }
            partial[i].extend_from_slice(&buf);
            while let Some(pos) = partial[i].iter().position(|b| *b == b'\n') {
                write!(out, "[{job}] ")?;
                out.write_all(&partial[i][..=pos])?;
                partial[i].drain(..=pos);
            }
        }
        out.flush()?;
        if !live {
            for (i, (job, _)) in files.iter().enumerate() {
                if !partial[i].is_empty() {
                    write!(out, "[{job}] ")?;
                    out.write_all(&partial[i])?;
                    writeln!(out)?;
                }
            }
            return Ok(());
        }
        drop(out);
        std::thread::sleep(Duration::from_millis(100));
    }
}
