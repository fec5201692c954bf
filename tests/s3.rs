//! Portcullis on S3: the registry API on a real Garage bucket, and two
//! replicas sharing one bucket (and one set of signing keys) as a load
//! balancer would spread a client's requests over them.
//!
//! Each test owns its Garage (`common::garage`) and its temporary
//! directories; replicas are in-process servers on their own ephemeral
//! ports (`TestServer`), the registry clients the real skopeo where noted.

use crate::common;

use std::path::PathBuf;

use common::garage::{Garage, GarageCluster, SECRET_KEY};
use common::{TestServer, error_code, header_str, random_bytes, sha256};
use portcullis::auth::users::hash_password;
use portcullis::config::{Config, S3Config};
use reqwest::{StatusCode, header};
use tempfile::TempDir;

const MIB: usize = 1 << 20;
const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// What a bucket lives on: one Garage node, or a three-node cluster (each
/// replica then talks to a node of its own, as replicas in different zones
/// would).
enum Nodes {
    One(Garage),
    Cluster(GarageCluster),
}

/// A Garage bucket and what every replica on it shares: the secret key's
/// file, the signing keys, the users and the policies.
struct Bucket {
    nodes: Nodes,
    endpoints: Vec<String>,
    shared: TempDir,
}

impl Bucket {
    /// On a single node.
    async fn start() -> Self {
        let garage = tokio::task::spawn_blocking(Garage::start).await.unwrap();
        let endpoints = vec![garage.endpoint()];
        Self::on(Nodes::One(garage), endpoints)
    }

    /// On a three-node cluster.
    async fn start_cluster() -> Self {
        let cluster = tokio::task::spawn_blocking(|| GarageCluster::start(3))
            .await
            .unwrap();
        let endpoints = cluster.endpoints();
        Self::on(Nodes::Cluster(cluster), endpoints)
    }

    fn on(nodes: Nodes, endpoints: Vec<String>) -> Self {
        let shared = tempfile::tempdir().unwrap();
        std::fs::write(shared.path().join("s3-secret"), format!("{SECRET_KEY}\n")).unwrap();
        let users = format!(
            "[users.alice]\npassword = {:?}\n\n[users.root]\npassword = {:?}\ngroups = [\"admins\"]\n",
            hash_password("alice-pw").unwrap(),
            hash_password("root-pw").unwrap(),
        );
        std::fs::write(shared.path().join("users.toml"), users).unwrap();
        common::process::copy_project_policies(shared.path());
        Self {
            nodes,
            endpoints,
            shared,
        }
    }

    /// The S3 endpoint of node `i` (modulo the nodes there are).
    fn endpoint(&self, i: usize) -> String {
        self.endpoints[i % self.endpoints.len()].clone()
    }

    /// Garage's logs, for a failure's message.
    fn log(&self) -> String {
        match &self.nodes {
            Nodes::One(garage) => garage.log(),
            Nodes::Cluster(cluster) => cluster.log(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.shared.path().join(name)
    }

    /// `[storage.s3]` for this bucket through node `node`.
    fn s3(&self, node: usize) -> S3Config {
        common::s3_config(&self.endpoint(node), self.path("s3-secret"))
    }

    /// A replica on the bucket through node `node`, with authentication on
    /// or off; its own data directory is never used (everything is in the
    /// bucket).
    async fn replica(&self, node: usize, auth: bool) -> TestServer {
        self.replica_with(node, auth, |_| {}).await
    }

    /// As [`Bucket::replica`], with more configuration.
    async fn replica_with(
        &self,
        node: usize,
        auth: bool,
        more: impl FnOnce(&mut Config),
    ) -> TestServer {
        let s3 = self.s3(node);
        let (keys, users, policies) = (
            self.path("certs"),
            self.path("users.toml"),
            self.path("policies"),
        );
        TestServer::start_configured(tempfile::tempdir().unwrap(), move |config: &mut Config| {
            config.auth.enabled = auth;
            config.storage.s3 = Some(s3);
            // What one replica writes, the other lists at once.
            config.storage.staleness_secs = 0;
            config.token.key_dir = keys;
            config.users.file = users;
            config.policy.dir = policies;
            more(config);
        })
        .await
    }
}

/// A monolithic blob push into `repo` with `token`; its status.
async fn push_with(server: &TestServer, token: &str, repo: &str, data: &[u8]) -> reqwest::Response {
    server
        .client
        .post(server.at(&format!(
            "/v2/{repo}/blobs/uploads/?digest={}",
            sha256(data)
        )))
        .bearer_auth(token)
        .body(data.to_vec())
        .send()
        .await
        .unwrap()
}

/// Starts an upload in `repo`; its `Location`.
async fn start_upload(server: &TestServer, repo: &str) -> String {
    let response = server
        .client
        .post(server.at(&format!("/v2/{repo}/blobs/uploads/")))
        .header(header::CONTENT_LENGTH, "0")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    header_str(&response, "location").to_owned()
}

/// One chunk at `at`; asserts 202 and the `Range` after it.
async fn patch(server: &TestServer, location: &str, at: usize, chunk: &[u8]) {
    let response = server
        .client
        .patch(server.at(location))
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(
            header::CONTENT_RANGE,
            format!("{at}-{}", at + chunk.len() - 1),
        )
        .body(chunk.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED, "PATCH at {at}");
    assert_eq!(
        header_str(&response, "range"),
        format!("0-{}", at + chunk.len() - 1)
    );
}

async fn put_close(server: &TestServer, location: &str, digest: &str) -> reqwest::Response {
    let sep = if location.contains('?') { '&' } else { '?' };
    server
        .client
        .put(server.at(&format!("{location}{sep}digest={digest}")))
        .header(header::CONTENT_LENGTH, "0")
        .send()
        .await
        .unwrap()
}

/// An OCI manifest over `config` and `layers` (digests and sizes).
fn manifest(config: (&str, usize), layers: &[(&str, usize)]) -> Vec<u8> {
    let descriptor = |media: &str, (digest, size): (&str, usize)| serde_json::json!({"mediaType": media, "digest": digest, "size": size});
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "config": descriptor("application/vnd.oci.image.config.v1+json", config),
        "layers": layers
            .iter()
            .map(|l| descriptor("application/vnd.oci.image.layer.v1.tar", *l))
            .collect::<Vec<_>>(),
    }))
    .unwrap()
}

