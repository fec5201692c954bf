//! A really full filesystem under the server: an 8 MiB tmpfs as its storage
//! root. Mounting one needs root (CI runs as root); elsewhere each test says
//! so and skips.

use crate::common;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{TestServer, random_bytes, sha256};
use reqwest::{Response, StatusCode, header};
use serde_json::Value;

/// A small tmpfs mounted on a fresh temporary directory, unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// `None` (with a note why) when this process may not mount.
    fn mount(size: &str) -> Option<Self> {
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIPPED: mounting a tmpfs to fill needs root (CI runs as root)");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("run mount");
        assert!(status.success(), "mount -t tmpfs failed although root");
        Some(Self { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: the server's last descriptors may still be closing.
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

async fn server_on(fs: &Tmpfs) -> TestServer {
    let root = fs.path().join("data");
    TestServer::start_configured(tempfile::tempdir().unwrap(), move |config| {
        config.auth.enabled = false;
        config.storage.root = root;
    })
    .await
}

async fn assert_storage_full(response: Response, what: &str) {
    assert_eq!(
        response.status(),
        StatusCode::INSUFFICIENT_STORAGE,
        "{what}"
    );
    let body: Value = response.json().await.expect("a JSON error body");
    let error = &body["errors"][0];
    assert_eq!(error["code"], "STORAGE_FULL", "{what}: {body}");
    assert!(
        error["message"].as_str().unwrap().contains("full"),
        "{what}: {body}"
    );
}

fn upload_dirs(root: &Path) -> Vec<PathBuf> {
    match std::fs::read_dir(root.join("data/uploads")) {
        Ok(entries) => entries.map(|e| e.unwrap().path()).collect(),
        Err(_) => Vec::new(),
    }
}

async fn start(server: &TestServer, repo: &str) -> Response {
    server
        .client
        .post(server.at(&format!("/v2/{repo}/blobs/uploads/")))
        .header(header::CONTENT_LENGTH, "0")
        .send()
        .await
        .unwrap()
}

async fn push_monolithic(server: &TestServer, repo: &str, data: &[u8]) -> Response {
    server
        .client
        .post(server.at(&format!(
            "/v2/{repo}/blobs/uploads/?digest={}",
            sha256(data)
        )))
        .body(data.to_vec())
        .send()
        .await
        .unwrap()
}

async fn put_manifest(server: &TestServer, repo: &str, config: &[u8], layer: &[u8]) -> Response {
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": sha256(config),
            "size": config.len(),
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": sha256(layer),
            "size": layer.len(),
        }],
    });
    server
        .client
        .put(server.at(&format!("/v2/{repo}/manifests/v1")))
        .header(
            header::CONTENT_TYPE,
            "application/vnd.oci.image.manifest.v1+json",
        )
        .body(manifest.to_string())
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_chunk_the_disk_cannot_hold_is_507_and_gives_its_space_back() {
    let Some(fs) = Tmpfs::mount("8m") else {
        return;
    };
    let server = server_on(&fs).await;
    let location = {
        let response = start(&server, "full/a").await;
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        response.headers()["location"].to_str().unwrap().to_owned()
    };
    // More than the whole filesystem, in one chunk.
    let response = server
        .client
        .patch(server.at(&location))
        .body(random_bytes(10 << 20))
        .send()
        .await
        .unwrap();
    assert_storage_full(response, "an oversized chunk").await;
    // The session is as it was, and holds no byte past its record.
    let status = server
        .client
        .get(server.at(&location))
        .send()
        .await
        .unwrap();
    assert_eq!(status.status(), StatusCode::NO_CONTENT);
    assert_eq!(status.headers()["range"], "0-0");
    let id = location.rsplit('/').next().unwrap();
    let data = fs.path().join("data/uploads").join(id).join("data");
    let kept = std::fs::metadata(&data).map(|m| m.len()).unwrap_or(0);
    assert_eq!(kept, 0, "the failed chunk's bytes stayed in the session");

    // A single-request push the disk cannot hold leaves no session behind.
    let response = push_monolithic(&server, "full/a", &random_bytes(10 << 20)).await;
    assert_storage_full(response, "an oversized monolithic push").await;
    assert_eq!(
        upload_dirs(fs.path()).len(),
        1,
        "a failed push left its session"
    );

    // Nothing freed by hand, the failed session still open (its client
    // gave up): a small push and its manifest go through.
    let config = random_bytes(300);
    let layer = random_bytes(1 << 20);
    for blob in [&config, &layer] {
        assert_eq!(
            push_monolithic(&server, "full/a", blob).await.status(),
            StatusCode::CREATED
        );
    }
    assert_eq!(
        put_manifest(&server, "full/a", &config, &layer)
            .await
            .status(),
        StatusCode::CREATED
    );
    server
        .assert_serves_blob("full/a", &sha256(&layer), &layer)
        .await;
}

/// Fills the filesystem to its last page with a file of the test's own.
fn fill(path: &Path) -> PathBuf {
    let ballast = path.join("ballast");
    let mut file = std::fs::File::create(&ballast).unwrap();
    let block = vec![0xa5u8; 1 << 20];
    loop {
        if let Err(e) = file.write_all(&block) {
            assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
            break;
        }
    }
    ballast
}

#[tokio::test]
async fn requests_on_a_full_disk_are_507_and_leave_nothing_behind() {
    let Some(fs) = Tmpfs::mount("8m") else {
        return;
    };
    let server = server_on(&fs).await;
    let config = random_bytes(300);
    let layer = random_bytes(4000);
    for blob in [&config, &layer] {
        assert_eq!(
            push_monolithic(&server, "full/b", blob).await.status(),
            StatusCode::CREATED
        );
    }
    let ballast = fill(fs.path());

    assert_storage_full(start(&server, "full/b").await, "a session start").await;
    assert_storage_full(
        push_monolithic(&server, "full/b", b"small").await,
        "a small push",
    )
    .await;
    assert!(
        upload_dirs(fs.path()).is_empty(),
        "failed starts left sessions"
    );
    assert_storage_full(
        put_manifest(&server, "full/b", &config, &layer).await,
        "a manifest",
    )
    .await;
    std::fs::remove_file(ballast).unwrap();
    assert_eq!(
        start(&server, "full/b").await.status(),
        StatusCode::ACCEPTED
    );
    assert_eq!(
        put_manifest(&server, "full/b", &config, &layer)
            .await
            .status(),
        StatusCode::CREATED
    );
}
