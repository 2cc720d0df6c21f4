//! A payload's build, watched while it runs: its log kept in the job directory
//! (`payload-<name>.log`, what `nix build -L` would have printed), and what the job hears
//! of it: that it started, how it goes, and how it ended. A realisation that builds and
//! fetches nothing (the payload is there already) says nothing and keeps no log.
//!
//! How often: a derivation's build starting or ending is told at once; a new line of a
//! build's log (or a new count) at most once per [`PROGRESS_EVERY`], so that a build
//! printing thousands of lines makes a handful of events, not thousands.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::tools::nix_log::{BuildState, BuildWatch, Change, derivation_name};

/// The most often a payload's progress is told for a new log line alone.
pub const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// What a job hears of its payloads.
pub trait Watch: Sync {
    /// A payload is realized and ready.
    fn realized(&self, payload: &super::PreparedPayload);
    /// Something happened in the build of a payload.
    fn build(&self, payload: &str, report: BuildReport<'_>);
}

#[derive(Debug)]
pub enum BuildReport<'a> {
    Started { drv_path: &'a str, log: &'a Path },
    Progress(&'a Progress),
    Finished { outcome: BuildOutcome, built: u64, duration: Duration, log: &'a Path },
}

/// Where a payload's build is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// Derivations built, of how many (0 until Nix knows).
    pub done: u64,
    pub total: u64,
    /// The names of the derivations building now (`hello-1.0`).
    pub building: Vec<String>,
    /// Store paths being fetched from a binary cache now.
    pub fetching: u64,
    /// Waiting for another build of a path it needs (Nix's lock: another payload of the
    /// job, another run, another process).
    pub waiting: bool,
    /// The latest line of a build's log, `<derivation name>> <line>`.
    pub line: Option<String>,
    /// Since the payload's realisation started.
    pub elapsed: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BuildOutcome {
    Built,
    Failed,
    Interrupted,
}

impl BuildOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            BuildOutcome::Built => "built",
            BuildOutcome::Failed => "failed",
            BuildOutcome::Interrupted => "interrupted",
        }
    }
}

/// The kept build log of a payload.
pub fn log_path(job_dir: &Path, payload: &str) -> PathBuf {
    job_dir.join(format!("payload-{payload}.log"))
}

/// One payload's realisation, watched.
pub struct PayloadBuild<'a> {
    payload: &'a str,
    drv_path: &'a str,
    log_path: PathBuf,
    watch: &'a dyn Watch,
    started: Instant,
    /// The log file, once the build announced itself; lines before that wait here.
    file: Option<File>,
    early: Vec<String>,
    /// Writing the log failed (a full disk): the build goes on, the log is cut.
    write_failed: bool,
    announced: bool,
    /// What was told last, and when.
    told: Option<(Instant, Progress)>,
    done: u64,
    /// Time spent waiting for Nix's lock on a path another process builds: not this
    /// payload's own work.
    lock: LockWait,
}

impl<'a> PayloadBuild<'a> {
    pub fn new(payload: &'a str, drv_path: &'a str, job_dir: &Path, watch: &'a dyn Watch) -> PayloadBuild<'a> {
        PayloadBuild {
            payload,
            drv_path,
            log_path: log_path(job_dir, payload),
            watch,
            started: Instant::now(),
            file: None,
            early: Vec::new(),
            write_failed: false,
            announced: false,
            told: None,
            done: 0,
            lock: LockWait::default(),
        }
    }

    /// The realisation ended (`None`: built; else how it failed). Says so when it had
    /// started to build, and closes the log. Returns how long it waited for another
    /// process's build of a path it needed.
    pub fn finish(mut self, failure: Option<&anyhow::Error>) -> Duration {
        let lock_wait = self.lock.total();
        if !self.announced {
            return lock_wait;
        }
        if let Some(file) = self.file.as_mut() {
            let _ = file.flush();
        }
        let outcome = match failure {
            None => BuildOutcome::Built,
            Some(e) if crate::tools::command::is_interrupted(e) => BuildOutcome::Interrupted,
            Some(_) => BuildOutcome::Failed,
        };
        let report =
            BuildReport::Finished { outcome, built: self.done, duration: self.started.elapsed(), log: &self.log_path };
        self.watch.build(self.payload, report);
        lock_wait
    }

    fn announce(&mut self) {
        self.announced = true;
        self.watch.build(self.payload, BuildReport::Started { drv_path: self.drv_path, log: &self.log_path });
        let opened = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(crate::tools::command::LOG_MODE)
            .open(&self.log_path);
        match opened {
            Ok(file) => self.file = Some(file),
            Err(_) => self.write_failed = true,
        }
        for line in std::mem::take(&mut self.early) {
            self.write(&line);
        }
    }

    fn write(&mut self, line: &str) {
        if !self.announced {
            self.early.push(line.to_string());
            return;
        }
        if let (Some(file), false) = (self.file.as_mut(), self.write_failed)
            && writeln!(file, "{line}").is_err()
        {
            self.write_failed = true;
        }
    }

    /// Tell the progress when it changed: at once when `urgent`, else when the last
    /// telling is [`PROGRESS_EVERY`] old.
    fn tell(&mut self, state: &BuildState, urgent: bool) {
        let progress = Progress {
            done: state.done,
            total: state.total,
            building: state.building.iter().map(|d| derivation_name(d).to_string()).collect(),
            fetching: state.fetching,
            waiting: state.waiting > 0,
            line: state.last_line.clone(),
            elapsed: self.started.elapsed(),
        };
        let due = match &self.told {
            None => urgent || self.started.elapsed() >= PROGRESS_EVERY,
            Some((at, last)) => {
                let same = Progress { elapsed: last.elapsed, ..progress.clone() } == *last;
                !same && (urgent || at.elapsed() >= PROGRESS_EVERY)
            }
        };
        if due {
            self.watch.build(self.payload, BuildReport::Progress(&progress));
            self.told = Some((Instant::now(), progress));
        }
    }
}

impl BuildWatch for PayloadBuild<'_> {
    fn change(&mut self, change: &Change, state: &BuildState) {
        self.done = state.done;
        self.lock.change(change, state);
        // Nix's `info` messages (level 3) say what it will build or fetch: work starts.
        let starts = matches!(change, Change::BuildStarted(_) | Change::FetchStarted(_) | Change::Message(3, _));
        if !self.announced && starts {
            self.announce();
        }
        if let Some(text) = change.text() {
            self.write(&text);
        }
        if !self.announced {
            return;
        }
        match change {
            Change::BuildStarted(_) | Change::BuildStopped(_) | Change::WaitStarted(_) | Change::WaitStopped => {
                self.tell(state, true)
            }
            Change::LogLine(..) | Change::FetchStarted(_) => self.tell(state, false),
            // A count moves just before the build that moved it stops, which tells it.
            Change::Counts | Change::Message(..) | Change::Plain(_) => {}
        }
    }