async fn put_manifest(server: &TestServer, repo: &str, reference: &str, body: &[u8]) -> StatusCode {
    server
        .client
        .put(server.at(&format!("/v2/{repo}/manifests/{reference}")))
        .header(header::CONTENT_TYPE, MANIFEST)
        .body(body.to_vec())
        .send()
        .await
        .unwrap()
        .status()
}

/// The digest `repo:reference` resolves to, or the error status.
async fn resolve(server: &TestServer, repo: &str, reference: &str) -> Result<String, StatusCode> {
    let response = server
        .client
        .get(server.at(&format!("/v2/{repo}/manifests/{reference}")))
        .header(header::ACCEPT, MANIFEST)
        .send()
        .await
        .unwrap();
    match response.status() {
        StatusCode::OK => Ok(header_str(&response, "docker-content-digest").to_owned()),
        other => Err(other),
    }
}

async fn tags(server: &TestServer, repo: &str) -> serde_json::Value {
    server.get_json(&format!("/v2/{repo}/tags/list")).await["tags"].clone()
}

/// An image (a config and one layer) pushed through `server`; its
/// manifest's bytes.
async fn push_image(server: &TestServer, repo: &str, layer: &[u8]) -> Vec<u8> {
    let config = format!("{{\"layer\":\"{}\"}}", sha256(layer)).into_bytes();
    let layer_digest = server.push_blob(repo, layer).await;
    let config_digest = server.push_blob(repo, &config).await;
    manifest(
        (&config_digest, config.len()),
        &[(&layer_digest, layer.len())],
    )
}

