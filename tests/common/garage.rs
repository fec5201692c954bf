//! A real S3 store for the tests, Garage (installed by
//! `scripts/install-garage.sh`) on loopback ports of its own, with its
//! metadata, data and log in a temporary directory of its own, one bucket
//! and one access key: a single node ([`Garage`]) or a cluster of nodes that
//! replicate each other ([`GarageCluster`]). And signed S3 requests to
//! either, with curl ([`s3_request`], [`multipart_uploads`],
//! [`object_keys`]).
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
//!   error, which is an answer). A plain `garage server`, with no layout
//!   yet, answers too.
//! - Path-style requests (`http://host:port/<bucket>/<key>`), region
//!   `garage`, AWS signature v4.
//! - A cluster: every node has its own config, with the same `rpc_secret`
//!   and `replication_factor` (3 needs 3 zones). `garage -c <config> <admin
//!   command>` talks to the node of that config over RPC (`rpc_public_addr`,
//!   the key in `metadata_dir`).
//! - `garage node id -q` prints `<full node id>@<rpc_public_addr>`; it reads
//!   `metadata_dir/node_key`, which the server writes when it first starts
//!   (before that: an error), and needs no running server.
//! - `garage node connect <id>@<addr>` on node 1 joins a node to it, and the
//!   nodes learn each other from there (within a second or two, node 2's
//!   and node 3's `garage status` list all three).
//! - `garage layout assign -z <zone> -c <capacity> <node id>` stages a role
//!   (`1G` is 10^9 bytes); `garage layout apply --version 1` commits the
//!   first layout (the version must be exactly the current one plus 1).
//!   `garage health` then exits 0 once the cluster is available.
//! - `garage key import --yes -n <name> <id> <secret>` takes a given key id
//!   (`GK` and 24 hex digits) and secret (64 hex digits); `garage bucket
//!   create <name>`; `garage bucket allow --read --write --owner <bucket>
//!   --key <id>`.
//! - The layout, key and bucket reach the other nodes asynchronously: the
//!   cluster is ready once a signed bucket listing answers 200 on every node.
//! - An object written through one node is read back whole through any
//!   other at once (Garage's quorums: a write returns once 2 of the 3
//!   replicas have it, a read asks 2), and a new upload or object is listed
//!   at once on every node. But an upload aborted through node 1 (204) can
//!   still be listed through node 2 for some milliseconds (about one run in
//!   ten), presumably as each replica filters its part of a listing before
//!   they are merged, so one that has not applied the abort yet still
//!   offers the upload; a deleted object's listing likely lags alike. What
//!   must be gone is polled for ([`GarageCluster::until`]).
//! - curl 7.88's `--aws-sigv4` signs the query string as written: it does not
//!   sort the parameters, percent-encode them or add the `=` of a parameter
//!   without a value, all of which SigV4's canonical query does (and
//!   Garage's check): `?uploads`, `?prefix=a/` or `?prefix=a%2F&list-type=2`
//!   get 403 "Invalid signature". [`s3_request`] writes the canonical form
//!   (`?uploads=`, `?list-type=2&prefix=a%2F`) before curl sees it.
#![allow(dead_code)]

use std::fs;
use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use super::clients::{self, wait_until_ready};

const START_DEADLINE: Duration = Duration::from_secs(30);
/// For the cluster's layout, key and bucket to reach every node.
const CLUSTER_DEADLINE: Duration = Duration::from_secs(60);
/// One `garage` admin command.
const ADMIN_DEADLINE: Duration = Duration::from_secs(30);
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

