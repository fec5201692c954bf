//! Section `image`: a real client, `skopeo copy`, pushing and pulling an
//! image of about 200 MB in several uncompressed tar layers, to and from
//! each registry, in seconds. Every round uses a freshly generated image, so
//! neither the registry nor skopeo's blob cache has seen any of its blobs
//! before: each push uploads every byte and never mounts or skips a layer.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use rand::RngCore;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use crate::Options;
use crate::report::{Better, Row};
use crate::servers::{PASSWORD, Servers, USER};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
const REPOSITORY: &str = "bench/image";
const TAG: &str = "v1";
/// Layer payloads in MB: 200 MB in all, of unequal sizes as real images have.
const LAYERS_MB: [usize; 5] = [80, 50, 40, 20, 10];
/// Rounds per registry; the median is kept.
const ROUNDS: usize = 3;

pub async fn run(servers: &Servers, _options: &Options) -> Vec<Row> {
    let root = servers.path("image");
    let hosts: Vec<&str> = servers
        .targets()
        .into_iter()
        .map(|t| t.host.as_str())
        .collect();
    let env = ClientEnv::new(&root.join("client"), &hosts);
    let mut push: [Vec<f64>; 2] = Default::default();
    let mut pull: [Vec<f64>; 2] = Default::default();
    let started = Instant::now();
    for round in 0..ROUNDS {
        let source = root.join(format!("source-{round}"));
        let manifest_digest = write_layout(&source);
        // Both registries in each round, so drift in the machine's load
        // spreads over both rather than favouring whichever ran first.
        for (i, target) in servers.targets().into_iter().enumerate() {
            let remote = format!("docker://{}/{REPOSITORY}:{TAG}", target.host);
            let digest_file = root.join("pushed-digest");
            let start = Instant::now();
            env.skopeo(&[
                "copy",
                "--preserve-digests",
                "--dest-tls-verify=false",
                "--dest-creds",
                &format!("{USER}:{PASSWORD}"),
                "--digestfile",
                path_str(&digest_file),
                &oci_ref(&source),
                &remote,
            ])
            .await;
            push[i].push(start.elapsed().as_secs_f64());
            let pushed = fs::read_to_string(&digest_file).expect("skopeo --digestfile");
            assert_eq!(
                pushed.trim(),
                manifest_digest,
                "{}: skopeo pushed a manifest other than the layout's",
                target.name
            );

            let back = root.join(format!("pulled-{round}-{}", target.name));
            let start = Instant::now();
            env.skopeo(&[
                "copy",
                "--preserve-digests",
                "--src-tls-verify=false",
                "--src-creds",
                &format!("{USER}:{PASSWORD}"),
                &remote,
                &oci_ref(&back),
            ])
            .await;
            pull[i].push(start.elapsed().as_secs_f64());
            let pulled = layout_tag_digest(&back);
            assert_eq!(
                pulled, manifest_digest,
                "{}: the pulled manifest differs from the pushed one",
                target.name
            );
            // skopeo checked every blob's digest on the way in; the copy is
            // no longer needed and 200 MB a round adds up.
            fs::remove_dir_all(&back).expect("remove pulled layout");
        }
        fs::remove_dir_all(&source).expect("remove source layout");
    }
    eprintln!(
        "image: {ROUNDS} rounds of push and pull to both registries in {:.0} s",
        started.elapsed().as_secs_f64()
    );

    let [portcullis_push, distribution_push] = push.map(median);
    let [portcullis_pull, distribution_pull] = pull.map(median);
    vec![
        Row::new(
            "image push, skopeo, 200 MB in 5 layers",
            "s",
            portcullis_push,
            Better::Lower,
        )
        .against("distribution", distribution_push)
        .note(
            "skopeo uploads the layers one request each, a few in parallel, from a layout on \
             disk; the registry hashes and writes every byte once, so the figure is bounded by \
             disk writes and SHA-256 on both sides of the connection, plus skopeo's start-up \
             and token round trips",
        ),
        Row::new(
            "image pull, skopeo, 200 MB in 5 layers",
            "s",
            portcullis_pull,
            Better::Lower,
        )
        .against("distribution", distribution_pull)
        .note(
            "the blobs were just written, so the registry serves them from the page cache; \
             skopeo verifies each blob's digest and writes it into a fresh layout, so the \
             client's SHA-256 and disk writes bound the figure as much as the server",
        ),
    ]
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("the run's tempdir has a UTF-8 path")
}

fn oci_ref(dir: &Path) -> String {
    format!("oci:{}:{TAG}", path_str(dir))
}

/// A private configuration world for skopeo: its own HOME, registries.conf
/// (both registries plain HTTP), signature policy and empty auth file, so
/// nothing of the user's or the system's configuration is read.
/// Credentials are given on the command line.
struct ClientEnv {
    root: PathBuf,
}

