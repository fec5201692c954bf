//! Section `v1`: the legacy v1 protocol through Portcullis beside the same
//! requests sent straight to the legacy backend (docker-registry 0.9.1 under
//! gunicorn, the test suite's harness). A layer of `--blob-mib` MiB is
//! pushed (`PUT /v1/images/<id>/layer`) and pulled (`GET …/layer`) with the
//! kernel-side client of the `blobs` section (sendfile up, splice to
//! /dev/null down), so the figures are the servers'; a small request
//! (`GET /v1/repositories/<r>/tags`) is timed one after the other for the
//! latency Portcullis adds: the v1 token's check (cached), the policy, and
//! a second HTTP hop.
//!
//! Through Portcullis each request carries the v1 token Portcullis gave the
//! push (or pull) start; straight to the backend, none (it checks nothing).
//!
//! Last, `portcullis migrate --from-v1` copies a repository of
//! [`MIGRATED_LAYERS`] layers (`--blob-mib` MiB in all) out of the backend,
//! once with plain tar layers (what engines pushed: the migration gzips
//! them) and once with gzip layers (stored as they are), beside the
//! backend's own read rate (its layer pull above).

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use sha2::{Digest, Sha256};

use crate::Options;
use crate::bare;
use crate::blobs::{self, MIB, PULL_RUNS, RUNS};
use crate::legacy_v1::LegacyV1;
use crate::report::{Better, Row};
use crate::servers::{self, Servers, Target};

/// Sequential small requests timed.
const ROUNDS: usize = 2000;

/// Layers of the migrated repository.
const MIGRATED_LAYERS: u64 = 16;

const PUSH_NOTE: &str = "the layer streamed through Portcullis to gunicorn's one gevent worker, \
    which writes it and computes its checksum in Python: the backend bounds both figures";
const PULL_NOTE: &str = "the backend reads the file in Python and writes it to its socket; \
    Portcullis splices the body from its own connection to the backend to the client's socket \
    (socket, pipe, socket: no copy in user space), woken per 512 KiB received";
const MIGRATE_TAR_NOTE: &str = "a chain of plain tar layers of random bytes (the compressor's worst \
    case), 4 at a time: each layer read from the backend, gzipped (level 1) and hashed three times \
    (the backend's checksum, the blob, the diff_id) on the way to storage";
const MIGRATE_GZIP_NOTE: &str = "the same with gzip layers, stored byte for byte: inflated only to \
    hash the diff_id";
const SMALL_NOTE: &str = "one client, keep-alive: Portcullis checks the v1 token (cached), the \
    policy, and forwards on a pooled connection to the backend";

