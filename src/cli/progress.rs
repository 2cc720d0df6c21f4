//! Payload builds in the human output. On a terminal, one line per payload building, drawn
//! in place (indicatif): the job and payload, a spinner, the time so far, the derivations
//! built of how many, those building now, and the latest line of a build's log. Elsewhere
//! (a CI log, a pipe), one plain line per `payload_build_*` event: those come when a
//! derivation's build starts or ends, and at most once a second for a new log line
//! (`prepare::progress`). Either way a payload's build ends with one kept line.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::output::seconds;
use crate::state::events::{BuildStatus, Event};

/// The lines drawn in place on a terminal.
pub struct LiveBuilds {
    multi: MultiProgress,
    bars: Mutex<HashMap<(String, String), ProgressBar>>,
}

impl LiveBuilds {
    pub fn new() -> LiveBuilds {
        LiveBuilds {
            multi: MultiProgress::with_draw_target(ProgressDrawTarget::stdout()),
            bars: Mutex::new(HashMap::new()),
        }
    }

    fn bars(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), ProgressBar>> {
        self.bars.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Run `print` (which writes to stdout) with the drawn lines out of its way. Never
    /// call this while holding a lock that `print` takes.
    pub fn print<R>(&self, print: impl FnOnce() -> R) -> R {
        if self.bars().is_empty() { print() } else { self.multi.suspend(print) }
    }

    /// Draw a `payload_build_*` event; returns the line to keep, when it ends a build.
    pub fn event(&self, event: &Event) -> Option<String> {
        match event {
            Event::PayloadBuildStarted { job_id, payload, .. } => {
                let style = ProgressStyle::with_template("{spinner} {prefix} {elapsed:>4} {wide_msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner());
                let bar = self.multi.add(ProgressBar::new_spinner().with_style(style));
                bar.set_prefix(format!("   BUILD {job_id} {payload}"));
                bar.set_message("starting");
                bar.enable_steady_tick(Duration::from_millis(200));
                self.bars().insert((job_id.clone(), payload.clone()), bar);
                None
            }
            Event::PayloadBuildProgress { job_id, payload, .. } => {
                if let Some(bar) = self.bars().get(&(job_id.clone(), payload.clone())) {
                    bar.set_message(progress_text(event));
                }
                None
            }
            Event::PayloadBuildFinished { job_id, payload, .. } => {
                if let Some(bar) = self.bars().remove(&(job_id.clone(), payload.clone())) {
                    bar.finish_and_clear();
                    self.multi.remove(&bar);
                }
                plain_line(event)
            }
            _ => None,
        }
    }
}

/// `1/3 built · building b, c · c> compiling`, from a progress event.
fn progress_text(event: &Event) -> String {
    let Event::PayloadBuildProgress { done, total, building, fetching, waiting, line, .. } = event else {
        return String::new();
    };
    let mut parts = Vec::new();
    if *total > 0 {
        parts.push(format!("{done}/{total} built"));
    }
    if !building.is_empty() {
        parts.push(format!("building {}", building.join(", ")));
    }
    if *waiting {
        parts.push("waiting for another build of it (Nix's lock)".to_string());
    }
    if *fetching > 0 {
        parts.push(format!("fetching {fetching} path{}", if *fetching == 1 { "" } else { "s" }));
    }
    if let Some(line) = line {
        parts.push(line.clone());
    }
    parts.join(" · ")
}

/// The plain line of a `payload_build_*` event (for output that is not a terminal).
pub fn plain_line(event: &Event) -> Option<String> {
    match event {
        Event::PayloadBuildStarted { job_id, payload, log, .. } => {
            Some(format!("   BUILD {job_id} {payload}: started, log `{log}`"))
        }
        Event::PayloadBuildProgress { job_id, payload, elapsed_ms, .. } => {
            Some(format!("   BUILD {job_id} {payload} {}: {}", whole_seconds(*elapsed_ms), progress_text(event)))
        }
        Event::PayloadBuildFinished { job_id, payload, status, built, duration_ms, log, .. } => {
            let what = match status {
                BuildStatus::Built => {
                    format!("{built} derivation{} built", if *built == 1 { "" } else { "s" })
                }
                BuildStatus::Failed => format!("failed, log `{log}`"),
                BuildStatus::Interrupted => "interrupted".to_string(),
            };
            Some(format!("   BUILD {job_id} {payload} {}: {what}", seconds(*duration_ms)))
        }
        _ => None,
    }
}

fn whole_seconds(ms: u64) -> String {
    format!("{}s", ms / 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_lines() {
        let progress = Event::PayloadBuildProgress {
            run_id: "r".into(),
            job_id: "unit".into(),
            payload: "workspace-build".into(),
            done: 1,
            total: 3,
            building: vec!["b".into(), "c".into()],
            fetching: 0,
            waiting: false,
            line: Some("c> compiling".into()),
            elapsed_ms: 12_345,
            at: "t".into(),
        };
        assert_eq!(
            plain_line(&progress).unwrap(),
            "   BUILD unit workspace-build 12s: 1/3 built · building b, c · c> compiling"
        );
        let finished = Event::PayloadBuildFinished {
            run_id: "r".into(),
            job_id: "unit".into(),
            payload: "workspace-build".into(),
            status: BuildStatus::Failed,
            built: 0,
            duration_ms: 2_000,
            log: "/s/jobs/unit/payload-workspace-build.log".into(),
            at: "t".into(),
        };
        assert_eq!(
            plain_line(&finished).unwrap(),
            "   BUILD unit workspace-build 2.00s: failed, log `/s/jobs/unit/payload-workspace-build.log`"
        );
    }
}
