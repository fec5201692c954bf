//! The real legacy v1 registry for the tests: docker-registry 0.9.1 (the
//! last release of the Python v1 registry), installed by
//! `scripts/install-legacy-v1.sh` under CPython 2.7, run by hand here with
//! gunicorn's gevent worker on a port of its own, with its configuration's
//! `dev` flavor pointed at storage, search database and log in a temporary
//! directory of its own.
//!
//! Facts this harness relies on (docker-registry 0.9.1, gunicorn 19.1.1):
//! - The configuration is chosen by `DOCKER_REGISTRY_CONFIG` (a file name
//!   under the package's `config/`, here its own `config_sample.yml`) and
//!   `SETTINGS_FLAVOR`; the `dev` flavor reads `STORAGE_PATH` (local
//!   storage) and `SQLALCHEMY_INDEX_DATABASE` (the search index) from the
//!   environment, and is standalone: it checks no credentials, answers the
//!   index's calls (`PUT /v1/repositories/…/` with a token of its own,
//!   `/v1/users/`) itself.
//! - gunicorn takes an address, not a listener: a free port is picked by
//!   binding `127.0.0.1:0` and closing, and a lost race (gunicorn exits with
//!   "Address already in use") is retried with another.
//! - Ready once `GET /v1/_ping` answers 200 over a real connection. Its body
//!   lists the host and the command line, bind address included.
//! - `SIGTERM` makes gunicorn stop its worker and exit; the data stays for a
//!   restart on the same port.
#![allow(dead_code)]

use std::fs;
use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use super::clients::{terminate, wait_until_ready};

const START_DEADLINE: Duration = Duration::from_secs(30);
const STOP_DEADLINE: Duration = Duration::from_secs(15);
const PORT_ATTEMPTS: usize = 5;

/// Where `scripts/install-legacy-v1.sh` puts the environment (`py27/`) and
/// the npm v1 client (`node/`).
pub fn home() -> PathBuf {
    std::env::var_os("PORTCULLIS_LEGACY_V1_HOME").map_or_else(
        || PathBuf::from("/var/cache/portcullis/legacy-v1"),
        PathBuf::from,
    )
}

/// A running legacy registry of its own; dropping it stops it and removes
/// its directory.
pub struct LegacyV1 {
    dir: TempDir,
    child: Option<Child>,
    port: u16,
    /// `INDEX_ENDPOINT` when the registry checks tokens with an index.
    index: Option<String>,
}

impl LegacyV1 {
    /// Starts a standalone registry (no credentials checked) with empty
    /// storage.
    pub fn start() -> Self {
        Self::start_with(None)
    }

    /// Starts a registry that checks `Authorization: Token …` by asking the
    /// index at `index` (`GET {index}/v1/repositories/<r>/images`).
    pub fn start_with_index(index: &str) -> Self {
        Self::start_with(Some(index.to_owned()))
    }

    fn start_with(index: Option<String>) -> Self {
        let gunicorn = home().join("py27/bin/gunicorn");
        assert!(
            gunicorn.is_file(),
            "{} is missing: the v1 tests need the real legacy registry. Install it with \
             scripts/install-legacy-v1.sh",
            gunicorn.display()
        );
        let dir = tempfile::Builder::new()
            .prefix("legacy-v1")
            .tempdir()
            .expect("tempdir");
        fs::create_dir(dir.path().join("data")).expect("data dir");
        let mut legacy = Self {
            dir,
            child: None,
            port: 0,
            index,
        };
        for attempt in 1..=PORT_ATTEMPTS {
            legacy.port = free_port();
            match legacy.launch() {
                Ok(()) => return legacy,
                Err(log) if attempt < PORT_ATTEMPTS && log.contains("in use") => continue,
                Err(log) => panic!("the legacy registry did not start:\n{log}"),
            }
        }
        unreachable!("the last attempt panics")
    }

    fn launch(&mut self) -> Result<(), String> {
        let log_path = self.log_path();
        let logged_before = fs::metadata(&log_path).map_or(0, |m| m.len());
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .expect("registry log");
        let data = self.data_dir();
        let mut command = Command::new(home().join("py27/bin/gunicorn"));
        command
            .args(["-k", "gevent", "-w", "1", "--access-logfile", "-", "-b"])
            .arg(format!("127.0.0.1:{}", self.port))
            .arg("docker_registry.wsgi:application")
            .env("DOCKER_REGISTRY_CONFIG", "config_sample.yml")
            .env("SETTINGS_FLAVOR", "dev")
            .env("LOGLEVEL", "info")
            .env("STORAGE_PATH", &data)
            .env(
                "SQLALCHEMY_INDEX_DATABASE",
                format!("sqlite:///{}", data.join("search.db").display()),
            )
            .current_dir(&data)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("registry log"))
            .stderr(log);
        if let Some(index) = &self.index {
            command
                .env("STANDALONE", "false")
                .env("INDEX_ENDPOINT", index);
        }
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start gunicorn: {e}"));
        let child = self.child.insert(child);
        let port = self.port;
        let ready = wait_until_ready(
            child,
            &log_path,
            logged_before,
            START_DEADLINE,
            Duration::from_millis(20),
            || pings(port),
        );
        if ready.is_err() {
            self.child = None;
        }
        ready
    }

    /// Stops it (SIGTERM) and waits for it to exit; port and data stay.
    pub fn stop(&mut self) {
        if let Some(child) = self.child.take() {
            assert!(
                terminate(child, STOP_DEADLINE),
                "the legacy registry did not exit on SIGTERM"
            );
        }
    }

    /// Starts it again on the same port over the same data.
    pub fn restart(&mut self) {
        self.stop();
        if let Err(log) = self.launch() {
            panic!("the legacy registry did not restart:\n{log}");
        }
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// gunicorn's (the master's) process id; 0 when stopped.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Its storage (`images/`, `repositories/`) and search database.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("registry.log")
    }

    /// Its log so far (every start), with gunicorn's access log.
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for LegacyV1 {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// Whether `GET /v1/_ping` on `port` answers 200.
fn pings(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect((Ipv4Addr::LOCALHOST, port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let request = "GET /v1/_ping HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.") && &head[9..12] == b"200"
}
