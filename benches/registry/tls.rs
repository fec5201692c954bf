//! Section `tls`: what HTTPS costs. A second Portcullis serves the first
//! one's storage over TLS (a self-signed pair, as `portcullis keygen --tls`
//! writes it), beside nginx serving the same blob file over TLS with the
//! same certificate, and beside the first Portcullis over plain HTTP.
//!
//! Neither server can hand encryption to the kernel: kernel TLS needs the
//! `tls` upper-layer protocol, and this kernel offers only `mptcp`
//! (/proc/sys/net/ipv4/tcp_available_ulp). Both read the file and encrypt
//! it in user space (rustls on aws-lc-rs; nginx on OpenSSL), where plain
//! HTTP sends it with `sendfile`.
//!
//! One client for every blob transfer, plain or TLS, so that only the
//! server side differs: curl (OpenSSL), HTTP/1.1 (curl would choose HTTP/2
//! with Portcullis by ALPN, and nginx here speaks only HTTP/1.1), writing
//! the body to /dev/null. Unlike the `blobs` section's kernel-side client it
//! copies and, over TLS, decrypts every byte in user space, on the same two
//! cores as the server: its CPU is printed beside the server's. Manifest
//! requests are driven by wrk over HTTPS as the `small` section drives them
//! over HTTP, with keep-alive and one token (whose check Portcullis caches).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::Options;
use crate::blobs::{self, Blob, CLIENTS, MIB, RUNS};
use crate::report::{Better, Row};
use crate::servers::{self, Servers, Target};
use crate::small::{self, LoadResult, MANIFEST_TYPE};

/// Pull rounds; the median is kept. Fewer than the `blobs` section's: a
/// gigabyte over TLS takes about a second, not a fraction of one.
const PULL_RUNS: usize = 5;
const REPOSITORY: &str = "bench-tls/blob";

