//! The command line: `check-config`, `serve`'s configuration overrides, and
//! every shipped example configuration.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::process::ServerProcess;
use portcullis::config::Config;

fn portcullis(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(args)
        .output()
        .expect("run portcullis")
}

fn examples() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut found: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("examples dir")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    found.sort();
    found
}

#[test]
fn every_example_configuration_loads_and_checks() {
    let found = examples();
    assert!(!found.is_empty(), "no example configurations");
    // The files the directory examples name by relative path, as an
    // operator would have them: a password file and a CA each.
    let cwd = tempfile::tempdir().unwrap();
    let secrets = cwd.path().join("secrets");
    std::fs::create_dir_all(&secrets).unwrap();
    for name in [
        "ldap-password",
        "ad-password",
        "vendor-password",
        "s3-secret-key",
        "sso-client-secret",
        "metrics-token",
        "ci-webhook-token",
    ] {
        std::fs::write(secrets.join(name), "service-secret\n").unwrap();
    }
    let ca = common::pki::TestCa::new(&cwd.path().join("certs"), "directory");
    for name in ["ldap-ca.crt", "corp-root-ca.crt"] {
        std::fs::write(cwd.path().join("certs").join(name), ca.pem()).unwrap();
    }
    // The production example's HTTPS pair and policy tests.
    ca.issue_server("registry", &["registry.example.org"]);
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    std::fs::copy(
        root.join("policy-tests/default.toml"),
        cwd.path().join("policy-tests.toml"),
    )
    .unwrap();
    for path in found {
        Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
        let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(["check-config", path.to_str().unwrap()])
            .current_dir(cwd.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}: {:?}", path.display(), out);
    }
}

#[test]
fn the_full_example_is_the_embedded_default() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/portcullis.toml");
    assert_eq!(Config::load(&path).unwrap(), Config::default());
}

#[test]
fn check_config_lists_every_problem_with_its_location() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(
        &file,
        "[server]\nlisen = \"0.0.0.0:1\"\n[storage]\nroot = 5\n[log]\nlevel = \"[[\"\n[tls]\n",
    )
    .unwrap();
    let out = portcullis(&["check-config", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8(out.stderr).unwrap();
    let f = file.display();
    for expected in [
        format!("{f}: 4 problems"),
        format!("{f}:2:1: unknown key `server.lisen`"),
        format!("{f}:4:8: in [storage]"),
        format!("{f}:6:1: log.level"),
        format!("{f}:7:2: unknown section or key `tls`"),
    ] {
        assert!(
            stderr.contains(&expected),
            "missing {expected:?} in:\n{stderr}"
        );
    }
}

#[test]
fn check_config_reports_a_missing_file() {
    let out = portcullis(&["check-config", "/nonexistent/portcullis.toml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read"));
}

#[test]
fn serve_refuses_a_bad_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, "[server]\nlisten = \"nowhere\"\n").unwrap();
    let out = portcullis(&["serve", "--config", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains(":2:10:"));
}

#[tokio::test]
async fn serve_uses_the_configuration_and_flags_override_it() {
    let dir = tempfile::tempdir().unwrap();
    let configured = dir.path().join("configured");
    let overridden = dir.path().join("overridden");
    let file = dir.path().join("portcullis.toml");
    // ServerProcess passes `--listen 127.0.0.1:0`, which must win over the
    // configured port 1.
    std::fs::write(
        &file,
        format!(
            "[server]\nlisten = \"127.0.0.1:1\"\n[storage]\nroot = {:?}\n[auth]\nenabled = false\n",
            configured.to_str().unwrap()
        ),
    )
    .unwrap();

    // The config's storage root is used when no --data-dir is given…
    let server = ServerProcess::start_with(&["--config", file.to_str().unwrap()]);
    assert!(!server.host.ends_with(":1"), "{}", server.host);
    let res = reqwest::get(server.at("/v2/")).await.unwrap();
    assert_eq!(res.status(), 200);
    assert!(configured.is_dir());
    drop(server);

    // …and --data-dir wins over it.
    let server = ServerProcess::start(&overridden, &["--config", file.to_str().unwrap()]);
    let res = reqwest::get(server.at("/v2/")).await.unwrap();
    assert_eq!(res.status(), 200);
    assert!(overridden.is_dir());
}

