//! `/metrics` from outside: each family changes as requests come (HTTP by
//! route, method, status and backend, bytes, token grants and refusals,
//! logins by source, open upload sessions, the build), no repository name
//! or credential becomes a label, and the optional scrape token is
//! required when configured.

use crate::common;

use common::{TestServer, sha256};

/// A server with the shipped policies and alice (`alice-pw`).
async fn server(configure: impl FnOnce(&mut portcullis::config::Config)) -> TestServer {
    TestServer::with_alice(configure).await
}

/// The exposition, parsed into (series, value) pairs.
struct Scrape(Vec<(String, f64)>);

impl Scrape {
    async fn of(server: &TestServer) -> Self {
        let response = server
            .client
            .get(server.at("/metrics"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let kind = common::header_str(&response, "content-type").to_owned();
        assert!(kind.starts_with("application/openmetrics-text"), "{kind}");
        let text = response.text().await.unwrap();
        assert!(text.ends_with("# EOF\n"), "{text}");
        let series = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (name, value) = l.rsplit_once(' ')?;
                Some((name.to_owned(), value.parse().ok()?))
            })
            .collect();
        Self(series)
    }

    /// The value of the series named `name` whose labels include every one
    /// of `labels` (`key="value"`); 0 when there is none.
    fn value(&self, name: &str, labels: &[&str]) -> f64 {
        self.0
            .iter()
            .filter(|(series, _)| {
                let (series_name, rest) = series.split_once('{').unwrap_or((series, ""));
                series_name == name && labels.iter().all(|l| rest.contains(l))
            })
            .map(|(_, v)| *v)
            .sum()
    }

