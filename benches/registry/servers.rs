//! The servers under test, as child processes on loopback: Portcullis (the
//! release binary, tokens on), distribution 2.8 (Debian's `docker-registry`,
//! trusting Portcullis' tokens, so both verify a JWT per request) and nginx
//! (a static file server: the practical limit for pulls and small requests).

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use data_encoding::BASE64;
use serde_json::Value;

use crate::distribution::TokenRegistry;

pub const USER: &str = "bench";
pub const PASSWORD: &str = "bench-password";
pub const SERVICE: &str = "portcullis-bench";
pub const ISSUER: &str = "portcullis-bench";
const START_DEADLINE: Duration = Duration::from_secs(30);

/// A registry to measure: where it is and how to get a token for it.
#[derive(Clone)]
pub struct Target {
    /// "portcullis" or "distribution".
    pub name: &'static str,
    /// `http://127.0.0.1:PORT`
    pub url: String,
    /// `127.0.0.1:PORT`
    pub host: String,
    pub pid: u32,
    /// Portcullis' URL: both registries take tokens from it.
    pub token_url: String,
}

impl Target {
    /// Its name and process id, as the measurements print and sample them.
    pub fn process(&self) -> (&'static str, u32) {
        (self.name, self.pid)
    }

    pub fn at(&self, path: &str) -> String {
        format!("{}{}", self.url, path)
    }

    /// A bearer token for `scope` (e.g. `repository:a/b:pull,push`), from
    /// Portcullis, for the bench user (an admin: every scope is granted).
    pub async fn token(&self, client: &reqwest::Client, scope: &str) -> String {
        let url = format!(
            "{}/token?service={SERVICE}&scope={}",
            self.token_url,
            form_urlencoded::byte_serialize(scope.as_bytes()).collect::<String>()
        );
        let res = client
            .get(url)
            .header("authorization", basic_auth())
            .send()
            .await
            .expect("token request");
        assert!(res.status().is_success(), "token: {}", res.status());
        let body: Value = res.json().await.expect("token json");
        body["token"].as_str().expect("token field").to_owned()
    }
}

/// `Authorization: Basic …` for the bench user.
pub fn basic_auth() -> String {
    format!(
        "Basic {}",
        BASE64.encode(format!("{USER}:{PASSWORD}").as_bytes())
    )
}

/// A child process killed (and reaped) on drop.
pub struct Proc {
    pub child: Child,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// Everything running for one benchmark run, in its own temporary directory.
pub struct Servers {
    pub dir: tempfile::TempDir,
    pub portcullis: Target,
    pub distribution: Target,
    /// The Portcullis binary measured, for sections that start another one
    /// or run one of its commands.
    pub binary: PathBuf,
    /// nginx's figures for a file of the small manifest's size, measured
    /// once per run by whichever of `small` and `tokens` needs them first.
    pub small_nginx: std::sync::OnceLock<crate::small::NginxBaseline>,
    _procs: Vec<Proc>,
}

impl Servers {
    /// Starts both registries; Portcullis from `binary` when given, else
    /// the build this benchmark belongs to.
    pub fn start(binary: Option<&Path>) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let binary = binary.unwrap_or(Path::new(env!("CARGO_BIN_EXE_portcullis")));
        let config = write_portcullis_config(dir.path());
        let (portcullis_proc, portcullis) = spawn_portcullis(binary, &config, &[], None);
        let (distribution_proc, distribution) = start_distribution(dir.path(), &portcullis.url);
        Servers {
            dir,
            portcullis,
            distribution,
            binary: binary.to_owned(),
            small_nginx: std::sync::OnceLock::new(),
            _procs: vec![portcullis_proc, distribution_proc],
        }
    }

    /// A second Portcullis serving HTTPS with the pair `cert`/`key`, on the
    /// first one's configuration: the same storage root, users, policy and
    /// token keys, so it serves what was pushed to the first and accepts
    /// its tokens (which are fetched from the first, over plain HTTP).
    pub fn start_portcullis_tls(&self, cert: &Path, key: &Path) -> (Proc, Target) {
        let config = self.path("portcullis/portcullis.toml");
        let tls = [
            OsStr::new("--tls-cert"),
            cert.as_os_str(),
            OsStr::new("--tls-key"),
            key.as_os_str(),
        ];
        let (proc, mut target) = spawn_portcullis(&self.binary, &config, &tls, None);
        target.name = "portcullis (TLS)";
        target.token_url = self.portcullis.url.clone();
        (proc, target)
    }

    /// Another Portcullis, on a configuration of its own, bound to the CPUs
    /// `cpus` (a `taskset` list) when given.
    pub fn start_portcullis_on(
        &self,
        config: &Path,
        name: &'static str,
        cpus: Option<&str>,
    ) -> (Proc, Target) {
        let (proc, mut target) = spawn_portcullis(&self.binary, config, &[], cpus);
        target.name = name;
        (proc, target)
    }

