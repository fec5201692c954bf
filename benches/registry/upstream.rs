//! Section `upstream`: distribution 2.8 (the benchmark's own, trusting the
//! first Portcullis' tokens) as the upstream of a second Portcullis, under
//! two prefixes: `up/` proxied with push, `cached/` a pull-through cache.
//! The second Portcullis reaches distribution with the bench account's
//! tokens from the first, as an operator's gateway would.
//!
//! A `--blob-mib` blob is pushed and pulled through `up/` beside the same
//! transfers straight to distribution (the kernel-side client of `blobs`),
//! pulled from the cache once it holds it beside the same blob in the
//! second Portcullis' own storage, and a small manifest is fetched one
//! request after another through `up/` and straight, for the latency the
//! proxy adds.

use std::sync::Arc;
use std::time::Instant;

use crate::Options;
use crate::bare;
use crate::blobs::{self, Blob, MIB, PULL_RUNS, RUNS};
use crate::report::{Better, Row};
use crate::servers::{PASSWORD, Servers, Target, USER};
use crate::small;

/// Sequential manifest GETs timed.
const ROUNDS: usize = 2000;

/// Timed pulls of each side of the cache-hit row, after one untimed: three
/// times what other pulls get. Both sides run the same handler on the same
/// stored file (the cache hit after one `stat`), so the row's target
/// (0.95×) is closer than the spread of single pulls here: on 2026-12-08
/// they took 150–800 ms and ran 0.45–1.37× pair by pair, and 11 rounds gave
/// medians 0.83–0.98× in three runs.
const CACHE_RUNS: usize = 3 * PULL_RUNS;

const PUSH_NOTE: &str = "the blob streamed through Portcullis to distribution (a copy in user \
    space per hop); distribution hashes and writes it, and bounds both figures";
const PULL_NOTE: &str = "distribution reads the file and writes it to its socket; Portcullis \
    splices the body from its own connection to distribution to the client's socket";
const CACHE_NOTE: &str = "served from the built-in storage by the built-in handler (sendfile), \
    after one check that the blob is stored";
const MANIFEST_NOTE: &str = "one client, keep-alive: Portcullis checks its token and the \
    policy and forwards on a pooled connection with its cached upstream token";

