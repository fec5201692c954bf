//! Real registry clients against the real binary: skopeo and podman push and
//! pull images through Portcullis, and what comes back must be byte-identical
//! (same manifest digest, same blobs) to what went in.
//!
//! These tests never skip: a missing client is a failure that says how to
//! install it (`scripts/install-test-deps.sh`), so a CI machine without the
//! clients cannot report a green run that tested nothing.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::oci::{
    DOCKER_V2S2, OCI_MANIFEST, layout_blobs, layout_tag_digest, oci_arch, oci_ref, sha256_digest,
    write_layout,
};
use common::process::ServerProcess;
use serde_json::{Value, json};
use tempfile::TempDir;

/// Three uncompressed tar layers of sizes chosen to differ: a small one, one
/// over a MiB, one of several MiB.
const LAYER_SIZES: &[usize] = &[70_000, 1_500_000, 6_000_000];

// ---------------------------------------------------------------------------
// Client environment
// ---------------------------------------------------------------------------

/// Fails (never skips) when `program` cannot be run.
fn require(program: &str) {
    let ok = Command::new(program)
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        ok,
        "`{program}` is not installed or does not run; these tests need real clients. \
         Install them with scripts/install-test-deps.sh (as root)"
    );
}

/// A private configuration world for the containers/* tools (skopeo,
/// podman): its own HOME, registries.conf, signature policy, auth file and
/// storage, so nothing is read from or written to the user's or the
/// system's configuration, and the server's address is the only registry
/// trusted over plain HTTP.
struct ClientEnv {
    dir: TempDir,
    host: String,
}

impl ClientEnv {
    fn new(host: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        for sub in ["home/.config/containers", "xdg-run", "tmp"] {
            fs::create_dir_all(root.join(sub)).unwrap();
        }
        // podman refuses a runtime directory others can read.
        set_mode(&root.join("xdg-run"), 0o700);
        fs::write(
            root.join("registries.conf"),
            format!(
                "unqualified-search-registries = []\n\
                 short-name-mode = \"disabled\"\n\
                 [[registry]]\n\
                 location = \"{host}\"\n\
                 insecure = true\n"
            ),
        )
        .unwrap();
        // Unsigned images from anywhere: signature checks are not under test.
        // podman reads the policy from $HOME/.config when it exists there,
        // before /etc; skopeo is given it with --policy.
        fs::write(
            root.join("home/.config/containers/policy.json"),
            r#"{"default":[{"type":"insecureAcceptAnything"}]}"#,
        )
        .unwrap();
        // No credentials: the server runs without authentication. podman
        // insists that an auth file it is pointed at exists.
        fs::write(root.join("auth.json"), r#"{"auths":{}}"#).unwrap();
        // Events to a file: the machine may have no journald.
        fs::write(
            root.join("containers.conf"),
            "[engine]\nevents_logger = \"file\"\ncgroup_manager = \"cgroupfs\"\n",
        )
        .unwrap();
        // Private image storage; vfs needs no kernel overlay support and
        // no fuse, as root or not.
        fs::write(
            root.join("storage.conf"),
            format!(
                "[storage]\ndriver = \"vfs\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n",
                root.join("storage/root").display(),
                root.join("storage/run").display()
            ),
        )
        .unwrap();
        Self {
            dir,
            host: host.to_owned(),
        }
    }

    fn path(&self, sub: &str) -> PathBuf {
        self.dir.path().join(sub)
    }

    fn policy(&self) -> PathBuf {
        self.path("home/.config/containers/policy.json")
    }

    /// A command with the private environment and nothing else inherited but
    /// PATH.
    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.path("home"))
            .env("XDG_CONFIG_HOME", self.path("home/.config"))
            .env("XDG_DATA_HOME", self.path("home/.local/share"))
            .env("XDG_RUNTIME_DIR", self.path("xdg-run"))
            .env("TMPDIR", self.path("tmp"))
            .env("CONTAINERS_REGISTRIES_CONF", self.path("registries.conf"))
            .env("CONTAINERS_CONF", self.path("containers.conf"))
            .env("CONTAINERS_STORAGE_CONF", self.path("storage.conf"))
            .env("REGISTRY_AUTH_FILE", self.path("auth.json"));
        cmd
    }

    fn skopeo(&self, args: &[&str]) -> Output {
        let mut cmd = self.command("skopeo");
        cmd.arg("--policy").arg(self.policy()).args(args);
        run(cmd)
    }

    fn podman(&self, args: &[&str]) -> Output {
        let mut cmd = self.command("podman");
        cmd.arg("--root")
            .arg(self.path("storage/root"))
            .arg("--runroot")
            .arg(self.path("storage/run"))
            .arg("--tmpdir")
            .arg(self.path("storage/tmp"))
            .arg("--network-config-dir")
            .arg(self.path("networks"))
            .args(["--storage-driver", "vfs"])
            .args(args)
            .current_dir(self.dir.path());
        run(cmd)
    }

    /// `docker://HOST/<name>` for skopeo.
    fn docker_ref(&self, name: &str) -> String {
        format!("docker://{}/{name}", self.host)
    }
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// Runs a client and fails the test with its full output when it fails.
fn run(mut cmd: Command) -> Output {
    let shown = format!("{cmd:?}");
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {shown}: {e}"));
    assert!(
        out.status.success(),
        "{shown} failed ({})\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout_json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "client output is not JSON ({e}):\n{}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

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
    let mut cmd = env.command("skopeo");
    cmd.arg("--policy").arg(env.policy()).args([
        "inspect",
        "--raw",
        "--tls-verify=false",
        &remote("docker"),
    ]);
    let gone = cmd.output().unwrap();
    assert!(
        !gone.status.success(),
        "deleted manifest still served: {}",
        String::from_utf8_lossy(&gone.stdout)
    );
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
