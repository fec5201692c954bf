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
    for path in found {
        Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
        let out = portcullis(&["check-config", path.to_str().unwrap()]);
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
    assert!(stderr.contains(&expected), "{stderr}");
    assert!(stderr.contains("unknown action `write`"), "{stderr}");
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
}
