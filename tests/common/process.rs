//! The real `portcullis` binary as a child process, for tests that need a
//! separate process (signals, crashes, command-line behaviour, external clients).

use std::io::{BufRead, BufReader};
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
        let host = url.trim_start_matches("http://").to_owned();
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