#[test]
fn serve_refuses_a_bad_policy_file_with_its_place() {
    let dir = tempfile::tempdir().unwrap();
    let policies = dir.path().join("policies");
    std::fs::create_dir(&policies).unwrap();
    std::fs::write(
        policies.join("10-ok.toml"),
        "[[rule]]\nusers = [\"*\"]\nrepositories = [\"**\"]\nactions = [\"pull\"]\n",
    )
    .unwrap();
    std::fs::write(
        policies.join("20-bad.toml"),
        "\n[[rule]]\nusers = [\"*\"]\nrepositories = [\"**\"]\nactions = [\"write\"]\n",
    )
    .unwrap();
    let config = dir.path().join("portcullis.toml");
    std::fs::write(
        &config,
        format!(
            "[storage]\nroot = {:?}\n[token]\nkey_dir = {:?}\n[users]\nfile = {:?}\n[policy]\ndir = {:?}\n",
            dir.path().join("data"),
            dir.path().join("certs"),
            dir.path().join("users.toml"),
            policies
        ),
    )
    .unwrap();
    let out = portcullis(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--config",
        config.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let expected = format!("{}:5:12:", policies.join("20-bad.toml").display());
    assert_contains(&stderr, &expected);
    assert_contains(&stderr, "unknown action `write`");
    assert!(
        String::from_utf8_lossy(&out.stdout).is_empty(),
        "it must not start listening"
    );
}

#[test]
fn example_policies_load_beside_the_shipped_ones_and_decide_as_documented() {
    use portcullis::auth::scope::Action;
    use portcullis::policy::{Caller, Policy};
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    for source in ["policies", "examples/policies"] {
        for entry in std::fs::read_dir(root.join(source)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
            }
        }
    }
    let policy = Policy::load_dir(dir.path()).unwrap();
    let who = |user: Option<&str>, groups: &[&str], addr: Option<&str>| Caller {
        user: user.map(str::to_owned),
        groups: groups.iter().map(|g| g.to_string()).collect(),
        addr: addr.map(|a| a.parse().unwrap()),
        ..Caller::default()
    };
    let allows = |caller: &Caller, repo: &str, action: Action| {
        policy.decide(caller, repo, &[action]).granted == [action]
    };
    let ci_inside = who(Some("bot"), &["ci"], Some("10.20.1.1"));
    let ci_outside = who(Some("bot"), &["ci"], Some("192.0.2.1"));
    assert!(allows(&ci_inside, "builds/x", Action::Push));
    assert!(!allows(&ci_outside, "builds/x", Action::Push));
    assert!(allows(
        &who(Some("carol"), &["web"], None),
        "teams/web/app",
        Action::Delete
    ));
    assert!(!allows(
        &who(Some("carol"), &["web"], None),
        "teams/db/app",
        Action::Push
    ));
    assert!(allows(&who(None, &[], None), "public/tools", Action::Pull));
    assert!(!allows(
        &who(Some("bob"), &[], None),
        "vendor/x",
        Action::Pull
    ));
    assert!(allows(
        &who(Some("root"), &["admins"], None),
        "vendor/x",
        Action::Push
    ));
    let pipeline = |source: &'static str, claims: &[(&str, &str)]| Caller {
        source: Some(source),
        claims: claims
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..who(Some("bot"), &[], None)
    };
    let main = pipeline(
        "github",
        &[("repository", "org/app"), ("ref", "refs/heads/main")],
    );
    let pr = pipeline(
        "github",
        &[("repository", "org/app"), ("ref", "refs/pull/7/merge")],
    );
    assert!(allows(&main, "prod/app/web", Action::Push));
    assert!(!allows(&pr, "prod/app/web", Action::Push));
    assert!(allows(&pr, "ci/app/web", Action::Push));
    let protected = pipeline(
        "gitlab",
        &[("project_path", "group/app"), ("ref_protected", "true")],
    );
    let unprotected = pipeline(
        "gitlab",
        &[("project_path", "group/app"), ("ref_protected", "false")],
    );
    assert!(allows(&protected, "prod/app/web", Action::Push));
    assert!(!allows(&unprotected, "prod/app/web", Action::Push));
    // The claims of one issuer are nothing from another.
    assert!(!allows(
        &pipeline(
            "gitlab",
            &[("repository", "org/app"), ("ref", "refs/heads/main")]
        ),
        "prod/app/web",
        Action::Push
    ));
}

