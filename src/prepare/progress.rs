//! A job's payload builds, watched while they run: one realisation builds them all
//! ([`JobBuild`]), and each payload's part of it ([`PayloadBuild`]) has its log kept in
//! the job directory (`payload-<name>.log`, what `nix build -L` would have printed for
//! it), and what the job hears of it: that it started, how it goes, and how it ended. A
//! payload for which nothing is built or fetched (it is there already) says nothing and
//! keeps no log.
//!
//! How often: a derivation's build starting or ending is told at once; a new line of a
//! build's log (or a new count) at most once per [`PROGRESS_EVERY`], so that a build
//! printing thousands of lines makes a handful of events, not thousands.

use std::collections::HashSet;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::tools::drv::{Owners, store_path_in};
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

/// One payload's part in its job's realisation, watched: what the realisation did for
/// it (as [`JobBuild`] tells it), kept in its log and told to the job.
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
    /// Its own builds, fetches and waits.
    state: BuildState,
    planned: u64,
    /// When its own derivation's build ended.
    ready: Option<Instant>,
    /// Time spent waiting for Nix's lock on a path another process builds: not this
    /// payload's own work.
    lock: LockWait,
}

/// How a payload's part of a realisation went.
pub struct PayloadFinished {
    /// It built or fetched something.
    pub worked: bool,
    /// When its own derivation's build ended, if this realisation built it.
    pub ready: Option<Instant>,
    /// How long it waited for another process's build of a path it needed.
    pub lock_wait: Duration,
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
            state: BuildState::default(),
            planned: 0,
            ready: None,
            lock: LockWait::default(),
        }
    }

    /// The realisation ended (`failure`: how it failed, if it did): when it had started
    /// to build for this payload and had not said it was built, says how it ended.
    fn finish(mut self, failure: Option<&anyhow::Error>) -> PayloadFinished {
        let finished = PayloadFinished { worked: self.announced, ready: self.ready, lock_wait: self.lock.total() };
        if self.announced && self.ready.is_none() {
            let outcome = match failure {
                None => BuildOutcome::Built,
                Some(e) if crate::tools::command::is_interrupted(e) => BuildOutcome::Interrupted,
                Some(_) => BuildOutcome::Failed,
            };
            self.report(outcome);
        }
        finished
    }

    /// Its build ended: told once, the log closed to what is not its own.
    fn report(&mut self, outcome: BuildOutcome) {
        if let Some(file) = self.file.as_mut() {
            let _ = file.flush();
        }
        let report = BuildReport::Finished {
            outcome,
            built: self.state.done,
            duration: self.started.elapsed(),
            log: &self.log_path,
        };
        self.watch.build(self.payload, report);
    }

    /// Its own derivation is built: it is ready, whatever the rest of the realisation
    /// does, and says so now.
    fn built(&mut self) {
        if self.ready.is_none() {
            self.ready = Some(Instant::now());
            if self.announced {
                self.report(BuildOutcome::Built);
            }
        }
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
    fn tell(&mut self, urgent: bool) {
        let state = &self.state;
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

    /// A change of the realisation: `mine` when it is this payload's (a build or fetch for
    /// it), else one of Nix's own that is for every payload (kept in the log of those that
    /// build something).
    fn apply(&mut self, change: &Change, mine: bool) {
        if mine {
            self.count(change);
        }
        self.lock.change(change, &self.state);
        // Nix's `info` messages naming a derivation say that it will be built: work starts.
        let starts = matches!(change, Change::BuildStarted(_) | Change::FetchStarted(_) | Change::Message(3, _));
        if mine && !self.announced && starts {
            self.announce();
        }
        if let Some(text) = change.text() {
            self.write(&text);
        }
        if !self.announced || !mine {
            return;
        }
        match change {
            Change::BuildStarted(_) | Change::BuildStopped(_) | Change::WaitStarted(_) | Change::WaitStopped(_) => {
                self.tell(true)
            }
            Change::LogLine(..) | Change::FetchStarted(_) | Change::FetchStopped(_) => self.tell(false),
            Change::Counts | Change::Message(..) | Change::Plain(_) => {}
        }
    }

    /// This payload's own counts, from a change that is its.
    fn count(&mut self, change: &Change) {
        let state = &mut self.state;
        match change {
            Change::BuildStarted(drv) => {
                state.building.push(drv.clone());
                state.started += 1;
            }
            Change::BuildStopped(drv) => {
                state.building.retain(|d| d != drv);
                state.done += 1;
            }
            Change::FetchStarted(_) => state.fetching += 1,
            Change::FetchStopped(_) => state.fetching = state.fetching.saturating_sub(1),
            Change::WaitStarted(_) => state.waiting += 1,
            Change::WaitStopped(_) => state.waiting = state.waiting.saturating_sub(1),
            Change::LogLine(..) => state.last_line = change.text(),
            // A derivation in Nix's list of what it will build.
            Change::Message(3, text) if text.trim().starts_with('/') && text.trim_end().ends_with(".drv") => {
                self.planned += 1
            }
            Change::Counts | Change::Message(..) | Change::Plain(_) => {}
        }
        state.total = state.total.max(self.planned).max(state.started);
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

/// A job's realisation of all its payloads with one command, watched: each line of Nix's
/// structured log goes to the payload it is for ([`Owners`]: the build of a derivation in
/// a payload's closure, a fetch of one of its paths, a wait for one, an error naming
/// one); Nix's other words go to every payload that builds something.
pub struct JobBuild<'a> {
    payloads: Vec<PayloadBuild<'a>>,
    /// Each payload's `.drv` and recorded outputs, for [`Owners`], read at the first
    /// change that needs them (a realisation that builds nothing reads no `.drv`).
    paths: Vec<(&'a str, Vec<&'a str>)>,
    owners: Option<Owners>,
    /// The store's directory with a final `/` (`/nix/store/`), to find its paths in Nix's
    /// messages.
    store: String,
    /// The payload whose build failed, from Nix's count of failed builds or its error
    /// naming the derivation.
    failed: Option<usize>,
    /// Nix's counts of builds done and failed when a build last stopped.
    counted: (u64, u64),
    /// Told of each payload's own derivation as soon as it is built.
    on_built: Option<&'a (dyn Fn(&str) + Sync)>,
    /// Each payload's outputs fetched so far (substituted from a binary cache).
    fetched: Vec<HashSet<String>>,
}

impl<'a> JobBuild<'a> {
    pub fn new(payloads: &'a [crate::catalog::Payload], job_dir: &Path, watch: &'a dyn Watch) -> JobBuild<'a> {
        JobBuild {
            payloads: payloads.iter().map(|p| PayloadBuild::new(&p.name, &p.drv_path, job_dir, watch)).collect(),
            paths: payloads
                .iter()
                .map(|p| (p.drv_path.as_str(), p.outputs.values().map(String::as_str).collect()))
                .collect(),
            owners: None,
            store: payloads
                .first()
                .and_then(|p| Path::new(&p.drv_path).parent())
                .map(|dir| format!("{}/", dir.display()))
                .unwrap_or_else(|| "/nix/store/".into()),
            failed: None,
            counted: (0, 0),
            on_built: None,
            fetched: payloads.iter().map(|_| HashSet::new()).collect(),
        }
    }

    /// Tell `on_built` of each payload's own derivation as soon as it is built (the
    /// realisation going on with the others).
    pub fn telling(self, on_built: &'a (dyn Fn(&str) + Sync)) -> JobBuild<'a> {
        JobBuild { on_built: Some(on_built), ..self }
    }

    /// The payload whose build failed, when Nix's error named one (its index).
    pub fn failed(&self) -> Option<usize> {
        self.failed.or_else(|| self.payloads.iter().position(|p| p.announced && p.ready.is_none()))
    }

    /// The realisation ended (`None`: it succeeded): each payload says how it went.
    pub fn finish(self, failure: Option<&anyhow::Error>) -> Vec<PayloadFinished> {
        self.payloads.into_iter().map(|p| p.finish(failure)).collect()
    }

    /// The payload a change is for, if it is one payload's.
    fn owner(&mut self, change: &Change) -> Option<usize> {
        let path = match change {
            Change::BuildStarted(p) | Change::BuildStopped(p) | Change::LogLine(p, _) => p.as_str(),
            Change::FetchStarted(p) | Change::FetchStopped(p) => p.as_str(),
            Change::WaitStarted(text) | Change::WaitStopped(text) | Change::Message(_, text) => {
                store_path_in(text, &self.store)?
            }
            Change::Counts | Change::Plain(_) => return None,
        };
        let paths = &self.paths;
        let owner = self.owners.get_or_insert_with(|| Owners::of(paths)).owner(path);
        // A build Nix names whose derivation no payload's closure holds (a `.drv` that
        // could not be read): the first payload that is not ready yet.
        owner.or_else(|| {
            matches!(change, Change::BuildStarted(_) | Change::BuildStopped(_) | Change::LogLine(..))
                .then(|| self.payloads.iter().position(|p| p.ready.is_none()).unwrap_or(0))
        })
    }
}

impl BuildWatch for JobBuild<'_> {
    fn change(&mut self, change: &Change, state: &BuildState) {
        let owner = self.owner(change);
        if let (Change::Message(0, _), Some(i), None) = (change, owner, self.failed) {
            self.failed = Some(i);
        }
        // Nix counts a build done, or failed, just before it stops the build; a build it
        // stops without counting it was interrupted.
        let stopped = matches!(change, Change::BuildStopped(_));
        let failed_now = stopped && state.failed > self.counted.1;
        let built_now = stopped && state.done > self.counted.0 && !failed_now;
        if stopped {
            self.counted = (state.done, state.failed);
        }
        if let (true, Some(i), None) = (failed_now, owner, self.failed) {
            self.failed = Some(i);
        }
        for (i, payload) in self.payloads.iter_mut().enumerate() {
            match owner {
                Some(o) if o == i => payload.apply(change, true),
                // Nix's own words are for the payloads that are not built yet.
                None if payload.ready.is_none() => payload.apply(change, false),
                _ => {}
            }
            // Built: its own derivation's build was counted done, or every output of it
            // was fetched (a fetch that fails is followed by a build, which then tells).
            let fetched_all = match change {
                Change::FetchStopped(path) if owner == Some(i) && self.paths[i].1.contains(&path.as_str()) => {
                    self.fetched[i].insert(path.clone());
                    self.fetched[i].len() == self.paths[i].1.len()
                }
                _ => false,
            };
            let own_built = matches!(change, Change::BuildStopped(drv) if *drv == payload.drv_path) && built_now;
            if (own_built || fetched_all) && payload.ready.is_none() {
                payload.built();
                if let Some(tell) = self.on_built {
                    tell(payload.drv_path);
                }
            }
        }
    }

    fn quiet(&mut self, _state: &BuildState) {
        for payload in self.payloads.iter_mut().filter(|p| p.announced) {
            payload.tell(false);
        }
    }

    fn failure_note(&self) -> Option<String> {
        self.failed().and_then(|i| self.payloads[i].failure_note())
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
            (Change::WaitStopped(_), Some(since)) if state.waiting == 0 => {
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

    fn payload(name: &str, drv: &str) -> crate::catalog::Payload {
        let out = format!("{}-out", drv.trim_end_matches(".drv"));
        crate::catalog::Payload { name: name.into(), drv_path: drv.into(), outputs: [("out".into(), out)].into() }
    }

    #[test]
    fn starts_and_ends_at_once_and_log_lines_at_most_once_a_second() {
        let dir = tempfile::tempdir().unwrap();
        let heard = Heard::default();
        let payloads = [payload("workspace-build", DRV)];
        let mut build = JobBuild::new(&payloads, dir.path(), &heard);
        let state = BuildState::default();
        build.change(&Change::Message(3, "this derivation will be built:".into()), &state);
        build.change(&Change::Message(3, format!("  {DRV}")), &state);
        build.change(&Change::BuildStarted(DRV.into()), &state);
        for i in 0..50 {
            build.change(&Change::LogLine(DRV.into(), format!("line {i}")), &state);
        }
        build.quiet(&state);
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
        assert!(
            log.starts_with(&format!("this derivation will be built:\n  {DRV}\nbuilding '{DRV}'\nslow> line 0\n")),
            "{log}"
        );
        assert!(log.ends_with("slow> line 49\n"), "{log}");
    }

    #[test]
    fn each_payload_hears_its_own_builds_and_the_failure_is_the_failed_ones() {
        // Real `.drv` text: `build` takes `deps` as an input, so `deps`' build is `deps`'
        // (the smaller closure) though `build` needs it too.
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store");
        std::fs::create_dir(&store).unwrap();
        let drv = |name: &str, inputs: &[&str]| {
            let path = store.join(format!("{name}.drv")).to_string_lossy().into_owned();
            let inputs: Vec<String> = inputs.iter().map(|i| format!("(\"{i}\",[\"out\"])")).collect();
            let text = format!(
                "Derive([(\"out\",\"/nix/store/o-{name}\",\"\",\"\")],[{}],[],\"s\",\"b\",[],[])",
                inputs.join(",")
            );
            std::fs::write(&path, text).unwrap();
            path
        };
        let deps = drv("deps", &[]);
        let build = drv("build", &[&deps]);
        let heard = Heard::default();
        let payloads = [payload("workspace-deps", &deps), payload("workspace-build", &build)];
        let mut job = JobBuild::new(&payloads, dir.path(), &heard);
        let mut state = BuildState::default();
        // Nix counts a build done or failed (`Counts`: the new done and failed), then
        // stops it.
        for (change, counts) in [
            (Change::Message(3, "these 2 derivations will be built:".into()), None),
            (Change::Message(3, format!("  {deps}")), None),
            (Change::Message(3, format!("  {build}")), None),
            (Change::BuildStarted(deps.clone()), None),
            (Change::LogLine(deps.clone(), "deps compiled".into()), None),
            (Change::Counts, Some((1, 0))),
            (Change::BuildStopped(deps.clone()), None),
            (Change::BuildStarted(build.clone()), None),
            (Change::LogLine(build.clone(), "error[E0308]".into()), None),
            (Change::Counts, Some((1, 1))),
            (Change::BuildStopped(build.clone()), None),
        ] {
            if let Some((done, failed)) = counts {
                (state.done, state.failed) = (done, failed);
            }
            job.change(&change, &state);
        }
        let error = Change::Message(0, format!("error: Cannot build '{build}'.\n       Reason: builder failed"));
        job.change(&error, &state);
        assert_eq!(job.failed(), Some(1));
        assert!(job.failure_note().unwrap().contains("--payload workspace-build"));
        let failure = anyhow::anyhow!("nix-store failed");
        let finished = job.finish(Some(&failure));
        assert!(finished[0].ready.is_some() && finished[1].worked);
        let heard = heard.0.into_inner().unwrap();
        assert!(heard.contains(&"workspace-deps built 1".to_string()), "{heard:?}");
        assert!(heard.contains(&"workspace-build failed 1".to_string()), "{heard:?}");
        let log = |name: &str| std::fs::read_to_string(dir.path().join(format!("payload-{name}.log"))).unwrap();
        let (deps_log, build_log) = (log("workspace-deps"), log("workspace-build"));
        assert!(deps_log.contains("deps> deps compiled") && !deps_log.contains("E0308"), "{deps_log}");
        assert!(!deps_log.contains("Cannot build"), "{deps_log}");
        assert!(build_log.contains("build> error[E0308]") && !build_log.contains("deps compiled"), "{build_log}");
        assert!(build_log.contains("Cannot build") && build_log.starts_with("these 2 derivations"), "{build_log}");
    }

    #[test]
    fn a_build_stopped_uncounted_was_interrupted_not_built() {
        let dir = tempfile::tempdir().unwrap();
        let heard = Heard::default();
        let payloads = [payload("workspace-build", DRV)];
        let mut build = JobBuild::new(&payloads, dir.path(), &heard);
        let state = BuildState::default();
        build.change(&Change::Message(3, format!("  {DRV}")), &state);
        build.change(&Change::BuildStarted(DRV.into()), &state);
        build.change(&Change::BuildStopped(DRV.into()), &state);
        let interrupted = anyhow::Error::new(crate::tools::command::Interrupted);
        let finished = build.finish(Some(&interrupted));
        assert!(finished[0].ready.is_none());
        assert_eq!(heard.0.into_inner().unwrap().last().unwrap(), "workspace-build interrupted 1");
    }

    #[test]
    fn a_payload_whose_outputs_were_all_fetched_is_ready_and_told() {
        let dir = tempfile::tempdir().unwrap();
        let heard = Heard::default();
        let payloads = [payload("workspace-deps", DRV)];
        let out = payloads[0].outputs["out"].clone();
        let told = std::sync::Mutex::new(Vec::new());
        let tell = |drv: &str| told.lock().unwrap().push(drv.to_string());
        let mut build = JobBuild::new(&payloads, dir.path(), &heard).telling(&tell);
        let state = BuildState::default();
        build.change(&Change::FetchStarted(out.clone()), &state);
        assert!(told.lock().unwrap().is_empty());
        build.change(&Change::FetchStopped(out), &state);
        assert_eq!(*told.lock().unwrap(), [DRV]);
        let finished = build.finish(None);
        assert!(finished[0].ready.is_some());
        assert_eq!(heard.0.into_inner().unwrap().last().unwrap(), "workspace-deps built 0");
    }

    #[test]
    fn nothing_built_says_nothing_and_keeps_no_log() {
        let dir = tempfile::tempdir().unwrap();
        let heard = Heard::default();
        let payloads = [payload("deps", DRV)];
        let mut build = JobBuild::new(&payloads, dir.path(), &heard);
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
