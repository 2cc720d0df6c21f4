//! Nix's structured log (`--log-format internal-json`): on stderr, each line `@nix {json}`
//! is an activity that starts or stops (a derivation's build, a path's copy), a result of
//! one (a line of a build's log, the count of builds done), or a message of Nix's own.
//! [`NixLog`] reads those lines as they come and keeps what a progress display needs;
//! [`run_realise`] runs a `nix-store --realise` with it, so that a long build is watched
//! while it runs, and fails with the same words as before (Nix's message, after the last
//! lines of the build's log).

use std::collections::{BTreeMap, VecDeque};
use std::path::Path;

use anyhow::Result;
use serde::Deserialize;

use super::command::{Cmd, CmdOutput, CommandFailed, StderrLine};
use super::log::HostLog;

/// The arguments that make `nix` and `nix-store` write the structured log.
pub const LOG_FORMAT_ARGS: [&str; 2] = ["--log-format", "internal-json"];

/// How many lines of a failed build's log its error carries (Nix's own default is 25;
/// the error shows its last lines, and the whole log is kept in a file).
const FAILED_LOG_LINES: usize = 10;

// Nix's activity types (`ActivityType` in libutil/logging.hh).
const ACT_BUILDS: u64 = 104;
const ACT_BUILD: u64 = 105;
const ACT_SUBSTITUTE: u64 = 108;
const ACT_BUILD_WAITING: u64 = 111;
// Nix's result types (`ResultType`).
const RES_BUILD_LOG_LINE: u64 = 101;
const RES_PROGRESS: u64 = 105;
const RES_POST_BUILD_LOG_LINE: u64 = 107;
/// Messages up to this level (`info`) are what Nix prints by default.
const LEVEL_INFO: u64 = 3;
/// Warnings: an error shows them, and the lines that are not Nix's (`ssh`'s words).
const LEVEL_WARN: u64 = 1;

#[derive(Debug, Deserialize)]
#[serde(tag = "action", rename_all = "camelCase")]
enum Action {
    Start {
        id: u64,
        #[serde(rename = "type", default)]
        kind: u64,
        #[serde(default)]
        text: String,
        #[serde(default)]
        fields: Vec<serde_json::Value>,
    },
    Stop {
        id: u64,
    },
    Result {
        id: u64,
        #[serde(rename = "type", default)]
        kind: u64,
        #[serde(default)]
        fields: Vec<serde_json::Value>,
    },
    Msg {
        #[serde(default)]
        level: u64,
        #[serde(default)]
        msg: String,
    },
    #[serde(other)]
    Other,
}

/// What one line of the log changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// A derivation's build started (its `.drv` path).
    BuildStarted(String),
    /// A derivation's build ended, one way or the other.
    BuildStopped(String),
    /// A store path started to be fetched (substituted, or copied in).
    FetchStarted(String),
    /// That fetch ended.
    FetchStopped(String),
    /// Nix waits for another process's build of the same path (its lock): the text
    /// says which path.
    WaitStarted(String),
    /// That wait ended (the text of its start).
    WaitStopped(String),
    /// The count of builds done or expected moved.
    Counts,
    /// A line of a build's log: the derivation (its `.drv` path), the line.
    LogLine(String, String),
    /// A message of Nix's own, without its colours (level 0 is an error).
    Message(u64, String),
    /// A line that is not Nix's structured log (`ssh`'s own words, a shell's error).
    Plain(String),
}

impl Change {
    /// The change as a line of the payload's build log (as `nix build -L` prints it), or
    /// nothing for a change that is not news to a reader.
    pub fn text(&self) -> Option<String> {
        match self {
            Change::BuildStarted(drv) => Some(format!("building '{drv}'")),
            Change::FetchStarted(path) => Some(format!("fetching '{path}'")),
            Change::LogLine(drv, line) => Some(format!("{}> {line}", derivation_name(drv))),
            Change::Message(_, text) | Change::Plain(text) | Change::WaitStarted(text) => Some(text.clone()),
            Change::BuildStopped(_) | Change::FetchStopped(_) | Change::Counts | Change::WaitStopped(_) => None,
        }
    }
}

/// What is known of a realisation so far.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BuildState {
    /// The derivations building now (their `.drv` paths), in the order they started.
    pub building: Vec<String>,
    /// Builds finished, and how many the realisation needs in all (0 until Nix says).
    pub done: u64,
    pub total: u64,
    pub failed: u64,
    /// Every derivation whose build started.
    pub started: u64,
    /// Store paths being fetched (substituted from a binary cache) now.
    pub fetching: u64,
    /// Waits for another process's build of a path this one needs, now.
    pub waiting: u64,
    /// The latest line of a build's log, as [`Change::LogLine`] writes it.
    pub last_line: Option<String>,
}

