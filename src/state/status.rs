//! Status derived from the records, in one place for every reader (`status`, `list`,
//! `rerun --failed`, `gc`, the web page): a `running` record whose process is gone was
//! interrupted, and the run's status follows from its jobs'.

use super::StateRoot;
use super::record::{JobStatus, JobSummary, PlannedJobRecord, RunRecord, RunStatus};

impl JobStatus {
    /// Whether `rerun --failed` replays a job that ended so: it did not pass, and it was
    /// not skipped on purpose.
    pub fn needs_rerun(self) -> bool {
        matches!(self, JobStatus::Failed | JobStatus::TimedOut | JobStatus::Error | JobStatus::Interrupted)
    }
}

impl RunStatus {
    /// A finished run's status from its jobs: interrupted, then error, then failed (the
    /// most serious outcome decides, as the exit code does).
    pub fn from_jobs(jobs: &[JobSummary], interrupted: bool) -> RunStatus {
        let has = |s: JobStatus| jobs.iter().any(|j| j.status == s);
        if interrupted || has(JobStatus::Interrupted) {
            RunStatus::Interrupted
        } else if has(JobStatus::Error) {
            RunStatus::Error
        } else if has(JobStatus::Failed) || has(JobStatus::TimedOut) {
            RunStatus::Failed
        } else {
            RunStatus::Passed
        }
    }
}

impl RunRecord {
    /// The run as it is now: a `running` record whose process is gone (its lock is free)
    /// was interrupted, and so was every job of it that had not finished.
    pub fn effective(mut self, state: &StateRoot) -> RunRecord {
        if self.status == RunStatus::Running && !state.run_is_live(&self.run_id) {
            self.status = RunStatus::Interrupted;
            self.message.get_or_insert_with(|| "the pikaci process running this run died".to_string());
            for job in &mut self.jobs {
                if !job.status.is_final() {
                    job.status = JobStatus::Interrupted;
                }
            }
        }
        self
    }

    /// The planned jobs that `rerun --failed` replays (see [`JobStatus::needs_rerun`]);
    /// read on an [`RunRecord::effective`] record, so that the jobs of a run whose process
    /// died are among them.
    pub fn jobs_to_rerun(&self) -> Vec<&PlannedJobRecord> {
        self.plan.iter().filter(|p| self.job(&p.job_id).is_some_and(|j| j.status.needs_rerun())).collect()
    }
}
