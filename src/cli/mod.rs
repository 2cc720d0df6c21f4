//! The command line: arguments (clap) and one function per command. Library code does not
//! print; these functions do.

pub(crate) mod inspect;
pub mod output;
mod progress;
mod terminal;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};

use crate::catalog::FlakeSource;
use crate::error::exit;
use crate::executor::RuntimeChoice;
use crate::plan::Selection;
use crate::run::{self, RerunRequest, RunRequest};
use crate::state::{RunRecord, StateRoot};
use crate::{doctor, gc};
use output::OutputFormat;

#[derive(Debug, Parser)]
#[command(
    name = "pikaci",
    version,
    about = "Local-first CI for Rust workspaces on Nix: run the lanes a flake declares, isolated in Incus or bubblewrap"
)]
pub struct Cli {
    /// The state root (runs, logs, snapshots). Default: `.pikaci` beside the flake.
    #[arg(long, global = true, env = "PIKACI_STATE_ROOT", value_name = "DIR")]
    pub state_root: Option<PathBuf>,

    /// The flake that declares the lanes: a directory or a `path:` URL. Default: the
    /// nearest directory upwards with a `flake.nix`.
    #[arg(long, global = true, value_name = "FLAKE")]
    pub flake: Option<String>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// List the lanes the flake declares.
    Lanes {
        #[arg(long)]
        json: bool,
        /// Evaluate the flake even when the catalog of this source is cached.
        #[arg(long)]
        refresh: bool,
    },
    /// Run lanes.
    Run(RunArgs),
    /// Run the same plan again, on the same snapshot.
    Rerun {
        /// A run id, a unique prefix of one, or `latest`.
        run: String,
        /// Only the jobs that failed, timed out, errored or were interrupted.
        #[arg(long)]
        failed: bool,
        #[arg(long, value_enum)]
        runtime: Option<RuntimeChoice>,
        #[arg(long, value_name = "N", value_parser = job_count)]
        jobs: Option<usize>,
        #[arg(long, value_enum, default_value = "human")]
        output: OutputFormat,
    },
    /// List the recorded runs, newest first.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show a run and its jobs.
    Status {
        /// A run id, a unique prefix of one, or `latest`.
        run: String,
        #[arg(long)]
        json: bool,
    },
    /// Print a run's logs (the guest output of each job, or `--host` for pikaci's side).
    Logs {
        /// A run id, a unique prefix of one, or `latest`.
        run: String,
        /// Only this job.
        #[arg(long)]
        job: Option<String>,
        /// Print `host.log` (every nix and runtime call, with durations) instead.
        #[arg(long, conflicts_with = "payload")]
        host: bool,
        /// Print the build log of this payload (what Nix printed while building it for
        /// the job) instead.
        #[arg(long, value_name = "NAME")]
        payload: Option<String>,
        /// Keep printing as the run goes on, until it ends.
        #[arg(long, short = 'f')]
        follow: bool,
    },
    /// Remove old runs (their records, logs and GC roots), unused snapshots and
    /// instances left behind by killed runs. Live runs are never touched.
    Gc {
        /// How many of the newest runs to keep.
        #[arg(long, default_value_t = 10, value_name = "N")]
        keep: usize,
    },
    /// Check nix, the runtimes, the guest image and SSH; say how to fix what is missing.
    Doctor {
        /// Also check this SSH host: ssh, nix there (version), its Incus, the guest
        /// image there, free disk under the remote state root.
        #[arg(long, value_name = "HOST", value_parser = crate::tools::ssh::parse_host)]
        remote: Option<String>,
    },
    /// Serve a read-only web page of the runs (and their JSON under `/api/`).
    Serve {
        /// Where to listen. Anything but a loopback address is reachable from other
        /// machines: put it behind a reverse proxy with authentication (docs/web.md).
        #[arg(long, value_name = "ADDR:PORT", default_value = crate::serve::DEFAULT_LISTEN)]
        listen: String,
    },
    /// Take (or reuse) the source snapshot a run would see, and print its directory.
    Snapshot,
    /// Manage the Incus guest image.
    #[command(subcommand)]
    Image(ImageCommand),
    /// Fill the state root's warm pool of started Incus instances (what a run's end
    /// starts in the background; docs/runtimes.md).
    #[command(hide = true)]
    PoolRefill {
        #[arg(long)]
        image: String,
        #[arg(long)]
        size: usize,
        /// Seconds an unclaimed instance waits for a job.
        #[arg(long)]
        idle: u64,
        /// The pool of this SSH host's Incus.
        #[arg(long)]
        remote: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Build pikaci's default guest image (a static busybox) and import it into Incus;
    /// or import an image tarball built elsewhere (e.g. by the flake's `guest-image`).
    Import {
        /// The alias to import under.
        #[arg(long, default_value = crate::executor::runtime::incus::DEFAULT_IMAGE)]
        alias: String,
        /// A unified image tarball (metadata.yaml + rootfs/) to import instead of building.
        #[arg(long, value_name = "TARBALL")]
        from: Option<PathBuf>,
        /// Replace an existing image with the same alias.
        #[arg(long)]
        force: bool,
        /// Import it into the Incus of this SSH host instead (the tarball is built or read
        /// here and sent there).
        #[arg(long, value_name = "HOST")]
        remote: Option<String>,
    },
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Lanes to run.
    pub lanes: Vec<String>,
    /// Run every lane.
    #[arg(long, conflicts_with = "lanes")]
    pub all: bool,
    /// Run only the lanes whose `paths` match a file changed since this git rev (work tree
    /// included); the others are recorded as skipped.
    #[arg(long, value_name = "REV")]
    pub changed_since: Option<String>,
    #[arg(long, value_enum, default_value = "auto")]
    pub runtime: RuntimeChoice,
    /// Run on this SSH host (`localhost` means this machine, without SSH), or on a host
    /// the hosts file declares. Repeat it to spread the jobs over several hosts; a host
    /// whose Incus is a cluster member brings every member.
    #[arg(long, value_name = "HOST", value_parser = crate::tools::ssh::parse_host)]
    pub remote: Vec<String>,
    /// The hosts file (`[hosts.NAME]` tables: `ssh`, `slots`, `members`). Default:
    /// `pikaci.toml` beside the flake, if there is one.
    #[arg(long, value_name = "FILE")]
    pub hosts: Option<PathBuf>,
    /// The Incus image for lanes that do not name one.
    #[arg(long, value_name = "ALIAS")]
    pub image: Option<String>,
    /// How many jobs run at once. Default: the number of CPUs.
    #[arg(long, short = 'j', value_name = "N", value_parser = job_count)]
    pub jobs: Option<usize>,
    #[arg(long, value_enum, default_value = "human")]
    pub output: OutputFormat,
    /// Evaluate the flake even when the catalog of this source is cached.
    #[arg(long)]
    pub refresh: bool,
    /// Arguments appended to the command of each selected lane, for this run only
    /// (recorded, and replayed by `rerun`): `pikaci run unit -- --exact greet::tests::world`.
    #[arg(last = true, value_name = "ARGS")]
    pub args: Vec<String>,
}

/// `--jobs N`: a whole number of at least 1.
fn job_count(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("at least one job must run at a time".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("`{text}` is not a whole number")),
    }
}