    fn text(&self) -> String {
        self.0
            .iter()
            .map(|(s, _)| s.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

#[tokio::test]
async fn every_family_counts_what_happens() {
    let s = server(|_| {}).await;
    let before = Scrape::of(&s).await;
    assert_eq!(before.value("portcullis_build_info", &["version=\""]), 1.0);

    // A grant, a refusal (wrong password), an unauthenticated /v2/.
    let scope = "repository:alice/secret-project:pull,push";
    let token = s.token("alice", scope).await;
    let refused = s
        .client
        .get(s.at(&format!("/token?service=portcullis&scope={scope}")))
        .basic_auth("alice", Some("wrong"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    let anonymous = s.client.get(s.at("/v2/")).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);

    // An upload session opened, then a blob pushed in one request.
    let opened = s
        .client
        .post(s.at("/v2/alice/secret-project/blobs/uploads/"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(opened.status(), 202);
    let during = Scrape::of(&s).await;
    assert_eq!(during.value("portcullis_upload_sessions_open", &[]), 1.0);
    let blob = vec![7u8; 100_000];
    let digest = sha256(&blob);
    let pushed = s
        .client
        .post(s.at(&format!(
            "/v2/alice/secret-project/blobs/uploads/?digest={digest}"
        )))
        .bearer_auth(&token)
        .body(blob.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(pushed.status(), 201);
    let pulled = s
        .client
        .get(s.at(&format!("/v2/alice/secret-project/blobs/{digest}")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(pulled.bytes().await.unwrap().len(), blob.len());

    let after = Scrape::of(&s).await;
    let grew = |name: &str, labels: &[&str]| after.value(name, labels) - before.value(name, labels);
    let requests = "portcullis_http_request_duration_seconds_count";
    assert_eq!(
        grew(
            requests,
            &[
                "route=\"token\"",
                "method=\"GET\"",
                "status=\"200\"",
                "backend=\"self\""
            ]
        ),
        1.0
    );
    assert_eq!(grew(requests, &["route=\"token\"", "status=\"401\""]), 1.0);
    assert_eq!(
        grew(requests, &["route=\"v2_base\"", "status=\"401\""]),
        1.0
    );
    assert_eq!(
        grew(
            requests,
            &[
                "route=\"v2_upload\"",
                "method=\"POST\"",
                "status=\"201\"",
                "backend=\"storage\""
            ]
        ),
        1.0
    );
    assert_eq!(
        grew(
            requests,
            &["route=\"v2_blob\"", "method=\"GET\"", "status=\"200\""]
        ),
        1.0
    );
    assert!(
        grew(
            "portcullis_http_request_duration_seconds_count",
            &["route=\"v2_blob\""]
        ) >= 1.0
    );
    assert!(
        grew(
            "portcullis_http_request_body_bytes_total",
            &["route=\"v2_upload\""]
        ) >= 100_000.0
    );
    assert!(
        grew(
            "portcullis_http_response_body_bytes_total",
            &["route=\"v2_blob\""]
        ) >= 100_000.0
    );
    let tokens = "portcullis_token_requests_total";
    assert_eq!(grew(tokens, &["result=\"granted\""]), 1.0);
    assert_eq!(
        grew(
            tokens,
            &["result=\"refused\"", "reason=\"bad_credentials\""]
        ),
        1.0
    );
    let logins = "portcullis_logins_total";
    assert_eq!(
        grew(
            logins,
            &[
                "source=\"file\"",
                "credential=\"password\"",
                "result=\"ok\""
            ]
        ),
        1.0
    );
    assert_eq!(grew(logins, &["result=\"refused\""]), 1.0);
    assert_eq!(
        grew(
            "portcullis_login_duration_seconds_count",
            &["source=\"file\""]
        ),
        1.0
    );
    // The store: the blob's bytes committed and moved into place, read
    // back; absence (a blob never pushed) is an answer, not an error.
    let unknown = sha256(b"never pushed");
    let absent = s
        .client
        .get(s.at(&format!("/v2/alice/secret-project/blobs/{unknown}")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(absent.status(), 404);
    let after = Scrape::of(&s).await;
    let grew = |name: &str, labels: &[&str]| after.value(name, labels) - before.value(name, labels);
    let backend = match crate::STORAGE_ON_S3 {
        true => "backend=\"s3\"",
        false => "backend=\"filesystem\"",
    };
    let storage = "portcullis_storage_operations_total";
    for operation in ["commit", "rename", "read"] {
        let operation = format!("operation=\"{operation}\"");
        let labels = [backend, operation.as_str(), "result=\"ok\""];
        assert!(grew(storage, &labels) >= 1.0, "{operation}");
    }
    assert!(grew(storage, &[backend, "result=\"not_found\""]) >= 1.0);
    assert_eq!(grew(storage, &[backend, "result=\"error\""]), 0.0);
    assert!(
        grew(
            "portcullis_storage_operation_duration_seconds_count",
            &[backend, "operation=\"rename\""]
        ) >= 1.0
    );

    // The scrapes themselves are counted too, under their own route.
    assert!(after.value(requests, &["route=\"metrics\""]) >= 2.0);

    // Labels never carry a repository, a user name, a token or a password.
    let text = after.text();
    for secret in ["secret-project", "alice", "wrong", &token[..20]] {
        assert!(!text.contains(secret), "`{secret}` in the metrics:\n{text}");
    }
}

#[tokio::test]
async fn a_scrape_token_when_configured_and_nothing_when_disabled() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("metrics-token");
    std::fs::write(&token_file, "scrape-me\n").unwrap();
    let s = TestServer::start_configured(dir, move |config| {
        config.auth.enabled = false;
        config.metrics.token_file = Some(token_file);
    })
    .await;
    for sent in [None, Some("wrong"), Some("scrape-me-not")] {
        let mut request = s.client.get(s.at("/metrics"));
        if let Some(sent) = sent {
            request = request.bearer_auth(sent);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 401, "{sent:?}");
        assert!(response.headers().contains_key("www-authenticate"));
    }
    let response = s
        .client
        .get(s.at("/metrics"))
        .bearer_auth("scrape-me")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    let off = TestServer::start_configured(tempfile::tempdir().unwrap(), |config| {
        config.auth.enabled = false;
        config.metrics.enabled = false;
    })
    .await;
    let response = off.client.get(off.at("/metrics")).send().await.unwrap();
    assert_eq!(response.status(), 404);
}

/// With `metrics.listen`, `/metrics` is served there alone, and the main
/// listener answers it with 404 (the real binary, which binds both).
#[tokio::test]
async fn metrics_on_a_listener_of_their_own() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let config = common::process::config_in(dir.path());
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str("\n[metrics]\nlisten = \"127.0.0.1:0\"\n");
    std::fs::write(&config, text).unwrap();
    /// Killed when the test ends, passed or not.
    struct Running(std::process::Child);
    impl Drop for Running {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&config)
        .env("PORTCULLIS_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let _running = Running(child);
    let mut line = || lines.next().unwrap().unwrap();
    let main = line()
        .strip_prefix("portcullis listening on ")
        .unwrap()
        .to_owned();
    let scrape = line()
        .strip_prefix("portcullis metrics on ")
        .unwrap()
        .to_owned();
    let http = reqwest::Client::new();
    let status = |url: String| {
        let http = http.clone();
        async move { http.get(url).send().await.unwrap().status().as_u16() }
    };
    assert_eq!(status(format!("{main}/v2/")).await, 401);
    assert_eq!(status(format!("{main}/metrics")).await, 404);
    let scraped = http.get(&scrape).send().await.unwrap();
    assert_eq!(scraped.status(), 200);
    let body = scraped.text().await.unwrap();
    assert!(body.contains("portcullis_build_info"), "{body}");
    // The main listener's refusals were counted; nothing but /metrics here.
    assert!(body.contains("route=\"v2_base\""), "{body}");
    let base = scrape.strip_suffix("/metrics").unwrap();
    assert_eq!(status(format!("{base}/v2/")).await, 404);
}