pub async fn run(servers: &Servers, options: &Options) -> Vec<Row> {
    let dir = servers.path("tls");
    std::fs::create_dir_all(&dir).expect("tls dir");
    let pair = portcullis::serve::selfsigned::generate(&dir.join("certs"), &[], false)
        .expect("self-signed TLS pair");
    let (_tls_proc, tls) = servers.start_portcullis_tls(&pair.cert, &pair.key);
    let plain = &servers.portcullis;
    eprintln!("portcullis over TLS at {}", tls.url);
    // The certificate is its own CA: curl trusts exactly it.
    let curl = Curl { ca: pair.cert };

    let size = options.blob_mib * MIB;
    let blob_path = dir.join("blob");
    let digest = {
        let path = blob_path.clone();
        tokio::task::spawn_blocking(move || blobs::generate(&path, size))
            .await
            .expect("generate")
    };
    let blob = Blob {
        file: Arc::new(std::fs::File::open(&blob_path).expect("open blob")),
        size,
        digest: format!("sha256:{digest}"),
    };
    let client = reqwest::Client::new();

    // Pushes: each to a repository of its own (the servers share storage).
    let mut pushed = [Vec::new(), Vec::new()];
    for run in 0..RUNS {
        for (i, target) in [&tls, plain].into_iter().enumerate() {
            let repo = format!("bench-tls/push-{run}-{i}");
            let token = blobs::push_token(&client, target, &repo).await;
            let speed = blobs::measure(target.process(), "push, curl", size, || {
                curl.push(target, &repo, &token, &blob_path, &blob.digest)
            })
            .await;
            pushed[i].push(speed);
        }
    }

    // Pulls: the blob pushed once into the shared storage, the same file
    // under nginx's root (a hard link: the same pages in the page cache).
    let token = blobs::push_token(&client, plain, REPOSITORY).await;
    blobs::push_single(&client, plain, REPOSITORY, &token, &blob).await;
    let www = dir.join("www");
    std::fs::create_dir_all(&www).expect("nginx root");
    if std::fs::hard_link(&blob_path, www.join("blob")).is_err() {
        std::fs::copy(&blob_path, www.join("blob")).expect("copy blob for nginx");
    }
    let (nginx, nginx_url) = servers::start_nginx(&dir, &www, Some((&curl.ca, pair.key.as_path())));
    let blob_url = format!("/v2/{REPOSITORY}/blobs/{}", blob.digest);
    // Portcullis over TLS, nginx over TLS, Portcullis over plain HTTP: the
    // order of the result arrays.
    let sources = [
        (tls.process(), tls.at(&blob_url), Some(token.as_str())),
        (
            ("nginx (TLS)", nginx.pid()),
            format!("{nginx_url}/blob"),
            None,
        ),
        (plain.process(), plain.at(&blob_url), Some(token.as_str())),
    ];
    // Once each before the clock: the page cache then holds both copies.
    for (_, url, token) in &sources {
        curl.pull(url, *token, size).await;
    }
    let mut pulled = [Vec::new(), Vec::new(), Vec::new()];
    let mut together = [Vec::new(), Vec::new(), Vec::new()];
    for _ in 0..PULL_RUNS {
        for (i, (server, url, token)) in sources.iter().enumerate() {
            let speed =
                blobs::measure(*server, "pull, curl", size, || curl.pull(url, *token, size)).await;
            pulled[i].push(speed);
            let what = format!("pull, {CLIENTS} curl at once");
            let speed = blobs::measure(*server, &what, CLIENTS as u64 * size, || async {
                let pulls = (0..CLIENTS).map(|_| curl.pull(url, *token, size));
                futures_util::future::join_all(pulls).await;
            })
            .await;
            together[i].push(speed);
        }
    }
    drop(nginx);
    let _ = std::fs::remove_file(www.join("blob"));
    let _ = std::fs::remove_file(&blob_path);

    let [tls_get, plain_get] = manifest_load(&client, &tls, plain).await;

    let pushed = pushed.map(|mut v| blobs::median(&mut v.drain(..)));
    let pulled = pulled.map(|mut v| blobs::median(&mut v.drain(..)));
    let together = together.map(|mut v| blobs::median(&mut v.drain(..)));
    let plain_name = "Portcullis, plain HTTP";
    vec![
        Row::new("blob pull, TLS", "MB/s", pulled[0], Better::Higher)
            .against("nginx (TLS)", pulled[1])
            .target(0.8)
            .note(PULL_NOTE),
        Row::new("blob pull, TLS", "MB/s", pulled[0], Better::Higher)
            .against(plain_name, pulled[2])
            .note(
                "the same curl over plain HTTP, where Portcullis sends the file with \
                 sendfile and curl only copies it out of the socket",
            ),
        Row::new(
            format!("blob pull, TLS, {CLIENTS} clients at once"),
            "MB/s",
            together[0],
            Better::Higher,
        )
        .against("nginx (TLS)", together[1])
        .target(0.8)
        .note(
            "total over four curl processes: they and the server share the two cores, so \
             the clients' decryption takes what the server's encryption would use; nginx's \
             one process stays bound at one core",
        ),
        Row::new(
            "blob push, TLS, single request",
            "MB/s",
            pushed[0],
            Better::Higher,
        )
        .against(plain_name, pushed[1])
        .note(
            "curl -T (POST for a session, one PUT of the body) to each, measured in the \
             same rounds: the server decrypts in user space besides hashing and writing \
             every byte as a plain push does",
        ),
        Row::new(
            "manifest GET by tag, TLS, 64 connections",
            "req/s",
            tls_get.requests_per_sec,
            Better::Higher,
        )
        .against(plain_name, plain_get.requests_per_sec)
        .note(
            "wrk over HTTPS, keep-alive: one handshake per connection, then per request \
             the record encryption of a small response on top of the plain request's work",
        ),
        Row::new(
            "manifest GET by tag, TLS, p99",
            "ms",
            tls_get.p99_ms,
            Better::Lower,
        )
        .against(plain_name, plain_get.p99_ms),
    ]
}