#[tokio::test]
async fn an_upload_started_on_one_replica_is_continued_and_finished_on_the_other() {
    let bucket = Bucket::start_cluster().await;
    let (a, b) = (
        bucket.replica(0, false).await,
        bucket.replica(2, false).await,
    );
    let data = random_bytes(13 * MIB + 2);
    let digest = sha256(&data);
    let repo = "team/app";

    // Chunks of odd sizes, so that parts (5 MiB) and chunks never line up:
    // 3 MiB (all pending), 4 MiB + 1 (a part and a pending tail), both on A;
    // then 1 byte and the rest on B, which has only what the bucket holds.
    let location = start_upload(&a, repo).await;
    let cuts = [0, 3 * MIB, 7 * MIB + 1, 7 * MIB + 2, data.len()];
    for (i, pair) in cuts.windows(2).enumerate() {
        let replica = if i < 2 { &a } else { &b };
        patch(replica, &location, pair[0], &data[pair[0]..pair[1]]).await;
    }
    let response = b.client.get(b.at(&location)).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        header_str(&response, "range"),
        format!("0-{}", data.len() - 1)
    );

    // A wrong digest refuses the finish and loses nothing: the right one
    // then finishes it, on the first replica again.
    let wrong = sha256(b"something else");
    let response = put_close(&b, &location, &wrong).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(response).await, "DIGEST_INVALID");
    let response = put_close(&a, &location, &digest).await;
    assert_eq!(response.status(), StatusCode::CREATED);

    b.assert_serves_blob(repo, &digest, &data).await;
    a.assert_serves_blob(repo, &digest, &data).await;
    let response = b
        .client
        .get(b.at(&format!("/v2/{repo}/blobs/{digest}")))
        .header(header::RANGE, "bytes=5242879-10485760")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::PARTIAL_CONTENT);
    let body = response.bytes().await.unwrap();
    assert!(
        body[..] == data[5_242_879..=10_485_760],
        "the range read back differs"
    );

    // Another repository does not read it, through either replica.
    for replica in [&a, &b] {
        let response = replica
            .client
            .get(replica.at(&format!("/v2/other/repo/blobs/{digest}")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        assert_eq!(error_code(response).await, "BLOB_UNKNOWN");
    }
}

#[tokio::test]
async fn a_push_through_one_replica_is_pulled_through_the_other_and_tag_changes_show_there() {
    let bucket = Bucket::start_cluster().await;
    let (a, b) = (
        bucket.replica(0, false).await,
        bucket.replica(2, false).await,
    );
    let repo = "team/app";
    let first = push_image(&a, repo, &random_bytes(6 * MIB)).await;
    assert_eq!(
        put_manifest(&a, repo, "v1", &first).await,
        StatusCode::CREATED
    );
    let first_digest = sha256(&first);

    assert_eq!(resolve(&b, repo, "v1").await, Ok(first_digest.clone()));
    assert_eq!(tags(&b, repo).await, serde_json::json!(["v1"]));
    let catalog = b.get_json("/v2/_catalog").await;
    assert_eq!(catalog["repositories"], serde_json::json!([repo]));

    // The tag moved on A: B resolves it to the new manifest, and lists
    // the new tag A added.
    let second = push_image(&a, repo, &random_bytes(100_000)).await;
    assert_eq!(
        put_manifest(&a, repo, "v1", &second).await,
        StatusCode::CREATED
    );
    assert_eq!(
        put_manifest(&a, repo, "v2", &second).await,
        StatusCode::CREATED
    );
    assert_eq!(resolve(&b, repo, "v1").await, Ok(sha256(&second)));
    assert_eq!(tags(&b, repo).await, serde_json::json!(["v1", "v2"]));
    // The first manifest is still there by digest.
    assert_eq!(
        resolve(&b, repo, &first_digest).await,
        Ok(first_digest.clone())
    );

    // Deleted on A: gone on B, by tag and in its list.
    let response = a
        .client
        .delete(a.at(&format!("/v2/{repo}/manifests/{}", sha256(&second))))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    assert_eq!(resolve(&b, repo, "v1").await, Err(StatusCode::NOT_FOUND));
    assert_eq!(resolve(&b, repo, "v2").await, Err(StatusCode::NOT_FOUND));
    let listed = tags(&b, repo).await;
    assert!(
        listed.as_array().is_none_or(Vec::is_empty),
        "B still lists deleted tags: {listed}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_racing_to_push_the_same_blob_and_tag_leave_one_consistent_image() {
    let bucket = Bucket::start_cluster().await;
    let (a, b) = (
        bucket.replica(0, false).await,
        bucket.replica(2, false).await,
    );
    let repo = "race/app";
    let layer = random_bytes(11 * MIB);
    let digest = sha256(&layer);
    let (pushed_a, pushed_b) = tokio::join!(a.push_blob(repo, &layer), b.push_blob(repo, &layer));
    assert_eq!(
        (pushed_a.as_str(), pushed_b.as_str()),
        (digest.as_str(), digest.as_str())
    );
    a.assert_serves_blob(repo, &digest, &layer).await;

    // Two different images raced under one tag: the tag ends on one of
    // them, the same through both replicas, and both images stay whole.
    let config_a = a.push_blob(repo, b"{\"replica\":\"a\"}").await;
    let config_b = b.push_blob(repo, b"{\"replica\":\"b\"}").await;
    let image_a = manifest((&config_a, 15), &[(&digest, layer.len())]);
    let image_b = manifest((&config_b, 15), &[(&digest, layer.len())]);
    let (put_a, put_b) = tokio::join!(
        put_manifest(&a, repo, "latest", &image_a),
        put_manifest(&b, repo, "latest", &image_b)
    );
    assert_eq!((put_a, put_b), (StatusCode::CREATED, StatusCode::CREATED));
    let winner = resolve(&a, repo, "latest").await.expect("the tag resolves");
    assert_eq!(resolve(&b, repo, "latest").await, Ok(winner.clone()));
    assert!(
        winner == sha256(&image_a) || winner == sha256(&image_b),
        "the tag points at neither image: {winner}"
    );
    for image in [&image_a, &image_b] {
        let digest = sha256(image);
        assert_eq!(resolve(&a, repo, &digest).await, Ok(digest.clone()));
        assert_eq!(resolve(&b, repo, &digest).await, Ok(digest));
    }
    b.assert_serves_blob(repo, &digest, &layer).await;
}

#[tokio::test]
async fn a_token_from_one_replica_is_accepted_by_the_other_within_its_grant() {
    let bucket = Bucket::start_cluster().await;
    let a = bucket.replica(0, true).await;
    let b = bucket.replica(1, true).await;
    // alice may push her own namespace: a token from A pushes through B.
    let push = a.token("alice", "repository:alice/app:pull,push").await;
    let data = random_bytes(200_000);
    let digest = sha256(&data);
    let response = push_with(&b, &push, "alice/app", &data).await;
    assert_eq!(response.status(), StatusCode::CREATED);

    // A token from B for root's repository, with only pull granted to
    // alice, does not push through A.
    let pull = b.token("alice", "repository:root/app:pull,push").await;
    let response = push_with(&a, &pull, "root/app", &data).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let challenge = header_str(&response, "www-authenticate").to_owned();
    assert!(challenge.contains("insufficient_scope"), "{challenge}");

    // A token tampered with (one character of its signature changed) is
    // refused by the replica that did not issue it; the genuine one reads.
    let at = push.len() - 10;
    let swapped = if &push[at..=at] == "A" { "B" } else { "A" };
    let forged = format!("{}{swapped}{}", &push[..at], &push[at + 1..]);
    let response = a
        .client
        .get(a.at(&format!("/v2/alice/app/blobs/{digest}")))
        .bearer_auth(&forged)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let response = a
        .client
        .get(a.at(&format!("/v2/alice/app/blobs/{digest}")))
        .bearer_auth(&push)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

/// `portcullis.toml` for the real binary on this bucket: `config_in`'s
/// paths, and `[storage.s3]`.
fn binary_config(bucket: &Bucket, dir: &std::path::Path, extra: &str, s3_extra: &str) -> PathBuf {
    let path = common::process::config_in(dir);
    let s3 = bucket.s3(0);
    let mut text = std::fs::read_to_string(&path).unwrap();
    text = text.replacen("[storage]\n", &format!("[storage]\n{extra}"), 1);
    text.push_str(&format!(
        "\n[storage.s3]\nbucket = {:?}\nregion = {:?}\nendpoint = {:?}\nprefix = {:?}\n\
         access_key_id = {:?}\nsecret_access_key_file = {:?}\npart_size_mib = 5\n{s3_extra}",
        s3.bucket,
        s3.region,
        s3.endpoint.unwrap(),
        s3.prefix,
        s3.access_key_id.unwrap(),
        s3.secret_access_key_file.unwrap().to_str().unwrap(),
    ));
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_pushes_and_pulls_an_image_through_portcullis_on_s3() {
    common::clients::require("skopeo");
    let bucket = Bucket::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = binary_config(&bucket, dir.path(), "", "");
    // A second replica on the bucket that redirects pulls into the store.
    let other = tempfile::tempdir().unwrap();
    let redirecting = binary_config(&bucket, other.path(), "", "redirect_pulls = true\n");
    tokio::task::spawn_blocking(move || {
        use common::oci::{layout_blobs, layout_tag_digest, oci_ref, write_layout};
        let server = common::process::ServerProcess::start_with(&[
            "--no-auth",
            "--config",
            config.to_str().unwrap(),
        ]);
        let env = common::clients::ClientEnv::new(&server.host);
        let src = env.path("src");
        // A layer over two parts, one under one, one tiny.
        let layout = write_layout(&src, "v1", &[12 * MIB + 7, 700_000, 3_000]);
        let remote = env.docker_ref("team/app:v1");
        env.skopeo(&[
            "copy",
            "--preserve-digests",
            "--dest-tls-verify=false",
            &oci_ref(&src, "v1"),
            &remote,
        ]);
        let back = env.path("back");
        env.skopeo(&[
            "copy",
            "--preserve-digests",
            "--src-tls-verify=false",
            &remote,
            &oci_ref(&back, "v1"),
        ]);
        assert_eq!(layout_tag_digest(&back, "v1"), layout.manifest_digest);
        assert_eq!(layout_blobs(&back), layout.blobs);
        // skopeo follows the other replica's redirects to the store.
        let second = common::process::ServerProcess::start_with(&[
            "--no-auth",
            "--config",
            redirecting.to_str().unwrap(),
        ]);
        let second_env = common::clients::ClientEnv::new(&second.host);
        let redirected = second_env.path("redirected");
        second_env.skopeo(&[
            "copy",
            "--preserve-digests",
            "--src-tls-verify=false",
            &second_env.docker_ref("team/app:v1"),
            &oci_ref(&redirected, "v1"),
        ]);
        assert_eq!(layout_blobs(&redirected), layout.blobs);
        // A blob (not the manifest, which `layout.blobs` holds too).
        let layer = &layout.config_digest;
        let status = std::process::Command::new("curl")
            .args([
                "--silent",
                "--output",
                "/dev/null",
                "--write-out",
                "%{http_code}",
            ])
            .arg(format!("{}/v2/team/app/blobs/{layer}", second.url))
            .output()
            .expect("run curl");
        assert_eq!(
            String::from_utf8_lossy(&status.stdout),
            "307",
            "no redirect"
        );
        // Nothing of the pushes' uploads is left in the bucket.
        assert!(
            common::garage::object_keys(&bucket.endpoint(0), "registry/uploads/").is_empty(),
            "upload sessions left in the bucket"
        );
        assert_eq!(
            common::garage::multipart_uploads(&bucket.endpoint(0)),
            Vec::<(String, String)>::new(),
            "multipart uploads left open"
        );
    })
    .await
    .unwrap();
}

/// The multipart uploads open in the bucket and the objects under the
/// registry's `uploads/`.
fn upload_leftovers(endpoint: &str) -> (Vec<(String, String)>, Vec<String>) {
    (
        common::garage::multipart_uploads(endpoint),
        common::garage::object_keys(endpoint, "registry/uploads/"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_mid_upload_leaves_sessions_another_resumes_and_the_sweep_clears() {
    use tokio::io::AsyncWriteExt;
    let bucket = Bucket::start_cluster().await;
    let dir = tempfile::tempdir().unwrap();
    let config = binary_config(&bucket, dir.path(), "", "");
    let killed = common::process::ServerProcess::start_with(&[
        "--no-auth",
        "--config",
        config.to_str().unwrap(),
    ]);
    let client = reqwest::Client::new();
    let start = |repo: &str| {
        let request = client
            .post(format!("{}/v2/{repo}/blobs/uploads/", killed.url))
            .header(header::CONTENT_LENGTH, "0");
        async move {
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), StatusCode::ACCEPTED);
            header_str(&response, "location").to_owned()
        }
    };
    // One session with a chunk recorded (a part and a pending tail)...
    let data = random_bytes(9 * MIB);
    let digest = sha256(&data);
    let resumed = start("team/app").await;
    let response = client
        .patch(format!("{}{resumed}", killed.url))
        .header(header::CONTENT_RANGE, format!("0-{}", 6 * MIB - 1))
        .body(data[..6 * MIB].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    // ...and one killed while its chunk streams: 12 of the 20 MiB it
    // announced are sent (parts of it on their way to the bucket) when
    // the replica dies.
    let abandoned = start("team/app").await;
    let mut socket = tokio::net::TcpStream::connect(&killed.host).await.unwrap();
    let head = format!(
        "PATCH {abandoned} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/octet-stream\r\n\
         Content-Length: {}\r\n\r\n",
        killed.host,
        20 * MIB
    );
    socket.write_all(head.as_bytes()).await.unwrap();
    socket.write_all(&random_bytes(12 * MIB)).await.unwrap();
    killed.kill();
    drop(socket);

    let endpoint = bucket.endpoint(0);
    let (open, _) = tokio::task::spawn_blocking({
        let endpoint = endpoint.clone();
        move || upload_leftovers(&endpoint)
    })
    .await
    .unwrap();
    assert_eq!(open.len(), 2, "both sessions' multipart uploads: {open:?}");

    // Another replica continues the first session from what the bucket
    // recorded; the second one has nothing recorded and starts over.
    let other = bucket.replica(1, false).await;
    let response = other.client.get(other.at(&resumed)).send().await.unwrap();
    assert_eq!(header_str(&response, "range"), format!("0-{}", 6 * MIB - 1));
    patch(&other, &resumed, 6 * MIB, &data[6 * MIB..]).await;
    let response = put_close(&other, &resumed, &digest).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    other.assert_serves_blob("team/app", &digest, &data).await;
    let response = other.client.get(other.at(&abandoned)).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_eq!(header_str(&response, "range"), "0-0");
    drop(other);

    // A replica that expires idle sessions after a second sweeps the
    // abandoned one: its multipart upload is aborted, nothing stays.
    let _sweeper = bucket
        .replica_with(2, false, |config| {
            config.storage.upload_max_idle_secs = 1;
            config.storage.sweep_interval_secs = 1;
        })
        .await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let leftovers = tokio::task::spawn_blocking({
            let endpoint = endpoint.clone();
            move || upload_leftovers(&endpoint)
        })
        .await
        .unwrap();
        if leftovers.0.is_empty() && leftovers.1.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "left after 30 s of sweeps: {leftovers:?}\n{}",
            bucket.log()
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_authorized_pull_is_redirected_to_a_presigned_url_the_store_serves() {
    let bucket = Bucket::start().await;
    let server = bucket
        .replica_with(0, true, |config| {
            let s3 = config.storage.s3.as_mut().unwrap();
            s3.redirect_pulls = true;
            s3.redirect_expiry_secs = 30;
        })
        .await;
    let push = server
        .token("alice", "repository:alice/app:pull,push")
        .await;
    let data = random_bytes(6 * MIB + 5);
    let digest = sha256(&data);
    let response = push_with(&server, &push, "alice/app", &data).await;
    assert_eq!(response.status(), StatusCode::CREATED);

    // Authorized: a redirect into the store, which serves the blob (and a
    // range of it) to a client holding nothing but the address.
    let blob = server.at(&format!("/v2/alice/app/blobs/{digest}"));
    let response = server
        .client
        .get(&blob)
        .bearer_auth(&push)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::TEMPORARY_REDIRECT);
    assert_eq!(header_str(&response, "docker-content-digest"), digest);
    let location = header_str(&response, "location").to_owned();
    assert!(
        location.starts_with(&bucket.endpoint(0)),
        "the redirect leads elsewhere: {location}"
    );
    let plain = reqwest::Client::new();
    let fetched = plain.get(&location).send().await.unwrap();
    assert_eq!(fetched.status(), StatusCode::OK);
    assert!(
        fetched.bytes().await.unwrap()[..] == data[..],
        "the store served other bytes"
    );
    let ranged = plain
        .get(&location)
        .header(header::RANGE, "bytes=100-199")
        .send()
        .await
        .unwrap();
    assert_eq!(ranged.status(), StatusCode::PARTIAL_CONTENT);
    assert!(ranged.bytes().await.unwrap()[..] == data[100..200]);
    // HEAD is answered by Portcullis itself.
    let response = server
        .client
        .head(&blob)
        .bearer_auth(&push)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        header_str(&response, "content-length"),
        data.len().to_string()
    );

    // Refused before any address is signed: no token, a token for another
    // repository, a blob the repository does not hold.
    let response = server.client.get(&blob).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert!(response.headers().get("location").is_none());
    let other = server.token("alice", "repository:root/app:pull").await;
    let response = server
        .client
        .get(&blob)
        .bearer_auth(&other)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert!(response.headers().get("location").is_none());
    let response = server
        .client
        .get(server.at(&format!("/v2/root/app/blobs/{digest}")))
        .bearer_auth(&other)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert!(response.headers().get("location").is_none());
    // A tampered address is refused by the store.
    let tampered = location.replacen("X-Amz-Signature=", "X-Amz-Signature=0", 1);
    let refused = plain.get(&tampered).send().await.unwrap();
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn a_tag_moved_on_one_replica_is_seen_on_the_other_within_the_staleness() {
    let bucket = Bucket::start_cluster().await;
    let staleness = std::time::Duration::from_secs(2);
    let replica = |node| {
        bucket.replica_with(node, false, move |config| {
            config.storage.staleness_secs = staleness.as_secs();
        })
    };
    let (a, b) = (replica(0).await, replica(2).await);
    let repo = "team/app";
    let first = push_image(&a, repo, &random_bytes(1000)).await;
    assert_eq!(
        put_manifest(&a, repo, "v1", &first).await,
        StatusCode::CREATED
    );
    // B reads (and caches) the tag.
    assert_eq!(resolve(&b, repo, "v1").await, Ok(sha256(&first)));

    let second = push_image(&a, repo, &random_bytes(2000)).await;
    assert_eq!(
        put_manifest(&a, repo, "v1", &second).await,
        StatusCode::CREATED
    );
    let moved = std::time::Instant::now();
    // A sees its own move at once.
    assert_eq!(resolve(&a, repo, "v1").await, Ok(sha256(&second)));
    // B may serve the old image until its entry is `staleness` old, never
    // longer (a margin for the requests themselves).
    loop {
        let seen = resolve(&b, repo, "v1").await;
        if seen == Ok(sha256(&second)) {
            break;
        }
        assert_eq!(seen, Ok(sha256(&first)), "neither image");
        assert!(
            moved.elapsed() < staleness + std::time::Duration::from_secs(1),
            "B still serves the old tag {:?} after the move",
            moved.elapsed()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    // B deletes the tag: B's own change shows there at once, and A no
    // longer resolves it either once its own entry is stale.
    let response = b
        .client
        .delete(b.at(&format!("/v2/{repo}/manifests/v1")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let deleted = std::time::Instant::now();
    assert_eq!(resolve(&b, repo, "v1").await, Err(StatusCode::NOT_FOUND));
    while resolve(&a, repo, "v1").await.is_ok() {
        assert!(
            deleted.elapsed() < staleness + std::time::Duration::from_secs(1),
            "A still serves a deleted tag {:?} after the delete",
            deleted.elapsed()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn readiness_follows_the_store() {
    let bucket = Bucket::start().await;
    let server = bucket.replica(0, false).await;
    let ready = || async {
        server
            .client
            .get(server.at("/readyz"))
            .send()
            .await
            .unwrap()
    };
    assert_eq!(ready().await.status(), StatusCode::OK);
    // The store goes away: out of rotation, saying why, naming nothing.
    let Bucket { nodes, shared, .. } = bucket;
    drop(nodes);
    let response = ready().await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(
        body["problems"],
        serde_json::json!(["storage: the store does not answer"])
    );
    // Liveness does not depend on it.
    let live = server
        .client
        .get(server.at("/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(live.status(), StatusCode::OK);
    // Requests get 503 and a time to come back, after a few quick retries.
    let started = std::time::Instant::now();
    let response = server
        .client
        .get(server.at("/v2/team/app/manifests/v1"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(header_str(&response, "retry-after"), "5");
    let body = response.text().await.unwrap();
    assert!(body.contains("UNAVAILABLE"), "{body}");
    assert!(
        !body.contains("127.0.0.1"),
        "the store's address leaked: {body}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(15));
    drop(shared);
}

#[tokio::test]
async fn a_store_that_refuses_the_key_stops_serve_at_start_and_check_config_reads_the_secret_file()
{
    let bucket = Bucket::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = binary_config(&bucket, dir.path(), "", "");
    let wrong_secret = dir.path().join("wrong-secret");
    std::fs::write(&wrong_secret, format!("{}\n", "f".repeat(64))).unwrap();
    let text = std::fs::read_to_string(&config).unwrap();
    let right = bucket.path("s3-secret");
    let with = |secret: &std::path::Path| {
        text.replace(
            &format!("{:?}", right.to_str().unwrap()),
            &format!("{:?}", secret.to_str().unwrap()),
        )
    };
    let portcullis = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(args)
            .env("PORTCULLIS_LOG", "warn")
            .output()
            .expect("run portcullis")
    };
    let config = config.to_str().unwrap().to_owned();

    // A wrong secret: serve refuses before it listens, saying which bucket.
    std::fs::write(&config, with(&wrong_secret)).unwrap();
    let out = tokio::task::spawn_blocking({
        let config = config.clone();
        move || {
            portcullis(&[
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--no-auth",
                "--config",
                &config,
            ])
        }
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "serve started on a refusing store");
    assert!(
        stderr.contains("storage.s3: bucket `portcullis`"),
        "{stderr}"
    );
    assert!(
        !stderr.contains(&"f".repeat(64)),
        "the secret leaked: {stderr}"
    );

    // A secret file that is not there: check-config names it.
    let missing = dir.path().join("no-such-secret");
    std::fs::write(&config, with(&missing)).unwrap();
    let out = tokio::task::spawn_blocking(move || portcullis(&["check-config", &config]))
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("secret_access_key_file"), "{stderr}");
    assert!(stderr.contains("no-such-secret"), "{stderr}");
}

/// A server process on `config` without authentication, its log (at
/// `filter`) read line by line.
fn logged(
    config: &std::path::Path,
    filter: &str,
) -> (common::process::ServerProcess, crate::logs::Log) {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"));
    command
        .args(["serve", "--no-auth", "--listen", "127.0.0.1:0", "--config"])
        .arg(config)
        .env("PORTCULLIS_LOG", filter)
        .stderr(std::process::Stdio::piped());
    let mut server = common::process::ServerProcess::spawn(command);
    let log = crate::logs::Log::of(&mut server);
    (server, log)
}

/// A blob pulled by a plain-HTTP/1 client from Portcullis on a plain-HTTP
/// store is relayed from the store's answers with `splice(2)`, in ranged
/// GETs of a part (5 MiB here) asked for several at once: byte for byte
/// whole (three ranges), six pulls at once sharing a budget of two ranges
/// ahead, and a range across two parts; a range under 1 MiB, a small blob,
/// a replica with `relay_pulls = false` and a HEAD are answered without it,
/// with the same bytes and headers. When the store declines the first
/// range (the object gone: 404) or cannot be reached, the driver's read
/// answers: `BLOB_UNKNOWN`, `503`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulls_from_a_plain_http_store_are_relayed_in_ranges() {
    let bucket = Bucket::start().await;
    let dir = tempfile::tempdir().unwrap();
    // Two ranges' worth of read budget: pulls at once mostly find it spent.
    let config = binary_config(&bucket, dir.path(), "", "read_memory_mib = 10\n");
    let other = tempfile::tempdir().unwrap();
    let copying = binary_config(&bucket, other.path(), "", "relay_pulls = false\n");
    let filter = "warn,portcullis::serve=debug";
    let (server, mut log) = logged(&config, filter);
    let (second, mut second_log) = logged(&copying, filter);
    let http = reqwest::Client::new();

    let big = random_bytes(13 * MIB + 3);
    let small = random_bytes(300_000);
    let gone = random_bytes(2 * MIB);
    for data in [&big, &small, &gone] {
        let pushed = http
            .post(format!(
                "{}/v2/team/relay/blobs/uploads/?digest={}",
                server.url,
                sha256(data)
            ))
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .body(data.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(pushed.status(), StatusCode::CREATED);
    }
    let blob = |url: &str, data: &[u8]| format!("{url}/v2/team/relay/blobs/{}", sha256(data));

    for round in 0..2 {
        let res = http.get(blob(&server.url, &big)).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{round}");
        assert_eq!(header_str(&res, "content-length"), big.len().to_string());
        assert_eq!(header_str(&res, "docker-content-digest"), sha256(&big));
        assert!(
            res.bytes().await.unwrap()[..] == big[..],
            "{round}: the bytes differ"
        );
        let line = log.wait_for(&["blob sent", r#"path="splice""#]);
        assert!(line.contains(&format!("bytes={}", big.len())), "{line}");
    }

    // Six at once, the budget shared: each asks for its ranges ahead while
    // it finds permits, and one at a time when it does not.
    let pulls = (0..6).map(|_| {
        let (http, url) = (http.clone(), blob(&server.url, &big));
        async move { http.get(url).send().await.unwrap().bytes().await.unwrap() }
    });
    for body in futures_util::future::join_all(pulls).await {
        assert!(body[..] == big[..], "a pull among six differs");
        log.wait_for(&["blob sent", r#"path="splice""#]);
    }

    let (first, last) = (4_000_000, 11_000_000);
    let res = http
        .get(blob(&server.url, &big))
        .header(header::RANGE, format!("bytes={first}-{last}"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        header_str(&res, "content-range"),
        format!("bytes {first}-{last}/{}", big.len())
    );
    assert!(res.bytes().await.unwrap()[..] == big[first..=last]);
    let line = log.wait_for(&["blob sent", r#"path="splice""#]);
    assert!(
        line.contains(&format!("bytes={}", last - first + 1)),
        "{line}"
    );

    // Under a relay's worth: the driver's read, copied.
    let res = http
        .get(blob(&server.url, &big))
        .header(header::RANGE, "bytes=100-199")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::PARTIAL_CONTENT);
    assert!(res.bytes().await.unwrap()[..] == big[100..200]);
    log.wait_for(&["blob sent", r#"path="copy""#, r#"why="driver""#]);
    let res = http.get(blob(&server.url, &small)).send().await.unwrap();
    assert!(res.bytes().await.unwrap()[..] == small[..]);
    log.wait_for(&["blob sent", r#"path="copy""#, r#"why="driver""#]);
    let res = http.head(blob(&server.url, &big)).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(header_str(&res, "content-length"), big.len().to_string());

    let res = http.get(blob(&second.url, &big)).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(
        res.bytes().await.unwrap()[..] == big[..],
        "copied: the bytes differ"
    );
    second_log.wait_for(&["blob sent", r#"path="copy""#, r#"why="driver""#]);
    assert_eq!(second_log.count(r#"path="splice""#), 0);

    // The blob's bytes gone from the bucket behind the replica's back (it
    // still knows the blob's size): the store answers the first range 404,
    // which a relay does not carry, and the driver's read answers it.
    let res = http.get(blob(&server.url, &gone)).send().await.unwrap();
    assert!(res.bytes().await.unwrap()[..] == gone[..]);
    log.wait_for(&["blob sent", r#"path="splice""#]);
    let hex = sha256(&gone).trim_start_matches("sha256:").to_owned();
    let key = format!("{}/blobs/sha256/{}/{hex}", common::S3_PREFIX, &hex[..2]);
    let (deleted, _) = common::garage::s3_request(&bucket.endpoint(0), "DELETE", &key, None);
    assert_eq!(deleted, 204, "DELETE {key}");
    let res = http.get(blob(&server.url, &gone)).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(res).await, "BLOB_UNKNOWN");
    log.wait_for(&["the store's answer is not relayed", r#"why="status""#]);

    // The store gone, the first range finds no one: the driver's read
    // answers, as it answers a store that is down.
    let Bucket { nodes, .. } = bucket;
    drop(nodes);
    let res = http.get(blob(&server.url, &big)).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body = res.text().await.unwrap();
    assert!(!body.contains("127.0.0.1"), "{body}");
}

/// A client that stops reading a relayed pull for a while leaves the
/// ranges asked for ahead waiting in their sockets; once they waited longer
/// than a quarter of the store's idle time (2 s here) they are asked for
/// again rather than read from a connection the store may have given up,
/// and the pull ends byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranges_a_slow_client_left_waiting_are_asked_for_again() {
    let bucket = Bucket::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = binary_config(&bucket, dir.path(), "", "io_timeout_secs = 2\n");
    let (server, mut log) = logged(&config, "warn,portcullis::serve=debug");
    let http = reqwest::Client::new();
    let big = random_bytes(23 * MIB + 3);
    let url = format!("{}/v2/team/slow/blobs/{}", server.url, sha256(&big));
    let pushed = http
        .post(format!(
            "{}/v2/team/slow/blobs/uploads/?digest={}",
            server.url,
            sha256(&big)
        ))
        .body(big.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(pushed.status(), StatusCode::CREATED);

    // A client of its own, with a small receive buffer: what it has not
    // read waits in Portcullis' pipe and the store's sockets, not its own.
    let (host, path) = (server.host.clone(), url[server.url.len()..].to_owned());
    let got = tokio::task::spawn_blocking(move || slow_get(&host, &path))
        .await
        .unwrap();
    assert!(
        got == big,
        "the bytes differ ({} of {})",
        got.len(),
        big.len()
    );
    log.wait_for(&["blob sent", r#"path="splice""#]);
    log.wait_for(&["waited too long for its turn; asked again"]);
}

/// GETs `path` from `host` on a socket with a 64 KiB receive buffer, reads
/// 1 MiB of the body, pauses 1.5 s, reads the rest: the body.
fn slow_get(host: &str, path: &str) -> Vec<u8> {
    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;
    let mut socket = std::net::TcpStream::connect(host).unwrap();
    let size: libc::c_int = 64 << 10;
    // SAFETY: setsockopt on a live socket with a pointer to a live c_int.
    let set = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&raw const size).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(set, 0, "SO_RCVBUF");
    write!(
        socket,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut all = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    let head_end = loop {
        let n = socket.read(&mut buf).unwrap();
        assert!(n > 0, "no head");
        all.extend_from_slice(&buf[..n]);
        if let Some(at) = all.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
    };
    assert!(
        all.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&all[..head_end])
    );
    let mut body = all.split_off(head_end);
    while body.len() < MIB {
        let n = socket.read(&mut buf).unwrap();
        assert!(n > 0, "the body ended early");
        body.extend_from_slice(&buf[..n]);
    }
    // The client pauses: the ranges asked for ahead wait past 0.5 s.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    socket.read_to_end(&mut body).unwrap();
    body
}
