//! Section `gc`: garbage collection's time over a store of 100,000 blobs
//! on the filesystem. The store is written straight into its directory tree
//! (the layout of `portcullis::storage::paths`; pushing it through the API
//! would take longer than the rest of the run): [`REPOSITORIES`]
//! repositories of [`IMAGES`] images each, every image a config and
//! [`LAYERS`] layers of its own, half of them tagged. Then the real binary
//! runs `gc --dry-run` (marking and the sweep's age checks, nothing removed)
//! and `gc --delete-untagged` (which removes the untagged half).

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use portcullis::reference::{Algorithm, Digest, RepoName, Tag};
use portcullis::storage::paths;

use crate::Options;
use crate::report::{Better, Row};
use crate::servers::Servers;

const REPOSITORIES: usize = 100;
const IMAGES: usize = 100;
const LAYERS: usize = 9;
/// Every image's blobs: its config and its layers.
const BLOBS: usize = REPOSITORIES * IMAGES * (LAYERS + 1);

const NOTE: &str = "100 repositories of 100 images (a config and 9 layers of 64 bytes each), \
    half tagged, on the filesystem; the wall time of the real binary, which reads every \
    repository's tags and links, every kept manifest, and stats each unreferenced object; \
    the removing run includes its pause of `storage.staleness_secs` + 1 s (here 1 s) before the \
    second look";

fn write(root: &Path, key: &str, content: &[u8]) {
    let path = root.join(key);
    std::fs::create_dir_all(path.parent().expect("a parent")).expect("mkdir");
    std::fs::write(path, content).expect("write");
}

/// Writes the store; returns how many blobs the untagged half holds.
fn populate(root: &Path) -> usize {
    let mut untagged = 0;
    for r in 0..REPOSITORIES {
        let repo = RepoName::parse(&format!("team{}/app", r % 10 * 10 + r / 10)).expect("name");
        for i in 0..IMAGES {
            let mut layers = Vec::new();
            for l in 0..LAYERS {
                let data = format!("{r:04}/{i:04}/{l:02} {:>48}", "layer").into_bytes();
                let digest = Algorithm::Sha256.digest_of(&data);
                write(root, &paths::blob_data(&digest), &data);
                write(root, &paths::layer_link(&repo, &digest), b"");
                layers.push(serde_json::json!({
                    "mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": digest.to_string(), "size": data.len(),
                }));
            }
            let config = format!(r#"{{"architecture":"amd64","os":"linux","id":"{r}/{i}"}}"#);
            let config_digest = Algorithm::Sha256.digest_of(config.as_bytes());
            write(root, &paths::blob_data(&config_digest), config.as_bytes());
            write(root, &paths::layer_link(&repo, &config_digest), b"");
            let manifest = serde_json::to_vec(&serde_json::json!({
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {
                    "mediaType": "application/vnd.oci.image.config.v1+json",
                    "digest": config_digest.to_string(), "size": config.len(),
                },
                "layers": layers,
            }))
            .expect("json");
            let digest: Digest = Algorithm::Sha256.digest_of(&manifest);
            write(root, &paths::blob_data(&digest), &manifest);
            write(
                root,
                &paths::manifest_revision(&repo, &digest),
                b"application/vnd.oci.image.manifest.v1+json",
            );
            if i % 2 == 0 {
                let tag = Tag::parse(&format!("v{i}")).expect("tag");
                write(
                    root,
                    &paths::tag(&repo, &tag),
                    digest.to_string().as_bytes(),
                );
            } else {
                untagged += LAYERS + 2;
            }
        }
    }
    untagged
}

fn gc(binary: &Path, config: &Path, args: &[&str]) -> (f64, String) {
    let started = Instant::now();
    let output = Command::new(binary)
        .arg("gc")
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .expect("run gc");
    let seconds = started.elapsed().as_secs_f64();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "gc {args:?}: {stdout}");
    (seconds, stdout)
}

pub async fn run(servers: &Servers, _options: &Options) -> Vec<Row> {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("data");
    let started = Instant::now();
    let untagged = populate(&root);
    eprintln!(
        "  wrote {BLOBS} blobs (+ manifests) in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    let config = dir.path().join("gc.toml");
    let toml = format!(
        "[storage]\nroot = {:?}\nstaleness_secs = 0\n",
        root.to_str().expect("UTF-8")
    );
    std::fs::write(&config, toml).expect("config");

    let (dry, out) = gc(
        &servers.binary,
        &config,
        &["--dry-run", "--delete-untagged", "--grace", "0s"],
    );
    eprint!("  {out}");
    let (real, out) = gc(
        &servers.binary,
        &config,
        &["--delete-untagged", "--grace", "0s"],
    );
    eprint!("  {out}");
    assert!(
        out.contains(&format!("removed {untagged} (")),
        "the untagged half's {untagged} blobs went: {out}"
    );
    vec![
        Row::new("gc --dry-run, 100,000 blobs", "s", dry, Better::Lower).note(NOTE),
        Row::new(
            "gc --delete-untagged, 100,000 blobs (removes half)",
            "s",
            real,
            Better::Lower,
        )
        .note(NOTE),
    ]
}