    fn quiet(&mut self, state: &BuildState) {
        if self.announced {
            self.tell(state, false);
        }
    }

    fn failure_note(&self) -> Option<String> {
        // `runs/<run>/jobs/<job>/payload-<name>.log`
        let job_dir = self.log_path.parent()?;
        let run_dir = job_dir.parent()?.parent()?;
        let name = |p: &Path| p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        self.announced.then(|| {
            format!(
                "the build's whole log: `{}` (`pikaci logs {} --job {} --payload {}`)",
                self.log_path.display(),
                name(run_dir),
                name(job_dir),
                self.payload
            )
        })
    }
}

/// How long a command waited for Nix's lock on a path another process builds, from its
/// structured log.
#[derive(Default)]
pub(super) struct LockWait {
    since: Option<Instant>,
    total: Duration,
}

impl LockWait {
    pub(super) fn total(&self) -> Duration {
        self.total + self.since.map(|s| s.elapsed()).unwrap_or_default()
    }
}

impl BuildWatch for LockWait {
    fn change(&mut self, change: &Change, state: &BuildState) {
        match (change, self.since) {
            (Change::WaitStarted(_), None) => self.since = Some(Instant::now()),
            (Change::WaitStopped, Some(since)) if state.waiting == 0 => {
                self.total += since.elapsed();
                self.since = None;
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Heard(Mutex<Vec<String>>);

    impl Watch for Heard {
        fn realized(&self, _: &crate::prepare::PreparedPayload) {}
        fn build(&self, payload: &str, report: BuildReport<'_>) {
            let said = match report {
                BuildReport::Started { .. } => format!("{payload} started"),
                BuildReport::Progress(p) => {
                    format!("{payload} {}/{} {:?} {}", p.done, p.total, p.building, p.line.as_deref().unwrap_or("-"))
                }
                BuildReport::Finished { outcome, built, .. } => format!("{payload} {} {built}", outcome.as_str()),
            };
            self.0.lock().unwrap().push(said);
        }
    }

    const DRV: &str = "/nix/store/a4mv02p0vs49ywd4m7j8k4wl6bvw0jdw-slow.drv";

    #[test]
    fn starts_and_ends_at_once_and_log_lines_at_most_once_a_second() {
        let dir = tempfile::tempdir().unwrap();
        let heard = Heard::default();
        let mut build = PayloadBuild::new("workspace-build", DRV, dir.path(), &heard);
        let mut state = BuildState::default();
        build.change(&Change::Message(3, "this derivation will be built:".into()), &state);
        state.building.push(DRV.into());
        state.total = 1;
        build.change(&Change::BuildStarted(DRV.into()), &state);
        for i in 0..50 {
            state.last_line = Some(format!("slow> line {i}"));
            build.change(&Change::LogLine("slow".into(), format!("line {i}")), &state);
        }
        build.quiet(&state);
        state.done = 1;
        state.building.clear();
        build.change(&Change::BuildStopped(DRV.into()), &state);
        build.finish(None);
        let heard = heard.0.into_inner().unwrap();
        assert_eq!(
            heard,
            [
                "workspace-build started",
                "workspace-build 0/1 [\"slow\"] -",
                "workspace-build 1/1 [] slow> line 49",
                "workspace-build built 1",
            ]
        );
        let log = std::fs::read_to_string(dir.path().join("payload-workspace-build.log")).unwrap();
        assert!(log.starts_with(&format!("this derivation will be built:\nbuilding '{DRV}'\nslow> line 0\n")), "{log}");
        assert!(log.ends_with("slow> line 49\n"), "{log}");
    }

    #[test]
    fn nothing_built_says_nothing_and_keeps_no_log() {
        let dir = tempfile::tempdir().unwrap();
        let heard = Heard::default();
        let mut build = PayloadBuild::new("deps", DRV, dir.path(), &heard);
        build.change(
            &Change::Plain("Warning: Permanently added 'builder' to the list of known hosts.".into()),
            &BuildState::default(),
        );
        assert_eq!(build.failure_note(), None);
        build.finish(None);
        assert!(heard.0.into_inner().unwrap().is_empty());
        assert!(!dir.path().join("payload-deps.log").exists());
    }
}
