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
use crate::state::query::{Listed, job_tests, list_runs, status_json, status_record};
use crate::state::record::TestsRecord;
use crate::state::{RunRecord, RunStatus, StateRoot};

pub fn print_lanes(catalog: &Catalog, json: bool) -> Result<()> {
    if json {
        // Written as it is serialized: a large catalog's JSON is megabytes.
        use std::io::Write;
        let mut out = std::io::BufWriter::with_capacity(1 << 16, std::io::stdout().lock());
        serde_json::to_writer_pretty(&mut out, &catalog.lanes)?;
        out.write_all(b"\n")?;
        out.flush()?;
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
        println!("{}", serde_json::to_string_pretty(&status_json(state, &record)?)?);
    } else {
        println!("run {}: {}", record.run_id, record.status.as_str());
        println!("  flake     {}", record.flake);
        println!("  created   {}", record.created_at);
        if let Some(ms) = record.duration_ms {
            println!("  duration  {}", seconds(ms));
        }
        if let Some(ms) = record.eval_ms {
            println!("  eval      {} (the flake's evaluation, before the run)", seconds(ms));
        }
        println!("  runtime   {}", record.runtime.as_str());
        let hosts = record.remote_hosts();
        if !hosts.is_empty() {
            println!("  hosts     {}", hosts.join(", "));
        }
        println!("  snapshot  {} ({} files)", record.snapshot.id, record.snapshot.files);
        if let Some(rev) = &record.git_rev {
            println!("  revision  {rev}");
        }
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
            if job.tests.is_some()
                && let Some(tests) = job_tests(state, &record.run_id, &job.job_id)
            {
                print_tests(&tests);
            }
        }
        if !record.args.is_empty() {
            println!("  args      {}", record.args.join(" "));
        }
    }
    Ok(match record.status {
        RunStatus::Running => exit::SUCCESS,
        other => other.exit_code(),
    })
}

/// A job's tests under its line: the counts, then each failed test with its message's
/// first lines (at most 20 tests).
fn print_tests(tests: &TestsRecord) {
    let mut counts = format!("{} passed, {} failed, {} skipped", tests.passed, tests.failed, tests.skipped);
    if tests.flaky > 0 {
        counts.push_str(&format!(", {} flaky ({})", tests.flaky, tests.flaky_tests.join(", ")));
    }
    if tests.inconsistent {
        counts.push_str("; the JUnit says tests failed, but the command exited 0");
    }
    println!("               tests: {counts}");
    for failure in tests.failures.iter().take(20) {
        println!("               FAILED {} ({})", failure.name, failure.suite);
        for line in failure.message.lines().chain(failure.output.lines()).take(3) {
            println!("                 {line}");
        }
    }
    if tests.failures.len() > 20 {
        println!("               and {} more failed tests", tests.failed.saturating_sub(20));
    }
    for warning in &tests.warnings {
        println!("               warning: {warning}");
    }
}

/// Which log of a job `logs` prints.
#[derive(Clone, Copy, Debug)]
pub enum LogFile<'a> {
    /// The command's output.
    Guest,
    /// pikaci's own: every nix and runtime call.
    Host,
    /// What Nix printed while building this payload for the job.
    Payload(&'a str),
}

impl LogFile<'_> {
    fn file_name(&self) -> String {
        match self {
            LogFile::Guest => "guest.log".to_string(),
            LogFile::Host => "host.log".to_string(),
            LogFile::Payload(name) => format!("payload-{name}.log"),
        }
    }
}

