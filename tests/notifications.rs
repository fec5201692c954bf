//! Notifications from outside: a test receiver (an HTTP server on
//! 127.0.0.1:0 recording what it is sent, answering 500 to its first
//! requests when asked) gets distribution's envelopes for pushes, pulls,
//! mounts and deletes, and for what skopeo pushes and pulls (chunked
//! uploads, the manifest by tag); filters leave events out; 500s and a receiver that
//! is not listening are retried until the events arrive; the real binary
//! stopped with SIGTERM while the receiver is down sends every event once
//! when started again; metrics count it; check-config refuses a bad section.

use crate::common;

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::process::ServerProcess;
use common::{TestServer, sha256};
use portcullis::config::{Config, NotifyEndpointConfig};
use serde_json::Value;

const MEDIA_TYPE: &str = "application/vnd.docker.distribution.events.v1+json";

/// One POST the receiver acknowledged.
struct Received {
    headers: axum::http::HeaderMap,
    body: Value,
}

#[derive(Default)]
struct Log {
    received: Mutex<Vec<Received>>,
    /// Requests answered 500 before the others are acknowledged.
    fail_first: AtomicUsize,
    /// Every request, failed or not.
    attempts: AtomicUsize,
}

/// The test receiver. Its port is held from the start: bound, but not
/// listening (connections are refused, as by a receiver that is down)
/// until [`Receiver::listen`].
struct Receiver {
    url: String,
    socket: Option<tokio::net::TcpSocket>,
    log: Arc<Log>,
}

impl Receiver {
    fn down() -> Self {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let url = format!("http://{}/events", socket.local_addr().unwrap());
        Self {
            url,
            socket: Some(socket),
            log: Arc::default(),
        }
    }

    /// A receiver up from the start, acknowledging everything.
    fn up() -> Self {
        let mut receiver = Self::down();
        receiver.listen(0);
        receiver
    }

    /// Starts answering; the first `fail_first` requests get 500.
    fn listen(&mut self, fail_first: usize) {
        self.log.fail_first.store(fail_first, Ordering::SeqCst);
        let listener = self
            .socket
            .take()
            .expect("not yet listening")
            .listen(64)
            .unwrap();
        let log = Arc::clone(&self.log);
        let app = axum::Router::new()
            .route("/events", axum::routing::post(record))
            .with_state(log);
        tokio::spawn(async move { axum::serve(listener, app).await });
    }

    /// The events acknowledged, in order, once there are at least `n`.
    async fn events(&self, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let events: Vec<Value> = self
                .log
                .received
                .lock()
                .unwrap()
                .iter()
                .flat_map(|r| r.body["events"].as_array().cloned().unwrap_or_default())
                .collect();
            if events.len() >= n {
                return events;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {n} events: {events:#?}",
                events.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn endpoint(&self, name: &str) -> NotifyEndpointConfig {
        let text = format!("name = {name:?}\nurl = {:?}\n", self.url);
        let mut endpoint: NotifyEndpointConfig = toml::from_str(&text).unwrap();
        // Retries quick enough for a test.
        endpoint.backoff_initial_ms = 20;
        endpoint.backoff_max_secs = 1;
        endpoint
    }
}

async fn record(
    axum::extract::State(log): axum::extract::State<Arc<Log>>,
    headers: axum::http::HeaderMap,
    body: bytes::Bytes,
) -> axum::http::StatusCode {
    log.attempts.fetch_add(1, Ordering::SeqCst);
    let failing = log
        .fail_first
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    if failing {
        return axum::http::StatusCode::INTERNAL_SERVER_ERROR;
    }
    let body = serde_json::from_slice(&body).expect("a JSON envelope");
    log.received
        .lock()
        .unwrap()
        .push(Received { headers, body });
    axum::http::StatusCode::OK
}

/// A server with the shipped policies and alice, telling `endpoints`.
async fn server(endpoints: Vec<NotifyEndpointConfig>) -> TestServer {
    TestServer::with_alice(move |config: &mut Config| {
        config.notifications.endpoints = endpoints;
    })
    .await
}

/// A manifest with `config` as its config blob.
fn manifest(config: &[u8]) -> String {
    serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": sha256(config), "size": config.len()},
        "layers": [],
    })
    .to_string()
}

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// The value of the series `name` with all of `labels` in `text` (an
/// OpenMetrics exposition); 0 when absent.
fn metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(series, _)| {
            let (series_name, rest) = series.split_once('{').unwrap_or((series, ""));
            series_name == name && labels.iter().all(|l| rest.contains(l))
        })
        .filter_map(|(_, v)| v.parse::<f64>().ok())
        .sum()
}