#[derive(Debug)]
enum Activity {
    Build(String),
    Fetch(String),
    Waiting(String),
    Builds,
    Other,
}

/// Reads Nix's structured log line by line.
#[derive(Debug, Default)]
pub struct NixLog {
    activities: BTreeMap<u64, Activity>,
    state: BuildState,
    /// The last lines of the builds' logs, for the error of a failed one.
    tail: VecDeque<String>,
    /// Nix's messages and the plain lines, in order: the text of its stderr, as Nix would
    /// have printed it without the structured log (build logs aside).
    messages: Vec<(u64, String)>,
    /// The derivations Nix said it will build (one message each, after "these N
    /// derivations will be built:").
    planned: u64,
}

impl NixLog {
    pub fn state(&self) -> &BuildState {
        &self.state
    }

    /// Read one line of stderr; returns what it changed, if anything.
    pub fn feed(&mut self, line: &str) -> Option<Change> {
        let Some(json) = line.strip_prefix("@nix ") else {
            let plain = strip_ansi(line.trim_end());
            if plain.trim().is_empty() {
                return None;
            }
            self.messages.push((LEVEL_WARN, plain.clone()));
            return Some(Change::Plain(plain));
        };
        match serde_json::from_str::<Action>(json).ok()? {
            Action::Start { id, kind, text, fields } => self.start(id, kind, &text, &fields),
            Action::Stop { id } => match self.activities.remove(&id)? {
                Activity::Build(drv) => {
                    self.state.building.retain(|d| *d != drv);
                    Some(Change::BuildStopped(drv))
                }
                Activity::Fetch(path) => {
                    self.state.fetching = self.state.fetching.saturating_sub(1);
                    Some(Change::FetchStopped(path))
                }
                Activity::Waiting(text) => {
                    self.state.waiting = self.state.waiting.saturating_sub(1);
                    Some(Change::WaitStopped(text))
                }
                Activity::Builds | Activity::Other => None,
            },
            Action::Result { id, kind, fields } => self.result(id, kind, &fields),
            Action::Msg { level, msg } => {
                let text = strip_ansi(&msg);
                if level == LEVEL_INFO && text.trim().starts_with("/nix/store/") && text.trim_end().ends_with(".drv") {
                    self.planned += 1;
                    self.state.total = self.state.total.max(self.planned);
                }
                self.messages.push((level, text.clone()));
                (level <= LEVEL_INFO).then_some(Change::Message(level, text))
            }
            Action::Other => None,
        }
    }

    fn start(&mut self, id: u64, kind: u64, text: &str, fields: &[serde_json::Value]) -> Option<Change> {
        let first = fields.first().and_then(|f| f.as_str()).map(str::to_string);
        let (activity, change) = match (kind, first) {
            (ACT_BUILD, Some(drv)) => {
                self.state.building.push(drv.clone());
                self.state.started += 1;
                (Activity::Build(drv.clone()), Some(Change::BuildStarted(drv)))
            }
            // A substitution (from a binary cache) holds a copy of the same path: counted once.
            (ACT_SUBSTITUTE, Some(path)) => {
                self.state.fetching += 1;
                (Activity::Fetch(path.clone()), Some(Change::FetchStarted(path)))
            }
            (ACT_BUILD_WAITING, _) => {
                self.state.waiting += 1;
                let text = strip_ansi(text);
                (Activity::Waiting(text.clone()), Some(Change::WaitStarted(text)))
            }
            (ACT_BUILDS, _) => (Activity::Builds, None),
            _ => (Activity::Other, None),
        };
        self.activities.insert(id, activity);
        change
    }