    pub fn targets(&self) -> [&Target; 2] {
        [&self.portcullis, &self.distribution]
    }

    pub fn path(&self, sub: &str) -> PathBuf {
        self.dir.path().join(sub)
    }
}

/// Writes Portcullis' users, policy and configuration under `dir`; returns
/// the configuration's path.
fn write_portcullis_config(dir: &Path) -> PathBuf {
    let root = dir.join("portcullis");
    std::fs::create_dir_all(root.join("policies")).unwrap();
    let hash = portcullis::auth::users::hash_password(PASSWORD).unwrap();
    std::fs::write(
        root.join("users.toml"),
        format!("[users.{USER}]\npassword = {hash:?}\ngroups = [\"admins\"]\n"),
    )
    .unwrap();
    std::fs::write(
        root.join("policies/10-admins.toml"),
        "[[rule]]\ngroups = [\"admins\"]\nrepositories = [\"**\"]\nactions = [\"*\"]\ncatalog = true\n",
    )
    .unwrap();
    let config = root.join("portcullis.toml");
    // rustls warns, once per handshake, of a client that names an IP address
    // in SNI (wrk does, against https://127.0.0.1): the client's doing, and
    // thousands of lines in the `tls` section.
    std::fs::write(
        &config,
        format!(
            "[log]\nlevel = \"warn,rustls=error\"\n[storage]\nroot = {:?}\n[token]\nissuer = \"{ISSUER}\"\nservice = \"{SERVICE}\"\nkey_dir = {:?}\n[users]\nfile = {:?}\n[policy]\ndir = {:?}\n",
            root.join("data"),
            root.join("certs"),
            root.join("users.toml"),
            root.join("policies"),
        ),
    )
    .unwrap();
    config
}

/// Starts `binary serve` on `config` and a free port, with `extra`
/// arguments (under `taskset -c cpus` when given: its runtime is then
/// sized for those CPUs), and reads the address it announces.
fn spawn_portcullis(
    binary: &Path,
    config: &Path,
    extra: &[&OsStr],
    cpus: Option<&str>,
) -> (Proc, Target) {
    let mut command = match cpus {
        Some(cpus) => {
            let mut taskset = Command::new("taskset");
            taskset.args(["-c", cpus]).arg(binary);
            taskset
        }
        None => Command::new(binary),
    };
    let mut child = command
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(config)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn portcullis");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .expect("announcement");
    let url = line
        .trim()
        .strip_prefix("portcullis listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    let host = url
        .split_once("://")
        .map_or(url.as_str(), |(_, host)| host)
        .to_owned();
    let pid = child.id();
    (
        Proc { child },
        Target {
            name: "portcullis",
            token_url: url.clone(),
            url,
            host,
            pid,
        },
    )
}

fn start_distribution(dir: &Path, portcullis_url: &str) -> (Proc, Target) {
    let root = dir.join("distribution");
    std::fs::create_dir_all(&root).unwrap();
    launch_distribution("distribution", &root, portcullis_url, |port| {
        TokenRegistry {
            log: "  level: error\n  formatter: text\n  accesslog:\n    disabled: true\n",
            addr: &format!("127.0.0.1:{port}"),
            secret: "bench-secret",
            root: &root.join("data"),
            realm: &format!("{portcullis_url}/token"),
            service: SERVICE,
            issuer: ISSUER,
            bundle: &dir.join("portcullis/certs/bundle.crt"),
        }
        .yaml()
    })
}

/// distribution 2.8 as `name`, configured in `root/config.yml` by `yaml`
/// for the port it is to listen on, logging to `root/distribution.log`,
/// trusting the tokens of the Portcullis at `token_url`. Its quietest,
/// fastest setup has no access log and errors only, so it would announce a
/// port-0 address only at level info, which also logs every request: a
/// free port is found by binding and releasing it, and a lost race retried.
pub fn launch_distribution(
    name: &'static str,
    root: &Path,
    token_url: &str,
    yaml: impl Fn(u16) -> String,
) -> (Proc, Target) {
    let config = root.join("config.yml");
    let log = root.join("distribution.log");
    for _ in 0..5 {
        let port = free_port();
        std::fs::write(&config, yaml(port)).expect("distribution config");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            // aws-sdk-go (its S3 driver) reads a CA bundle named there and
            // fails to start on a plain-HTTP endpoint with it ("HTTPClient's
            // transport unsupported type"): nothing here is TLS.
            .env_remove("AWS_CA_BUNDLE")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("distribution log"))
            .spawn()
            .expect("start docker-registry (scripts/install-test-deps.sh installs it)");
        let mut proc = Proc { child };
        if wait_for_port(&mut proc, port) {
            let host = format!("127.0.0.1:{port}");
            let pid = proc.pid();
            return (
                proc,
                Target {
                    name,
                    url: format!("http://{host}"),
                    host,
                    pid,
                    token_url: token_url.to_owned(),
                },
            );
        }
    }
    panic!(
        "{name} did not start:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
}

/// A port that was free a moment ago, for servers that cannot be handed a
/// listener.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind")
        .port()
}

