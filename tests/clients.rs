//! Real registry clients against the real binary: skopeo and podman push and
//! pull images through Portcullis, and what comes back must be byte-identical
//! (same manifest digest, same blobs) to what went in.
//!
//! These tests never skip: a missing client is a failure that says how to
//! install it (`scripts/install-test-deps.sh`), so a CI machine without the
//! clients cannot report a green run that tested nothing.

use crate::common;

use std::fs;

use common::clients::{ClientEnv, require, stdout_json};
use common::oci::{
    DOCKER_V2S2, OCI_MANIFEST, layout_blobs, layout_tag_digest, oci_arch, oci_ref, sha256_digest,
    write_layout,
};
use common::process::ServerProcess;
use serde_json::json;

/// Three uncompressed tar layers of sizes chosen to differ: a small one, one
/// over a MiB, one of several MiB.
const LAYER_SIZES: &[usize] = &[70_000, 1_500_000, 6_000_000];

// ---------------------------------------------------------------------------
// Manifests over HTTP
// ---------------------------------------------------------------------------

/// GETs a manifest over plain HTTP, accepting the OCI and Docker types.
fn get_manifest(url: &str) -> Vec<u8> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let response = reqwest::Client::new()
            .get(url)
            .header("Accept", format!("{OCI_MANIFEST}, {DOCKER_V2S2}"))
            .send()
            .await
            .expect("GET manifest");
        assert_eq!(response.status(), 200, "GET {url}");
        response.bytes().await.unwrap().to_vec()
    })
}

// ---------------------------------------------------------------------------
// skopeo
// ---------------------------------------------------------------------------

#[test]
fn skopeo_round_trip_keeps_every_digest() {
    require("skopeo");
    let data = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(data.path(), &[]);
    let env = ClientEnv::new(&server.host);
    let src = env.path("src");
    let layout = write_layout(&src, "v1", LAYER_SIZES);
    let repo = "some/deep/repo";
    let remote = |tag: &str| env.docker_ref(&format!("{repo}:{tag}"));

    // Push under two tags; the second push finds every blob already there.
    // `--preserve-digests` keeps skopeo from gzipping the tar layers on the
    // way, so digests can be compared end to end.
    for tag in ["v1", "v2"] {
        env.skopeo(&[
            "copy",
            "--preserve-digests",
            "--dest-tls-verify=false",
            &oci_ref(&src, "v1"),
            &remote(tag),
        ]);
    }

    // Pull back into a fresh layout: same manifest, same blobs, same bytes.
    let back = env.path("back");
    env.skopeo(&[
        "copy",
        "--preserve-digests",
        "--src-tls-verify=false",
        &remote("v1"),
        &oci_ref(&back, "v1"),
    ]);
    assert_eq!(layout_tag_digest(&back, "v1"), layout.manifest_digest);
    assert_eq!(layout_blobs(&back), layout.blobs);

    // inspect: the registry's digest is the one we pushed, and the raw
    // manifest is byte for byte what was stored.
    let inspect = stdout_json(&env.skopeo(&["inspect", "--tls-verify=false", &remote("v2")]));
    assert_eq!(inspect["Digest"], layout.manifest_digest.as_str());
    assert_eq!(inspect["Layers"].as_array().map(Vec::len), Some(3));
    let raw = env.skopeo(&["inspect", "--raw", "--tls-verify=false", &remote("v1")]);
    let manifest_file = src
        .join("blobs/sha256")
        .join(layout.manifest_digest.trim_start_matches("sha256:"));
    assert_eq!(raw.stdout, fs::read(manifest_file).unwrap());
    let config = stdout_json(&env.skopeo(&[
        "inspect",
        "--config",
        "--raw",
        "--tls-verify=false",
        &remote("v1"),
    ]));
    assert_eq!(config["architecture"], oci_arch());

    // Converting to Docker schema 2 on the way (skopeo then gzips the
    // layers) gives a second manifest in the same repository over the same
    // config; decompressed on the way back, the layers are the originals.
    env.skopeo(&[
        "copy",
        "--format",
        "v2s2",
        "--dest-tls-verify=false",
        &oci_ref(&src, "v1"),
        &remote("docker"),
    ]);
    let v2s2 =
        stdout_json(&env.skopeo(&["inspect", "--raw", "--tls-verify=false", &remote("docker")]));
    assert_eq!(v2s2["mediaType"], DOCKER_V2S2);
    assert_eq!(v2s2["config"]["digest"], layout.config_digest.as_str());
    let docker_back = env.path("docker-back");
    env.skopeo(&[
        "copy",
        "--dest-decompress",
        "--src-tls-verify=false",
        &remote("docker"),
        &format!("dir:{}", docker_back.display()),
    ]);
    for digest in layout.blobs.keys() {
        if *digest != layout.manifest_digest {
            let hex = digest.trim_start_matches("sha256:");
            let data = fs::read(docker_back.join(hex))
                .unwrap_or_else(|e| panic!("blob {digest} missing after v2s2 pull: {e}"));
            assert_eq!(&sha256_digest(&data), digest);
        }
    }

    let tags =
        stdout_json(&env.skopeo(&["list-tags", "--tls-verify=false", &env.docker_ref(repo)]));
    assert_eq!(tags["Tags"], json!(["docker", "v1", "v2"]));

    // Deleting the schema 2 manifest leaves the OCI one and its tags.
    env.skopeo(&["delete", "--tls-verify=false", &remote("docker")]);
    env.skopeo_fails(&["inspect", "--raw", "--tls-verify=false", &remote("docker")]);
    let inspect = stdout_json(&env.skopeo(&["inspect", "--tls-verify=false", &remote("v1")]));
    assert_eq!(inspect["Digest"], layout.manifest_digest.as_str());
}