    fn result(&mut self, id: u64, kind: u64, fields: &[serde_json::Value]) -> Option<Change> {
        match (self.activities.get(&id)?, kind) {
            (Activity::Build(drv), RES_BUILD_LOG_LINE | RES_POST_BUILD_LOG_LINE) => {
                let line = strip_ansi(fields.first()?.as_str()?.trim_end());
                let change = Change::LogLine(drv.clone(), line);
                let text = change.text().unwrap_or_default();
                if self.tail.len() == FAILED_LOG_LINES {
                    self.tail.pop_front();
                }
                self.tail.push_back(text.clone());
                self.state.last_line = Some(text);
                Some(change)
            }
            (Activity::Builds, RES_PROGRESS) => {
                let n = |i: usize| fields.get(i).and_then(|v| v.as_u64()).unwrap_or(0);
                let (done, expected, running, failed) = (n(0), n(1), n(2), n(3));
                let before = (self.state.done, self.state.total, self.state.failed);
                self.state.done = done;
                self.state.failed = failed;
                // The derivations Nix listed are the total. Its `expected` is not (2.34
                // counts a derivation once per output, and the next one twice between one
                // build's end and the next one's start); it is the fallback, taken while a
                // build runs, when the count is least wrong.
                if self.planned > 0 {
                    self.state.total = self.planned;
                } else if running > 0 || self.state.total == 0 {
                    self.state.total = expected;
                }
                self.state.total = self.state.total.max(done + running + failed);
                (before != (self.state.done, self.state.total, self.state.failed)).then_some(Change::Counts)
            }
            _ => None,
        }
    }

    /// Nix's stderr as text for an error and the host log: its warnings and the plain
    /// lines in order, then (when a build failed) the last lines of the builds' logs,
    /// which say why, then the errors. What will be built or fetched is in the payload's
    /// build log only.
    pub fn stderr_text(&self, failed: bool) -> String {
        let mut text = String::new();
        for (_, m) in self.messages.iter().filter(|(level, _)| (1..LEVEL_INFO).contains(level)) {
            text.push_str(m);
            text.push('\n');
        }
        if failed {
            for line in &self.tail {
                text.push_str(line);
                text.push('\n');
            }
        }
        for (_, m) in self.messages.iter().filter(|(level, _)| *level == 0) {
            text.push_str(m);
            text.push('\n');
        }
        text
    }
}

/// Watches a realisation while it runs; called from the thread that reads its stderr.
pub trait BuildWatch: Send {
    /// One line changed the state.
    fn change(&mut self, change: &Change, state: &BuildState);
    /// Nothing came for a while (about a quarter of a second): a chance to show what
    /// was held back.
    fn quiet(&mut self, _state: &BuildState) {}
    /// A line for the error when the realisation fails (where the whole log is kept).
    fn failure_note(&self) -> Option<String> {
        None
    }
}

/// Watches nothing.
pub struct Unwatched;

impl BuildWatch for Unwatched {
    fn change(&mut self, _: &Change, _: &BuildState) {}
}

/// Run `cmd` (a command given [`LOG_FORMAT_ARGS`]), telling `watch` of each change as it
/// happens. Fails as [`Cmd::run`] does, its stderr Nix's messages as text after the last
/// lines of the failed build's log.
pub fn run_realise(cmd: &Cmd, log: &HostLog, watch: &mut dyn BuildWatch) -> Result<CmdOutput> {
    let mut nix_log = NixLog::default();
    let mut out = {
        let mut on_line = |line: StderrLine<'_>| match line {
            StderrLine::Line(line) => {
                if let Some(change) = nix_log.feed(line) {
                    watch.change(&change, nix_log.state());
                }
            }
            StderrLine::Quiet => watch.quiet(nix_log.state()),
        };
        cmd.run_streaming(&mut on_line, Some(log))?
    };
    let mut stderr = nix_log.stderr_text(!out.status.success());
    if let Some(note) = watch.failure_note().filter(|_| !out.status.success()) {
        stderr.push_str(&note);
        stderr.push('\n');
    }
    out.stderr = stderr.into_bytes();
    log.command(cmd, &out);
    if !out.status.success() {
        return Err(CommandFailed {
            label: cmd.label().to_string(),
            code: out.status.code(),
            stderr: out.stderr_str(),
        }
        .into());
    }
    Ok(out)
}

/// `hello-1.0` of `/nix/store/<hash>-hello-1.0.drv`.
pub fn derivation_name(drv: &str) -> &str {
    let base = Path::new(drv).file_name().and_then(|n| n.to_str()).unwrap_or(drv);
    let base = base.strip_suffix(".drv").unwrap_or(base);
    match base.split_once('-') {
        Some((hash, name)) if hash.len() == 32 => name,
        _ => base,
    }
}

