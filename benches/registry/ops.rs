//! Section `ops`: what production operations cost the small requests. Two
//! more Portcullis run on the first one's configuration (its storage, keys,
//! users and policy), one with `[metrics] enabled = false`, and the
//! `small` section's manifest GET by tag is measured on both in turn,
//! [`PAIRS`] times: the figure is the median of the pairs' ratios, so that
//! a neighbour's burst on a shared machine, which moves one run by 20%,
//! moves one pair, not the result. The audit trail is measured the same
//! way, against a third Portcullis writing it to a file: on token issuance,
//! which writes a line per request, and on the manifest GET, which writes
//! none.

use std::path::PathBuf;

use crate::Options;
use crate::report::{Better, Row};
use crate::servers::{Servers, Target};
use crate::small::{self, LoadResult, wrk};

const METRICS_NOTE: &str = "the same manifest GET by tag as in `small`, on two Portcullis of one \
    storage, keys and policy, one with `[metrics] enabled = false`, run in turn five times each: \
    the rates are the runs' medians, the ratio the median of the five pairs' ratios; what counting \
    every request costs (one labelled histogram observation, the declared body length)";

const AUDIT_NOTE: &str = "as the metrics row, three pairs: a Portcullis writing the audit trail \
    to a file (`[audit] file`) against one without; token issuance writes one JSON line per \
    request (through a bounded queue to one writer task), the manifest GET none";

/// Measured pairs (metrics on, then off).
const PAIRS: usize = 5;
/// Measured pairs for each audit row.
const AUDIT_PAIRS: usize = 3;

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
    let audit_file = servers.path("portcullis/audit.jsonl");
    let (_audit_proc, audited) = servers.start_portcullis_on(
        &config_with(
            servers,
            "audit-on",
            &format!("[audit]\nfile = {audit_file:?}\n"),
        ),
        "portcullis (audit on)",
        None,
    );
    let (mut with, mut without, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..PAIRS {
        let a = manifest_get(&on, &token).await.requests_per_sec;
        let b = manifest_get(&off, &token).await.requests_per_sec;
        ratios.push(a / b);
        with.push(a);
        without.push(b);
    }
    let mut rows = Vec::new();
    let token_url = |target: &Target| {
        format!(
            "{}/token?service={}&scope=repository:{}:pull",
            target.url,
            crate::servers::SERVICE,
            small::REPOSITORY
        )
    };
    let basic = format!("Authorization: {}", crate::servers::basic_auth());
    for target in [&on, &audited] {
        // The first request pays argon2id; the runs measure cached logins.
        let res = client
            .get(token_url(target))
            .header("authorization", crate::servers::basic_auth())
            .send()
            .await
            .expect("token");
        assert_eq!(res.status(), reqwest::StatusCode::OK, "token");
    }
    for (figure, audited_load) in [
        (
            "token issuance, cached credential, 64 connections, with the audit trail",
            true,
        ),
        (
            "manifest GET by tag, 64 connections, with the audit trail",
            false,
        ),
    ] {
        let (mut a_runs, mut b_runs, mut pair_ratios) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..AUDIT_PAIRS {
            let (a, b) = if audited_load {
                let a = wrk(&token_url(&audited), &[basic.as_str()]).await;
                let b = wrk(&token_url(&on), &[basic.as_str()]).await;
                (a.requests_per_sec, b.requests_per_sec)
            } else {
                let a = manifest_get(&audited, &token).await.requests_per_sec;
                let b = manifest_get(&on, &token).await.requests_per_sec;
                (a, b)
            };
            pair_ratios.push(a / b);
            a_runs.push(a);
            b_runs.push(b);
        }
        let row = Row::new(figure, "req/s", median(a_runs), Better::Higher)
            .against("portcullis (audit off)", median(b_runs))
            .paired_ratio(median(pair_ratios))
            .note(AUDIT_NOTE);
        // The target is the small requests'; a token request is not one,
        // and its row shows what a line per request costs.
        rows.push(if audited_load { row } else { row.target(0.95) });
    }
    let written = std::fs::read_to_string(&audit_file).map_or(0, |t| t.lines().count());
    eprintln!("  audit lines written: {written}");
    assert!(written > 0, "the audited Portcullis wrote its trail");
    rows.insert(
        0,
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
    );
    rows
}