// ---------------------------------------------------------------------------
// podman
// ---------------------------------------------------------------------------

#[test]
fn podman_push_rmi_pull_round_trip() {
    require("podman");
    let data = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(data.path(), &[]);
    let env = ClientEnv::new(&server.host);
    let src = env.path("src");
    let layout = write_layout(&src, "v1", LAYER_SIZES);

    // podman needs the image in its own storage first. It names the image
    // after the layout's path, which must then be lowercase: a temporary
    // directory's name is not, so the path is given relative to it.
    let pulled = env.podman(&["pull", "--quiet", "oci:src:v1"]);
    let image_id = String::from_utf8(pulled.stdout).unwrap().trim().to_owned();
    // podman's image id is the config digest.
    assert_eq!(
        format!("sha256:{image_id}"),
        layout.config_digest,
        "image id after local pull"
    );

    let remote = format!("{}/x/y:v1", server.host);
    let digest_file = env.path("pushed.digest");
    env.podman(&[
        "push",
        "--tls-verify=false",
        "--digestfile",
        digest_file.to_str().unwrap(),
        &image_id,
        &format!("docker://{remote}"),
    ]);
    let pushed = fs::read_to_string(&digest_file).unwrap().trim().to_owned();
    assert!(pushed.starts_with("sha256:"), "digest file: {pushed:?}");

    // The registry serves that manifest under the tag, and its digest
    // matches its bytes.
    let manifest = get_manifest(&server.at("/v2/x/y/manifests/v1"));
    assert_eq!(sha256_digest(&manifest), pushed);

    env.podman(&["rmi", "--force", &image_id]);
    let listed = env.podman(&["images", "--quiet"]);
    assert!(
        String::from_utf8_lossy(&listed.stdout).trim().is_empty(),
        "image still present after rmi"
    );

    let pulled = env.podman(&["pull", "--quiet", "--tls-verify=false", &remote]);
    let pulled_id = String::from_utf8(pulled.stdout).unwrap().trim().to_owned();
    assert_eq!(pulled_id, image_id, "image id after pull from the registry");
    let inspect = stdout_json(&env.podman(&["image", "inspect", &remote]));
    assert_eq!(inspect[0]["Digest"], pushed.as_str());
    assert_eq!(
        inspect[0]["RootFS"]["Layers"].as_array().map(Vec::len),
        Some(3)
    );
}