pub async fn run(servers: &Servers, options: &Options) -> Vec<Row> {
    let dir = servers.path("upstream");
    std::fs::create_dir_all(&dir).expect("upstream dir");
    let [_, distribution] = servers.targets();
    // The first Portcullis' configuration (users, policy, keys), with a
    // storage of its own and the two prefixes.
    let password_file = dir.join("upstream-password");
    std::fs::write(&password_file, format!("{PASSWORD}\n")).expect("password file");
    let first = servers.path("portcullis/portcullis.toml");
    let text = std::fs::read_to_string(first).expect("the first configuration");
    let data = servers.path("portcullis/data");
    let mut text = text.replace(&format!("{:?}", data), &format!("{:?}", dir.join("data")));
    for (name, prefix, tail) in [
        ("distribution", "up", "push = true\n"),
        ("cache", "cached", "[upstream.cache]\n"),
    ] {
        text.push_str(&format!(
            "\n[[upstream]]\nname = \"{name}\"\nprefix = \"{prefix}\"\nurl = \"{}\"\n\
             username = \"{USER}\"\npassword_file = {:?}\n{tail}",
            distribution.url, password_file
        ));
    }
    let config = dir.join("portcullis.toml");
    std::fs::write(&config, text).expect("upstream configuration");
    let (_proc, gateway) = servers.start_portcullis_on(&config, "portcullis (upstream)", None);
    eprintln!("portcullis (upstream) at {}", gateway.url);

    let size = options.blob_mib * MIB;
    let path = dir.join("blob");
    let digest = {
        let path = path.clone();
        tokio::task::spawn_blocking(move || blobs::generate_seeded(&path, size, 7))
            .await
            .expect("generate")
    };
    let blob = Blob {
        file: Arc::new(std::fs::File::open(&path).expect("open blob")),
        size,
        digest: format!("sha256:{digest}"),
    };
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");

    // Pushes, alternating, each to a fresh repository.
    let mut pushed = [Vec::new(), Vec::new()];
    let mut last = [String::new(), String::new()];
    for run in 0..RUNS {
        for (i, (target, repo)) in [
            (&gateway, format!("up/bench-up/push-{run}")),
            (distribution, format!("bench-up/direct-{run}")),
        ]
        .into_iter()
        .enumerate()
        {
            let token = blobs::push_token(&client, target, &repo).await;
            let speed = blobs::measure(target.process(), "push", size, || {
                blobs::push_single(&client, target, &repo, &token, &blob)
            })
            .await;
            pushed[i].push(speed);
            last[i] = repo;
        }
    }

    // Pulls of the last pushed blob of each side, once before the clock;
    // as many as `blobs` takes, since pulls spread the widest.
    let pull_tokens = [
        gateway
            .token(&client, &format!("repository:{}:pull", last[0]))
            .await,
        distribution
            .token(&client, &format!("repository:{}:pull", last[1]))
            .await,
    ];
    let mut pulled = [Vec::new(), Vec::new()];
    for _ in 0..=PULL_RUNS {
        for (i, target) in [&gateway, distribution].into_iter().enumerate() {
            let url = target.at(&format!("/v2/{}/blobs/{}", last[i], blob.digest));
            pulled[i].push(timed_pull(target, "pull", size, url, &pull_tokens[i]).await);
        }
    }

    // The cache, filled by one pull, beside the gateway's own storage.
    let cached = last[0].replacen("up/", "cached/", 1);
    let own = "bench-up/own".to_owned();
    let own_token = blobs::push_token(&client, &gateway, &own).await;
    blobs::push_single(&client, &gateway, &own, &own_token, &blob).await;
    let cache_token = gateway
        .token(&client, &format!("repository:{cached}:pull"))
        .await;
    let mut hits = [Vec::new(), Vec::new()];
    for round in 0..=CACHE_RUNS {
        for (i, (repo, token)) in [(&cached, &cache_token), (&own, &own_token)]
            .into_iter()
            .enumerate()
        {
            let url = gateway.at(&format!("/v2/{repo}/blobs/{}", blob.digest));
            let what = if round == 0 && i == 0 {
                "cache fill"
            } else {
                "pull"
            };
            hits[i].push(timed_pull(&gateway, what, size, url, token).await);
        }
    }

    // A small manifest, one GET after another.
    let direct_token = distribution
        .token(
            &client,
            &format!("repository:{}:pull,push", small::REPOSITORY),
        )
        .await;
    small::push_image(&client, distribution, &direct_token).await;
    let proxied = format!("up/{}", small::REPOSITORY);
    let proxied_token = gateway
        .token(&client, &format!("repository:{proxied}:pull"))
        .await;
    let latency = [
        manifest_latency(&client, &gateway, &proxied, &proxied_token).await,
        manifest_latency(&client, distribution, small::REPOSITORY, &direct_token).await,
    ];
    eprintln!(
        "  manifest GET, one client: through portcullis p50 {:.3} ms p99 {:.3} ms; direct p50 {:.3} ms p99 {:.3} ms",
        latency[0].0, latency[0].1, latency[1].0, latency[1].1
    );
    let _ = std::fs::remove_file(&path);

    for series in pulled.iter_mut().chain(hits.iter_mut()) {
        series.remove(0);
    }
    let median = |v: &[f64]| blobs::median(&mut v.iter().copied());
    let label = format!("{} MiB", options.blob_mib);
    let direct = "distribution direct";
    vec![
        Row::new(
            format!("{label} blob push, through an upstream prefix"),
            "MB/s",
            median(&pushed[0]),
            Better::Higher,
        )
        .against(direct, median(&pushed[1]))
        .target(0.9)
        .note(PUSH_NOTE),
        Row::new(
            format!("{label} blob pull, through an upstream prefix"),
            "MB/s",
            median(&pulled[0]),
            Better::Higher,
        )
        .against(direct, median(&pulled[1]))
        .target(0.9)
        .note(PULL_NOTE),
        Row::new(
            format!("{label} blob pull, pull-through cache hit"),
            "MB/s",
            median(&hits[0]),
            Better::Higher,
        )
        .against("built-in storage", median(&hits[1]))
        .target(0.95)
        .note(CACHE_NOTE),
        Row::new(
            "manifest GET through an upstream prefix, p50",
            "ms",
            latency[0].0,
            Better::Lower,
        )
        .against(direct, latency[1].0)
        .note(MANIFEST_NOTE),
        Row::new(
            "manifest GET through an upstream prefix, p99",
            "ms",
            latency[0].1,
            Better::Lower,
        )
        .against(direct, latency[1].1),
    ]
}

/// One pull of `url` with the kernel-side client, timed.
async fn timed_pull(target: &Target, what: &str, size: u64, url: String, token: &str) -> f64 {
    let token = token.to_owned();
    blobs::measure(target.process(), what, size, || async move {
        tokio::task::spawn_blocking(move || bare::get(&url, Some(&token)))
            .await
            .expect("pull thread");
    })
    .await
}

/// p50 and p99 (ms) of [`ROUNDS`] manifest GETs of `repo`.
async fn manifest_latency(
    client: &reqwest::Client,
    target: &Target,
    repo: &str,
    token: &str,
) -> (f64, f64) {
    let url = target.at(&format!("/v2/{repo}/manifests/{}", small::TAG));
    let mut times = Vec::with_capacity(ROUNDS);
    for round in 0..ROUNDS + 100 {
        let start = Instant::now();
        let res = client
            .get(&url)
            .bearer_auth(token)
            .header("accept", small::MANIFEST_TYPE)
            .send()
            .await
            .expect("manifest GET");
        assert!(
            res.status().is_success(),
            "{}: manifest GET: {}",
            target.name,
            res.status()
        );
        res.bytes().await.expect("manifest body");
        if round >= 100 {
            times.push(start.elapsed().as_secs_f64() * 1000.0);
        }
    }
    times.sort_by(f64::total_cmp);
    (times[ROUNDS / 2], times[ROUNDS * 99 / 100])
}