impl Cli {
    /// Whether the command only prints what it reads (a closed stdout may end it).
    pub fn only_prints(&self) -> bool {
        matches!(
            self.command,
            Command::Lanes { .. } | Command::List { .. } | Command::Status { .. } | Command::Logs { .. }
        )
    }
}

/// Run the parsed command; the exit code on success.
pub fn run(cli: Cli) -> Result<i32> {
    match cli.command {
        Command::Lanes { json, refresh } => {
            let flake = FlakeSource::resolve(cli.flake.as_deref())?;
            let state = StateRoot::resolve(cli.state_root.as_deref(), Some(&flake.dir))?;
            let catalog = run::load_catalog(&flake, &state, refresh)?;
            inspect::print_lanes(&catalog, json)?;
            Ok(exit::SUCCESS)
        }
        Command::Run(args) => start_run(cli.flake.as_deref(), cli.state_root.as_deref(), args),
        Command::Rerun { run, failed, runtime, jobs, output } => {
            let state = StateRoot::resolve(cli.state_root.as_deref(), flake_dir(cli.flake.as_deref())?.as_deref())?;
            let run_id = state.find_run(&run)?;
            let request = RerunRequest { state, run_id, failed_only: failed, runtime, parallelism: jobs };
            let record = run::rerun(request, output::reporter(output))?;
            finish(&record, output)
        }
        Command::List { json } => {
            let state = StateRoot::resolve(cli.state_root.as_deref(), flake_dir(cli.flake.as_deref())?.as_deref())?;
            inspect::list(&state, json)?;
            Ok(exit::SUCCESS)
        }
        Command::Status { run, json } => {
            let state = StateRoot::resolve(cli.state_root.as_deref(), flake_dir(cli.flake.as_deref())?.as_deref())?;
            inspect::status(&state, &run, json)
        }
        Command::Logs { run, job, host, payload, follow } => {
            let state = StateRoot::resolve(cli.state_root.as_deref(), flake_dir(cli.flake.as_deref())?.as_deref())?;
            let which = match (&payload, host) {
                (Some(name), _) => inspect::LogFile::Payload(name),
                (None, true) => inspect::LogFile::Host,
                (None, false) => inspect::LogFile::Guest,
            };
            inspect::logs(&state, &run, job.as_deref(), which, follow)?;
            Ok(exit::SUCCESS)
        }
        Command::Gc { keep } => {
            let state = StateRoot::resolve(cli.state_root.as_deref(), flake_dir(cli.flake.as_deref())?.as_deref())?;
            collect_garbage(&state, keep)
        }
        Command::Doctor { remote } => {
            let state = StateRoot::resolve(cli.state_root.as_deref(), flake_dir(cli.flake.as_deref())?.as_deref())?;
            Ok(doctor::run(&state, remote.as_deref()))
        }
        Command::Serve { listen } => {
            let state = StateRoot::resolve(cli.state_root.as_deref(), flake_dir(cli.flake.as_deref())?.as_deref())?;
            crate::serve::serve(state, &listen)?;
            Ok(exit::SUCCESS)
        }
        Command::Snapshot => {
            let flake = FlakeSource::resolve(cli.flake.as_deref())?;
            let state = StateRoot::resolve(cli.state_root.as_deref(), Some(&flake.dir))?;
            print_snapshot(&flake, &state)
        }
        Command::PoolRefill { image, size, idle, remote } => {
            let state_root =
                cli.state_root.as_deref().ok_or_else(|| anyhow::anyhow!("`pool-refill` needs `--state-root`"))?;
            let settings =
                crate::executor::runtime::incus::PoolSettings { size, idle: std::time::Duration::from_secs(idle) };
            crate::executor::runtime::incus::refill_pool(state_root, remote.as_deref(), &image, settings)?;
            Ok(exit::SUCCESS)
        }
        Command::Image(ImageCommand::Import { alias, from, force, remote }) => {
            import_image(&alias, from.as_deref(), force, remote.as_deref())
        }
    }
}