impl ClientEnv {
    fn new(root: &Path, hosts: &[&str]) -> Self {
        for sub in ["home/.config/containers", "xdg-run", "tmp"] {
            fs::create_dir_all(root.join(sub)).expect("client dirs");
        }
        let mut registries =
            "unqualified-search-registries = []\nshort-name-mode = \"disabled\"\n".to_owned();
        for host in hosts {
            registries.push_str(&format!(
                "[[registry]]\nlocation = \"{host}\"\ninsecure = true\n"
            ));
        }
        fs::write(root.join("registries.conf"), registries).expect("registries.conf");
        // Unsigned images from anywhere: signatures are not what is measured.
        fs::write(
            root.join("policy.json"),
            r#"{"default":[{"type":"insecureAcceptAnything"}]}"#,
        )
        .expect("policy.json");
        fs::write(root.join("auth.json"), r#"{"auths":{}}"#).expect("auth.json");
        ClientEnv {
            root: root.to_owned(),
        }
    }

    /// Runs skopeo with nothing inherited but PATH; panics with its output
    /// when it fails, so a broken copy never yields a figure.
    async fn skopeo(&self, args: &[&str]) {
        let at = |sub: &str| self.root.join(sub);
        let mut cmd = tokio::process::Command::new("skopeo");
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", at("home"))
            .env("XDG_CONFIG_HOME", at("home/.config"))
            .env("XDG_DATA_HOME", at("home/.local/share"))
            .env("XDG_RUNTIME_DIR", at("xdg-run"))
            .env("TMPDIR", at("tmp"))
            .env("CONTAINERS_REGISTRIES_CONF", at("registries.conf"))
            .env("REGISTRY_AUTH_FILE", at("auth.json"))
            .arg("--policy")
            .arg(at("policy.json"))
            .args(args)
            .stdin(std::process::Stdio::null());
        let shown = format!("skopeo {}", args.join(" "));
        let out = cmd.output().await.unwrap_or_else(|e| {
            panic!("cannot run {shown} (scripts/install-test-deps.sh installs skopeo): {e}")
        });
        assert!(
            out.status.success(),
            "{shown} failed ({})\nstdout:\n{}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

// ---------------------------------------------------------------------------
// OCI image layout of random tar layers, written to disk as it is generated
// ---------------------------------------------------------------------------

fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// One ustar header block for a regular file.
fn tar_header(name: &str, size: usize) -> [u8; 512] {
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

/// Writes a tar archive holding one file of `size` random bytes into the
/// layout's blob directory, 1 MiB at a time; returns its digest and size.
fn write_random_tar_layer(dir: &Path, name: &str, size: usize) -> (String, usize) {
    let partial = dir.join("blobs/sha256/partial");
    let file = fs::File::create(&partial).expect("create layer");
    let mut out = Hashing {
        inner: std::io::BufWriter::with_capacity(1 << 20, file),
        hash: Sha256::new(),
        len: 0,
    };
    out.write_all(&tar_header(name, size)).unwrap();
    let mut chunk = vec![0u8; 1 << 20];
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

fn write_blob(dir: &Path, data: &[u8]) -> String {
    let digest = sha256_digest(data);
    fs::write(
        dir.join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:")),
        data,
    )
    .expect("write blob");
    digest
}

/// Writes an OCI image layout of random uncompressed tar layers tagged
/// [`TAG`]; returns the manifest's digest.
fn write_layout(dir: &Path) -> String {
    fs::create_dir_all(dir.join("blobs/sha256")).expect("layout dir");
    fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let mut layers = Vec::new();
    let mut diff_ids = Vec::new();
    let mut history = Vec::new();
    for (i, mb) in LAYERS_MB.iter().enumerate() {
        let file = format!("layer-{i}.bin");
        let (digest, size) = write_random_tar_layer(dir, &file, mb * 1_000_000);
        // Uncompressed layers: the diff id is the layer digest itself.
        diff_ids.push(digest.clone());
        history.push(json!({"created_by": format!("add {file}")}));
        layers.push(json!({"mediaType": OCI_LAYER_TAR, "digest": digest, "size": size}));
    }
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": history,
    }))
    .unwrap();
    let config_digest = write_blob(dir, &config);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": config.len()},
        "layers": layers,
    }))
    .unwrap();
    let manifest_digest = write_blob(dir, &manifest);
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": OCI_MANIFEST,
            "digest": manifest_digest,
            "size": manifest.len(),
            "annotations": {"org.opencontainers.image.ref.name": TAG},
        }],
    });
    fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    manifest_digest
}

/// The manifest digest [`TAG`] points at in a layout's `index.json`.
fn layout_tag_digest(dir: &Path) -> String {
    let index: Value =
        serde_json::from_slice(&fs::read(dir.join("index.json")).expect("pulled index.json"))
            .expect("index.json is JSON");
    index["manifests"]
        .as_array()
        .expect("index.json manifests")
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == TAG)
        .unwrap_or_else(|| panic!("tag {TAG} not in {index}"))["digest"]
        .as_str()
        .expect("digest")
        .to_owned()
}
