//! Garbage collection and the store's check from outside: images pushed over
//! HTTP into a running server, the real `portcullis gc` and `portcullis fsck`
//! over the same store (the filesystem, and a real Garage), and every kept
//! image pulled back whole from the server afterwards.

use crate::common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

use common::garage::{Garage, SECRET_KEY};
use common::{TestServer, sha256};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// A store, a server over it, and a configuration file naming the same store
/// for the commands.
struct Store {
    server: TestServer,
    config: PathBuf,
    root: Option<PathBuf>,
    _garage: Option<Garage>,
}

impl Store {
    async fn fs() -> Self {
        Self::fs_with_staleness(1).await
    }

    /// A filesystem store whose server may believe what it cached for
    /// `staleness` seconds after another process changed it.
    async fn fs_with_staleness(staleness: u64) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("data");
        let config = dir.path().join("gc.toml");
        std::fs::write(
            &config,
            format!(
                "[storage]\nroot = {:?}\nstaleness_secs = 1\n",
                root.to_str().unwrap()
            ),
        )
        .unwrap();
        let server = TestServer::start_configured(dir, |c| {
            c.auth.enabled = false;
            c.storage.staleness_secs = staleness;
        })
        .await;
        Self {
            server,
            config,
            root: Some(root),
            _garage: None,
        }
    }

    async fn garage() -> Self {
        let garage = tokio::task::spawn_blocking(Garage::start).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("s3-secret");
        std::fs::write(&secret, format!("{SECRET_KEY}\n")).unwrap();
        let s3 = common::s3_config(&garage.endpoint(), secret.clone());
        let config = dir.path().join("gc.toml");
        std::fs::write(
            &config,
            format!(
                "[storage]\nstaleness_secs = 1\n\n[storage.s3]\nbucket = {:?}\nregion = {:?}\n\
                 endpoint = {:?}\nprefix = {:?}\naccess_key_id = {:?}\n\
                 secret_access_key_file = {:?}\npath_style = true\n",
                s3.bucket,
                s3.region,
                garage.endpoint(),
                s3.prefix,
                s3.access_key_id.as_deref().unwrap(),
                secret.to_str().unwrap(),
            ),
        )
        .unwrap();
        let server = TestServer::start_configured(dir, |c| {
            c.auth.enabled = false;
            c.storage.staleness_secs = 1;
            c.storage.s3 = Some(s3);
        })
        .await;
        Self {
            server,
            config,
            root: None,
            _garage: Some(garage),
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_portcullis"));
        command
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .stdin(Stdio::null());
        command
    }

    /// Runs a command to its end: its status and standard output.
    async fn run(&self, args: &[&str]) -> (i32, String) {
        let mut command = self.command(args);
        let output = tokio::task::spawn_blocking(move || command.output().unwrap())
            .await
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&output.stderr);
        eprintln!("{args:?}:\n{stdout}{stderr}");
        (output.status.code().unwrap_or(-1), stdout)
    }

    /// Runs `gc --dry-run` until everything `seed` left as garbage is older
    /// than the run (an object store's times are whole seconds, and its
    /// objects count as written at the end of theirs): its report.
    async fn until_collectable(&self, seeded: &Seeded) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let doomed = format!("would remove manifest team/app@{}", seeded.untagged.digest);
        loop {
            let (status, out) = self
                .run(&["gc", "--dry-run", "--delete-untagged", "--grace", "0s"])
                .await;
            assert_eq!(status, 0, "{out}");
            let links_old = out.contains("; 0 unreferenced blob links younger");
            if out.contains(&doomed) && links_old && out.contains(" 0 unreferenced but younger") {
                return out;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "garbage never collectable: {out}"
            );
        }
    }

    /// The path of a blob's file (filesystem stores only).
    fn blob_file(&self, digest: &str) -> PathBuf {
        let (alg, hex) = digest.split_once(':').unwrap();
        let root = self.root.as_ref().expect("a filesystem store");
        root.join("blobs").join(alg).join(&hex[..2]).join(hex)
    }

    fn has_blob_file(&self, digest: &str) -> bool {
        self.blob_file(digest).exists()
    }
}

