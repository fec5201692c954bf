//! Logins under attack, against the real server: a burst of concurrent
//! guesses, a flood of logins driving memory, refusal times that could tell
//! accounts apart, and refresh tokens that must die with their identity.

use crate::common;

use std::io::Write;
use std::net::IpAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::TestServer;
use common::process::ServerProcess;
use data_encoding::BASE64;
use portcullis::auth::users::{Users, hash_password};
use serde_json::Value;

const SERVICE: &str = "portcullis";

fn basic(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        BASE64.encode(format!("{user}:{password}").as_bytes())
    )
}

async fn login_status(client: &reqwest::Client, url: &str, user: &str, password: &str) -> u16 {
    client
        .get(format!("{url}/token?service={SERVICE}"))
        .header("authorization", basic(user, password))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_of_guesses_gets_no_more_verifications_than_the_limit() {
    // The default: 5 failures per account and address.
    let s = TestServer::with_alice(|_| {}).await;
    let guesses: Vec<_> = (0..40)
        .map(|i| {
            let (client, url) = (s.client.clone(), s.url.clone());
            tokio::spawn(async move {
                login_status(&client, &url, "alice", &format!("guess-{i}")).await
            })
        })
        .collect();
    let mut verified = 0;
    let mut throttled = 0;
    for guess in guesses {
        match guess.await.unwrap() {
            401 => verified += 1,
            429 => throttled += 1,
            other => panic!("unexpected status {other}"),
        }
    }
    println!("40 concurrent guesses: {verified} verified (401), {throttled} refused (429)");
    assert!(
        verified <= 5,
        "{verified} guesses were verified, the limit is 5"
    );
    assert_eq!(verified + throttled, 40);
    assert_eq!(
        login_status(&s.client, &s.url, "alice", "alice-pw").await,
        429,
        "the right password, sent last, waits like the rest"
    );
}

/// `VmHWM` (peak resident set) of a process, in KiB.
fn peak_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_login_flood_is_bounded_and_refused_with_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::write(
        root.join("users.toml"),
        format!(
            "[users.alice]\npassword = {:?}\n",
            hash_password("alice-pw").unwrap()
        ),
    )
    .unwrap();
    common::process::copy_project_policies(root);
    let config = format!(
        "[storage]\nroot = {:?}\n[token]\nkey_dir = {:?}\n[users]\nfile = {:?}\n[policy]\ndir = {:?}\n",
        root.join("data"),
        root.join("certs"),
        root.join("users.toml"),
        root.join("policies"),
    );
    std::fs::write(root.join("portcullis.toml"), config).unwrap();
    let server =
        ServerProcess::start_with(&["--config", root.join("portcullis.toml").to_str().unwrap()]);
    let pid = server.child.id();
    let url = server.url.clone();
    let plain = reqwest::Client::new();
    // alice logs in once: her credential is remembered from now on.
    assert_eq!(login_status(&plain, &url, "alice", "alice-pw").await, 200);
    let before = peak_kib(pid);

    // 200 unknown names from 200 addresses (127.0.0.0/8 is all loopback), so
    // that the failed-login limiter holds none of them back.
    let flood: Vec<_> = (0..200u32)
        .map(|i| {
            let url = url.clone();
            tokio::spawn(async move {
                let addr = IpAddr::from([127, 0, (i / 250 + 1) as u8, (i % 250 + 2) as u8]);
                let client = reqwest::Client::builder()
                    .local_address(addr)
                    .build()
                    .unwrap();
                let res = client
                    .get(format!("{url}/token?service={SERVICE}"))
                    .header("authorization", basic(&format!("nobody-{i}"), "guess"))
                    .send()
                    .await
                    .unwrap();
                let retry = res
                    .headers()
                    .get("retry-after")
                    .map(|v| v.to_str().unwrap().to_owned());
                let status = res.status().as_u16();
                let body: Value = res.json().await.unwrap_or(Value::Null);
                (status, retry, body)
            })
        })
        .collect();
    // While the flood is on, a remembered credential goes straight through.
    let started = Instant::now();
    assert_eq!(login_status(&plain, &url, "alice", "alice-pw").await, 200);
    let cached = started.elapsed();
    let (mut refused, mut verified) = (0, 0);
    for login in flood {
        let (status, retry, body) = login.await.unwrap();
        match status {
            401 => verified += 1,
            429 => {
                refused += 1;
                assert_eq!(body["errors"][0]["code"], "TOOMANYREQUESTS", "{body}");
                let retry: u64 = retry.expect("Retry-After").parse().unwrap();
                assert!(retry >= 1);
            }
            other => panic!("unexpected status {other}"),
        }
    }
    let peak = peak_kib(pid);
    println!(
        "200 concurrent unknown-user logins: {verified} verified, {refused} refused; server VmHWM {:.1} MiB before, {:.1} MiB after; a remembered login meanwhile took {cached:?}",
        before as f64 / 1024.0,
        peak as f64 / 1024.0
    );
    assert!(
        refused > 0,
        "nothing was refused: verifications are not bounded"
    );
    // Unbounded, 200 verifications hold 19 MiB each (3.8 GiB); bounded, a
    // handful. Generous: allocator slack and the test machine vary.
    assert!(
        peak < 200 * 1024,
        "server peak RSS {:.1} MiB under a login flood",
        peak as f64 / 1024.0
    );
    server.kill();
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_take_as_long_for_any_account_and_bcrypt_hashes_are_upgraded() {
    let dir = tempfile::tempdir().unwrap();
    let bcrypt_hash = bcrypt::hash("carol-pw", 5).unwrap();
    let users = format!(
        "# Carol came from htpasswd.\n[users.carol]\npassword = {bcrypt_hash:?} # imported\ngroups = [\"dev\"]\n"
    );
    let file = dir.path().join("users.toml");
    std::fs::write(&file, users).unwrap();
    common::process::copy_project_policies(dir.path());
    let s = TestServer::start_configured(dir, |c| {
        c.auth.max_failures_per_account = 100;
        c.auth.max_failures_per_address = 100;
    })
    .await;
    let time = |user: &'static str| {
        let (client, url) = (s.client.clone(), s.url.clone());
        async move {
            let started = Instant::now();
            assert_eq!(login_status(&client, &url, user, "wrong").await, 401);
            started.elapsed()
        }
    };
    let (mut unknown, mut known) = (Vec::new(), Vec::new());
    for _ in 0..9 {
        unknown.push(time("nobody").await);
        known.push(time("carol").await);
    }
    let (unknown, known) = (median(unknown), median(known));
    println!("refusal medians: unknown user {unknown:?}, bcrypt user {known:?}");
    let ratio = known.as_secs_f64() / unknown.as_secs_f64();
    assert!(
        (0.5..2.0).contains(&ratio),
        "a bcrypt user is refused in {known:?}, an unknown one in {unknown:?}"
    );

    // A successful login upgrades the hash; the identity stays (a refresh
    // token issued by that login keeps working), and so do comments.
    let res = s
        .client
        .post(s.at("/token"))
        .form(&[
            ("grant_type", "password"),
            ("service", SERVICE),
            ("client_id", "ci"),
            ("access_type", "offline"),
            ("username", "carol"),
            ("password", "carol-pw"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    let refresh = body["refresh_token"].as_str().unwrap().to_owned();
    let text = std::fs::read_to_string(&file).unwrap();
    let users = Users::load(&file).unwrap();
    let hash = users.password_hash("carol").unwrap();
    // The current parameters: argon2id v1.3, 19 MiB, two passes, one lane.
    assert!(
        hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
        "not upgraded: {text}"
    );
    assert!(
        text.contains("# Carol came from htpasswd.") && text.contains("# imported"),
        "{text}"
    );
    assert_eq!(users.account("carol").unwrap().groups, ["dev"]);
    // After the server has re-read its own edit, the password still works,
    // and the refresh token too.
    let deadline = Instant::now() + Duration::from_secs(10);
    let redeem = || {
        s.client.post(s.at("/token")).form(&[
            ("grant_type", "refresh_token"),
            ("service", SERVICE),
            ("client_id", "ci"),
            ("refresh_token", refresh.as_str()),
        ])
    };
    while Instant::now() < deadline {
        assert_eq!(
            login_status(&s.client, &s.url, "carol", "carol-pw").await,
            200
        );
        assert_eq!(redeem().send().await.unwrap().status(), 200);
        tokio::time::sleep(Duration::from_millis(200)).await;
        if Instant::now() + Duration::from_secs(8) > deadline {
            break;
        }
    }
    assert_eq!(login_status(&s.client, &s.url, "carol", "wrong").await, 401);
}

/// `portcullis user ARGS --file FILE` with `stdin` as the password line.
fn user_command(file: &Path, args: &[&str], stdin: &str) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .arg("user")
        .args(args)
        .args(["--file", file.to_str().unwrap()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _ = child.stdin.take().unwrap().write_all(stdin.as_bytes());
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
}

#[tokio::test]
async fn refresh_tokens_die_with_the_identity() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("users.toml");
    common::process::copy_project_policies(dir.path());
    user_command(&file, &["add", "frank"], "frank-pw\n");
    let s = TestServer::start_configured(dir, |_| {}).await;
    let refresh_of = |password: &'static str| {
        let (client, at) = (s.client.clone(), s.at("/token"));
        async move {
            let res = client
                .post(at)
                .form(&[
                    ("grant_type", "password"),
                    ("service", SERVICE),
                    ("client_id", "ci"),
                    ("access_type", "offline"),
                    ("username", "frank"),
                    ("password", password),
                ])
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 200);
            let body: Value = res.json().await.unwrap();
            body["refresh_token"].as_str().unwrap().to_owned()
        }
    };
    let redeem = |refresh: String| {
        let (client, at) = (s.client.clone(), s.at("/token"));
        async move {
            client
                .post(at)
                .form(&[
                    ("grant_type", "refresh_token"),
                    ("service", SERVICE),
                    ("client_id", "ci"),
                    ("refresh_token", refresh.as_str()),
                ])
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    // Polls until the server has picked up the edit (it looks once a second).
    let until_refused = |refresh: String| {
        let redeem = &redeem;
        async move {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let status = redeem(refresh.clone()).await;
                if status == 401 {
                    return;
                }
                assert_eq!(status, 200);
                assert!(
                    Instant::now() < deadline,
                    "the old refresh token still works"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };

    let first = refresh_of("frank-pw").await;
    assert_eq!(redeem(first.clone()).await, 200);
    // Another frank, even with the same password: the first one's token is void.
    user_command(&file, &["del", "frank"], "");
    user_command(&file, &["add", "frank"], "frank-pw\n");
    until_refused(first.clone()).await;
    let second = refresh_of("frank-pw").await;
    assert_eq!(redeem(second.clone()).await, 200);
    assert_eq!(redeem(first).await, 401);

    // A new password voids the tokens of the old one.
    user_command(&file, &["passwd", "frank"], "new-password\n");
    until_refused(second).await;
    let third = refresh_of("new-password").await;
    assert_eq!(redeem(third).await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_unlock_clears_a_lockout_in_the_running_server() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let file = root.join("users.toml");
    let users: String = ["alice", "bob"]
        .iter()
        .map(|name| {
            let hash = hash_password(&format!("{name}-password")).unwrap();
            format!("[users.{name}]\npassword = {hash:?}\n")
        })
        .collect();
    std::fs::write(&file, users).unwrap();
    common::process::copy_project_policies(root);
    // A long window: without an unlock, the lockouts outlast the test.
    let config = format!(
        "[storage]\nroot = {:?}\n[token]\nkey_dir = {:?}\n[users]\nfile = {:?}\n[policy]\ndir = {:?}\n\
         [auth]\nmax_failures_per_account = 3\nmax_failures_per_address = 1000\nfailure_window_secs = 3600\n",
        root.join("data"),
        root.join("certs"),
        file,
        root.join("policies"),
    );
    std::fs::write(root.join("portcullis.toml"), config).unwrap();
    let server =
        ServerProcess::start_with(&["--config", root.join("portcullis.toml").to_str().unwrap()]);
    let client = reqwest::Client::new();
    let url = server.url.clone();
    for name in ["alice", "bob"] {
        for _ in 0..3 {
            assert_eq!(login_status(&client, &url, name, "wrong").await, 401);
        }
        let right = format!("{name}-password");
        assert_eq!(
            login_status(&client, &url, name, &right).await,
            429,
            "{name} is locked out"
        );
    }

    user_command(&file, &["unlock", "alice"], "");
    // The server looks at the users file at most once a second; refused
    // attempts are not failures, so polling with the right password is safe.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match login_status(&client, &url, "alice", "alice-password").await {
            200 => break,
            429 => assert!(Instant::now() < deadline, "alice is still locked out"),
            other => panic!("unexpected status {other}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        login_status(&client, &url, "bob", "bob-password").await,
        429,
        "bob's lockout stays"
    );
    // Failures after the unlock count again.
    for _ in 0..3 {
        assert_eq!(login_status(&client, &url, "alice", "wrong").await, 401);
    }
    assert_eq!(
        login_status(&client, &url, "alice", "alice-password").await,
        429
    );
    server.kill();
}

#[tokio::test]
async fn an_older_account_whose_name_is_no_path_still_logs_in_and_is_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let hash = hash_password("frank-password").unwrap();
    std::fs::write(
        root.join("users.toml"),
        format!("[users.Frank]\npassword = {hash:?}\n"),
    )
    .unwrap();
    common::process::copy_project_policies(root);
    let log = root.join("server.log");
    let mut command = Command::new(env!("CARGO_BIN_EXE_portcullis"));
    command
        .args(["serve", "--listen", "127.0.0.1:0"])
        .current_dir(root)
        .env("PORTCULLIS_LOG", "warn")
        .stderr(std::fs::File::create(&log).unwrap());
    let server = ServerProcess::spawn(command);
    let client = reqwest::Client::new();
    assert_eq!(
        login_status(&client, &server.url, "Frank", "frank-password").await,
        200
    );
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.lines()
            .any(|l| l.contains("WARN") && l.contains("Frank") && l.contains("path component")),
        "{text}"
    );
    server.kill();
}
