//! Between the domain and the records: a lane, a plan and a manifest as the run records
//! them, and back (a rerun replays the recorded plan).

use crate::catalog::{Lane, Payload};
use crate::plan::{ChangedFiles, PlannedJob, Shard};
use crate::prepare::PreparedPayload;
use crate::prepare::manifest::{ManifestMount, PayloadManifest, ResolvedMount};
use crate::results::junit::TestResults;
use crate::state::record::{
    ChangedRecord, LaneRecord, ManifestMountRecord, ManifestRecord, MountRecord, PayloadRecord, PlannedJobRecord,
    RealizedPayload, TestFailureRecord, TestsRecord,
};

impl From<&Lane> for LaneRecord {
    fn from(lane: &Lane) -> LaneRecord {
        LaneRecord {
            id: lane.id.clone(),
            description: lane.description.clone(),
            kind: lane.kind.clone(),
            payloads: lane
                .payloads
                .iter()
                .map(|p| PayloadRecord {
                    name: p.name.clone(),
                    drv_path: p.drv_path.clone(),
                    outputs: p.outputs.clone(),
                })
                .collect(),
            command: lane.command.clone(),
            paths: lane.paths.clone(),
            timeout_secs: lane.timeout_secs,
            env: lane.env.clone(),
            image: lane.image.clone(),
            retries: lane.retries,
            shards: lane.shards,
            test_filter: lane.test_filter,
        }
    }
}

impl From<&LaneRecord> for Lane {
    fn from(lane: &LaneRecord) -> Lane {
        Lane {
            id: lane.id.clone(),
            description: lane.description.clone(),
            kind: lane.kind.clone(),
            payloads: lane
                .payloads
                .iter()
                .map(|p| Payload { name: p.name.clone(), drv_path: p.drv_path.clone(), outputs: p.outputs.clone() })
                .collect(),
            command: lane.command.clone(),
            paths: lane.paths.clone(),
            timeout_secs: lane.timeout_secs,
            env: lane.env.clone(),
            image: lane.image.clone(),
            retries: lane.retries,
            shards: lane.shards,
            test_filter: lane.test_filter,
        }
    }
}

impl From<&PlannedJob> for PlannedJobRecord {
    fn from(job: &PlannedJob) -> PlannedJobRecord {
        PlannedJobRecord {
            job_id: job.job_id.clone(),
            lane: (&job.lane).into(),
            skip_reason: job.skip_reason.clone(),
            shard: job.shard.map(Shard::label),
            extra_args: job.extra_args.clone(),
        }
    }
}

impl From<&PlannedJobRecord> for PlannedJob {
    fn from(job: &PlannedJobRecord) -> PlannedJob {
        PlannedJob {
            job_id: job.job_id.clone(),
            lane: (&job.lane).into(),
            skip_reason: job.skip_reason.clone(),
            shard: job.shard.as_deref().and_then(Shard::parse),
            extra_args: job.extra_args.clone(),
        }
    }
}

impl From<&ChangedFiles> for ChangedRecord {
    fn from(c: &ChangedFiles) -> ChangedRecord {
        ChangedRecord { since: c.since.clone(), files: c.files.clone() }
    }
}

impl From<&ChangedRecord> for ChangedFiles {
    fn from(c: &ChangedRecord) -> ChangedFiles {
        ChangedFiles { since: c.since.clone(), files: c.files.clone() }
    }
}

impl From<&PayloadManifest> for ManifestRecord {
    fn from(m: &PayloadManifest) -> ManifestRecord {
        ManifestRecord {
            schema_version: m.schema_version,
            kind: m.kind.clone(),
            entrypoints: m.entrypoints.clone(),
            mounts: m
                .mounts
                .iter()
                .map(|ManifestMount { path, guest_path }| ManifestMountRecord {
                    path: path.clone(),
                    guest_path: guest_path.clone(),
                })
                .collect(),
        }
    }
}

impl From<&ResolvedMount> for MountRecord {
    fn from(m: &ResolvedMount) -> MountRecord {
        MountRecord { source: m.source.clone(), guest_path: m.guest_path.clone() }
    }
}

impl From<&PreparedPayload> for RealizedPayload {
    fn from(p: &PreparedPayload) -> RealizedPayload {
        RealizedPayload {
            name: p.name.clone(),
            drv_path: p.drv_path.clone(),
            outputs: p.outputs.clone(),
            roots: p.roots.clone(),
            mounted: p.mounted.clone(),
            duration_ms: p.duration_ms,
            built_by: p.built_by.clone(),
            waited_ms: p.waited_ms,
            manifest: p.manifest.as_ref().map(Into::into),
            extra_mounts: p.extra_mounts.iter().map(Into::into).collect(),
        }
    }
}

impl From<&TestResults> for TestsRecord {
    fn from(r: &TestResults) -> TestsRecord {
        TestsRecord {
            passed: r.passed,
            failed: r.failed,
            skipped: r.skipped,
            flaky: r.flaky,
            failures: r
                .failures
                .iter()
                .map(|f| TestFailureRecord {
                    name: f.name.clone(),
                    suite: f.suite.clone(),
                    message: f.message.clone(),
                    output: f.output.clone(),
                })
                .collect(),
            flaky_tests: r.flaky_tests.iter().map(|(_suite, name)| name.clone()).collect(),
            inconsistent: false,
            warnings: Vec::new(),
        }
    }
}