pub fn logs(state: &StateRoot, spec: &str, job: Option<&str>, which: LogFile, follow: bool) -> Result<()> {
    let run_id = state.find_run(spec)?;
    // A damaged run.json does not hide the logs: the jobs are then those under `jobs/`.
    let record = match RunRecord::read(&state.run_dir(&run_id)) {
        Ok(record) => Some(record),
        Err(e) => {
            eprintln!(
                "pikaci: warning: {}; showing the logs found under `jobs/`",
                format!("{e:#}").lines().next().unwrap_or("")
            );
            None
        }
    };
    let job_ids: Vec<String> = match &record {
        Some(record) => record.plan.iter().map(|p| p.job_id.clone()).collect(),
        None => jobs_on_disk(&state.run_dir(&run_id)),
    };
    let jobs: Vec<&str> = match job {
        Some(j) if job_ids.iter().any(|id| id == j) => vec![j],
        Some(j) => {
            let known: Vec<&str> = job_ids.iter().map(String::as_str).collect();
            return Err(error::usage(format!("run `{run_id}` has no job `{j}`"))
                .hint(format!("its jobs are: {}", known.join(", ")))
                .into());
        }
        None => job_ids.iter().map(String::as_str).collect(),
    };
    if let LogFile::Payload(name) = which {
        check_payload(record.as_ref(), &run_id, &jobs, name)?;
    }
    let file = which.file_name();
    let files: Vec<(String, PathBuf)> =
        jobs.iter().map(|j| (j.to_string(), state.job_dir(&run_id, j).join(&file))).collect();
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
                    writeln!(out, "({})", missing_log(state, record.as_ref(), &run_id, job, which))?;
                }
                Err(e) => return Err(anyhow::Error::new(e).context(format!("read `{}`", path.display()))),
            }
        }
        return Ok(());
    }
    follow_files(state, &run_id, &files, prefix)
}

/// A payload name `logs --payload` accepts: one the run's jobs declare (any name, when
/// the record cannot be read, that could be one: it becomes part of a file name).
fn check_payload(record: Option<&RunRecord>, run_id: &str, jobs: &[&str], name: &str) -> Result<()> {
    let mut known: Vec<&str> = record
        .map(|r| {
            r.plan
                .iter()
                .filter(|p| jobs.contains(&p.job_id.as_str()))
                .flat_map(|p| p.lane.payloads.iter().map(|pl| pl.name.as_str()))
                .collect()
        })
        .unwrap_or_default();
    known.sort();
    known.dedup();
    let declared = if record.is_some() { known.contains(&name) } else { crate::catalog::validate_id(name).is_ok() };
    if declared {
        return Ok(());
    }
    let whose = match jobs {
        [job] => format!("job `{job}` of run `{run_id}` has"),
        _ => format!("no job of run `{run_id}` has"),
    };
    let no = if jobs.len() == 1 { " no" } else { " a" };
    Err(error::usage(format!("{whose}{no} payload `{name}`"))
        .hint(format!("its payloads are: {}", known.join(", ")))
        .into())
}

/// What `logs` says of a log a job does not have.
fn missing_log(state: &StateRoot, record: Option<&RunRecord>, run_id: &str, job: &str, which: LogFile) -> String {
    let status = record.and_then(|r| r.job(job)).map(|j| j.status.as_str()).unwrap_or("unknown");
    let file = which.file_name();
    let LogFile::Payload(name) = which else {
        let mut said = format!("no {file}: job `{job}` is {status}");
        if matches!(which, LogFile::Guest) {
            let built = built_payloads(&state.job_dir(run_id, job));
            if let Some(first) = built.first() {
                said.push_str(&format!(
                    "; its payloads' build logs: `pikaci logs {run_id} --job {job} --payload {first}`{}",
                    if built.len() > 1 { format!(" ({})", built.join(", ")) } else { String::new() }
                ));
            }
        }
        return said;
    };
    let built_by = crate::state::JobRecord::read(&state.job_dir(run_id, job))
        .ok()
        .and_then(|r| r.payloads.into_iter().find(|p| p.name == name))
        .and_then(|p| p.built_by);
    match built_by {
        Some(other) => format!(
            "no build log of payload `{name}` in job `{job}`: job `{other}` built it (`pikaci logs {run_id} --job {other} --payload {name}`)"
        ),
        None => format!(
            "no build log of payload `{name}` in job `{job}` ({status}): Nix built nothing for it (its outputs were there already) or it was not reached"
        ),
    }
}

/// The payloads of a job that have a build log, by name.
fn built_payloads(job_dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(job_dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    Some(name.strip_prefix("payload-")?.strip_suffix(".log")?.to_string())
                })
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// The job directories of a run, by name, for a run whose record cannot be read; only
/// names a job id can have.
fn jobs_on_disk(run_dir: &std::path::Path) -> Vec<String> {
    let mut ids: Vec<String> = std::fs::read_dir(run_dir.join("jobs"))
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|name| crate::catalog::validate_id(name).is_ok())
                .collect()
        })
        .unwrap_or_default();
    ids.sort();
    ids
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
        if crate::signals::interrupted() {
            // Ctrl-C (or SIGTERM) ends following at once; the run goes on.
            return Err(crate::tools::command::Interrupted.into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