/// The installed binary, or a panic saying how to install it.
fn installed() -> PathBuf {
    let garage = binary();
    assert!(
        garage.is_file(),
        "{} is missing: the S3 tests need a real Garage. Install it with scripts/install-garage.sh",
        garage.display()
    );
    garage
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
        let garage = installed();
        let dir = tempfile::Builder::new()
            .prefix("garage")
            .tempdir()
            .expect("tempdir");
        let (child, ports) = start_node(&garage, dir.path(), 1, &[], |command| {
            command
                .args(["--single-node", "--default-bucket"])
                .env("GARAGE_DEFAULT_ACCESS_KEY", ACCESS_KEY)
                .env("GARAGE_DEFAULT_SECRET_KEY", SECRET_KEY)
                .env("GARAGE_DEFAULT_BUCKET", BUCKET);
        });
        Self {
            dir,
            child: Some(child),
            port: ports.s3,
        }
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

/// Running Garage nodes that form one cluster: each in its own zone with the
/// same capacity, every object on `min(nodes, 3)` of them, and the bucket
/// [`BUCKET`] with the key [`ACCESS_KEY`]/[`SECRET_KEY`] (the single node's)
/// readable and writable through any node. Dropping it stops them all and
/// removes their directory.
pub struct GarageCluster {
    dir: TempDir,
    nodes: Vec<Node>,
}

struct Node {
    child: Option<Child>,
    ports: Ports,
    /// Its own directory (config, metadata, data, log) in the cluster's.
    dir: PathBuf,
}

impl GarageCluster {
    pub fn start(nodes: usize) -> Self {
        assert!(nodes >= 1, "a cluster has at least one node");
        let garage = installed();
        let dir = tempfile::Builder::new()
            .prefix("garage-cluster")
            .tempdir()
            .expect("tempdir");
        let replication = nodes.min(3);
        let mut cluster = Self {
            dir,
            nodes: Vec::with_capacity(nodes),
        };
        for i in 1..=nodes {
            let node_dir = cluster.dir.path().join(format!("node{i}"));
            fs::create_dir(&node_dir).expect("node directory");
            let taken: Vec<u16> = cluster
                .nodes
                .iter()
                .flat_map(|n| [n.ports.s3, n.ports.rpc])
                .collect();
            let (child, ports) = start_node(&garage, &node_dir, replication, &taken, |_| {});
            cluster.nodes.push(Node {
                child: Some(child),
                ports,
                dir: node_dir,
            });
        }
        cluster.form(&garage);
        cluster
    }

    /// Joins the nodes to node 1, lays them out, creates the key and the
    /// bucket, and waits until every node serves the bucket.
    fn form(&mut self, garage: &Path) {
        let ids: Vec<String> = self
            .nodes
            .iter()
            .map(|node| {
                let out = self.admin(garage, &node.dir, &["node", "id", "-q"]);
                let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
                assert!(id.contains('@'), "garage node id: {id:?}");
                id
            })
            .collect();
        let node1 = self.nodes[0].dir.clone();
        for id in &ids[1..] {
            self.admin(garage, &node1, &["node", "connect", id]);
        }
        for (i, id) in ids.iter().enumerate() {
            let full_id = id.split('@').next().expect("node id");
            let zone = format!("z{}", i + 1);
            self.admin(
                garage,
                &node1,
                &["layout", "assign", "-z", &zone, "-c", "1G", full_id],
            );
        }
        self.admin(garage, &node1, &["layout", "apply", "--version", "1"]);
        self.until("garage health", || {
            admin_command(garage, &node1, &["health", "-q"])
                .output()
                .is_ok_and(|out| out.status.success())
        });
        self.admin(
            garage,
            &node1,
            &[
                "key",
                "import",
                "--yes",
                "-n",
                "portcullis",
                ACCESS_KEY,
                SECRET_KEY,
            ],
        );
        self.admin(garage, &node1, &["bucket", "create", BUCKET]);
        self.admin(
            garage,
            &node1,
            &[
                "bucket", "allow", "--read", "--write", "--owner", BUCKET, "--key", ACCESS_KEY,
            ],
        );
        let endpoints = self.endpoints();
        self.until("a signed bucket listing on every node", || {
            endpoints
                .iter()
                .all(|endpoint| s3_request(endpoint, "GET", "?list-type=2", None).0 == 200)
        });
    }

    /// Polls `ready` (every 50 ms, within [`CLUSTER_DEADLINE`]) while
    /// watching every node: a node that exits fails with its log. For what
    /// the replicas agree on only eventually (see the module comment).
    pub fn until(&mut self, what: &str, mut ready: impl FnMut() -> bool) {
        let (first, others) = self.nodes.split_first_mut().expect("a node");
        let log = first.dir.join("garage.log");
        let watched = wait_until_ready(
            first.child.as_mut().expect("node 1 runs"),
            &log,
            0,
            CLUSTER_DEADLINE,
            Duration::from_millis(50),
            || {
                for (i, node) in others.iter_mut().enumerate() {
                    let child = node.child.as_mut().expect("node runs");
                    if let Some(status) = child.try_wait().expect("node status") {
                        panic!(
                            "Garage node {} exited ({status}) while waiting for {what}:\n{}",
                            i + 2,
                            fs::read_to_string(node.dir.join("garage.log")).unwrap_or_default()
                        );
                    }
                }
                ready()
            },
        );
        if let Err(log) = watched {
            panic!("Garage node 1 exited while waiting for {what}: {log}");
        }
    }

    /// `garage -c <node's config> args`, which must succeed.
    fn admin(&self, garage: &Path, node_dir: &Path, args: &[&str]) -> std::process::Output {
        let command = admin_command(garage, node_dir, args);
        let shown = format!("{command:?}");
        let out = clients::output_within(command, None, ADMIN_DEADLINE);
        assert!(
            out.status.success(),
            "{}\n{}",
            clients::describe(&shown, &out),
            self.log()
        );
        out
    }

    /// Each node's S3 endpoint, `http://127.0.0.1:PORT`, node 1 first.
    pub fn endpoints(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|node| format!("http://127.0.0.1:{}", node.ports.s3))
            .collect()
    }

    /// Node 1's S3 endpoint.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.nodes[0].ports.s3)
    }

    /// Every node's log so far, each under a `==== node N ====` line.
    pub fn log(&self) -> String {
        self.nodes
            .iter()
            .enumerate()
            .map(|(i, node)| {
                format!(
                    "==== node {} ====\n{}",
                    i + 1,
                    fs::read_to_string(node.dir.join("garage.log")).unwrap_or_default()
                )
            })
            .collect()
    }
}

