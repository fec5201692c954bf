//! A real S3 store for the tests: a single-node Garage (installed by
//! `scripts/install-garage.sh`) on loopback ports of its own, with its
//! metadata, data and log in a temporary directory of its own, one bucket
//! and one access key.
//!
//! Facts this harness relies on (Garage 2.5.0):
//! - `garage server --single-node --default-bucket` lays out a one-node
//!   cluster and creates the key and bucket that `GARAGE_DEFAULT_ACCESS_KEY`,
//!   `GARAGE_DEFAULT_SECRET_KEY` and `GARAGE_DEFAULT_BUCKET` name, granting
//!   the key read and write on the bucket.
//! - It takes addresses, not listeners: free ports are picked by binding
//!   `127.0.0.1:0` and closing, and a lost race (Garage exits: address in
//!   use) is retried with others.
//! - Ready once its S3 port answers HTTP (an unsigned request gets an S3
//!   error, which is an answer).
//! - Path-style requests (`http://host:port/<bucket>/<key>`), region
//!   `garage`, AWS signature v4.
#![allow(dead_code)]

use std::fs;
use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use super::clients::wait_until_ready;

const START_DEADLINE: Duration = Duration::from_secs(30);
const PORT_ATTEMPTS: usize = 5;

pub const REGION: &str = "garage";
pub const BUCKET: &str = "portcullis";
/// Garage's key id format: `GK` and 24 hex digits; the secret 64.
pub const ACCESS_KEY: &str = "GK0123456789abcdef01234567";
pub const SECRET_KEY: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// Where `scripts/install-garage.sh` puts the binary.
pub fn binary() -> PathBuf {
    let home = std::env::var_os("PORTCULLIS_GARAGE_HOME").map_or_else(
        || PathBuf::from("/var/cache/portcullis/garage"),
        PathBuf::from,
    );
    home.join("bin/garage")
}

/// A running single-node Garage; dropping it stops it and removes its
/// directory.
pub struct Garage {
    dir: TempDir,
    child: Option<Child>,
    /// The S3 API's port.
    pub port: u16,
}

impl Garage {
    pub fn start() -> Self {
        let garage = binary();
        assert!(
            garage.is_file(),
            "{} is missing: the S3 tests need a real Garage. Install it with scripts/install-garage.sh",
            garage.display()
        );
        let dir = tempfile::Builder::new()
            .prefix("garage")
            .tempdir()
            .expect("tempdir");
        for attempt in 1..=PORT_ATTEMPTS {
            let (s3, rpc) = (free_port(), free_port());
            match launch(&garage, dir.path(), s3, rpc) {
                Ok(child) => {
                    return Self {
                        dir,
                        child: Some(child),
                        port: s3,
                    };
                }
                Err(log) if attempt < PORT_ATTEMPTS && log.contains("in use") => continue,
                Err(log) => panic!("Garage did not start:\n{log}"),
            }
        }
        unreachable!("the last attempt panics")
    }

    /// `http://127.0.0.1:PORT`, the S3 endpoint.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("garage.log")).unwrap_or_default()
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn launch(garage: &Path, dir: &Path, s3: u16, rpc: u16) -> Result<Child, String> {
    let config = dir.join("garage.toml");
    fs::write(
        &config,
        format!(
            "metadata_dir = {:?}\ndata_dir = {:?}\ndb_engine = \"lmdb\"\n\
             replication_factor = 1\n\
             rpc_bind_addr = \"127.0.0.1:{rpc}\"\nrpc_public_addr = \"127.0.0.1:{rpc}\"\n\
             rpc_secret = \"{}\"\n\n\
             [s3_api]\ns3_region = \"{REGION}\"\napi_bind_addr = \"127.0.0.1:{s3}\"\n\
             root_domain = \".s3.garage.localhost\"\n",
            dir.join("meta"),
            dir.join("data"),
            "ab".repeat(32),
        ),
    )
    .expect("garage.toml");
    let log_path = dir.join("garage.log");
    let logged_before = fs::metadata(&log_path).map_or(0, |m| m.len());
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .expect("garage log");
    let mut child = Command::new(garage)
        .arg("-c")
        .arg(&config)
        .args(["server", "--single-node", "--default-bucket"])
        .env("GARAGE_DEFAULT_ACCESS_KEY", ACCESS_KEY)
        .env("GARAGE_DEFAULT_SECRET_KEY", SECRET_KEY)
        .env("GARAGE_DEFAULT_BUCKET", BUCKET)
        .env("RUST_LOG", "garage=warn")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("garage log"))
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", garage.display()));
    wait_until_ready(
        &mut child,
        &log_path,
        logged_before,
        START_DEADLINE,
        Duration::from_millis(20),
        || answers(s3),
    )?;
    Ok(child)
}

fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// Whether the S3 port answers an HTTP request at all.
fn answers(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect((Ipv4Addr::LOCALHOST, port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let request = "GET / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut head = [0u8; 8];
    stream.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.")
}
