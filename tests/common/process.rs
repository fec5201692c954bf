//! The real `portcullis` binary as a child process, for tests that need a
//! separate process (signals, crashes, command-line behaviour, external clients).

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// A `portcullis serve` child on an ephemeral port. Killed when dropped.
pub struct ServerProcess {
    pub child: Child,
    /// `http://127.0.0.1:PORT`
    pub url: String,
    /// `127.0.0.1:PORT`, for clients that want a registry host.
    pub host: String,
}

impl ServerProcess {
    /// Starts `portcullis serve --listen 127.0.0.1:0 --data-dir <data_dir> <extra…>`
    /// and waits for the line announcing the bound address (no sleeps: the
    /// line is printed after the listener is bound).
    /// Authentication is off (`--no-auth`): these servers test the registry.
    pub fn start(data_dir: &Path, extra: &[&str]) -> Self {
        let data_dir = data_dir.to_str().expect("UTF-8 temp path");
        Self::start_with(&[&["--no-auth", "--data-dir", data_dir], extra].concat())
    }

    /// Starts `portcullis serve --listen 127.0.0.1:0 <args…>` (authentication
    /// as the configuration says).
    pub fn start_with(args: &[&str]) -> Self {
        Self::start_binary(env!("CARGO_BIN_EXE_portcullis").as_ref(), args)
    }

    /// As [`ServerProcess::start`], with the build of the binary that the
    /// environment variable `var` names (a long check run against a release
    /// build), or the test's own when it is unset.
    pub fn start_named_by(var: &str, data_dir: &Path, extra: &[&str]) -> Self {
        let binary = std::env::var_os(var)
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_portcullis")));
        let data_dir = data_dir.to_str().expect("UTF-8 temp path");
        Self::start_binary(
            &binary,
            &[&["--no-auth", "--data-dir", data_dir], extra].concat(),
        )
    }

    /// As [`ServerProcess::start_with`], with another build of the binary
    /// (a release build for a long stress run).
    pub fn start_binary(binary: &Path, args: &[&str]) -> Self {
        let mut command = Command::new(binary);
        command
            .arg("serve")
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .env("PORTCULLIS_LOG", "warn")
            .stderr(Stdio::inherit());
        Self::spawn(command)
    }

    /// Spawns a prepared `portcullis serve --listen 127.0.0.1:0 …` command
    /// (its own directory, environment or log) and waits for its announcement.
    pub fn spawn(mut command: Command) -> Self {
        let mut child = command
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn portcullis");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read announcement");
        let url = line
            .trim()
            .strip_prefix("portcullis listening on ")
            .unwrap_or_else(|| panic!("unexpected first line: {line:?}"))
            .to_owned();
        let host = url
            .split_once("://")
            .map_or(url.as_str(), |(_, h)| h)
            .to_owned();
        Self { child, url, host }
    }

    pub fn at(&self, path: &str) -> String {
        format!("{}{}", self.url, path)
    }

    /// SIGKILL: no chance to clean up, as in a crash or an OOM kill.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends a signal (e.g. `libc::SIGTERM`) without waiting.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
        let rc = unsafe { libc::kill(self.child.id() as i32, signal) };
        assert_eq!(rc, 0, "kill({signal})");
    }

    /// Waits for the process to exit and returns its status.
    pub fn wait(mut self) -> std::process::ExitStatus {
        self.child.wait().expect("wait")
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes `dir/portcullis.toml` for a server whose files all live in `dir`
/// (`data/`, `certs/`, `users.toml`, `policies/`, created empty when
/// missing) and returns its path, for [`ServerProcess::start_with`]'s
/// `--config`.
pub fn config_in(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir.join("policies")).expect("policies dir");
    let path = |sub: &str| format!("{:?}", dir.join(sub).to_str().expect("UTF-8 temp path"));
    let config = dir.join("portcullis.toml");
    std::fs::write(
        &config,
        format!(
            "[storage]\nroot = {}\n\n[token]\nkey_dir = {}\n\n\
             [users]\nfile = {}\n\n[policy]\ndir = {}\n",
            path("data"),
            path("certs"),
            path("users.toml"),
            path("policies"),
        ),
    )
    .expect("write portcullis.toml");
    config
}

/// Runs `portcullis ARGS` in `dir` with `stdin` as its input (a password
/// line) and asserts that it succeeded.
pub fn run_in(dir: &Path, args: &[&str], stdin: &str) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn portcullis");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    assert!(child.wait().expect("wait").success(), "portcullis {args:?}");
}

/// Copies the project's `policies/` into `dir/policies`, for a server run
/// in `dir` with the shipped policy as files (every file, so that a new one
/// in `policies/` is never left out).
pub fn copy_project_policies(dir: &Path) {
    let policies = dir.join("policies");
    std::fs::create_dir_all(&policies).expect("create policies/");
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    let mut copied = 0;
    for entry in std::fs::read_dir(&shipped).expect("read policies/") {
        let path = entry.expect("entry").path();
        std::fs::copy(&path, policies.join(path.file_name().expect("name"))).expect("copy policy");
        copied += 1;
    }
    assert!(copied > 0, "no policy files in {}", shipped.display());
}
