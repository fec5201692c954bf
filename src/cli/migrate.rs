//! `portcullis migrate --from-v1`: copies a legacy v1 registry's
//! repositories into the built-in v2 storage (`portcullis::migrate`), with a
//! progress bar on a terminal and one line per layer and tag otherwise (a
//! CI log). The report goes to standard output; the status is 1 when
//! anything could not be copied, so a script can run it until it is 0.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use portcullis::migrate::{self, Event, Legacy, Options};

use super::{Failure, load_config};

#[derive(Args)]
pub struct MigrateArgs {
    /// The legacy registry's address (`http://host:port`); without it,
    /// `v1.backend` of the configuration.
    #[arg(long, value_name = "URL")]
    from_v1: Option<String>,
    /// Repositories to copy, as policy patterns (`team/**`, `library/*`);
    /// repeatable. Without it: every repository the legacy registry lists.
    #[arg(long = "repos", value_name = "GLOB")]
    repos: Vec<String>,
    /// Layers copied at once.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    jobs: u16,
    /// Replace a v2 tag that already points at another image (by default
    /// such a tag is left alone and reported).
    #[arg(long)]
    overwrite: bool,
    /// Keep v1's `library/` prefix: `busybox` (v1's `library/busybox`)
    /// goes to `library/busybox` on v2 instead of `busybox`, the name an
    /// engine's `docker pull HOST/busybox` asks v2 for.
    #[arg(long)]
    keep_library_prefix: bool,
    /// Configuration file (for the storage location and `v1.backend`).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Storage directory, overriding the configuration.
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

pub fn run(args: MigrateArgs) -> Result<ExitCode, Failure> {
    let config = load_config(args.config.as_deref())?;
    let url = args.from_v1.or(config.v1.backend).ok_or_else(|| {
        Failure::setup("no legacy registry: give --from-v1 URL or set v1.backend")
    })?;
    let source = Legacy::new(&url).map_err(Failure::setup)?;
    let options = Options {
        repos: args.repos,
        jobs: args.jobs.into(),
        overwrite: args.overwrite,
        keep_library: args.keep_library_prefix,
    };
    super::runtime()?.block_on(async {
        let storage = super::open_storage(&config.storage, args.data_dir).await?;
        let progress = Progress::new();
        let events = {
            let progress = progress.clone();
            Arc::new(move |event| progress.show(event))
        };
        let report = migrate::migrate(&source, &storage, &options, events)
            .await
            .map_err(Failure::refused)?;
        progress.bar.finish_and_clear();
        println!(
            "copied {} layers ({} bytes); {} copied by an earlier run",
            report.layers_copied, report.bytes_copied, report.layers_skipped
        );
        println!(
            "migrated {} tags; {} migrated by an earlier run",
            report.tags_migrated.len(),
            report.tags_current
        );
        for (what, why) in &report.tags_skipped {
            println!("left alone {what}: {why}");
        }
        for (what, why) in &report.failed {
            println!("failed {what}: {why}");
        }
        Ok(match report.failed.is_empty() {
            true => ExitCode::SUCCESS,
            false => ExitCode::FAILURE,
        })
    })
}

/// A bytes bar on a terminal; per-item lines on standard error where no
/// bar is drawn, so that a log shows what happened.
#[derive(Clone)]
struct Progress {
    bar: ProgressBar,
}

impl Progress {
    fn new() -> Self {
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .expect("a valid template")
            .progress_chars("=> "),
        );
        Self { bar }
    }

    fn show(&self, event: Event) {
        let line = match event {
            Event::Planned {
                tags,
                layers,
                bytes,
                recorded,
            } => {
                self.bar.set_length(bytes);
                self.bar.set_message(format!("{layers} layers"));
                format!(
                    "plan: {tags} tags, {layers} layers to copy ({bytes} bytes), {recorded} copied before"
                )
            }
            Event::Read(n) => {
                self.bar.inc(n);
                return;
            }
            Event::LayerCopied {
                image,
                bytes,
                digest,
            } => format!("copied {image} ({bytes} bytes) as {digest}"),
            Event::TagMigrated { repo, tag, digest } => format!("migrated {repo}:{tag} {digest}"),
            Event::TagCurrent { repo, tag } => format!("up to date {repo}:{tag}"),
            Event::TagSkipped { repo, tag, why } => format!("left alone {repo}:{tag}: {why}"),
            Event::Failed { what, why } => format!("failed {what}: {why}"),
        };
        if self.bar.is_hidden() {
            eprintln!("{line}");
        } else {
            self.bar.println(line);
        }
    }
}