impl Drop for GarageCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

fn admin_command(garage: &Path, node_dir: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(garage);
    command
        .arg("-c")
        .arg(node_dir.join("garage.toml"))
        .args(args)
        // The node's config says where and with which secret, not the
        // environment.
        .env_remove("GARAGE_RPC_HOST")
        .env_remove("GARAGE_RPC_SECRET")
        .env_remove("GARAGE_RPC_SECRET_FILE")
        .env("RUST_LOG", "garage=warn");
    command
}

#[derive(Clone, Copy)]
struct Ports {
    s3: u16,
    rpc: u16,
}

/// `garage server` in `dir` (config, metadata, data and log there) on free
/// ports other than `taken`, `server` adding its arguments; retried with
/// other ports when it lost a race for them.
fn start_node(
    garage: &Path,
    dir: &Path,
    replication: usize,
    taken: &[u16],
    server: impl Fn(&mut Command),
) -> (Child, Ports) {
    for attempt in 1..=PORT_ATTEMPTS {
        let mut picked = taken.to_vec();
        let mut pick = || loop {
            let port = free_port();
            if !picked.contains(&port) {
                picked.push(port);
                return port;
            }
        };
        let ports = Ports {
            s3: pick(),
            rpc: pick(),
        };
        match launch(garage, dir, ports, replication, &server) {
            Ok(child) => return (child, ports),
            Err(log) if attempt < PORT_ATTEMPTS && log.contains("in use") => continue,
            Err(log) => panic!("Garage did not start:\n{log}"),
        }
    }
    unreachable!("the last attempt panics")
}

