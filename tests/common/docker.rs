//! A real Docker engine for the tests: `dockerd` started by hand (no system
//! service, no systemd) with everything it owns in a temporary directory,
//! and the `docker` CLI pointed at it with its own configuration directory.
//!
//! Each [`DockerEngine`] is a separate dockerd with its own data root, exec
//! root (where it starts its own containerd), pidfile and socket, so tests
//! run in parallel without sharing images or credentials; a start takes
//! 0.2 s alone, 0.5 s with seven others starting. No network is used:
//! images are [`docker_archive`]s the test builds and `docker load`s.
//!
//! Registries are reached over plain HTTP: dockerd treats `127.0.0.0/8` as an
//! insecure registry by default. For a registry over TLS, [`RegistryTrust`]
//! puts a CA (and a client certificate) where dockerd looks for them,
//! `certs.d/<host:port>/`; that range being insecure, dockerd does not
//! verify certificates there, so TLS tests name the server otherwise (see
//! `TLS_ADDRESS` in tests/docker.rs).
#![allow(dead_code)]

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use tempfile::TempDir;

use super::clients::{fail, output, succeed};
use super::oci::{random_bytes, tar_header};

/// How long dockerd may take to answer `docker version`, and to stop.
const START_DEADLINE: Duration = Duration::from_secs(60);
const STOP_DEADLINE: Duration = Duration::from_secs(30);

/// Where dockerd reads per-registry certificates. Not configurable in Docker
/// 20.10 (only a rootless engine reads another place): a registry's
/// directory is named after its `host:port`, unique per test since every
/// test's server has its own ephemeral port.
const CERTS_D: &str = "/etc/docker/certs.d";

/// Debian's `docker.io` puts dockerd in /usr/sbin (not on every user's PATH)
/// and the CLI in /usr/bin; the CLI of the same package is preferred to
/// another `docker` earlier on PATH, so that the messages asserted are those
/// of the engine's own release.
fn program(candidates: &[&str], name: &str) -> PathBuf {
    candidates
        .iter()
        .map(PathBuf::from)
        .find(|path| path.is_file())
        .unwrap_or_else(|| PathBuf::from(name))
}

fn dockerd_program() -> PathBuf {
    program(&["/usr/sbin/dockerd", "/usr/local/sbin/dockerd"], "dockerd")
}

fn docker_program() -> PathBuf {
    program(&["/usr/bin/docker"], "docker")
}

/// Fails (never skips) when the engine cannot run here: the programs are
/// missing, or the tests do not run as root (dockerd without rootlesskit
/// needs it).
fn require_engine() {
    for program in [dockerd_program(), docker_program()] {
        let runs = Command::new(&program)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            runs,
            "`{}` is not installed or does not run; the Docker tests need a real engine. \
             Install it with scripts/install-test-deps.sh (as root)",
            program.display()
        );
    }
    // SAFETY: geteuid(2) has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(euid, 0, "the Docker tests start dockerd, which needs root");
}

/// A running dockerd of its own. Stopped (SIGTERM, then SIGKILL past a
/// deadline) and its directory removed when dropped.
pub struct DockerEngine {
    child: Child,
    dir: TempDir,
    socket: PathBuf,
}

