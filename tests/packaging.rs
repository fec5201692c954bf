//! Packaging from outside: the container image `packaging/build-image.sh`
//! makes of this test build's own binary is pushed with buildah into a
//! running Portcullis, pulled back by podman into an empty image store, and
//! run there by podman: `--version`, and `serve` answering `GET /v2/` with
//! 401. The systemd unit has its hardening and passes `systemd-analyze
//! verify`.

use crate::common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::clients::{ClientEnv, require, stdout_json, succeed};
use common::process::{ServerProcess, copy_project_policies, run_in};

const PASSWORD: &str = "alice-Pa55word-for-packaging";
const BINARY: &str = env!("CARGO_BIN_EXE_portcullis");

fn project(path: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// `portcullis serve` in `dir` with the shipped policies and alice, tokens
/// required.
fn registry(dir: &Path) -> ServerProcess {
    copy_project_policies(dir);
    run_in(dir, &["user", "add", "alice"], &format!("{PASSWORD}\n"));
    let mut command = Command::new(BINARY);
    command
        .args(["serve", "--listen", "127.0.0.1:0"])
        .current_dir(dir)
        .env("PORTCULLIS_LOG", "warn")
        .stderr(Stdio::inherit());
    ServerProcess::spawn(command)
}

/// podman of `env`, able to run containers on this machine: no default
/// ulimits (raising them is refused here, and the host's are fine).
fn podman(env: &ClientEnv, args: &[&str]) -> Command {
    let conf = env.path("run-containers.conf");
    std::fs::write(
        &conf,
        "[containers]\ndefault_ulimits = []\n[engine]\nevents_logger = \"file\"\ncgroup_manager = \"cgroupfs\"\n",
    )
    .unwrap();
    let mut command = env.podman_cmd(args);
    command.env("CONTAINERS_CONF", conf);
    command
}

/// Removes the named container when dropped, whatever the test did.
struct Container<'a>(&'a ClientEnv, &'a str);

impl Drop for Container<'_> {
    fn drop(&mut self) {
        let _ = podman(self.0, &["rm", "--force", "--time", "0", self.1])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

#[tokio::test]
async fn the_image_of_this_build_is_pushed_into_portcullis_pulled_back_and_runs() {
    for program in ["buildah", "podman", "skopeo"] {
        require(program);
    }
    let dir = tempfile::tempdir().unwrap();
    let server = registry(dir.path());
    let builder = ClientEnv::new(&server.host);
    let image = "localhost/portcullis:under-test";
    let remote = format!("{}/alice/portcullis:under-test", server.host);

    let mut build = builder.command(project("packaging/build-image.sh").to_str().unwrap());
    build.args([BINARY, image]);
    succeed(build, None);
    builder.login("podman", "alice", PASSWORD).unwrap();
    // Pushed with buildah (the same auth file podman logged in to).
    let mut push = builder.command("buildah");
    push.args(["push", "--tls-verify=false", image])
        .arg(format!("docker://{remote}"));
    succeed(push, None);

    // The image as the registry serves it: a non-root user, the entrypoint,
    // the data volume, labels.
    let config = stdout_json(&builder.skopeo(&[
        "inspect",
        "--tls-verify=false",
        "--config",
        &format!("docker://{remote}"),
    ]));
    let runtime = &config["config"];
    assert_eq!(runtime["User"], "65532:65532", "{config}");
    assert_eq!(
        runtime["Entrypoint"],
        serde_json::json!(["/usr/local/bin/portcullis"])
    );
    assert_eq!(
        runtime["Cmd"],
        serde_json::json!(["serve", "--listen", "0.0.0.0:5000"])
    );
    assert!(
        runtime["Volumes"].get("/var/lib/portcullis").is_some(),
        "{config}"
    );
    assert_eq!(runtime["WorkingDir"], "/var/lib/portcullis");
    assert_eq!(
        runtime["Labels"]["org.opencontainers.image.version"],
        env!("CARGO_PKG_VERSION")
    );

    // Its one layer holds the binary, exactly what `ldd` names, and the
    // user's files.
    let layout = builder.path("layout");
    builder.skopeo(&[
        "copy",
        "--src-tls-verify=false",
        &format!("docker://{remote}"),
        &format!("oci:{}:pulled", layout.display()),
    ]);
    let files = layer_files(&layout);
    let expected = expected_files();
    assert_eq!(files, expected, "the layer holds what the binary needs");

    // Pulled into an image store that has never seen it, and run there.
    let runner = ClientEnv::new(&server.host);
    runner.login("podman", "alice", PASSWORD).unwrap();
    succeed(podman(&runner, &["pull", &remote]), None);
    let version = succeed(
        podman(&runner, &["run", "--rm", &remote, "--version"]),
        None,
    );
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        format!("portcullis {}", env!("CARGO_PKG_VERSION"))
    );

    // `serve` in the container, on the host's network, on a port of its
    // own; its announcement names it.
    let name = format!("portcullis-packaging-{}", std::process::id());
    let _cleanup = Container(&runner, &name);
    let mut child = podman(
        &runner,
        &[
            "run",
            "--rm",
            "--name",
            &name,
            "--network",
            "host",
            "--env",
            "PORTCULLIS_LOG=warn",
            &remote,
            "serve",
            "--listen",
            "127.0.0.1:0",
        ],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::inherit())
    .spawn()
    .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let line = lines
        .recv_timeout(Duration::from_secs(120))
        .expect("the container's server announces its address");
    let url = line
        .strip_prefix("portcullis listening on ")
        .unwrap_or_else(|| panic!("unexpected first line: {line:?}"));
    let res = reqwest::get(format!("{url}/v2/")).await.unwrap();
    assert_eq!(res.status(), 401, "the image's server asks for a token");
    assert!(
        res.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Bearer realm="),
        "{res:?}"
    );
    drop(_cleanup);
    let _ = child.wait();
}

/// The regular files of the image's only layer, without the leading `./`
/// or `/`.
fn layer_files(layout: &Path) -> Vec<String> {
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let blob = |digest: &str| layout.join("blobs/sha256").join(&digest["sha256:".len()..]);
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(blob(index["manifests"][0]["digest"].as_str().unwrap())).unwrap(),
    )
    .unwrap();
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1, "{manifest}");
    let listing = Command::new("tar")
        .args(["--list", "--verbose", "--file"])
        .arg(blob(layers[0]["digest"].as_str().unwrap()))
        .output()
        .unwrap();
    assert!(listing.status.success(), "{listing:?}");
    let mut files: Vec<String> = String::from_utf8(listing.stdout)
        .unwrap()
        .lines()
        .filter(|l| l.starts_with('-'))
        .map(|l| {
            let path = l.split_whitespace().last().unwrap();
            path.trim_start_matches("./")
                .trim_start_matches('/')
                .to_owned()
        })
        .collect();
    files.sort();
    files
}