fn launch(
    garage: &Path,
    dir: &Path,
    Ports { s3, rpc }: Ports,
    replication: usize,
    server: &impl Fn(&mut Command),
) -> Result<Child, String> {
    let config = dir.join("garage.toml");
    fs::write(
        &config,
        format!(
            "metadata_dir = {:?}\ndata_dir = {:?}\ndb_engine = \"lmdb\"\n\
             replication_factor = {replication}\n\
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
    let mut command = Command::new(garage);
    command.arg("-c").arg(&config).arg("server");
    server(&mut command);
    let mut child = command
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

/// A request to [`BUCKET`] at `endpoint`, signed as [`ACCESS_KEY`] with
/// [`SECRET_KEY`]: its status code and body. `key_and_query` is the object
/// key and/or the query (`"a/b"`, `"a/b?uploadId=…"`, `"?uploads"`;
/// `""` or a bare query for the bucket itself), written plainly: it is
/// percent-encoded (an `%XX` already there is kept) and the query put in
/// SigV4's canonical order here. `body`, when given, is sent with its length
/// (as `curl --upload-file`). For `HEAD`, the "body" is the response head.
pub fn s3_request(
    endpoint: &str,
    method: &str,
    key_and_query: &str,
    body: Option<&[u8]>,
) -> (u16, Vec<u8>) {
    s3_request_as(SECRET_KEY, endpoint, method, key_and_query, body)
}

/// [`s3_request`], signed with `secret` instead.
pub fn s3_request_as(
    secret: &str,
    endpoint: &str,
    method: &str,
    key_and_query: &str,
    body: Option<&[u8]>,
) -> (u16, Vec<u8>) {
    let (key, query) = key_and_query.split_once('?').unwrap_or((key_and_query, ""));
    let mut url = format!("{endpoint}/{BUCKET}");
    if !key.is_empty() {
        url.push('/');
        url.push_str(&encode(key, "/"));
    }
    if !query.is_empty() {
        url.push('?');
        url.push_str(&canonical_query(query));
    }
    let mut command = Command::new("curl");
    command
        .args([
            "--silent",
            "--show-error",
            "--output",
            "-",
            "--write-out",
            "\n%{http_code}",
        ])
        .arg("--aws-sigv4")
        .arg(format!("aws:amz:{REGION}:s3"))
        .arg("--user")
        .arg(format!("{ACCESS_KEY}:{secret}"))
        // S3 wants the payload's hash (or that it is not signed); curl
        // signs the header but does not add it.
        .args(["--header", "x-amz-content-sha256: UNSIGNED-PAYLOAD"]);
    if method == "HEAD" {
        command.arg("--head");
    } else {
        command.args(["--request", method]);
    }
    // Held until curl has read it.
    let _body_file = body.map(|bytes| {
        let mut file = tempfile::NamedTempFile::new().expect("request body file");
        file.write_all(bytes).expect("request body");
        command.arg("--upload-file").arg(file.path());
        file
    });
    let out = command.arg(&url).output().expect("run curl");
    assert!(
        out.status.success(),
        "curl {method} {url}: {}",
        clients::stderr_of(&out)
    );
    let mut body = out.stdout;
    let split = body.iter().rposition(|&b| b == b'\n').expect("status line");
    let code = std::str::from_utf8(&body[split + 1..])
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    body.truncate(split);
    (code, body)
}

/// The bucket's multipart uploads in progress at `endpoint`, as (key,
/// upload id), in the store's order (by key); every page of them.
pub fn multipart_uploads(endpoint: &str) -> Vec<(String, String)> {
    let mut uploads = Vec::new();
    let mut markers = String::new();
    loop {
        let page = listing(endpoint, &format!("?uploads{markers}"));
        for upload in elements(&page, "Upload") {
            let key = element(upload, "Key").expect("an upload's Key");
            let id = element(upload, "UploadId").expect("an upload's UploadId");
            uploads.push((key, id));
        }
        if element(&page, "IsTruncated").as_deref() != Some("true") {
            return uploads;
        }
        let key = element(&page, "NextKeyMarker").expect("NextKeyMarker of a truncated page");
        let id = element(&page, "NextUploadIdMarker").unwrap_or_default();
        markers = format!(
            "&key-marker={}&upload-id-marker={}",
            escape(&key),
            escape(&id)
        );
    }
}

/// The keys of the bucket's objects at `endpoint` that start with `prefix`
/// (ListObjectsV2), in order; every page of them.
pub fn object_keys(endpoint: &str, prefix: &str) -> Vec<String> {
    let mut keys = Vec::new();
    let mut continuation = String::new();
    loop {
        let page = listing(
            endpoint,
            &format!("?list-type=2&prefix={}{continuation}", escape(prefix)),
        );
        for contents in elements(&page, "Contents") {
            keys.push(element(contents, "Key").expect("an object's Key"));
        }
        if element(&page, "IsTruncated").as_deref() != Some("true") {
            return keys;
        }
        let token = element(&page, "NextContinuationToken")
            .expect("NextContinuationToken of a truncated page");
        continuation = format!("&continuation-token={}", escape(&token));
    }
}

/// A bucket-level GET, which must answer 200: its XML.
fn listing(endpoint: &str, query: &str) -> String {
    let (code, body) = s3_request(endpoint, "GET", query, None);
    let body = String::from_utf8(body).expect("an XML listing");
    assert_eq!(code, 200, "GET {endpoint}/{BUCKET}{query}: {body}");
    body
}

/// The insides of every `<name>…</name>` in `xml`, in order.
fn elements<'a>(xml: &'a str, name: &str) -> Vec<&'a str> {
    let (open, close) = (format!("<{name}>"), format!("</{name}>"));
    let mut found = Vec::new();
    let mut rest = xml;
    while let Some(start) = rest.find(&open) {
        let inside = &rest[start + open.len()..];
        let end = inside
            .find(&close)
            .unwrap_or_else(|| panic!("{open} unclosed"));
        found.push(&inside[..end]);
        rest = &inside[end + close.len()..];
    }
    found
}

/// The first `<name>` in `xml`, its text unescaped.
fn element(xml: &str, name: &str) -> Option<String> {
    elements(xml, name).first().map(|text| unescape(text))
}

fn unescape(text: &str) -> String {
    text.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&#39;", "'")
        .replace("&amp;", "&")
}

/// SigV4's canonical query: every parameter `name=value` (`=` even when it
/// has no value), both percent-encoded, sorted.
fn canonical_query(query: &str) -> String {
    let mut parameters: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (name, value) = p.split_once('=').unwrap_or((p, ""));
            (encode(name, ""), encode(value, ""))
        })
        .collect();
    parameters.sort();
    parameters
        .iter()
        .map(|(name, value)| format!("{name}={value}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// `text` as one query value, all percent-encoded (a `%` too), which
/// [`s3_request`] then keeps as it is.
fn escape(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Percent-encodes every byte but the unreserved ones, `keep`, and an `%XX`
/// escape already there.
fn encode(text: &str, keep: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(bytes.len());
    for (i, &b) in bytes.iter().enumerate() {
        let escaped = b == b'%'
            && bytes.len() > i + 2
            && bytes[i + 1].is_ascii_hexdigit()
            && bytes[i + 2].is_ascii_hexdigit();
        if b.is_ascii_alphanumeric()
            || b"-_.~".contains(&b)
            || keep.as_bytes().contains(&b)
            || escaped
        {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
