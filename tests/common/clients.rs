//! A private configuration world for the containers/* clients (skopeo,
//! podman), and running them: the tests that drive real clients use it so
//! that nothing is read from or written to the user's or the system's
//! configuration.
#![allow(dead_code)]

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;
use tempfile::TempDir;

/// Fails (never skips) when `program` cannot be run.
pub fn require(program: &str) {
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

/// A private configuration world for skopeo and podman: own HOME,
/// registries.conf (only the server, over plain HTTP), signature policy,
/// auth file and image storage. Nothing of the user's or the system's
/// configuration, and in particular no stored credentials, is read.
pub struct ClientEnv {
    dir: TempDir,
    /// The registry's `HOST:PORT`, the only one trusted over plain HTTP.
    pub host: String,
}

impl ClientEnv {
    pub fn new(host: &str) -> Self {
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
        // An empty auth file: podman insists that one it is pointed at
        // exists. Logins write into it.
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

    pub fn path(&self, sub: &str) -> PathBuf {
        self.dir.path().join(sub)
    }

    pub fn auth_file(&self) -> PathBuf {
        self.path("auth.json")
    }

    pub fn policy(&self) -> PathBuf {
        self.path("home/.config/containers/policy.json")
    }

    /// A command with the private environment and nothing else inherited but
    /// PATH.
    pub fn command(&self, program: &str) -> Command {
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
            .env("REGISTRY_AUTH_FILE", self.auth_file());
        cmd
    }

    pub fn skopeo_cmd(&self, args: &[&str]) -> Command {
        let mut cmd = self.command("skopeo");
        cmd.arg("--policy").arg(self.policy()).args(args);
        cmd
    }

    pub fn podman_cmd(&self, args: &[&str]) -> Command {
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
        cmd
    }

    /// skopeo, which must succeed.
    pub fn skopeo(&self, args: &[&str]) -> Output {
        succeed(self.skopeo_cmd(args), None)
    }

    /// skopeo, which must fail; returns its output.
    pub fn skopeo_fails(&self, args: &[&str]) -> Output {
        fail(self.skopeo_cmd(args), None)
    }

    pub fn podman(&self, args: &[&str]) -> Output {
        succeed(self.podman_cmd(args), None)
    }

    pub fn podman_fails(&self, args: &[&str]) -> Output {
        fail(self.podman_cmd(args), None)
    }

    /// `<program> login` with the password on stdin (never on the command
    /// line), into the private auth file; `Err` with the output when the
    /// client refused.
    pub fn login(&self, program: &str, user: &str, password: &str) -> Result<Output, Output> {
        let auth_file = self.auth_file();
        let args = [
            "login",
            "--tls-verify=false",
            "--authfile",
            auth_file.to_str().unwrap(),
            "--username",
            user,
            "--password-stdin",
            &self.host,
        ];
        let cmd = match program {
            "skopeo" => self.skopeo_cmd(&args),
            "podman" => self.podman_cmd(&args),
            other => panic!("no login for {other}"),
        };
        let out = output(cmd, Some(&format!("{password}\n")));
        if out.status.success() {
            Ok(out)
        } else {
            Err(out)
        }
    }

    /// The credentials the auth file holds for the server, decoded; `None`
    /// also when a logout removed the file.
    pub fn stored_credentials(&self) -> Option<String> {
        let text = match fs::read_to_string(self.auth_file()) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => panic!("auth file: {e}"),
        };
        let file: Value = serde_json::from_str(&text).expect("auth file JSON");
        let auth = file["auths"][&self.host]["auth"].as_str()?;
        let decoded = data_encoding::BASE64
            .decode(auth.as_bytes())
            .expect("base64 credentials");
        Some(String::from_utf8(decoded).expect("UTF-8 credentials"))
    }

    /// `docker://HOST/<name>` for skopeo.
    pub fn docker_ref(&self, name: &str) -> String {
        format!("docker://{}/{name}", self.host)
    }
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// Spawns a client with its output piped, and its input piped when it is
/// to be fed.
fn spawn(cmd: &mut Command, fed: bool) -> Child {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.stdin(if fed { Stdio::piped() } else { Stdio::null() });
    cmd.spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Runs a client to completion, feeding `stdin` when given.
pub fn output(mut cmd: Command, stdin: Option<&str>) -> Output {
    let mut child = spawn(&mut cmd, stdin.is_some());
    if let Some(input) = stdin {
        // Dropping the handle closes the pipe: the client sees the end of
        // its input.
        let mut pipe = child.stdin.take().unwrap();
        pipe.write_all(input.as_bytes()).unwrap();
    }
    child.wait_with_output().expect("wait for client")
}

/// [`output`], bounded: panics when the client runs past `timeout`
/// (after killing it).
pub fn output_within(mut cmd: Command, stdin: Option<&str>, timeout: Duration) -> Output {
    let mut child = spawn(&mut cmd, stdin.is_some());
    let pid = child.id() as i32;
    let input = stdin.map(|s| (child.stdin.take().expect("stdin"), s.to_owned()));
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        if let Some((mut pipe, text)) = input {
            // A client that exits early closes its end: its status says why.
            let _ = pipe.write_all(text.as_bytes());
        }
        let _ = done.send(child.wait_with_output());
    });
    match finished.recv_timeout(timeout) {
        Ok(out) => out.expect("wait for client"),
        Err(_) => {
            // SAFETY: kill(2) on our child, which has not exited (its
            // waiter has not reported), so its pid is still ours.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            panic!("{cmd:?} ran past {timeout:?}");
        }
    }
}

/// A client's command line, exit status and output, for failure messages.
pub fn describe(shown: &str, out: &Output) -> String {
    format!(
        "{shown} ({})\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs a client, which must succeed.
pub fn succeed(cmd: Command, stdin: Option<&str>) -> Output {
    let shown = format!("{cmd:?}");
    let out = output(cmd, stdin);
    assert!(out.status.success(), "failed: {}", describe(&shown, &out));
    out
}

/// Runs a client, which must fail; returns its output.
pub fn fail(cmd: Command, stdin: Option<&str>) -> Output {
    let shown = format!("{cmd:?}");
    let out = output(cmd, stdin);
    assert!(
        !out.status.success(),
        "succeeded but should not have: {}",
        describe(&shown, &out)
    );
    out
}

pub fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A client's standard output as JSON (`inspect`, `list-tags`…).
pub fn stdout_json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "client output is not JSON ({e}):\n{}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// Waits until the server `child` (started with its output appended to
/// `log`, which held `logged_before` bytes before) answers `ready` (a real
/// request, asked every `pause`), for at most `within`. `Err` with what it
/// logged when it exited first; panics past the deadline.
pub fn wait_until_ready(
    child: &mut Child,
    log: &Path,
    logged_before: u64,
    within: Duration,
    pause: Duration,
    mut ready: impl FnMut() -> bool,
) -> Result<(), String> {
    let deadline = std::time::Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().expect("server status") {
            let written = fs::read(log).unwrap_or_default();
            let since = written.get(logged_before as usize..).unwrap_or_default();
            return Err(format!(
                "exited ({status}) before it answered:\n{}",
                String::from_utf8_lossy(since)
            ));
        }
        if ready() {
            return Ok(());
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} did not answer within {within:?}:\n{}",
            log.display(),
            fs::read_to_string(log).unwrap_or_default()
        );
        // A pause between probes, not a synchronization: each probe is a
        // real request, and the deadline bounds the wait.
        std::thread::sleep(pause);
    }
}

/// SIGTERM to `child`, then SIGKILL past `within`; `false` when it took
/// SIGKILL. Reaps it either way.
pub fn terminate(mut child: Child, within: Duration) -> bool {
    // SAFETY: kill(2) on our own child's pid, not yet reaped.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = std::time::Instant::now() + within;
    loop {
        match child.try_wait() {
            Ok(Some(_)) | Err(_) => return true,
            Ok(None) if std::time::Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return false;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}