fn start_run(flake: Option<&str>, state_root: Option<&std::path::Path>, args: RunArgs) -> Result<i32> {
    let flake = FlakeSource::resolve(flake)?;
    let state = StateRoot::resolve(state_root, Some(&flake.dir))?;
    let parallelism = args.jobs.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
    let request = RunRequest {
        flake,
        state,
        selection: Selection { lanes: args.lanes, all: args.all },
        changed_since: args.changed_since,
        runtime: args.runtime,
        remotes: args.remote,
        hosts_file: args.hosts,
        image: args.image,
        parallelism,
        args: args.args,
        refresh: args.refresh,
    };
    let record = run::run(request, output::reporter(args.output))?;
    finish(&record, args.output)
}

fn collect_garbage(state: &StateRoot, keep: usize) -> Result<i32> {
    let report = gc::collect_waiting(state, keep, &|lock| {
        eprintln!(
            "pikaci: waiting for `{}`: a run of this state root is starting (taking its snapshot, \
             evaluating the flake); gc goes on when it has started. Ctrl-C stops waiting.",
            lock.display()
        )
    })?;
    println!("{report}");
    Ok(exit::SUCCESS)
}

fn print_snapshot(flake: &FlakeSource, state: &StateRoot) -> Result<i32> {
    let (snap, _guard) = run::take_snapshot(flake, state)?;
    println!("{}", snap.dir.display());
    eprintln!(
        "snapshot {}: {} files, {} bytes{}",
        snap.id,
        snap.files,
        snap.bytes,
        if snap.reused { " (unchanged, reused)" } else { "" }
    );
    Ok(exit::SUCCESS)
}

fn import_image(alias: &str, from: Option<&std::path::Path>, force: bool, remote: Option<&str>) -> Result<i32> {
    let fingerprint = crate::executor::runtime::incus::import_image(alias, from, force, remote)?;
    match remote {
        Some(host) => println!("imported image `{alias}` ({fingerprint}) on `{host}`"),
        None => println!("imported image `{alias}` ({fingerprint})"),
    }
    Ok(exit::SUCCESS)
}

/// The flake directory, when there is one: `--flake`, or the nearest `flake.nix` upwards.
/// Commands that only read the state root work without a flake.
fn flake_dir(flake: Option<&str>) -> Result<Option<PathBuf>> {
    match flake {
        Some(_) => Ok(Some(FlakeSource::resolve(flake)?.dir)),
        None => Ok(FlakeSource::resolve(None).ok().map(|f| f.dir)),
    }
}

fn finish(record: &RunRecord, format: OutputFormat) -> Result<i32> {
    if format == OutputFormat::Json {
        println!("{}", serde_json::to_string_pretty(record)?);
    }
    Ok(record.status.exit_code())
}