/// Whether the child came to listen on `port` (false when it exited, e.g.
/// because the port was taken meanwhile). Neither server says when it is
/// ready at the log levels used here, so the port is polled, bounded.
fn wait_for_port(proc: &mut Proc, port: u16) -> bool {
    let deadline = Instant::now() + START_DEADLINE;
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        if let Ok(Some(_)) = proc.child.try_wait() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// nginx serving one directory, for the static-file reference: over plain
/// HTTP, or over HTTPS (TLS 1.3 only, keep-alive, nginx's defaults
/// otherwise) with the certificate pair `tls` as (certificate, key). nginx
/// cannot take a listener or port 0, so a free port is found by binding and
/// releasing it; a lost race only makes nginx fail to start, which is
/// retried with another port. A connection stays open for as many requests
/// as a load generator sends (`keepalive_requests`; nginx's default closes
/// it after 1,000). Returns the process and its base URL.
pub fn start_nginx(dir: &Path, root: &Path, tls: Option<(&Path, &Path)>) -> (Proc, String) {
    start_nginx_with(dir, root, tls, "")
}

/// [`start_nginx`] with more directives (whole lines) in its `http` block.
pub fn start_nginx_with(
    dir: &Path,
    root: &Path,
    tls: Option<(&Path, &Path)>,
    http_extra: &str,
) -> (Proc, String) {
    let conf_dir = dir.join("nginx");
    std::fs::create_dir_all(&conf_dir).unwrap();
    // `sendfile on` applies to plain connections only: over TLS nginx reads
    // the file and encrypts it in user space, since kernel TLS (which would
    // let it sendfile) needs the `tls` ULP, and this kernel offers only
    // `mptcp` (/proc/sys/net/ipv4/tcp_available_ulp) — as Portcullis does.
    let (scheme, ssl, tls_lines) = match tls {
        Some((cert, key)) => (
            "https",
            " ssl",
            format!(
                "    ssl_certificate {};\n    ssl_certificate_key {};\n    ssl_protocols TLSv1.3;\n",
                cert.display(),
                key.display()
            ),
        ),
        None => ("http", "", String::new()),
    };
    for _ in 0..5 {
        let port = free_port();
        let conf = conf_dir.join("nginx.conf");
        std::fs::write(
            &conf,
            format!(
                "daemon off;\n# One process: killing it leaves no orphaned workers behind.\nmaster_process off;\npid {pid};\nerror_log {err} error;\n\
                 events {{ worker_connections 1024; }}\n\
                 http {{\n  access_log off;\n  sendfile on;\n  tcp_nopush on;\n  keepalive_requests 1000000;\n{http_extra}\
                 \x20 client_body_temp_path {tmp};\n  proxy_temp_path {tmp};\n  fastcgi_temp_path {tmp};\n\
                 \x20 uwsgi_temp_path {tmp};\n  scgi_temp_path {tmp};\n\
                 \x20 server {{\n    listen 127.0.0.1:{port}{ssl};\n{tls_lines}    root {root};\n  }}\n}}\n",
                pid = conf_dir.join("nginx.pid").display(),
                err = conf_dir.join("error.log").display(),
                tmp = conf_dir.display(),
                root = root.display(),
            ),
        )
        .unwrap();
        let child = Command::new("nginx")
            .arg("-c")
            .arg(&conf)
            .arg("-p")
            .arg(&conf_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nginx (scripts/install-test-deps.sh installs it)");
        let mut proc = Proc { child };
        if wait_for_port(&mut proc, port) {
            return (proc, format!("{scheme}://127.0.0.1:{port}"));
        }
    }
    panic!("nginx did not start");
}

/// Runs a client program (wrk, curl, skopeo) to its end and returns its
/// standard output; panics with both streams when it cannot run or fails,
/// so that a broken run never yields a figure. `shown` names it in messages.
pub async fn client_output(mut cmd: tokio::process::Command, shown: &str) -> String {
    let out = cmd.stdin(Stdio::null()).output().await.unwrap_or_else(|e| {
        panic!("cannot run {shown} (scripts/install-test-deps.sh installs it): {e}")
    });
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{shown} failed ({})\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Resident and peak resident memory of a process, in bytes, from
/// `/proc/<pid>/status` (`VmRSS`, `VmHWM`).
pub fn memory(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    (field("VmRSS:"), field("VmHWM:"))
}
