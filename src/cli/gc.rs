//! `portcullis gc` and `portcullis fsck`: garbage collection and the
//! store's check (`portcullis::storage::{gc, fsck}`), beside running
//! servers, with a progress bar on a terminal and plain lines otherwise
//! (a CI log). The report goes to standard output.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use portcullis::config::Config;
use portcullis::reference::RepoName;
use portcullis::storage::{Storage, fsck, gc};

use super::{Failure, load_config};

#[derive(Args)]
pub struct StoreArgs {
    /// Configuration file (for the storage and its servers' cache staleness).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Storage directory, overriding the configuration.
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

#[derive(Args)]
pub struct GcArgs {
    /// Report what would be removed; remove nothing.
    #[arg(long)]
    dry_run: bool,
    /// Remove manifests no tag reaches too (by default only blobs and
    /// links no manifest references go).
    #[arg(long)]
    delete_untagged: bool,
    /// Nothing written this recently is removed: longer than any push takes
    /// from its first blob to its manifest.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    grace: Duration,
    #[command(flatten)]
    store: StoreArgs,
}

#[derive(Args)]
pub struct FsckArgs {
    /// Remove what is broken (corrupt blobs, links, tags and entries that
    /// point at nothing) so that clients push it again.
    #[arg(long)]
    repair: bool,
    #[command(flatten)]
    store: StoreArgs,
}

/// The configuration and its storage, read without the metadata cache:
/// a command that walks the whole store must see it as it is.
fn open(runtime: &tokio::runtime::Runtime, args: StoreArgs) -> Result<(Config, Storage), Failure> {
    let config = load_config(args.config.as_deref())?;
    let storage = runtime
        .block_on(super::open_storage(&config.storage, args.data_dir))?
        .with_cache(Duration::ZERO, 0);
    Ok((config, storage))
}

pub fn run_gc(args: GcArgs) -> Result<ExitCode, Failure> {
    let runtime = super::runtime()?;
    let (config, storage) = open(&runtime, args.store)?;
    let options = gc::Options {
        dry_run: args.dry_run,
        delete_untagged: args.delete_untagged,
        grace: args.grace,
        // A little past the servers' staleness: the pause must outlast it.
        settle: Duration::from_secs(config.storage.staleness_secs) + Duration::from_secs(1),
    };
    let bar = Bar::new();
    let show = |event: gc::Event| match event {
        gc::Event::Marking { repositories } => {
            bar.start(repositories as u64, "marking repositories")
        }
        gc::Event::Marked { .. } => bar.inc(1),
        gc::Event::Settling(pause) => bar.say(format!(
            "waiting {}s for the servers' caches (storage.staleness_secs)",
            pause.as_secs()
        )),
        gc::Event::Sweeping { blobs } => bar.start(blobs as u64, "sweeping blobs"),
        gc::Event::Swept { blobs } => bar.inc(blobs as u64),
    };
    let report = runtime
        .block_on(storage.collect_garbage(&options, &show))
        .map_err(Failure::refused)?;
    bar.done();
    let verb = if args.dry_run {
        "would remove"
    } else {
        "removed"
    };
    for manifest in &report.manifests_removed {
        println!("{verb} manifest {manifest}");
    }
    let grace = humantime::format_duration(args.grace);
    println!(
        "{} repositories: {} manifests kept, {verb} {} manifests and {} blob links; {} unreferenced blob links younger than {grace} kept",
        report.repositories,
        report.manifests_kept,
        report.manifests_removed.len(),
        report.links_removed,
        report.young_links
    );
    println!(
        "{} blobs: {} kept, {verb} {} ({} bytes), {} unreferenced but younger than {grace} (left for a later run)",
        report.blobs, report.blobs_kept, report.blobs_removed, report.bytes_removed, report.young,
    );
    Ok(ExitCode::SUCCESS)
}

pub fn run_fsck(args: FsckArgs) -> Result<ExitCode, Failure> {
    let runtime = super::runtime()?;
    let (config, storage) = open(&runtime, args.store)?;
    let caches: Vec<_> = config
        .upstream
        .iter()
        .filter(|u| u.cache.is_some())
        .collect();
    let fetched_later = |repo: &RepoName| caches.iter().any(|u| u.routes(repo.as_str()));
    let options = fsck::Options {
        repair: args.repair,
        fetched_later: &fetched_later,
    };
    let bar = Bar::new();
    let show = |event: fsck::Event| match event {
        fsck::Event::Hashing { bytes, .. } => bar.start_bytes(bytes, "hashing blobs"),
        fsck::Event::Hashed { bytes } => bar.inc(bytes),
        fsck::Event::Checking { repositories } => {
            bar.start(repositories as u64, "checking repositories")
        }
        fsck::Event::Checked { .. } => bar.inc(1),
        fsck::Event::Found(problem) => bar.say(problem.to_string()),
    };
    let report = runtime
        .block_on(storage.check(&options, &show))
        .map_err(Failure::refused)?;
    bar.done();
    let repaired = report.problems.iter().filter(|(_, r)| *r).count();
    let left = report.problems.len() - repaired;
    for (problem, was_repaired) in &report.problems {
        let status = if *was_repaired { "repaired" } else { "found" };
        println!("{status}: {problem}");
    }
    println!(
        "{} blobs ({} bytes) hashed, {} repositories, {} links, {} manifests checked: {} problems, {repaired} repaired",
        report.blobs,
        report.bytes,
        report.repositories,
        report.links,
        report.manifests,
        report.problems.len()
    );
    if left > 0 && !args.repair {
        let fixable = report
            .problems
            .iter()
            .filter(|(p, _)| p.repairable())
            .count();
        if fixable > 0 {
            println!("{fixable} of them `portcullis fsck --repair` removes");
        }
    }
    Ok(match left {
        0 => ExitCode::SUCCESS,
        _ => ExitCode::FAILURE,
    })
}

/// A bar on a terminal; on anything else, one line per phase and problem.
struct Bar(ProgressBar);

impl Bar {
    fn new() -> Self {
        Self(ProgressBar::with_draw_target(
            None,
            ProgressDrawTarget::stderr(),
        ))
    }

    fn start(&self, len: u64, what: &'static str) {
        self.begin(len, what, "{msg} [{bar:30}] {pos}/{len} eta {eta}");
    }

    fn start_bytes(&self, len: u64, what: &'static str) {
        self.begin(
            len,
            what,
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        );
    }

    fn begin(&self, len: u64, what: &'static str, template: &str) {
        self.0.reset();
        self.0.set_style(
            ProgressStyle::with_template(template)
                .expect("a valid template")
                .progress_chars("=> "),
        );
        self.0.set_length(len);
        self.0.set_message(what);
        if self.0.is_hidden() {
            eprintln!("{what}: {len}");
        }
    }

    fn inc(&self, n: u64) {
        self.0.inc(n);
    }

    fn say(&self, line: String) {
        if self.0.is_hidden() {
            eprintln!("{line}");
        } else {
            self.0.println(line);
        }
    }

    fn done(&self) {
        self.0.finish_and_clear();
    }
}