/// The writing end of a pipe whose reader is already gone (as under
/// `| head -0`): the first write to it fails with EPIPE.
fn closed_pipe() -> std::process::Stdio {
    use std::os::fd::{FromRawFd, OwnedFd};
    let mut fds = [0; 2];
    // SAFETY: pipe(2) fills the two descriptors, which we then own.
    let (reader, writer) = unsafe {
        assert_eq!(libc::pipe(fds.as_mut_ptr()), 0, "pipe");
        (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1]))
    };
    drop(reader);
    writer.into()
}

/// Runs `portcullis <args>` with its standard output a [`closed_pipe`].
fn with_closed_stdout(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(args)
        .stdout(closed_pipe())
        .stderr(std::process::Stdio::piped())
        .output()
        .expect("run portcullis")
}

#[test]
fn commands_stop_quietly_when_stdout_is_closed() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let data = dir.path().join("data");
    for args in [
        vec!["keygen", "--dir", certs.to_str().unwrap()],
        vec![
            "token",
            "revoke",
            "--all",
            "--data-dir",
            data.to_str().unwrap(),
        ],
    ] {
        let out = with_closed_stdout(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.is_empty(), "{args:?}: {stderr}");
        // Killed by SIGPIPE, as `cat` and `ls` are; not the panic's 101.
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            out.status.signal(),
            Some(libc::SIGPIPE),
            "{args:?}: {:?}",
            out.status
        );
    }
    // The work was done before the printing: the key is there.
    assert!(certs.join("bundle.crt").is_file());
}

/// Asserts that `text` (a command's stderr) contains `wanted`, showing it all if not.
fn assert_contains(text: &str, wanted: &str) {
    assert!(text.contains(wanted), "missing {wanted:?} in:\n{text}");
}

/// `portcullis serve <args>` in `dir` with its log on a pipe at `level`.
fn serve_in(dir: &Path, args: &[&str], level: &str) -> ServerProcess {
    let mut command = Command::new(env!("CARGO_BIN_EXE_portcullis"));
    command
        .current_dir(dir)
        .arg("serve")
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .env("PORTCULLIS_LOG", level)
        .env_remove("PORTCULLIS_CONFIG")
        .stderr(std::process::Stdio::piped());
    ServerProcess::spawn(command)
}

/// Stops the server and returns all it wrote on standard error.
fn stop_and_read_stderr(mut server: ServerProcess) -> String {
    use std::io::Read;
    let mut stderr = server.child.stderr.take().expect("stderr piped");
    server.kill();
    let mut text = String::new();
    stderr.read_to_string(&mut text).unwrap();
    text
}