pub async fn run(servers: &Servers, options: &Options) -> Vec<Row> {
    let legacy = tokio::task::spawn_blocking(LegacyV1::start)
        .await
        .expect("legacy registry");
    let dir = servers.path("v1");
    std::fs::create_dir_all(&dir).expect("v1 dir");
    // The first Portcullis' configuration (users, policy, storage, keys),
    // routing v1 to the backend.
    let mut config = std::fs::read_to_string(servers.path("portcullis/portcullis.toml"))
        .expect("the first configuration");
    config.push_str(&format!("[v1]\nbackend = \"{}\"\n", legacy.url()));
    std::fs::write(dir.join("portcullis.toml"), config).expect("v1 configuration");
    let (_proc, gateway) =
        servers.start_portcullis_on(&dir.join("portcullis.toml"), "portcullis (v1)", None);
    // The master's: its one worker's CPU is not counted in what is printed.
    let backend_pid = legacy.pid();
    let direct = Target {
        name: "legacy registry",
        url: legacy.url(),
        host: legacy.url().trim_start_matches("http://").to_owned(),
        pid: backend_pid,
        token_url: gateway.url.clone(),
    };
    eprintln!(
        "legacy registry at {}, portcullis (v1) at {}",
        direct.url, gateway.url
    );

    let size = options.blob_mib * MIB;
    let layer = dir.join("layer");
    {
        let path = layer.clone();
        tokio::task::spawn_blocking(move || blobs::generate(&path, size))
            .await
            .expect("generate");
    }
    let file = Arc::new(std::fs::File::open(&layer).expect("open layer"));
    let client = reqwest::Client::new();

    // Pushes, alternating, each a new image of its own.
    let mut pushed = [Vec::new(), Vec::new()];
    // Each side's last push: (repository, image id).
    let mut last: [(String, String); 2] = Default::default();
    for run in 0..RUNS {
        for (i, target) in [&gateway, &direct].into_iter().enumerate() {
            let repo = format!("bench/v1-{run}-{i}");
            let id = image_id(run, i);
            let auth = start_push(&client, target, &repo, &id).await;
            put(
                &client,
                target,
                &auth,
                &format!("/v1/images/{id}/json"),
                image_json(&id),
            )
            .await;
            let url = target.at(&format!("/v1/images/{id}/layer"));
            let speed = blobs::measure(target.process(), "v1 layer push", size, || {
                let (file, auth) = (Arc::clone(&file), auth.clone());
                async move {
                    let res = tokio::task::spawn_blocking(move || {
                        bare::send_file("PUT", &url, &auth, &[], &file, 0, size)
                    })
                    .await
                    .expect("upload thread");
                    assert_eq!(res.status, 200, "v1 layer push");
                }
            })
            .await;
            pushed[i].push(speed);
            let payload = checksum(&layer, &image_json(&id)).await;
            let res = client
                .put(target.at(&format!("/v1/images/{id}/checksum")))
                .header("authorization", &auth)
                .header("x-docker-checksum-payload", payload)
                .send()
                .await
                .expect("checksum");
            assert!(res.status().is_success(), "checksum: {}", res.status());
            put(
                &client,
                target,
                &auth,
                &format!("/v1/repositories/{repo}/tags/latest"),
                format!("\"{id}\""),
            )
            .await;
            last[i] = (repo, id);
        }
    }

    // Pulls of the last pushed layer of each side, once before the clock;
    // as many as `blobs` takes, since pulls spread the widest.
    let mut pulled = [Vec::new(), Vec::new()];
    let pull_auth = [
        pull_token(&client, &gateway, &last[0].0).await,
        String::new(),
    ];
    for _ in 0..=PULL_RUNS {
        for (i, target) in [&gateway, &direct].into_iter().enumerate() {
            let id = &last[i].1;
            let url = target.at(&format!("/v1/images/{id}/layer"));
            let auth = (!pull_auth[i].is_empty()).then(|| pull_auth[i].clone());
            let speed = blobs::measure(target.process(), "v1 layer pull", size, || async move {
                tokio::task::spawn_blocking(move || bare::get(&url, auth.as_deref()))
                    .await
                    .expect("pull thread");
            })
            .await;
            pulled[i].push(speed);
        }
    }
    for p in &mut pulled {
        p.remove(0);
    }

    // Small requests, one after the other.
    let small = [
        timed(&client, &gateway, &last[0].0, Some(&pull_auth[0])).await,
        timed(&client, &direct, &last[1].0, None).await,
    ];
    eprintln!(
        "  GET tags, one client: portcullis p50 {:.3} ms p99 {:.3} ms; backend p50 {:.3} ms p99 {:.3} ms",
        small[0].0, small[0].1, small[1].0, small[1].1
    );
    let _ = std::fs::remove_file(&layer);

    let median = |v: &[f64]| blobs::median(&mut v.iter().copied());
    let backend_read = median(&pulled[1]);
    let mut migrated = Vec::new();
    for gzip in [false, true] {
        migrated.push(migration(servers, &client, &direct, &dir, size, gzip).await);
    }
    drop(legacy);

    let backend = "legacy registry direct";
    let read = "legacy registry layer pull";
    vec![
        Row::new(
            "v1 layer push, through Portcullis",
            "MB/s",
            median(&pushed[0]),
            Better::Higher,
        )
        .against(backend, median(&pushed[1]))
        .target(0.9)
        .note(PUSH_NOTE),
        Row::new(
            "v1 layer pull, through Portcullis",
            "MB/s",
            median(&pulled[0]),
            Better::Higher,
        )
        .against(backend, median(&pulled[1]))
        .target(0.9)
        .note(PULL_NOTE),
        Row::new(
            "v1 small request (GET tags), p50",
            "ms",
            small[0].0,
            Better::Lower,
        )
        .against(backend, small[1].0)
        .note(SMALL_NOTE),
        Row::new(
            "v1 small request (GET tags), p99",
            "ms",
            small[0].1,
            Better::Lower,
        )
        .against(backend, small[1].1),
        Row::new(
            format!("v1 → v2 migration, {MIGRATED_LAYERS} plain tar layers"),
            "MB/s",
            migrated[0],
            Better::Higher,
        )
        .against(read, backend_read)
        .note(MIGRATE_TAR_NOTE),
        Row::new(
            format!("v1 → v2 migration, {MIGRATED_LAYERS} gzip layers"),
            "MB/s",
            migrated[1],
            Better::Higher,
        )
        .against(read, backend_read)
        .note(MIGRATE_GZIP_NOTE),
    ]
}