/// An image as pushed: its manifest and every blob it references.
#[derive(Clone)]
struct Image {
    repo: String,
    digest: String,
    manifest: Vec<u8>,
    media_type: &'static str,
    blobs: Vec<(String, Vec<u8>)>,
}

fn descriptor(media_type: &str, data: &[u8]) -> serde_json::Value {
    serde_json::json!({"mediaType": media_type, "digest": sha256(data), "size": data.len()})
}

/// Pushes an image of one layer, tagged or by digest, optionally a referrer of `subject`.
async fn push_image(
    server: &TestServer,
    repo: &str,
    tag: Option<&str>,
    layer: &[u8],
    subject: Option<&Image>,
) -> Image {
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","id":{:?}}}"#,
        sha256(layer)
    );
    let config = config.into_bytes();
    let mut blobs = Vec::new();
    for data in [&config[..], layer] {
        server.push_blob(repo, data).await;
        blobs.push((sha256(data), data.to_vec()));
    }
    let mut manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor("application/vnd.oci.image.config.v1+json", &config),
        "layers": [descriptor("application/vnd.oci.image.layer.v1.tar", layer)],
    });
    if let Some(subject) = subject {
        manifest["subject"] = descriptor(subject.media_type, &subject.manifest);
        manifest["artifactType"] = "application/vnd.example.signature".into();
    }
    let manifest = serde_json::to_vec(&manifest).unwrap();
    put_manifest(server, repo, tag, OCI_MANIFEST, &manifest).await;
    Image {
        repo: repo.to_owned(),
        digest: sha256(&manifest),
        manifest,
        media_type: OCI_MANIFEST,
        blobs,
    }
}

/// Pushes an index over two new images pushed by digest (as a multi-platform push does).
async fn push_index(server: &TestServer, repo: &str, tag: &str, seed: &str) -> (Image, Vec<Image>) {
    let mut children = Vec::new();
    for arch in ["amd64", "arm64"] {
        let layer = format!("{seed} layer for {arch}").into_bytes();
        children.push(push_image(server, repo, None, &layer, None).await);
    }
    let manifests: Vec<_> = children
        .iter()
        .map(|c| descriptor(OCI_MANIFEST, &c.manifest))
        .collect();
    let index = serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests,
    });
    let index = serde_json::to_vec(&index).unwrap();
    put_manifest(server, repo, Some(tag), OCI_INDEX, &index).await;
    let image = Image {
        repo: repo.to_owned(),
        digest: sha256(&index),
        manifest: index,
        media_type: OCI_INDEX,
        blobs: Vec::new(),
    };
    (image, children)
}

async fn put_manifest(
    server: &TestServer,
    repo: &str,
    tag: Option<&str>,
    media_type: &str,
    body: &[u8],
) {
    let reference = tag.map_or_else(|| sha256(body), str::to_owned);
    let response = server
        .client
        .put(server.at(&format!("/v2/{repo}/manifests/{reference}")))
        .header("content-type", media_type)
        .body(body.to_vec())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    assert_eq!(status, 201, "push {repo}:{reference}: {text}");
}