/// What the image must hold: the binary, each library and the interpreter
/// `ldd` names for it, the user's files and the system's roots.
fn expected_files() -> Vec<String> {
    let ldd = Command::new("ldd").arg(BINARY).output().unwrap();
    assert!(ldd.status.success(), "a dynamically linked test build");
    let mut files: Vec<String> = String::from_utf8(ldd.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| {
            let fields: Vec<&str> = l.split_whitespace().collect();
            match fields.as_slice() {
                [_, "=>", path, ..] if path.starts_with('/') => Some(*path),
                [path, ..] if path.starts_with('/') => Some(*path),
                _ => None,
            }
        })
        .map(|p| p.trim_start_matches('/').to_owned())
        .collect();
    assert!(
        files.iter().any(|f| f.contains("libc.so")),
        "ldd named libc: {files:?}"
    );
    files.extend(["usr/local/bin/portcullis", "etc/passwd", "etc/group"].map(String::from));
    if Path::new("/etc/ssl/certs/ca-certificates.crt").exists() {
        files.push("etc/ssl/certs/ca-certificates.crt".to_owned());
    }
    files.sort();
    files.dedup();
    files
}

#[test]
fn the_systemd_unit_is_hardened_and_verifies() {
    let unit = std::fs::read_to_string(project("packaging/portcullis.service")).unwrap();
    for setting in [
        "ExecStart=/usr/local/bin/portcullis serve",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "DynamicUser=yes",
        "StateDirectory=portcullis",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
        "SystemCallFilter=@system-service",
    ] {
        assert!(
            unit.lines().any(|l| l == setting),
            "{setting} missing in the unit"
        );
    }
    // `verify` checks that ExecStart's program exists: the unit as shipped,
    // with this build in its place.
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("portcullis.service");
    std::fs::write(&copy, unit.replace("/usr/local/bin/portcullis", BINARY)).unwrap();
    let verify = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
        .expect("systemd-analyze (systemd) is installed");
    assert!(
        verify.status.success() && verify.stderr.is_empty(),
        "systemd-analyze verify: {}",
        String::from_utf8_lossy(&verify.stderr)
    );
}
