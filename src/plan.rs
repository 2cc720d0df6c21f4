//! The plan: which lanes of the catalog become jobs of a run, and which are skipped (with
//! the reason) because no changed file matches their `paths`.

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::catalog::glob::glob_set;
use crate::catalog::{Catalog, Lane};
use crate::error;

/// One job of a run: a lane, and why it will not run if it will not.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedJob {
    pub job_id: String,
    pub lane: Lane,
    #[serde(default)]
    pub skip_reason: Option<String>,
    /// For a lane with `shards = N`: this job's part, `k` of `N` (1-based).
    #[serde(default)]
    pub shard: Option<Shard>,
    /// Arguments for this job only, after the lane's command and the run's arguments:
    /// the filter that a `rerun --failed` computed from the job's failed tests.
    #[serde(default)]
    pub extra_args: Vec<String>,
}

/// One part of a sharded lane.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    pub index: u32,
    pub count: u32,
}

impl Shard {
    /// `k/N`, as `PIKACI_SHARD` and nextest's `--partition count:k/N` take it.
    pub fn label(self) -> String {
        format!("{}/{}", self.index, self.count)
    }

    pub fn parse(text: &str) -> Option<Shard> {
        let (k, n) = text.split_once('/')?;
        let (index, count) = (k.parse().ok()?, n.parse().ok()?);
        (index >= 1 && index <= count).then_some(Shard { index, count })
    }
}

/// Files changed since a rev, as `--changed-since` found them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangedFiles {
    pub since: String,
    pub files: Vec<String>,
}

/// What the user asked to run.
#[derive(Clone, Debug, Default)]
pub struct Selection {
    pub lanes: Vec<String>,
    pub all: bool,
}

pub fn plan(catalog: &Catalog, selection: &Selection, changed: Option<&ChangedFiles>) -> Result<Vec<PlannedJob>> {
    let lanes: Vec<&Lane> = if selection.all {
        catalog.lanes.iter().collect()
    } else if selection.lanes.is_empty() {
        return Err(error::usage("no lanes named")
            .hint(format!(
                "name lanes (`pikaci run {}`), or pass `--all`; `pikaci lanes` lists them",
                first_id(catalog)
            ))
            .into());
    } else {
        let mut picked = Vec::new();
        for id in &selection.lanes {
            match catalog.get(id) {
                Some(lane) if !picked.iter().any(|l: &&Lane| l.id == *id) => picked.push(lane),
                Some(_) => {}
                None => {
                    let known: Vec<&str> = catalog.lanes.iter().map(|l| l.id.as_str()).collect();
                    return Err(error::usage(format!("unknown lane `{id}`"))
                        .hint(if known.is_empty() {
                            "the flake declares no lanes".to_string()
                        } else {
                            format!("the flake's lanes are: {}", known.join(", "))
                        })
                        .into());
                }
            }
        }
        picked
    };
    Ok(lanes.into_iter().flat_map(|lane| jobs_of(lane, skip_reason(lane, changed))).collect())
}

/// A lane's jobs: one, or one per shard (`unit-1of4` ... `unit-4of4`).
fn jobs_of(lane: &Lane, skip_reason: Option<String>) -> Vec<PlannedJob> {
    let job = |job_id: String, shard: Option<Shard>| PlannedJob {
        job_id,
        lane: lane.clone(),
        skip_reason: skip_reason.clone(),
        shard,
        extra_args: Vec::new(),
    };
    if lane.shards <= 1 {
        return vec![job(lane.id.clone(), None)];
    }
    (1..=lane.shards)
        .map(|index| job(format!("{}-{index}of{}", lane.id, lane.shards), Some(Shard { index, count: lane.shards })))
        .collect()
}

fn skip_reason(lane: &Lane, changed: Option<&ChangedFiles>) -> Option<String> {
    let changed = changed?;
    if lane.paths.is_empty() {
        return None;
    }
    let set = glob_set(&lane.paths);
    if changed.files.iter().any(|f| set.is_match(f)) {
        return None;
    }
    Some(format!("no file changed since `{}` matches its paths ({})", changed.since, lane.paths.join(", ")))
}

fn first_id(catalog: &Catalog) -> &str {
    catalog.lanes.first().map(|l| l.id.as_str()).unwrap_or("LANE")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn lane(id: &str, paths: &[&str]) -> Lane {
        Lane {
            id: id.into(),
            description: String::new(),
            kind: "staged-linux-rust".into(),
            payloads: vec![],
            command: vec!["true".into()],
            paths: paths.iter().map(|s| s.to_string()).collect(),
            timeout_secs: 10,
            env: BTreeMap::new(),
            image: None,
            retries: 0,
            shards: 1,
            test_filter: false,
        }
    }

    fn catalog() -> Catalog {
        Catalog {
            lanes: vec![lane("always", &[]), lane("core", &["crates/**", "Cargo.lock"]), lane("docs", &["docs/*.md"])],
        }
    }

    #[test]
    fn changed_files_pick_lanes_by_glob() {
        let changed = ChangedFiles { since: "main".into(), files: vec!["crates/a/src/lib.rs".into()] };
        let jobs = plan(&catalog(), &Selection { lanes: vec![], all: true }, Some(&changed)).unwrap();
        let skipped: Vec<(&str, bool)> = jobs.iter().map(|j| (j.job_id.as_str(), j.skip_reason.is_some())).collect();
        assert_eq!(skipped, [("always", false), ("core", false), ("docs", true)]);
        assert_eq!(jobs[2].skip_reason.as_deref(), Some("no file changed since `main` matches its paths (docs/*.md)"));
    }

    #[test]
    fn single_star_stays_in_one_directory() {
        let changed =
            ChangedFiles { since: "main".into(), files: vec!["docs/deep/x.md".into(), "Cargo.lock.bak".into()] };
        let jobs = plan(&catalog(), &Selection { lanes: vec![], all: true }, Some(&changed)).unwrap();
        assert!(jobs[1].skip_reason.is_some(), "Cargo.lock must not match Cargo.lock.bak");
        assert!(jobs[2].skip_reason.is_some(), "docs/*.md must not match docs/deep/x.md");
    }

    #[test]
    fn without_changed_since_nothing_is_skipped() {
        let jobs =
            plan(&catalog(), &Selection { lanes: vec!["docs".into(), "docs".into()], all: false }, None).unwrap();
        assert_eq!(jobs.len(), 1);
        assert!(jobs[0].skip_reason.is_none());
    }

    #[test]
    fn unknown_lane_lists_known_ones() {
        let err = plan(&catalog(), &Selection { lanes: vec!["nope".into()], all: false }, None).unwrap_err();
        assert_eq!(
            crate::error::render(&err),
            "error: unknown lane `nope`\nhint: the flake's lanes are: always, core, docs"
        );
        assert_eq!(crate::error::kind_of(&err).exit_code(), 2);
    }
}