/// Asserts the server serves the image whole: its manifest's bytes, and every blob.
async fn assert_whole(server: &TestServer, image: &Image) {
    let response = server
        .client
        .get(server.at(&format!("/v2/{}/manifests/{}", image.repo, image.digest)))
        .header("accept", format!("{OCI_MANIFEST}, {OCI_INDEX}"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status().as_u16(),
        200,
        "{}@{}",
        image.repo,
        image.digest
    );
    assert!(response.bytes().await.unwrap().as_ref() == image.manifest.as_slice());
    for (digest, data) in &image.blobs {
        server.assert_serves_blob(&image.repo, digest, data).await;
    }
}

/// The status of `GET /v2/<repo>/manifests/<digest>`.
async fn manifest_status(server: &TestServer, repo: &str, digest: &str) -> u16 {
    let response = server
        .client
        .get(server.at(&format!("/v2/{repo}/manifests/{digest}")))
        .header("accept", format!("{OCI_MANIFEST}, {OCI_INDEX}"))
        .send()
        .await
        .unwrap();
    response.status().as_u16()
}

/// What every gc test starts from: kept images of every kind, and garbage.
struct Seeded {
    tagged: Image,
    /// Pushed as `app:old`, then the tag moved on: untagged now.
    untagged: Image,
    index: Image,
    children: Vec<Image>,
    referrer: Image,
    /// Uploaded, never referenced by a manifest.
    orphan: String,
    /// A layer the tagged image shares with the untagged one.
    shared: String,
}

async fn seed(server: &TestServer) -> Seeded {
    let untagged = push_image(server, "team/app", Some("v1"), b"old app layer", None).await;
    let tagged = push_image(server, "team/app", Some("v1"), b"new app layer", None).await;
    // The config of `untagged` pushed again as a layer of another tagged image.
    let shared = untagged.blobs[0].clone();
    let other = push_image(server, "team/other", Some("latest"), &shared.1, None).await;
    let (index, children) = push_index(server, "team/multi", "latest", "multi").await;
    let referrer = push_image(server, "team/app", None, b"signature", Some(&tagged)).await;
    let orphan = server
        .push_blob("team/app", b"an upload no manifest names")
        .await;
    assert_whole(server, &other).await;
    Seeded {
        tagged,
        untagged,
        index,
        children,
        referrer,
        orphan,
        shared: shared.0,
    }
}

async fn keeps_what_is_reachable(store: Store) {
    let server = &store.server;
    let seeded = seed(server).await;

    // A dry run removes nothing.
    let out = store.until_collectable(&seeded).await;
    assert!(
        out.contains("would remove 1 manifests and 3 blob links"),
        "{out}"
    );
    assert_whole(server, &seeded.untagged).await;
    server
        .assert_serves_blob("team/app", &seeded.orphan, b"an upload no manifest names")
        .await;

    // By default untagged manifests stay; the orphan upload goes.
    let (status, out) = store.run(&["gc", "--grace", "0s"]).await;
    assert_eq!(status, 0);
    assert!(
        out.contains("removed 0 manifests and 1 blob links"),
        "{out}"
    );
    assert_whole(server, &seeded.untagged).await;
    let orphan = server
        .client
        .get(server.at(&format!("/v2/team/app/blobs/{}", seeded.orphan)))
        .send()
        .await
        .unwrap();
    assert_eq!(orphan.status().as_u16(), 404, "the orphan upload is gone");

    // With --delete-untagged the untagged manifest goes, with its own layer;
    // its config, shared with another repository's image, stays there.
    let (status, out) = store
        .run(&["gc", "--delete-untagged", "--grace", "0s"])
        .await;
    assert_eq!(status, 0);
    assert!(
        out.contains(&format!(
            "removed manifest team/app@{}",
            seeded.untagged.digest
        )),
        "{out}"
    );
    assert!(out.contains("removed 1 manifests"), "{out}");
    assert_eq!(
        manifest_status(server, "team/app", &seeded.untagged.digest).await,
        404
    );
    let own_layer = &seeded.untagged.blobs[1].0;
    let layer = server
        .client
        .get(server.at(&format!("/v2/team/app/blobs/{own_layer}")))
        .send()
        .await
        .unwrap();
    assert_eq!(
        layer.status().as_u16(),
        404,
        "the untagged image's layer is gone"
    );
    if store.root.is_some() {
        assert!(!store.has_blob_file(own_layer), "its bytes are gone");
        assert!(
            !store.has_blob_file(&seeded.orphan),
            "the orphan's bytes are gone"
        );
        assert!(
            store.has_blob_file(&seeded.shared),
            "a blob another repository uses stays"
        );
    }
    // Everything a tag reaches stays whole: the image, the index and its
    // untagged children, and the referrer of a kept image.
    assert_whole(server, &seeded.tagged).await;
    assert_whole(server, &seeded.index).await;
    for child in &seeded.children {
        assert_whole(server, child).await;
    }
    assert_whole(server, &seeded.referrer).await;
    let referrers = server
        .get_json(&format!("/v2/team/app/referrers/{}", seeded.tagged.digest))
        .await;
    assert_eq!(
        referrers["manifests"][0]["digest"],
        seeded.referrer.digest.as_str()
    );

    // A second run finds nothing more to do.
    let (_, out) = store
        .run(&["gc", "--delete-untagged", "--grace", "0s"])
        .await;
    assert!(
        out.contains("removed 0 manifests and 0 blob links"),
        "{out}"
    );
    assert!(out.contains("removed 0 ("), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn gc_keeps_what_tags_reach_and_removes_the_rest_on_the_filesystem() {
    keeps_what_is_reachable(Store::fs().await).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn gc_keeps_what_tags_reach_and_removes_the_rest_on_garage() {
    keeps_what_is_reachable(Store::garage().await).await;
}

/// Pushes that run while the collector runs lose nothing, even those that
/// reuse garbage: bytes equal to an unreferenced blob pushed again, and a
/// blob mounted from a link the collector is about to remove.
async fn pushes_during_a_run_survive(store: Store) {
    let server = &store.server;
    let seeded = seed(server).await;
    // Garbage the pushes below reuse: an unreferenced upload in `team/app`
    // (mounted from) and the untagged image's own layer (pushed again).
    let mountable = server.push_blob("team/app", b"garbage to mount from").await;
    let reused = seeded.untagged.blobs[1].clone();
    store.until_collectable(&seeded).await;

    let mut gc = store.command(&["gc", "--delete-untagged", "--grace", "0s"]);
    gc.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = gc.spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (started_tx, started) = tokio::sync::oneshot::channel();
    let lines = std::thread::spawn(move || {
        let mut started_tx = Some(started_tx);
        let mut seen = Vec::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.starts_with("marking repositories")
                && let Some(tx) = started_tx.take()
            {
                let _ = tx.send(());
            }
            seen.push(line);
        }
        seen
    });
    started.await.expect("gc starts marking");

    // Pushes until the collector is done, each begun after the run began.
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let exited = {
        let done = std::sync::Arc::clone(&done);
        tokio::task::spawn_blocking(move || {
            let output = child.wait_with_output().unwrap();
            done.store(true, std::sync::atomic::Ordering::SeqCst);
            output
        })
    };
    let mut pushed = Vec::new();
    let mut round = 0;
    while !done.load(std::sync::atomic::Ordering::SeqCst) || round < 2 {
        let repo = format!("ci/build{}", round % 3);
        let layer = format!("build {round}").into_bytes();
        pushed.push(push_image(server, &repo, Some(&format!("r{round}")), &layer, None).await);
        let (index, children) =
            push_index(server, &repo, &format!("i{round}"), &format!("i{round}")).await;
        pushed.push(index);
        pushed.extend(children);
        if round == 0 {
            // The garbage layer's bytes, pushed again into a new image.
            pushed.push(push_image(server, "ci/reuse", Some("v1"), &reused.1, None).await);
            // A mount of the garbage upload, then an image naming it.
            let mount = server
                .client
                .post(server.at(&format!(
                    "/v2/ci/mounted/blobs/uploads/?mount={mountable}&from=team/app"
                )))
                .send()
                .await
                .unwrap();
            if mount.status().as_u16() != 201 {
                // Removed already: the client uploads it, as clients do.
                server
                    .push_blob("ci/mounted", b"garbage to mount from")
                    .await;
            }
            let config = br#"{"mounted":true}"#;
            server.push_blob("ci/mounted", config).await;
            let manifest = serde_json::to_vec(&serde_json::json!({
                "schemaVersion": 2, "mediaType": OCI_MANIFEST,
                "config": descriptor("application/vnd.oci.image.config.v1+json", config),
                "layers": [descriptor("application/vnd.oci.image.layer.v1.tar", b"garbage to mount from")],
            }))
            .unwrap();
            put_manifest(server, "ci/mounted", Some("v1"), OCI_MANIFEST, &manifest).await;
            pushed.push(Image {
                repo: "ci/mounted".into(),
                digest: sha256(&manifest),
                manifest,
                media_type: OCI_MANIFEST,
                blobs: vec![
                    (sha256(config), config.to_vec()),
                    (mountable.clone(), b"garbage to mount from".to_vec()),
                ],
            });
        }
        round += 1;
    }
    let output = exited.await.unwrap();
    let stderr = lines.join().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    eprintln!(
        "gc during {round} rounds of pushes:\n{stdout}{}",
        stderr.join("\n")
    );
    assert!(output.status.success());
    assert!(
        stdout.contains(&format!(
            "removed manifest team/app@{}",
            seeded.untagged.digest
        )),
        "the garbage from before the run went: {stdout}"
    );
    for image in &pushed {
        assert_whole(server, image).await;
    }
    assert_whole(server, &seeded.tagged).await;
    assert_whole(server, &seeded.index).await;
    assert_whole(server, &seeded.referrer).await;

    // And the store checks out whole.
    let (status, out) = store.run(&["fsck"]).await;
    assert_eq!(status, 0, "{out}");
    assert!(out.contains(": 0 problems"), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn pushes_while_gc_runs_lose_nothing_on_the_filesystem() {
    pushes_during_a_run_survive(Store::fs().await).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn pushes_while_gc_runs_lose_nothing_on_garage() {
    pushes_during_a_run_survive(Store::garage().await).await;
}

/// Sets a file's modification time `age` into the past.
fn backdate(path: &Path, age: Duration) {
    let file = std::fs::File::open(path).unwrap();
    file.set_modified(SystemTime::now() - age).unwrap();
}

/// Every file under `dir`.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            found.extend(files(&path));
        } else {
            found.push(path);
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread")]
async fn gc_leaves_what_is_younger_than_the_grace_period() {
    let store = Store::fs().await;
    let server = &store.server;
    let old = server
        .push_blob("team/app", b"an upload from yesterday")
        .await;
    for file in files(store.root.as_ref().unwrap()) {
        backdate(&file, Duration::from_secs(86_400));
    }
    let young = server
        .push_blob("team/app", b"an upload from just now")
        .await;
    let (status, out) = store.run(&["gc", "--grace", "1h"]).await;
    assert_eq!(status, 0);
    assert!(
        out.contains(
            "removed 0 manifests and 1 blob links; 1 unreferenced blob links younger than 1h kept"
        ),
        "{out}"
    );
    assert!(out.contains("removed 1 ("), "{out}");
    assert!(!store.has_blob_file(&old));
    server
        .assert_serves_blob("team/app", &young, b"an upload from just now")
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn fsck_finds_a_corrupt_blob_and_a_dangling_link_and_repairs_them() {
    // The server reads storage for every request, so that it sees the
    // repair at once.
    let store = Store::fs_with_staleness(0).await;
    let server = &store.server;
    let image = push_image(server, "team/app", Some("v1"), b"a layer to corrupt", None).await;
    let lost = server
        .push_blob("team/app", b"a blob whose bytes get lost")
        .await;
    let (status, out) = store.run(&["fsck"]).await;
    assert_eq!(status, 0, "a fresh store is whole: {out}");

    let layer = image.blobs[1].0.clone();
    std::fs::write(store.blob_file(&layer), b"a layer to corrupT").unwrap();
    std::fs::remove_file(store.blob_file(&lost)).unwrap();
    let (status, out) = store.run(&["fsck"]).await;
    assert_eq!(status, 1, "{out}");
    assert!(
        out.contains(&format!(
            "found: corrupt blob {layer}: its bytes hash to {}",
            sha256(b"a layer to corrupT")
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!("found: dangling link team/app@{lost}")),
        "{out}"
    );
    assert!(out.contains("2 problems"), "{out}");
    assert!(store.has_blob_file(&layer), "a check alone changes nothing");

    // The repair removes the corrupt bytes (and the links to them), so the
    // server answers BLOB_UNKNOWN rather than wrong bytes; the manifest that
    // needs them is reported, for a push to make it whole.
    let (status, out) = store.run(&["fsck", "--repair"]).await;
    assert_eq!(status, 1, "{out}");
    assert!(
        out.contains(&format!("repaired: corrupt blob {layer}")),
        "{out}"
    );
    assert!(
        out.contains(&format!("repaired: dangling link team/app@{lost}")),
        "{out}"
    );
    assert!(
        out.contains(&format!("repaired: dangling link team/app@{layer}")),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "found: manifest team/app@{} references {layer}",
            image.digest
        )),
        "{out}"
    );
    assert!(!store.has_blob_file(&layer));
    let pulled = server
        .client
        .get(server.at(&format!("/v2/team/app/blobs/{layer}")))
        .send()
        .await
        .unwrap();
    assert_eq!(pulled.status().as_u16(), 404);
    assert_eq!(common::error_code(pulled).await, "BLOB_UNKNOWN");

    // Pushing the layer again makes the store whole.
    server.push_blob("team/app", b"a layer to corrupt").await;
    let (status, out) = store.run(&["fsck"]).await;
    assert_eq!(status, 0, "{out}");
    assert_whole(server, &image).await;
}

/// A manifest whose bytes are gone is broken, and so is what points at it:
/// its tag, and the referrer entry of a referrer whose bytes are gone too.
/// The repair removes them all; the image pushed again checks out whole.
#[tokio::test(flavor = "multi_thread")]
async fn fsck_finds_broken_manifests_dangling_tags_and_referrers_and_repairs_them() {
    let store = Store::fs_with_staleness(0).await;
    let server = &store.server;
    let image = push_image(server, "team/app", Some("v1"), b"a layer", None).await;
    let signature = push_image(server, "team/app", None, b"a signature", Some(&image)).await;
    std::fs::remove_file(store.blob_file(&image.digest)).unwrap();
    std::fs::remove_file(store.blob_file(&signature.digest)).unwrap();

    let (status, out) = store.run(&["fsck"]).await;
    assert_eq!(status, 1, "{out}");
    let (image_digest, signature_digest) = (&image.digest, &signature.digest);
    for expected in [
        format!(
            "found: broken manifest team/app@{image_digest}: its bytes ({image_digest}) are not stored"
        ),
        format!("found: broken manifest team/app@{signature_digest}"),
        format!("found: dangling tag team/app:v1: no manifest {image_digest}"),
        format!("found: dangling referrer team/app@{signature_digest} of {image_digest}"),
        "4 problems".to_owned(),
    ] {
        assert!(out.contains(&expected), "{expected:?} missing in:\n{out}");
    }
    assert!(
        out.contains("4 of them `portcullis fsck --repair` removes"),
        "{out}"
    );

    let (status, out) = store.run(&["fsck", "--repair"]).await;
    assert_eq!(status, 0, "every problem repaired: {out}");
    assert!(out.contains("4 problems, 4 repaired"), "{out}");
    assert_eq!(manifest_status(server, "team/app", "v1").await, 404);
    let referrers = server
        .get_json(&format!("/v2/team/app/referrers/{image_digest}"))
        .await;
    assert_eq!(referrers["manifests"], serde_json::json!([]), "{referrers}");

    let image = push_image(server, "team/app", Some("v1"), b"a layer", None).await;
    let (status, out) = store.run(&["fsck"]).await;
    assert_eq!(status, 0, "{out}");
    assert_whole(server, &image).await;
}