impl DockerEngine {
    /// Starts dockerd and waits, up to a deadline, until it answers
    /// `docker version` on its socket.
    pub fn start() -> Self {
        require_engine();
        // Under /tmp rather than $TMPDIR: containerd's socket lives in the
        // exec root, and a Unix socket path may not exceed 108 bytes.
        let dir = tempfile::Builder::new()
            .prefix("dk")
            .tempdir_in("/tmp")
            .expect("tempdir");
        let root = dir.path();
        let socket = root.join("docker.sock");
        let log = fs::File::create(root.join("dockerd.log")).expect("dockerd log");
        // An empty daemon.json of its own: the machine's /etc/docker/daemon.json
        // could set what the flags below set, which dockerd refuses to start on.
        fs::write(root.join("daemon.json"), "{}").expect("daemon.json");
        let mut command = Command::new(dockerd_program());
        // No firewall or bridge changes on the host, and a storage driver
        // that needs no kernel support.
        command
            .args(["--iptables=false", "--ip6tables=false", "--bridge=none"])
            .args(["--storage-driver", "vfs"]);
        // Every file the engine writes, in its own directory.
        for (flag, name) in [
            ("--config-file", "daemon.json"),
            ("--data-root", "data"),
            ("--exec-root", "exec"),
            ("--pidfile", "docker.pid"),
        ] {
            command.arg(flag).arg(root.join(name));
        }
        let child = command
            .arg("-H")
            .arg(format!("unix://{}", socket.display()))
            // dockerd starts containerd and runc by name.
            .env("PATH", engine_path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dockerd log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", dockerd_program().display()));
        let mut engine = Self { child, dir, socket };
        engine.wait_until_ready();
        engine
    }

    /// Polls `docker version` until the daemon answers: the socket file
    /// appears before the API serves, so its presence is not enough.
    fn wait_until_ready(&mut self) {
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().expect("dockerd status") {
                panic!(
                    "dockerd exited ({status}) before it was ready:\n{}",
                    self.log()
                );
            }
            let answered = Command::new(docker_program())
                .arg("version")
                .env("DOCKER_HOST", self.host_url())
                .env("DOCKER_CONFIG", self.dir.path().join("probe-config"))
                .output()
                .is_ok_and(|o| o.status.success());
            if answered {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "dockerd did not answer within {START_DEADLINE:?}:\n{}",
                self.log()
            );
            // A pause between probes, not a synchronization: each probe is
            // a real question to the daemon, and the deadline bounds the wait.
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `unix://…/docker.sock`, for `DOCKER_HOST`.
    pub fn host_url(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// dockerd's own log so far, for failure messages.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("dockerd.log")).unwrap_or_default()
    }

    /// A `docker` CLI for this engine with a fresh configuration directory
    /// of its own (never the user's `~/.docker`).
    pub fn client(&self) -> DockerCli {
        let config = tempfile::tempdir().expect("tempdir");
        DockerCli {
            host: self.host_url(),
            config,
        }
    }

    /// The containerd dockerd started, which SIGKILL of dockerd would orphan.
    fn containerd_pid(&self) -> Option<i32> {
        let path = self.dir.path().join("exec/containerd/containerd.pid");
        fs::read_to_string(path).ok()?.trim().parse().ok()
    }
}

/// The engine's PATH: the caller's, then the system directories where
/// Debian puts containerd and runc (sbin is not on every user's PATH).
fn engine_path() -> String {
    let inherited = std::env::var("PATH").unwrap_or_default();
    format!("{inherited}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
}

impl Drop for DockerEngine {
    fn drop(&mut self) {
        let containerd = self.containerd_pid();
        let pid = self.child.id() as i32;
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + STOP_DEADLINE;
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() >= deadline => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    if let Some(containerd) = containerd {
                        // SAFETY: kill(2); the pid is the containerd our
                        // dockerd started and could not stop.
                        unsafe { libc::kill(containerd, libc::SIGKILL) };
                    }
                    break;
                }
                // dockerd stops its containerd before it exits; waiting for
                // the exit is waiting for both.
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
}

/// The `docker` CLI for one engine, with its own `DOCKER_CONFIG`.
pub struct DockerCli {
    host: String,
    config: TempDir,
}

impl DockerCli {
    /// `docker ARGS` with only this client's environment: the engine's
    /// socket, the private configuration, `manifest` enabled (experimental
    /// in Docker 20.10).
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(docker_program());
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.config.path())
            .env("DOCKER_HOST", &self.host)
            .env("DOCKER_CONFIG", self.config.path())
            .env("DOCKER_CLI_EXPERIMENTAL", "enabled")
            .args(args);
        cmd
    }

    /// `docker ARGS`, which must succeed.
    pub fn run(&self, args: &[&str]) -> Output {
        succeed(self.command(args), None)
    }

    /// `docker ARGS`, which must fail; returns its output.
    pub fn fails(&self, args: &[&str]) -> Output {
        fail(self.command(args), None)
    }

    /// `docker login HOST -u USER --password-stdin`; `Err` with the output
    /// when docker refused.
    pub fn login(&self, host: &str, user: &str, password: &str) -> Result<Output, Output> {
        let cmd = self.command(&["login", host, "--username", user, "--password-stdin"]);
        let out = output(cmd, Some(&format!("{password}\n")));
        if out.status.success() {
            Ok(out)
        } else {
            Err(out)
        }
    }

    /// `config.json` as docker wrote it, raw text (empty when none yet).
    pub fn config_text(&self) -> String {
        fs::read_to_string(self.config.path().join("config.json")).unwrap_or_default()
    }

    /// `docker load` of an archive; returns what docker printed.
    pub fn load(&self, archive: &Path) -> String {
        let out = self.run(&["load", "--input", archive.to_str().expect("UTF-8 path")]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `docker image inspect` of one image, as JSON.
    pub fn inspect(&self, image: &str) -> Value {
        let out = self.run(&["image", "inspect", image]);
        let list: Value = serde_json::from_slice(&out.stdout).expect("inspect JSON");
        list[0].clone()
    }
}

/// Makes dockerd trust a TLS registry at `host:port`: its CA (and, for
/// client-certificate authentication, a certificate and key docker presents)
/// in `certs.d/<host:port>/`, removed again when dropped. dockerd reads the
/// directory on each connection to the registry, so no restart is needed.
pub struct RegistryTrust {
    dir: PathBuf,
}

impl RegistryTrust {
    /// `ca.crt` from `ca_pem`; `client.cert`/`client.key` when `client` is
    /// given as (certificate PEM, key PEM).
    pub fn install(host: &str, ca_pem: &[u8], client: Option<(&[u8], &[u8])>) -> Self {
        let dir = Path::new(CERTS_D).join(host);
        fs::create_dir_all(&dir).expect("create certs.d/<host>");
        fs::write(dir.join("ca.crt"), ca_pem).expect("write ca.crt");
        if let Some((cert, key)) = client {
            fs::write(dir.join("client.cert"), cert).expect("write client.cert");
            fs::write(dir.join("client.key"), key).expect("write client.key");
        }
        Self { dir }
    }
}

impl Drop for RegistryTrust {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// An image built by [`docker_archive`].
pub struct ArchiveImage {
    /// The `docker save` archive to `docker load`.
    pub path: PathBuf,
    /// `sha256:…` of the image configuration: docker's image id.
    pub id: String,
}

/// Writes a `docker save` archive (the format Docker 20.10 loads) of a
/// one-layer image for `os/arch`, tagged `reference`, into `dir`: a layer
/// of a single file with random content (so no two images share a layer),
/// its configuration, and `manifest.json`.
pub fn docker_archive(dir: &Path, reference: &str, arch: &str) -> ArchiveImage {
    let mut content = format!("an image for linux/{arch}\n").into_bytes();
    content.extend_from_slice(random_bytes(4096).as_slice());
    let layer = tar(&[("hello.txt", &content)]);
    let diff_id = format!("sha256:{}", hex::encode(Sha256::digest(&layer)));
    let config = serde_json::to_vec(&json!({
        "architecture": arch,
        "os": "linux",
        "config": {"Cmd": ["/hello.txt"]},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created_by": "docker_archive"}],
    }))
    .unwrap();
    let config_hex = hex::encode(Sha256::digest(&config));
    let layer_path = format!("{}/layer.tar", diff_id.trim_start_matches("sha256:"));
    let config_path = format!("{config_hex}.json");
    let manifest = serde_json::to_vec(&json!([{
        "Config": config_path,
        "RepoTags": [reference],
        "Layers": [layer_path],
    }]))
    .unwrap();
    let archive = tar(&[
        (layer_path.as_str(), &layer),
        (config_path.as_str(), &config),
        ("manifest.json", &manifest),
    ]);
    let path = dir.join(format!("{config_hex}.tar"));
    let mut file = fs::File::create(&path).expect("create archive");
    file.write_all(&archive).expect("write archive");
    ArchiveImage {
        path,
        id: format!("sha256:{config_hex}"),
    }
}

/// A tar archive of regular files (parent directories are implied: docker
/// load does not need their entries).
fn tar(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, data) in files {
        out.extend_from_slice(&tar_header(name, data.len()));
        out.extend_from_slice(data);
        out.resize(out.len().next_multiple_of(512), 0);
    }
    // The end of the archive: two zero blocks.
    out.resize(out.len() + 1024, 0);
    out
}