/// Pushes a repository of [`MIGRATED_LAYERS`] layers, `total` bytes of
/// tar in all, straight to the backend, then times `portcullis migrate`
/// of it into a storage of its own. MB/s of layer bytes read from the
/// backend.
async fn migration(
    servers: &Servers,
    client: &reqwest::Client,
    backend: &Target,
    dir: &Path,
    total: u64,
    gzip: bool,
) -> f64 {
    let repo = format!("bench/migrate-{}", if gzip { "gzip" } else { "tar" });
    let layer = dir.join("migrated-layer");
    let mut parent: Option<String> = None;
    let mut read = 0;
    let auth = "Basic eDp5";
    for i in 0..MIGRATED_LAYERS {
        let id = hex::encode(Sha256::digest(format!("{repo}-{i}-{}", std::process::id())));
        if parent.is_none() {
            start_push(client, backend, &repo, &id).await;
        }
        let json = match &parent {
            None => image_json(&id),
            Some(parent) => {
                image_json(&id).replacen('{', &format!("{{\"parent\":\"{parent}\","), 1)
            }
        };
        let len = {
            let (path, seed) = (layer.clone(), i);
            tokio::task::spawn_blocking(move || {
                write_tar(&path, total / MIGRATED_LAYERS, seed, gzip)
            })
            .await
            .expect("layer")
        };
        put(
            client,
            backend,
            auth,
            &format!("/v1/images/{id}/json"),
            json.clone(),
        )
        .await;
        let url = backend.at(&format!("/v1/images/{id}/layer"));
        let file = std::fs::File::open(&layer).expect("open layer");
        let res = tokio::task::spawn_blocking(move || {
            bare::send_file("PUT", &url, auth, &[], &file, 0, len)
        })
        .await
        .expect("upload thread");
        assert_eq!(res.status, 200, "v1 layer push");
        let res = client
            .put(backend.at(&format!("/v1/images/{id}/checksum")))
            .header("x-docker-checksum-payload", checksum(&layer, &json).await)
            .send()
            .await
            .expect("checksum");
        assert!(res.status().is_success(), "checksum: {}", res.status());
        read += len;
        parent = Some(id);
    }
    let top = parent.expect("a layer");
    put(
        client,
        backend,
        auth,
        &format!("/v1/repositories/{repo}/tags/latest"),
        format!("\"{top}\""),
    )
    .await;
    let _ = std::fs::remove_file(&layer);

    let data = dir.join(format!("{repo}-storage").replace('/', "-"));
    let mut command = std::process::Command::new(&servers.binary);
    command
        .args([
            "migrate",
            "--from-v1",
            &backend.url,
            "--repos",
            &repo,
            "--jobs",
            "4",
        ])
        .arg("--data-dir")
        .arg(&data);
    blobs::sync();
    let started = Instant::now();
    let out = tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("migrate thread")
        .expect("run migrate");
    let elapsed = started.elapsed();
    assert!(
        out.status.success(),
        "migrate: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let speed = blobs::mb_per_s(read, elapsed);
    eprintln!(
        "  migrate {repo}: {speed:.0} MB/s ({read} bytes in {:.2} s)",
        elapsed.as_secs_f64()
    );
    let _ = std::fs::remove_dir_all(&data);
    speed
}

/// A one-file tar of `size` random bytes (blobs' generator, seeded per
/// layer), gzipped at level 1 when `gzip`. Returns the file's length.
fn write_tar(path: &Path, size: u64, seed: u64, gzip: bool) -> u64 {
    use std::io::Write;
    let payload = path.with_extension("payload");
    blobs::generate_seeded(&payload, size, seed);
    let header = crate::oci::tar_header("payload", size as usize);
    let tar = |out: &mut dyn Write| {
        out.write_all(&header)?;
        std::io::copy(&mut std::fs::File::open(&payload)?, out)?;
        out.write_all(&vec![0; ((512 - size % 512) % 512 + 1024) as usize])
    };
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).expect("create layer"));
    if gzip {
        let mut gz = flate2::write::GzEncoder::new(&mut file, flate2::Compression::fast());
        tar(&mut gz).expect("write layer");
        gz.finish().expect("write layer");
    } else {
        tar(&mut file).expect("write layer");
    }
    file.flush().expect("write layer");
    drop(file);
    let _ = std::fs::remove_file(&payload);
    std::fs::metadata(path).expect("layer").len()
}

