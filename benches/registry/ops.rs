//! Section `ops`: what production operations cost the small requests. Two
//! more Portcullis run on the first one's configuration (its storage, keys,
//! users and policy), one with `[metrics] enabled = false`, and the
//! `small` section's manifest GET by tag is measured on both in turn,
//! [`PAIRS`] times: the figure is the median of the pairs' ratios, so that
//! a neighbour's burst on a shared machine, which moves one run by 20%,
//! moves one pair, not the result.

use std::path::PathBuf;

use crate::Options;
use crate::report::{Better, Row};
use crate::servers::{Servers, Target};
use crate::small::{self, LoadResult, wrk};

const METRICS_NOTE: &str = "the same manifest GET by tag as in `small`, on two Portcullis of one \
    storage, keys and policy, one with `[metrics] enabled = false`, run in turn five times each: \
    the rates are the runs' medians, the ratio the median of the five pairs' ratios; what counting \
    every request costs (one labelled histogram observation, the declared body length)";

/// Measured pairs (metrics on, then off).
const PAIRS: usize = 5;

/// The first Portcullis' configuration with `extra` appended.
fn config_with(servers: &Servers, name: &str, extra: &str) -> PathBuf {
    let first =
        std::fs::read_to_string(servers.path("portcullis/portcullis.toml")).expect("config");
    let path = servers.path(&format!("portcullis/portcullis-{name}.toml"));
    std::fs::write(&path, format!("{first}{extra}")).expect("config");
    path
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

async fn manifest_get(target: &Target, token: &str) -> LoadResult {
    let url = target.at(&format!(
        "/v2/{}/manifests/{}",
        small::REPOSITORY,
        small::TAG
    ));
    let bearer = format!("Authorization: Bearer {token}");
    let accept = format!("Accept: {}", small::MANIFEST_TYPE);
    wrk(&url, &[bearer.as_str(), accept.as_str()]).await
}

pub async fn run(servers: &Servers, _options: &Options) -> Vec<Row> {
    let client = reqwest::Client::new();
    let (_on_proc, on) = servers.start_portcullis_on(
        &config_with(servers, "metrics-on", ""),
        "portcullis (metrics on)",
        None,
    );
    let (_off_proc, off) = servers.start_portcullis_on(
        &config_with(servers, "metrics-off", "[metrics]\nenabled = false\n"),
        "portcullis (metrics off)",
        None,
    );
    let scope = format!("repository:{}:pull,push", small::REPOSITORY);
    let token = servers.portcullis.token(&client, &scope).await;
    small::push_image(&client, &servers.portcullis, &token).await;
    let (mut with, mut without, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..PAIRS {
        let a = manifest_get(&on, &token).await.requests_per_sec;
        let b = manifest_get(&off, &token).await.requests_per_sec;
        ratios.push(a / b);
        with.push(a);
        without.push(b);
    }
    vec![
        Row::new(
            "manifest GET by tag, 64 connections, with metrics",
            "req/s",
            median(with),
            Better::Higher,
        )
        .against(off.name, median(without))
        .paired_ratio(median(ratios))
        .target(0.95)
        .note(METRICS_NOTE),
    ]
}