const PULL_NOTE: &str = "one curl (OpenSSL, HTTP/1.1) writing the body to /dev/null; both \
     servers read the file and encrypt it in user space (AES-GCM; no kernel TLS on this \
     kernel), and curl decrypts it on the same two cores at up to about one core. nginx runs \
     as one process (the harness' setup, so that no worker is orphaned) and is bound at that \
     process' core; Portcullis' file reads and encryption spread over both";

/// Manifest GET by tag under wrk, over TLS and over plain HTTP, with one
/// token for both (the servers share keys and storage): [TLS, plain].
async fn manifest_load(client: &reqwest::Client, tls: &Target, plain: &Target) -> [LoadResult; 2] {
    let token = plain
        .token(
            client,
            &format!("repository:{}:pull,push", small::REPOSITORY),
        )
        .await;
    small::push_image(client, plain, &token).await;
    let bearer = format!("Authorization: Bearer {token}");
    let accept = format!("Accept: {MANIFEST_TYPE}");
    let headers = [bearer.as_str(), accept.as_str()];
    let path = format!("/v2/{}/manifests/{}", small::REPOSITORY, small::TAG);
    // wrk refuses a run with any error response: no figure of errors.
    let tls_get = small::wrk(&tls.at(&path), &headers).await;
    let plain_get = small::wrk(&plain.at(&path), &headers).await;
    [tls_get, plain_get]
}

/// curl, the one client of this section's blob transfers: HTTP/1.1,
/// trusting the self-signed certificate, nothing of the environment but
/// PATH.
struct Curl {
    ca: PathBuf,
}

impl Curl {
    /// Runs curl with `args` after the common ones; returns what `-w`
    /// printed, after checking that curl succeeded.
    async fn run(&self, args: &[&str]) -> String {
        let mut cmd = tokio::process::Command::new("curl");
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .args(["--silent", "--show-error", "--http1.1", "--cacert"])
            .arg(&self.ca)
            .args(["--output", "/dev/null"])
            .args(args);
        servers::client_output(cmd, &format!("curl {}", args.join(" "))).await
    }

    /// GETs `url`, asserting a 200 with exactly `size` bytes.
    async fn pull(&self, url: &str, token: Option<&str>, size: u64) {
        let auth = token.map(|t| format!("Authorization: Bearer {t}"));
        let mut args = vec!["--write-out", "%{http_code} %{size_download}"];
        if let Some(auth) = &auth {
            args.extend(["--header", auth]);
        }
        args.push(url);
        let got = self.run(&args).await;
        assert_eq!(got, format!("200 {size}"), "GET {url}");
    }

    /// A single-request push of the file at `path` into `repo`: POST for a
    /// session, then one PUT of the whole body with the digest.
    async fn push(&self, target: &Target, repo: &str, token: &str, path: &Path, digest: &str) {
        let auth = format!("Authorization: Bearer {token}");
        let start = target.at(&format!("/v2/{repo}/blobs/uploads/"));
        let opened = self
            .run(&[
                "--request",
                "POST",
                "--header",
                &auth,
                "--header",
                "Content-Length: 0",
                "--write-out",
                "%{http_code} %header{location}",
                &start,
            ])
            .await;
        let location = opened
            .strip_prefix("202 ")
            .unwrap_or_else(|| panic!("{}: upload start answered {opened:?}", target.name));
        let url = blobs::with_digest(&blobs::absolute(target, location.to_owned()), digest);
        let path = path.to_str().expect("UTF-8 path");
        let finished = self
            .run(&[
                "--upload-file",
                path,
                "--header",
                &auth,
                "--header",
                "Content-Type: application/octet-stream",
                // No `Expect: 100-continue` round trip before the body.
                "--header",
                "Expect:",
                "--write-out",
                "%{http_code}",
                &url,
            ])
            .await;
        assert_eq!(finished, "201", "{}: single push", target.name);
    }
}