#[tokio::test]
async fn serve_keeps_serving_when_stdout_is_closed() {
    use std::io::{BufRead, Read};
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args([
            "serve",
            "--no-auth",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(dir.path().join("data"))
        .env("PORTCULLIS_LOG", "info")
        .stdout(closed_pipe())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The log's `listening addr=…` line gives the port instead.
    // Kept open to the end: a closed stderr is another matter (the log
    // writer's own complaint about it would fail).
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    let mut addr = None;
    for line in stderr.by_ref().lines() {
        let line = line.unwrap();
        seen.push_str(&line);
        seen.push('\n');
        // The line logged after the address was written to stdout (the
        // open-registry warning before it has an `addr=` too).
        if !line.contains(" listening ") {
            continue;
        }
        if let Some(found) = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("addr="))
        {
            addr = Some(found.to_owned());
            break;
        }
    }
    let Some(addr) = addr else {
        let _ = child.kill();
        panic!("no listening line; stderr:\n{seen}");
    };
    let res = reqwest::get(format!("http://{addr}/healthz")).await;
    let _ = child.kill();
    let _ = child.wait();
    drop(stderr);
    assert_eq!(res.unwrap().status(), 200, "{seen}");
    assert!(!seen.contains("panicked"), "{seen}");
}

/// Nor when its standard error is a closed pipe (a log collector that went
/// away): the open-registry warning and every log line fail to be written,
/// and the server goes on answering.
#[tokio::test]
async fn serve_keeps_serving_when_stderr_is_closed() {
    let dir = tempfile::tempdir().unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_portcullis"));
    command
        .args([
            "serve",
            "--no-auth",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(dir.path().join("data"))
        .env("PORTCULLIS_LOG", "trace")
        .stderr(closed_pipe());
    let server = ServerProcess::spawn(command);
    for _ in 0..3 {
        let res = reqwest::get(server.at("/v2/")).await.unwrap();
        assert_eq!(res.status(), 200);
    }
}

#[tokio::test]
async fn serve_reads_portcullis_toml_in_the_working_directory_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("portcullis.toml"),
        "[storage]\nroot = \"from-local-config\"\n[auth]\nenabled = false\n",
    )
    .unwrap();
    let server = serve_in(dir.path(), &[], "info");
    // Open (as the file says), over the file's storage root.
    let res = reqwest::get(server.at("/v2/")).await.unwrap();
    assert_eq!(res.status(), 200);
    assert!(dir.path().join("from-local-config").is_dir());
    let stderr = stop_and_read_stderr(server);
    assert_contains(&stderr, "configuration: ./portcullis.toml");
    // `auth.enabled = false` in a file warns as `--no-auth` does.
    assert_contains(&stderr, "authentication is disabled");

    // Without one: the embedded default, said so.
    let empty = tempfile::tempdir().unwrap();
    let server = serve_in(empty.path(), &["--no-auth", "--data-dir", "data"], "info");
    let stderr = stop_and_read_stderr(server);
    assert_contains(
        &stderr,
        "configuration: embedded default (no ./portcullis.toml)",
    );
}

#[test]
fn a_broken_portcullis_toml_in_the_working_directory_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("portcullis.toml"), "[server]\nlisen = 1\n").unwrap();
    for args in [
        &["serve", "--listen", "127.0.0.1:0"][..],
        &["keygen"],
        &["token", "revoke", "--all"],
    ] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .current_dir(dir.path())
            .args(args)
            .env_remove("PORTCULLIS_CONFIG")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // A server that ignored the file would announce itself here and run
        // on: read one line, not to the end.
        let mut first = String::new();
        let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        std::io::BufRead::read_line(&mut stdout, &mut first).unwrap();
        if !first.is_empty() {
            let _ = child.kill();
        }
        let out = child.wait_with_output().unwrap();
        assert!(first.is_empty(), "{args:?}: it must not start: {first}");
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("portcullis.toml:2:1: unknown key `server.lisen`"),
            "{args:?}: {stderr}"
        );
    }
    // Nothing was created as if the defaults applied.
    assert!(!dir.path().join("certs").exists());
    assert!(!dir.path().join("data").exists());
}

#[test]
fn portcullis_config_names_the_configuration_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("elsewhere.toml");
    std::fs::write(&file, "[storage]\nroot = 5\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .current_dir(dir.path())
        .args(["token", "revoke", "--all"])
        .env("PORTCULLIS_CONFIG", &file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_contains(&stderr, "elsewhere.toml:2:8:");
}

#[test]
fn no_auth_warns_loudly_whatever_the_log_level() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve_in(dir.path(), &["--no-auth", "--data-dir", "data"], "off");
    let stderr = stop_and_read_stderr(server);
    assert_contains(&stderr, "WARNING: authentication is disabled");
    assert_contains(
        &stderr,
        "may pull, push, overwrite and delete every repository",
    );
}

#[test]
fn serve_names_the_bundle_a_trusting_registry_needs() {
    let dir = tempfile::tempdir().unwrap();
    // Relative paths, from the working directory: the log gives the
    // bundle's absolute path, since the trusting registry runs elsewhere.
    std::fs::write(
        dir.path().join("portcullis.toml"),
        "[token]\nkey_dir = \"keys\"\nissuer = \"door\"\nservice = \"reg\"\n",
    )
    .unwrap();
    let server = serve_in(dir.path(), &[], "info");
    let stderr = stop_and_read_stderr(server);
    let bundle = dir.path().canonicalize().unwrap().join("keys/bundle.crt");
    let expected = format!(
        "registries that trust these tokens need auth.token.rootcertbundle = {}, issuer = \"door\", service = \"reg\"",
        bundle.display()
    );
    assert!(
        stderr.contains(&expected),
        "missing {expected:?} in:\n{stderr}"
    );
    assert!(bundle.is_file());
}
