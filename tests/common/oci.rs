//! OCI image layouts on disk, built from random data, for the tests and the
//! benchmark that drive real clients (skopeo, podman): a few uncompressed
//! tar layers, a config, a manifest, `index.json` with one tag and
//! `oci-layout`. Every layout has content no other run shares, so nothing is
//! ever found already present in a registry or a client's cache.
//!
//! Self-contained on purpose (no other `tests/common` item): the benchmark
//! includes this file with `#[path]`.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::Path;

use rand::RngCore;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const DOCKER_V2S2: &str = "application/vnd.docker.distribution.manifest.v2+json";

pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// One ustar header block for a regular file.
pub fn tar_header(name: &str, size: usize) -> [u8; 512] {
    let mut h = [0u8; 512];
    fn put(h: &mut [u8; 512], at: usize, field: &[u8]) {
        h[at..at + field.len()].copy_from_slice(field);
    }
    put(&mut h, 0, name.as_bytes());
    put(&mut h, 100, b"0000644\0");
    put(&mut h, 108, b"0000000\0");
    put(&mut h, 116, b"0000000\0");
    put(&mut h, 124, format!("{size:011o}\0").as_bytes());
    put(&mut h, 136, b"00000000000\0");
    h[156] = b'0';
    put(&mut h, 257, b"ustar\0");
    put(&mut h, 263, b"00");
    // The checksum is computed with its own field read as spaces.
    put(&mut h, 148, b"        ");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    put(&mut h, 148, format!("{sum:06o}\0 ").as_bytes());
    h
}

/// Hashes what is written and counts it, so a layer is digested as it is
/// generated rather than read back.
struct Hashing<W> {
    inner: W,
    hash: Sha256,
    len: usize,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.len += n;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// `len` random bytes: content no layer can compress or guess.
pub fn random_bytes(len: usize) -> Vec<u8> {
    let mut data = vec![0u8; len];
    rand::rng().fill_bytes(&mut data);
    data
}

/// Writes a tar archive holding one file of `size` random bytes (a real
/// layer that podman can unpack) into the layout's blob directory, 1 MiB at
/// a time, so that layers of hundreds of MB never sit in memory; returns its
/// digest and size.
pub fn write_random_tar_layer(dir: &Path, name: &str, size: usize) -> (String, usize) {
    let partial = dir.join("blobs/sha256/partial");
    let file = fs::File::create(&partial).expect("create layer");
    let mut out = Hashing {
        inner: std::io::BufWriter::with_capacity(1 << 20, file),
        hash: Sha256::new(),
        len: 0,
    };
    out.write_all(&tar_header(name, size)).unwrap();
    let mut chunk = vec![0u8; size.min(1 << 20)];
    let mut rng = rand::rng();
    let mut left = size;
    while left > 0 {
        let n = left.min(chunk.len());
        rng.fill_bytes(&mut chunk[..n]);
        out.write_all(&chunk[..n]).unwrap();
        left -= n;
    }
    // Pad the file to a whole block, then the end of archive: two zero blocks.
    let padding = size.next_multiple_of(512) - size + 1024;
    out.write_all(&vec![0u8; padding]).unwrap();
    out.flush().expect("write layer");
    let digest = format!("sha256:{}", hex::encode(out.hash.finalize()));
    fs::rename(
        &partial,
        dir.join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:")),
    )
    .expect("name layer");
    (digest, out.len)
}

/// Writes `data` into the layout's blob directory under its digest.
pub fn write_blob(dir: &Path, data: &[u8]) -> String {
    let digest = sha256_digest(data);
    fs::write(
        dir.join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:")),
        data,
    )
    .expect("write blob");
    digest
}

/// The `GOARCH` name of this machine, so podman takes the image as native.
pub fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// What a written layout holds, for comparison after a round trip.
pub struct Layout {
    pub manifest_digest: String,
    pub config_digest: String,
    /// Every blob (manifest, config, layers): digest → size.
    pub blobs: BTreeMap<String, usize>,
    /// The layers' digests, in manifest order.
    pub layer_digests: Vec<String>,
}

/// Writes an OCI image layout with one uncompressed tar layer of random data
/// per entry of `layer_sizes` (file `/layer-N.bin`, N from 1, holding that
/// many bytes) and one tag.
pub fn write_layout(dir: &Path, tag: &str, layer_sizes: &[usize]) -> Layout {
    fs::create_dir_all(dir.join("blobs/sha256")).expect("layout dir");
    fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let mut blobs = BTreeMap::new();
    let mut layers = Vec::new();
    let mut layer_digests = Vec::new();
    let mut history = Vec::new();
    for (i, &size) in layer_sizes.iter().enumerate() {
        let n = i + 1;
        let (digest, len) = write_random_tar_layer(dir, &format!("layer-{n}.bin"), size);
        blobs.insert(digest.clone(), len);
        layer_digests.push(digest.clone());
        history.push(json!({"created_by": format!("layer {n}")}));
        layers.push(json!({"mediaType": OCI_LAYER_TAR, "digest": digest, "size": len}));
    }
    let config = serde_json::to_vec(&json!({
        "architecture": oci_arch(),
        "os": "linux",
        "config": {"Cmd": ["/layer-1.bin"]},
        // Uncompressed layers: the diff ids are the layer digests.
        "rootfs": {"type": "layers", "diff_ids": layer_digests},
        "history": history,
    }))
    .unwrap();
    let config_digest = write_blob(dir, &config);
    blobs.insert(config_digest.clone(), config.len());
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": config.len()},
        "layers": layers,
    }))
    .unwrap();
    let manifest_digest = write_blob(dir, &manifest);
    blobs.insert(manifest_digest.clone(), manifest.len());
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": OCI_MANIFEST,
            "digest": manifest_digest,
            "size": manifest.len(),
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }],
    });
    fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    Layout {
        manifest_digest,
        config_digest,
        blobs,
        layer_digests,
    }
}

/// The manifest digest `tag` points at in a layout's `index.json`.
pub fn layout_tag_digest(dir: &Path, tag: &str) -> String {
    let index: Value =
        serde_json::from_slice(&fs::read(dir.join("index.json")).expect("layout index.json"))
            .expect("index.json is JSON");
    index["manifests"]
        .as_array()
        .expect("index.json manifests")
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .unwrap_or_else(|| panic!("tag {tag} not in {index}"))["digest"]
        .as_str()
        .expect("digest")
        .to_owned()
}

/// Every blob in a layout: digest → size, each checked against its name.
pub fn layout_blobs(dir: &Path) -> BTreeMap<String, usize> {
    let mut blobs = BTreeMap::new();
    for entry in fs::read_dir(dir.join("blobs/sha256")).unwrap() {
        let entry = entry.unwrap();
        let data = fs::read(entry.path()).unwrap();
        let digest = format!("sha256:{}", entry.file_name().to_str().unwrap());
        assert_eq!(
            sha256_digest(&data),
            digest,
            "blob content matches its name"
        );
        blobs.insert(digest, data.len());
    }
    blobs
}

/// skopeo's and podman's name for `tag` in the layout at `dir`.
pub fn oci_ref(dir: &Path, tag: &str) -> String {
    format!("oci:{}:{tag}", dir.display())
}