/// The text without ANSI escape sequences (Nix colours the store paths in its messages).
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\x1b' {
            out.push(c);
            continue;
        }
        match chars.peek() {
            // CSI: parameters, then one final byte in @..~.
            Some('[') => {
                chars.next();
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
            // OSC: up to BEL or ESC \.
            Some(']') => {
                while let Some(c) = chars.next() {
                    if c == '\x07' || (c == '\x1b' && chars.next_if_eq(&'\\').is_some()) {
                        break;
                    }
                }
            }
            _ => {
                chars.next();
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What Nix 2.34.8 wrote for a derivation whose builder printed a line and failed
    /// (trimmed of the progress lines that change nothing).
    const FAILED: &str = r#"@nix {"action":"start","id":1,"level":6,"parent":0,"text":"querying info about missing paths","type":0}
@nix {"action":"stop","id":1}
@nix {"action":"msg","level":3,"msg":"this derivation will be built:"}
@nix {"action":"msg","level":3,"msg":"  /nix/store/a4mv02p0vs49ywd4m7j8k4wl6bvw0jdw-badthing.drv"}
@nix {"action":"start","id":2,"level":0,"parent":0,"text":"","type":104}
@nix {"action":"result","fields":[0,1,0,0],"id":2,"type":105}
@nix {"action":"start","fields":["/nix/store/a4mv02p0vs49ywd4m7j8k4wl6bvw0jdw-badthing.drv","",1,1],"id":3,"level":3,"parent":0,"text":"building '/nix/store/a4mv02p0vs49ywd4m7j8k4wl6bvw0jdw-badthing.drv'","type":105}
@nix {"action":"result","fields":[0,1,1,0],"id":2,"type":105}
@nix {"action":"result","fields":["compiling"],"id":3,"type":101}
@nix {"action":"result","fields":["error-E0308"],"id":3,"type":101}
@nix {"action":"result","fields":[0,1,0,1],"id":2,"type":105}
@nix {"action":"stop","id":3}
@nix {"action":"stop","id":2}
@nix {"action":"msg","column":null,"file":null,"level":0,"line":null,"msg":"\u001b[31;1merror:\u001b[0m Cannot build '\u001b[35;1m/nix/store/a4mv02p0vs49ywd4m7j8k4wl6bvw0jdw-badthing.drv\u001b[0m'.\n       Reason: \u001b[31;1mbuilder failed with exit code 1\u001b[0m.","raw_msg":"Cannot build"}"#;

    fn feed_all(text: &str) -> (NixLog, Vec<Change>) {
        let mut log = NixLog::default();
        let changes = text.lines().filter_map(|l| log.feed(l)).collect();
        (log, changes)
    }

    #[test]
    fn a_failed_build_in_order() {
        let (log, changes) = feed_all(FAILED);
        let drv = "/nix/store/a4mv02p0vs49ywd4m7j8k4wl6bvw0jdw-badthing.drv".to_string();
        assert_eq!(
            changes,
            [
                Change::Message(3, "this derivation will be built:".into()),
                Change::Message(3, format!("  {drv}")),
                Change::BuildStarted(drv.clone()),
                Change::LogLine(drv.clone(), "compiling".into()),
                Change::LogLine(drv.clone(), "error-E0308".into()),
                Change::Counts,
                Change::BuildStopped(drv.clone()),
                Change::Message(
                    0,
                    format!("error: Cannot build '{drv}'.\n       Reason: builder failed with exit code 1.")
                ),
            ]
        );
        let state = log.state();
        assert_eq!((state.done, state.total, state.failed, state.started), (0, 1, 1, 1));
        assert!(state.building.is_empty());
        assert_eq!(state.last_line.as_deref(), Some("badthing> error-E0308"));
        let text = log.stderr_text(true);
        assert!(text.ends_with(&format!(
            "badthing> compiling\nbadthing> error-E0308\nerror: Cannot build '{drv}'.\n       Reason: builder failed with exit code 1.\n"
        )), "{text}");
        assert!(text.starts_with("badthing> compiling\n"), "{text}");
        assert!(!log.stderr_text(false).contains("error-E0308"));
    }

    #[test]
    fn the_count_of_builds_ignores_nix_counting_the_next_one_twice() {
        // Nix 2.34.8 building a, then b, then c (which needs both).
        let mut log = NixLog::default();
        log.feed(r#"@nix {"action":"start","id":9,"level":0,"parent":0,"text":"","type":104}"#);
        let mut seen = Vec::new();
        for (done, expected, running) in [(0, 3, 0), (0, 3, 1), (1, 4, 0), (1, 3, 1), (2, 4, 0), (2, 3, 1), (3, 4, 0)] {
            log.feed(&format!(
                r#"@nix {{"action":"result","fields":[{done},{expected},{running},0],"id":9,"type":105}}"#
            ));
            seen.push((log.state().done, log.state().total));
        }
        assert_eq!(seen, [(0, 3), (0, 3), (1, 3), (1, 3), (2, 3), (2, 3), (3, 3)]);
    }

    #[test]
    fn the_total_is_what_nix_listed_to_build() {
        // Nix 2.34.8 building one derivation with two outputs: it expects 2, then 3.
        let mut log = NixLog::default();
        log.feed(r#"@nix {"action":"msg","level":3,"msg":"this derivation will be built:"}"#);
        log.feed(r#"@nix {"action":"msg","level":3,"msg":"  /nix/store/jsm3ljj4rzhvfwhbll3z60s9p6ahbpnz-multi.drv"}"#);
        log.feed(r#"@nix {"action":"start","id":2,"level":0,"parent":0,"text":"","type":104}"#);
        for fields in ["[0,2,0,0]", "[0,2,1,0]", "[1,3,0,0]"] {
            log.feed(&format!(r#"@nix {{"action":"result","fields":{fields},"id":2,"type":105}}"#));
            assert_eq!(log.state().total, 1, "{fields}");
        }
        assert_eq!(log.state().done, 1);
    }

    #[test]
    fn plain_lines_and_unknown_actions() {
        let mut log = NixLog::default();
        assert_eq!(
            log.feed("ssh: connect to host x: Connection refused"),
            Some(Change::Plain("ssh: connect to host x: Connection refused".into()))
        );
        assert_eq!(log.feed(r#"@nix {"action":"setPhase","id":1}"#), None);
        assert_eq!(log.feed("@nix {not json"), None);
        assert_eq!(log.feed(r#"@nix {"action":"msg","level":5,"msg":"chatty"}"#), None);
        log.feed(r#"@nix {"action":"msg","level":1,"msg":"warning: \u001b[1mx\u001b[0m"}"#);
        assert_eq!(log.stderr_text(false), "ssh: connect to host x: Connection refused\nwarning: x\n");
    }

    #[test]
    fn a_path_fetched_from_a_binary_cache_counts_once() {
        // Nix 2.34.8 substituting a path from a `file://` cache.
        let path = "/nix/store/h73qr05axh89r1gqknacm6dm7r9xsp3n-subst-me";
        let mut log = NixLog::default();
        let lines = [
            format!(
                r#"@nix {{"action":"start","fields":["{path}","file:///c"],"id":8,"level":0,"parent":0,"text":"","type":108}}"#
            ),
            format!(
                r#"@nix {{"action":"start","fields":["{path}","file:///c","local"],"id":9,"level":3,"parent":8,"text":"copying path '{path}' from 'file:///c'","type":100}}"#
            ),
        ];
        let changes: Vec<Change> = lines.iter().filter_map(|l| log.feed(l)).collect();
        assert_eq!(changes, [Change::FetchStarted(path.into())]);
        assert_eq!(log.state().fetching, 1);
        assert_eq!(log.feed(r#"@nix {"action":"stop","id":9}"#), None);
        assert_eq!(log.feed(r#"@nix {"action":"stop","id":8}"#), Some(Change::FetchStopped(path.into())));
        assert_eq!(log.state().fetching, 0);
    }

    #[test]
    fn waiting_for_another_build_of_the_same_path() {
        // Nix 2.34.8, while another `nix-store --realise` builds the same derivation.
        let mut log = NixLog::default();
        let start = r#"@nix {"action":"start","id":5,"level":1,"parent":0,"text":"waiting for lock on \u001b[35;1m'/nix/store/7hj84bn7vk3yxygm1vgv0fb2za8mzi6c-waitme'\u001b[0m","type":111}"#;
        assert_eq!(
            log.feed(start),
            Some(Change::WaitStarted(
                "waiting for lock on '/nix/store/7hj84bn7vk3yxygm1vgv0fb2za8mzi6c-waitme'".into()
            ))
        );
        assert_eq!(log.state().waiting, 1);
        assert_eq!(
            log.feed(r#"@nix {"action":"stop","id":5}"#),
            Some(Change::WaitStopped(
                "waiting for lock on '/nix/store/7hj84bn7vk3yxygm1vgv0fb2za8mzi6c-waitme'".into()
            ))
        );
        assert_eq!(log.state().waiting, 0);
    }

    #[test]
    fn names_and_colours() {
        assert_eq!(derivation_name("/nix/store/a4mv02p0vs49ywd4m7j8k4wl6bvw0jdw-hello-1.0.drv"), "hello-1.0");
        assert_eq!(derivation_name("odd"), "odd");
        assert_eq!(strip_ansi("\x1b[31;1merror:\x1b[0m x \x1b]0;t\x07y"), "error: x y");
    }
}