fn image_id(run: usize, side: usize) -> String {
    hex::encode(Sha256::digest(format!(
        "bench-v1-{run}-{side}-{}",
        std::process::id()
    )))
}

fn image_json(id: &str) -> String {
    format!("{{\"id\":\"{id}\",\"created\":\"2015-02-10T00:00:00Z\",\"os\":\"linux\"}}")
}

/// `sha256:` of the JSON, a newline and the layer, as engines send it.
async fn checksum(layer: &Path, json: &str) -> String {
    let (layer, json) = (layer.to_owned(), json.to_owned());
    tokio::task::spawn_blocking(move || {
        let mut hasher = Sha256::new();
        hasher.update(json.as_bytes());
        hasher.update(b"\n");
        let mut file = std::fs::File::open(layer).expect("layer");
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = std::io::Read::read(&mut file, &mut buf).expect("read layer");
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        format!("sha256:{}", hex::encode(hasher.finalize()))
    })
    .await
    .expect("checksum thread")
}

/// The push start of `id` into `repo`; the `Authorization` value for the
/// calls that follow (Portcullis' v1 token; none needed by the backend).
async fn start_push(client: &reqwest::Client, target: &Target, repo: &str, id: &str) -> String {
    let res = client
        .put(target.at(&format!("/v1/repositories/{repo}/")))
        .header("authorization", servers::basic_auth())
        .header("x-docker-token", "true")
        .json(&serde_json::json!([{ "id": id }]))
        .send()
        .await
        .expect("push start");
    assert!(res.status().is_success(), "push start: {}", res.status());
    auth_of(&res, target)
}

async fn pull_token(client: &reqwest::Client, target: &Target, repo: &str) -> String {
    let res = client
        .get(target.at(&format!("/v1/repositories/{repo}/images")))
        .header("authorization", servers::basic_auth())
        .header("x-docker-token", "true")
        .send()
        .await
        .expect("pull start");
    assert!(res.status().is_success(), "pull start: {}", res.status());
    auth_of(&res, target)
}

fn auth_of(res: &reqwest::Response, target: &Target) -> String {
    match target.name {
        "legacy registry" => "Basic eDp5".to_owned(),
        _ => format!(
            "Token {}",
            res.headers()["x-docker-token"].to_str().expect("token")
        ),
    }
}

async fn put(client: &reqwest::Client, target: &Target, auth: &str, path: &str, body: String) {
    let res = client
        .put(target.at(path))
        .header("authorization", auth)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("v1 PUT");
    assert!(res.status().is_success(), "PUT {path}: {}", res.status());
}

/// p50 and p99 (ms) of [`ROUNDS`] `GET /v1/repositories/<repo>/tags`.
async fn timed(
    client: &reqwest::Client,
    target: &Target,
    repo: &str,
    auth: Option<&str>,
) -> (f64, f64) {
    let url = target.at(&format!("/v1/repositories/{repo}/tags"));
    let mut times = Vec::with_capacity(ROUNDS);
    for round in 0..ROUNDS + 100 {
        let mut request = client.get(&url);
        if let Some(auth) = auth {
            request = request.header("authorization", auth);
        }
        let start = Instant::now();
        let res = request.send().await.expect("GET tags");
        assert!(res.status().is_success(), "GET tags: {}", res.status());
        res.bytes().await.expect("tags body");
        if round >= 100 {
            times.push(start.elapsed().as_secs_f64() * 1000.0);
        }
    }
    times.sort_by(f64::total_cmp);
    (times[ROUNDS / 2], times[ROUNDS * 99 / 100])
}
