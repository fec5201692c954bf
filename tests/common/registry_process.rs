//! distribution 2.8 (Debian's `docker-registry`) as a child process of a
//! test: started on an ephemeral port it announces, its log kept (every
//! request it served is a line of it), killed when dropped. Open, behind
//! htpasswd (Basic), or trusting a token server.

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Debian's binary name for distribution's `registry`.
pub const DISTRIBUTION: &str = "/usr/bin/docker-registry";

/// How long distribution may take to start; it is up in well under a
/// second, the margin is for a loaded machine.
const START_DEADLINE: Duration = Duration::from_secs(60);

/// How the registry checks its clients.
pub enum Auth<'a> {
    Open,
    /// An htpasswd file of bcrypt hashes.
    Htpasswd(&'a Path),
    /// `auth.token`: the full `auth:` block's YAML, from
    /// `common::distribution::TokenRegistry`.
    Token(String),
}

/// A running `docker-registry serve`.
pub struct Distribution {
    child: Child,
    /// `127.0.0.1:PORT`
    pub host: String,
    /// `http://127.0.0.1:PORT`
    pub url: String,
    log: Arc<Mutex<Vec<String>>>,
}

impl Distribution {
    /// Starts a registry over `root` (kept across restarts) checking
    /// clients as `auth` says; its configuration file goes to `config`.
    pub fn start(config: &Path, root: &Path, auth: Auth) -> Self {
        Self::start_with_tls(config, root, auth, None)
    }

    /// As [`Distribution::start`], serving HTTPS (and HTTP/2, as Go's
    /// server does over TLS) with the PEM pair `tls` (certificate, key);
    /// [`Distribution::url`] is then `https://`.
    pub fn start_with_tls(
        config: &Path,
        root: &Path,
        auth: Auth,
        tls: Option<(&Path, &Path)>,
    ) -> Self {
        let tls_yaml = match tls {
            None => String::new(),
            Some((cert, key)) => format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                cert.display(),
                key.display()
            ),
        };
        let auth = match auth {
            Auth::Open => String::new(),
            Auth::Htpasswd(file) => format!(
                "auth:\n  htpasswd:\n    realm: test-realm\n    path: {}\n",
                file.display()
            ),
            Auth::Token(block) => block,
        };
        let yaml = format!(
            "version: 0.1\n\
             log:\n  level: info\n  formatter: text\n\
             storage:\n  filesystem:\n    rootdirectory: {root}\n  delete:\n    enabled: true\n\
             http:\n  addr: 127.0.0.1:0\n  secret: upstream-test-secret\n{tls_yaml}\
             {auth}",
            root = root.display(),
        );
        fs::write(config, yaml).unwrap();
        let mut registry = Self::spawn(config);
        if tls.is_some() {
            registry.url = format!("https://{}", registry.host);
        }
        registry
    }

    /// Starts `docker-registry serve <config>` and waits for the address it
    /// announces. distribution cannot be handed a bound listener, but it
    /// accepts port 0 and logs the address it bound ("listening on
    /// 127.0.0.1:PORT") once the socket listens: an ephemeral port without
    /// binding, dropping and rebinding one.
    pub fn spawn(config: &Path) -> Self {
        let mut child = Command::new(DISTRIBUTION)
            .arg("serve")
            .arg(config)
            .env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {DISTRIBUTION}: {e}"));
        // One thread reads the log for the life of the process (so the pipe
        // never fills and blocks it), keeps every line, and passes them on
        // until the address is known.
        let log = Arc::new(Mutex::new(Vec::new()));
        let (lines, received) = mpsc::channel::<String>();
        let stderr = child.stderr.take().expect("stderr");
        let kept = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                kept.lock().unwrap().push(line.clone());
                // The receiver is gone once the address was read.
                let _ = lines.send(line);
            }
        });
        let deadline = Instant::now() + START_DEADLINE;
        let host = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match received.recv_timeout(left) {
                Ok(line) => {
                    if let Some(addr) = announced_address(&line) {
                        break addr;
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = child.wait().expect("wait");
                    panic!(
                        "{DISTRIBUTION} exited ({status}) before listening:\n{}",
                        log.lock().unwrap().join("\n")
                    );
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let _ = child.kill();
                    panic!(
                        "{DISTRIBUTION} did not announce its address within {START_DEADLINE:?}:\n{}",
                        log.lock().unwrap().join("\n")
                    );
                }
            }
        };
        Self {
            child,
            url: format!("http://{host}"),
            host,
            log,
        }
    }

    pub fn at(&self, path: &str) -> String {
        format!("{}{}", self.url, path)
    }

    /// Everything it logged so far, for a failure's message.
    pub fn logs(&self) -> String {
        format!(
            "distribution's log:\n{}",
            self.log.lock().unwrap().join("\n")
        )
    }

    /// Requests it answered whose method is `method` and whose URI
    /// contains `part` (its access log: one `response completed` line per
    /// request).
    pub fn requests(&self, method: &str, part: &str) -> usize {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains("response completed"))
            .filter(|l| l.contains(&format!("http.request.method={method} ")))
            .filter(|l| l.contains(part))
            .count()
    }

    /// Stops it (SIGKILL) and waits for it to be gone.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Distribution {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The address in distribution's `msg="listening on 127.0.0.1:PORT"` line
/// (`…:PORT, tls"` over TLS).
fn announced_address(line: &str) -> Option<String> {
    let rest = line.split("msg=\"listening on ").nth(1)?;
    let addr = rest.split(['"', ',']).next()?;
    Some(addr.to_owned())
}