async fn scrape(client: &reqwest::Client, url: &str) -> String {
    let response = client.get(format!("{url}/metrics")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    response.text().await.unwrap()
}

/// Scrapes `url` until `name{labels}` is `want`.
async fn metric_reaches(
    client: &reqwest::Client,
    url: &str,
    name: &str,
    labels: &[&str],
    want: f64,
) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = scrape(client, url).await;
        if metric(&text, name, labels) == want {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{name}{labels:?} is not {want}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Scrapes `url` until endpoint `ci` counts `delivered` events
/// acknowledged and none pending, and asserts none was dropped.
async fn all_delivered(client: &reqwest::Client, url: &str, delivered: f64) -> String {
    let ci = "endpoint=\"ci\"";
    let total = "portcullis_notifications_total";
    metric_reaches(client, url, total, &[ci, "result=\"delivered\""], delivered).await;
    let text = metric_reaches(client, url, "portcullis_notifications_pending", &[ci], 0.0).await;
    assert_eq!(
        metric(&text, total, &[ci, "result=\"dropped\""]),
        0.0,
        "{text}"
    );
    text
}

#[tokio::test(flavor = "multi_thread")]
async fn pushes_pulls_mounts_and_deletes_arrive_in_distributions_envelope() {
    let receiver = Receiver::up();
    let s = server(vec![receiver.endpoint("ci")]).await;
    let token = s
        .token(
            "alice",
            "repository:alice/app:pull,push,delete&scope=repository:alice/copy:pull,push,delete",
        )
        .await;
    let send = |request: reqwest::RequestBuilder| async {
        request
            .bearer_auth(&token)
            .header("user-agent", "notify-test/1")
            .send()
            .await
            .unwrap()
    };

    // A blob (monolithic), a manifest by tag, a pull of each, a HEAD (no
    // event), a failed pull (no event), a mount, two deletes.
    let config = br#"{"architecture":"amd64","os":"linux"}"#;
    let blob = sha256(config);
    let pushed = send(
        s.client
            .post(s.at(&format!("/v2/alice/app/blobs/uploads/?digest={blob}")))
            .body(config.to_vec()),
    )
    .await;
    assert_eq!(pushed.status(), 201);
    let manifest = manifest(config);
    let manifest_digest = sha256(manifest.as_bytes());
    let put_tag = |tag: &str| {
        let request = s
            .client
            .put(s.at(&format!("/v2/alice/app/manifests/{tag}")))
            .header("content-type", OCI_MANIFEST)
            .body(manifest.clone());
        async { assert_eq!(send(request).await.status(), 201) }
    };
    put_tag("v1").await;
    let accept = |r: reqwest::RequestBuilder| r.header("accept", OCI_MANIFEST);
    assert_eq!(
        send(accept(s.client.head(s.at("/v2/alice/app/manifests/v1"))))
            .await
            .status(),
        200
    );
    assert_eq!(
        send(accept(s.client.get(s.at("/v2/alice/app/manifests/v1"))))
            .await
            .status(),
        200
    );
    assert_eq!(
        send(accept(s.client.get(s.at("/v2/alice/app/manifests/nope"))))
            .await
            .status(),
        404
    );
    assert_eq!(
        send(s.client.get(s.at(&format!("/v2/alice/app/blobs/{blob}"))))
            .await
            .status(),
        200
    );
    let mounted = send(s.client.post(s.at(&format!(
        "/v2/alice/copy/blobs/uploads/?mount={blob}&from=alice/app"
    ))))
    .await;
    assert_eq!(mounted.status(), 201);
    let deleted = send(
        s.client
            .delete(s.at(&format!("/v2/alice/app/manifests/{manifest_digest}"))),
    )
    .await;
    assert_eq!(deleted.status(), 202);
    let deleted = send(
        s.client
            .delete(s.at(&format!("/v2/alice/copy/blobs/{blob}"))),
    )
    .await;
    assert_eq!(deleted.status(), 202);
    // The request's own id, as its answer and its log lines carry it.
    let last_request = common::header_str(&deleted, "x-request-id").to_owned();

    let events = receiver.events(7).await;
    let actions: Vec<&str> = events
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        ["push", "push", "pull", "pull", "mount", "delete", "delete"],
        "{events:#?}"
    );
    let ids: HashSet<&str> = events.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), events.len(), "each event its own id");
    for received in receiver.log.received.lock().unwrap().iter() {
        assert_eq!(received.headers["content-type"], MEDIA_TYPE);
        assert!(received.headers.get("authorization").is_none());
    }
    let text = serde_json::to_string(&events).unwrap();
    assert!(
        !text.contains(&token) && !text.contains("alice-pw"),
        "{text}"
    );
    let host = s.url.trim_start_matches("http://");
    for event in &events {
        assert!(
            event["timestamp"].as_str().unwrap().ends_with('Z'),
            "{event}"
        );
        assert_eq!(event["actor"]["name"], "alice", "{event}");
        assert_eq!(event["request"]["addr"], "127.0.0.1", "{event}");
        assert_eq!(event["request"]["host"], host, "{event}");
        assert_eq!(event["request"]["useragent"], "notify-test/1", "{event}");
        assert!(
            event["request"]["id"]
                .as_str()
                .is_some_and(|id| !id.is_empty()),
            "{event}"
        );
        assert!(
            event["source"]["instanceID"]
                .as_str()
                .is_some_and(|id| id.len() == 36),
            "{event}"
        );
        assert_eq!(
            event["source"]["instanceID"],
            events[0]["source"]["instanceID"]
        );
    }

    let last = events.last().unwrap();
    assert_eq!(last["request"]["id"], last_request.as_str(), "{last}");

    let blob_push = &events[0]["target"];
    assert_eq!(events[0]["request"]["method"], "POST");
    assert_eq!(blob_push["repository"], "alice/app");
    assert_eq!(blob_push["digest"], blob.as_str());
    assert_eq!(blob_push["size"], config.len());
    assert_eq!(blob_push["length"], config.len());
    assert_eq!(
        blob_push["url"],
        format!("{}/v2/alice/app/blobs/{blob}", s.url)
    );
    assert!(blob_push.get("tag").is_none());

    let push = &events[1]["target"];
    assert_eq!(events[1]["request"]["method"], "PUT");
    assert_eq!(push["mediaType"], OCI_MANIFEST);
    assert_eq!(push["digest"], manifest_digest.as_str());
    assert_eq!(push["tag"], "v1");
    assert_eq!(push["size"], manifest.len());
    assert_eq!(
        push["url"],
        format!("{}/v2/alice/app/manifests/{manifest_digest}", s.url)
    );

    let pull = &events[2]["target"];
    assert_eq!(events[2]["request"]["method"], "GET");
    assert_eq!(pull["mediaType"], OCI_MANIFEST);
    assert_eq!(pull["digest"], manifest_digest.as_str());
    assert_eq!(pull["tag"], "v1");
    assert_eq!(pull["length"], manifest.len());

    let blob_pull = &events[3]["target"];
    assert_eq!(blob_pull["digest"], blob.as_str());
    assert_eq!(blob_pull["size"], config.len());

    let mount = &events[4]["target"];
    assert_eq!(mount["repository"], "alice/copy");
    assert_eq!(mount["fromRepository"], "alice/app");
    assert_eq!(mount["digest"], blob.as_str());
    assert_eq!(mount["size"], config.len());

    let manifest_delete = &events[5]["target"];
    assert_eq!(events[5]["request"]["method"], "DELETE");
    assert_eq!(manifest_delete["repository"], "alice/app");
    assert_eq!(manifest_delete["digest"], manifest_digest.as_str());
    let blob_delete = &events[6]["target"];
    assert_eq!(blob_delete["repository"], "alice/copy");
    assert_eq!(blob_delete["digest"], blob.as_str());

    // A tag deleted is a delete with the tag.
    put_tag("v2").await;
    let untagged = send(s.client.delete(s.at("/v2/alice/app/manifests/v2"))).await;
    assert_eq!(untagged.status(), 202);
    let events = receiver.events(9).await;
    assert_eq!(events[8]["action"], "delete");
    assert_eq!(events[8]["target"]["tag"], "v2");
    assert_eq!(events.len(), 9, "{events:#?}");

    let text = all_delivered(&s.client, &s.url, 9.0).await;
    assert!(
        metric(
            &text,
            "portcullis_notification_delivery_seconds_count",
            &["endpoint=\"ci\""]
        ) >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn filters_leave_out_other_repositories_and_actions() {
    let (team, deletes) = (Receiver::up(), Receiver::up());
    let secrets = tempfile::tempdir().unwrap();
    let token_file = secrets.path().join("hook-token");
    std::fs::write(&token_file, "hook-secret\n").unwrap();
    let mut team_only = team.endpoint("team");
    team_only.repositories = vec!["alice/team/**".into()];
    team_only.token_file = Some(token_file);
    team_only.headers = [("x-source".to_owned(), "portcullis".to_owned())].into();
    let mut deletes_only = deletes.endpoint("deletes");
    deletes_only.actions = vec!["delete".into()];
    let s = server(vec![team_only, deletes_only]).await;
    let token = s
        .token(
            "alice",
            "repository:alice/team/a:pull,push,delete&scope=repository:alice/other:pull,push,delete&scope=repository:alice/team/last:pull,push",
        )
        .await;
    let push = |repo: &str, data: &'static [u8]| {
        let request = s
            .client
            .post(s.at(&format!(
                "/v2/{repo}/blobs/uploads/?digest={}",
                sha256(data)
            )))
            .bearer_auth(&token)
            .body(data.to_vec());
        async move { assert_eq!(request.send().await.unwrap().status(), 201) }
    };
    push("alice/team/a", b"in the team").await;
    push("alice/other", b"elsewhere").await;
    let deleted = s
        .client
        .delete(s.at(&format!("/v2/alice/other/blobs/{}", sha256(b"elsewhere"))))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 202);
    // Delivered in order: once the last arrives, the others were decided.
    push("alice/team/last", b"the last").await;

    let events = team.events(2).await;
    let repositories: Vec<&str> = events
        .iter()
        .map(|e| e["target"]["repository"].as_str().unwrap())
        .collect();
    assert_eq!(
        repositories,
        ["alice/team/a", "alice/team/last"],
        "{events:#?}"
    );
    for received in team.log.received.lock().unwrap().iter() {
        assert_eq!(received.headers["authorization"], "Bearer hook-secret");
        assert_eq!(received.headers["x-source"], "portcullis");
        assert!(!received.body.to_string().contains("hook-secret"));
    }
    for received in deletes.log.received.lock().unwrap().iter() {
        assert!(received.headers.get("authorization").is_none());
    }
    let events = deletes.events(1).await;
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_eq!(events[0]["action"], "delete");
    assert_eq!(events[0]["target"]["repository"], "alice/other");
    // Nothing more came to either.
    let text = metric_reaches(
        &s.client,
        &s.url,
        "portcullis_notifications_total",
        &["endpoint=\"team\"", "result=\"delivered\""],
        2.0,
    )
    .await;
    assert_eq!(
        metric(
            &text,
            "portcullis_notifications_total",
            &["endpoint=\"deletes\"", "result=\"delivered\""]
        ),
        1.0
    );
    assert_eq!(team.events(0).await.len(), 2);
    assert_eq!(deletes.events(0).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_receiver_down_then_failing_gets_every_event_once_in_order() {
    let mut receiver = Receiver::down();
    let s = server(vec![receiver.endpoint("ci")]).await;
    let token = s.token("alice", "repository:alice/app:pull,push").await;
    let mut digests = Vec::new();
    for i in 0..5 {
        let data = format!("blob {i}").into_bytes();
        let digest = sha256(&data);
        let pushed = s
            .client
            .post(s.at(&format!("/v2/alice/app/blobs/uploads/?digest={digest}")))
            .bearer_auth(&token)
            .body(data)
            .send()
            .await
            .unwrap();
        assert_eq!(pushed.status(), 201);
        digests.push(digest);
    }
    // Refused connections, retried: the events wait in the queue.
    let text = metric_reaches(
        &s.client,
        &s.url,
        "portcullis_notifications_pending",
        &["endpoint=\"ci\""],
        5.0,
    )
    .await;
    assert_eq!(
        metric(
            &text,
            "portcullis_notifications_total",
            &["result=\"delivered\""]
        ),
        0.0
    );
    let failures = |text: &str| {
        metric(
            text,
            "portcullis_notification_failures_total",
            &["endpoint=\"ci\""],
        )
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while failures(&scrape(&s.client, &s.url).await) < 2.0 {
        assert!(Instant::now() < deadline, "no retries counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Back, but answering 500 three times first: retried again.
    receiver.listen(3);
    let events = receiver.events(5).await;
    let got: Vec<&str> = events
        .iter()
        .map(|e| e["target"]["digest"].as_str().unwrap())
        .collect();
    assert_eq!(
        got,
        digests.iter().map(String::as_str).collect::<Vec<_>>(),
        "in order"
    );
    let ids: HashSet<&str> = events.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 5, "each once: {events:#?}");
    assert!(
        receiver.log.attempts.load(Ordering::SeqCst) >= 4,
        "the 500s were retried"
    );
    // The backlog (five events of five requests) in one POST.
    assert_eq!(receiver.log.received.lock().unwrap().len(), 1);
    let text = all_delivered(&s.client, &s.url, 5.0).await;
    assert!(failures(&text) >= 5.0, "refusals and 500s counted:\n{text}");
    assert_eq!(receiver.events(0).await.len(), 5);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_queue_drops_the_newest_and_counts_them() {
    let receiver = Receiver::down();
    let mut endpoint = receiver.endpoint("small");
    endpoint.max_pending = 2;
    let s = server(vec![endpoint]).await;
    for i in 0..4 {
        s.client
            .post(s.at(&format!(
                "/v2/alice/app/blobs/uploads/?digest={}",
                sha256(&[i])
            )))
            .bearer_auth(s.token("alice", "repository:alice/app:pull,push").await)
            .body(vec![i])
            .send()
            .await
            .unwrap();
    }
    let text = metric_reaches(
        &s.client,
        &s.url,
        "portcullis_notifications_total",
        &["endpoint=\"small\"", "result=\"dropped\""],
        2.0,
    )
    .await;
    assert_eq!(
        metric(
            &text,
            "portcullis_notifications_pending",
            &["endpoint=\"small\""]
        ),
        2.0
    );
}

/// `portcullis serve` in `dir` telling `receiver`, as the real binary.
fn binary(dir: &Path, receiver: &Receiver) -> ServerProcess {
    let config = common::process::config_in(dir);
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!(
        "\n[[notifications.endpoints]]\nname = \"ci\"\nurl = {:?}\nbackoff_initial_ms = 20\nbackoff_max_secs = 1\n",
        receiver.url
    ));
    std::fs::write(&config, text).unwrap();
    ServerProcess::start_with(&["--no-auth", "--config", config.to_str().unwrap()])
}

#[tokio::test(flavor = "multi_thread")]
async fn events_undelivered_at_sigterm_are_sent_once_after_the_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut receiver = Receiver::down();
    let server = binary(dir.path(), &receiver);
    let client = reqwest::Client::new();
    let mut digests = HashSet::new();
    for i in 0..20 {
        let data = format!("layer {i}").into_bytes();
        let digest = sha256(&data);
        let pushed = client
            .post(server.at(&format!("/v2/team/app/blobs/uploads/?digest={digest}")))
            .body(data)
            .send()
            .await
            .unwrap();
        assert_eq!(pushed.status(), 201);
        digests.insert(digest);
    }
    // Stopped at once, the receiver still down: the events made are
    // written before the process exits.
    server.signal(libc::SIGTERM);
    assert!(server.wait().success());
    assert_eq!(receiver.log.attempts.load(Ordering::SeqCst), 0);
    assert!(dir.path().join("data/_notifications/ci").is_dir());

    receiver.listen(1);
    let server = binary(dir.path(), &receiver);
    let events = receiver.events(20).await;
    let got: HashSet<String> = events
        .iter()
        .map(|e| e["target"]["digest"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(got, digests);
    let ids: HashSet<&str> = events.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 20, "each once: {events:#?}");
    all_delivered(&client, &server.url, 20.0).await;

    // And a restart after everything was delivered sends nothing again.
    server.signal(libc::SIGTERM);
    assert!(server.wait().success());
    let server = binary(dir.path(), &receiver);
    let text = scrape(&client, &server.url).await;
    assert_eq!(
        metric(
            &text,
            "portcullis_notifications_pending",
            &["endpoint=\"ci\""]
        ),
        0.0
    );
    assert_eq!(receiver.events(0).await.len(), 20);
}

#[test]
fn check_config_refuses_a_bad_section_and_reports_a_good_one() {
    let dir = tempfile::tempdir().unwrap();
    // Checks `config`: the exit status and what was said (stdout, stderr).
    let check = |config: &str, status: i32| {
        std::fs::write(dir.path().join("portcullis.toml"), config).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(["check-config", "portcullis.toml"])
            .current_dir(dir.path())
            .output()
            .unwrap();
        let said = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
        let (stdout, stderr) = (said(&out.stdout), said(&out.stderr));
        assert_eq!(out.status.code(), Some(status), "{stdout}{stderr}");
        (stdout, stderr)
    };
    let (_, err) = check(
        "[[notifications.endpoints]]\nname = \"ci\"\nurl = \"ftp://ci.example\"\nactions = [\"push\", \"tag\"]\n\
         [[notifications.endpoints]]\nname = \"ci\"\nurl = \"https://ci.example/hook\"\ntoken_file = \"missing-token\"\nrepositories = [\"a/**b\"]\n",
        2,
    );
    for line in [
        "portcullis.toml:3:1: notifications endpoint `ci`: url must be an http:// or https:// URL with a host",
        "portcullis.toml:4:1: notifications endpoint `ci`: actions: `tag` is not one of push, pull, mount, delete",
        "portcullis.toml:6:1: notifications endpoint name `ci` is used twice",
        "portcullis.toml:9:1: notifications endpoint `ci`: repositories: repository pattern `a/**b`: `**` must be a whole path segment",
        "notifications endpoint `ci`: notifications.endpoints.token_file missing-token: No such file or directory (os error 2)",
    ] {
        assert!(
            err.lines().any(|l| l == line),
            "missing {line:?} in:\n{err}"
        );
    }
    std::fs::write(dir.path().join("a-file"), "").unwrap();
    let (_, err) = check(
        "[notifications]\nqueue_dir = \"a-file/queues\"\n[[notifications.endpoints]]\nname = \"ci\"\nurl = \"http://ci.example\"\n",
        2,
    );
    let line = "notifications.queue_dir a-file/queues: a-file is not a directory";
    assert!(
        err.lines().any(|l| l == line),
        "missing {line:?} in:\n{err}"
    );

    std::fs::write(dir.path().join("token"), "hook-secret\n").unwrap();
    let (out, err) = check(
        "[[notifications.endpoints]]\nname = \"ci\"\nurl = \"https://ci.example:8443/hook\"\ntoken_file = \"token\"\nactions = [\"push\"]\n",
        0,
    );
    for line in [
        "notifications: queues under ./data/_notifications",
        "notifications: `ci` gets push of ** at https://ci.example:8443 (not contacted)",
    ] {
        assert!(
            out.lines().any(|l| l == line),
            "missing {line:?} in:\n{out}"
        );
    }
    assert!(!out.contains("hook-secret") && !err.contains("hook-secret"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_skopeo_push_and_pull_are_told_blob_by_blob() {
    common::clients::require("skopeo");
    let receiver = Receiver::up();
    let s = TestServer::start_configured(tempfile::tempdir().unwrap(), |config| {
        config.auth.enabled = false;
        config.notifications.endpoints = vec![receiver.endpoint("ci")];
    })
    .await;
    let env = common::clients::ClientEnv::new(s.url.trim_start_matches("http://"));
    let src = env.path("src");
    common::oci::write_layout(&src, "v1", &[10_000, 40_000]);
    let (from, to) = (
        common::oci::oci_ref(&src, "v1"),
        env.docker_ref("team/app:v1"),
    );
    let back = common::oci::oci_ref(&env.path("back"), "v1");
    let env = tokio::task::spawn_blocking(move || {
        env.skopeo(&["copy", "--dest-tls-verify=false", &from, &to]);
        env.skopeo(&["copy", "--src-tls-verify=false", &to, &back]);
        env
    })
    .await
    .unwrap();
    drop(env);

    // Three blobs and the manifest pushed, then pulled.
    let events = receiver.events(8).await;
    let of =
        |action: &str| -> Vec<&Value> { events.iter().filter(|e| e["action"] == action).collect() };
    let (pushes, pulls) = (of("push"), of("pull"));
    assert_eq!(
        (pushes.len(), pulls.len(), events.len()),
        (4, 4, 8),
        "{events:#?}"
    );
    // What was told pushed is what the registry serves at the event's
    // url (skopeo may re-encode the layers it pushes), and was pulled.
    for push in &pushes {
        let target = &push["target"];
        let url = target["url"].as_str().unwrap();
        let served = s
            .client
            .head(url)
            .header("accept", OCI_MANIFEST)
            .send()
            .await
            .unwrap();
        assert_eq!(served.status(), 200, "{push}");
        assert_eq!(
            common::header_str(&served, "docker-content-digest"),
            target["digest"]
        );
        let length = common::header_str(&served, "content-length").parse::<u64>();
        assert_eq!(length.ok(), target["size"].as_u64(), "{push}");
        assert_eq!(target["repository"], "team/app");
        assert!(
            push["request"]["useragent"]
                .as_str()
                .is_some_and(|a| a.contains("skopeo")),
            "{push}"
        );
        let pulled = pulls
            .iter()
            .find(|e| e["target"]["digest"] == target["digest"]);
        assert_eq!(
            pulled.map(|e| &e["target"]["size"]),
            Some(&target["size"]),
            "{events:#?}"
        );
    }
    let manifest = pushes
        .iter()
        .find(|e| e["target"]["mediaType"] == OCI_MANIFEST)
        .unwrap();
    assert_eq!(manifest["target"]["tag"], "v1");
    // The blobs before the manifest that needs them.
    assert_eq!(events[3]["target"]["digest"], manifest["target"]["digest"]);
}
