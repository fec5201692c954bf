//! The sign-in page, from outside: a real headless Chromium
//! (`common::browser`) signs a person in at a real OpenID provider
//! (`common::oidc`) through Portcullis' `/login`, makes a token on the page,
//! and skopeo pushes with it; forged forms, foreign sign-ins and revoked
//! tokens are refused.

use crate::common;

use std::collections::BTreeMap;
use std::fs;
use std::time::Duration;

use common::browser::Browser;
use common::oidc::{ClientApp, Provider, SigningKey};
use serde_json::json;

const POLICY: &str = r#"
[[rule]]
description = "developers pull production images"
groups = ["sso-developers"]
repositories = ["prod/**"]
actions = ["pull"]

[[rule]]
description = "users push in their own namespace"
users = ["*"]
repositories = ["${user}/**"]
actions = ["pull", "push"]
"#;

const WAIT: Duration = Duration::from_secs(20);

/// Where the page's screenshot is kept after the run.
fn artifact(name: &str) -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("artifacts");
    fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_person_signs_in_makes_a_token_and_skopeo_pushes_with_it() {
    common::clients::require("skopeo");
    let key = SigningKey::generate("key-1");
    let registry = ClientApp::new("registry");
    let accounts = BTreeMap::from([(
        "alice",
        json!({"preferred_username": "alice", "groups": ["developers"]}),
    )]);
    let mut provider = Provider::start(&key, &[registry], accounts);

    let dir = tempfile::tempdir().unwrap();
    fs::create_dir_all(dir.path().join("policies")).unwrap();
    fs::write(dir.path().join("policies/people.toml"), POLICY).unwrap();
    fs::write(dir.path().join("client-secret"), "registry-secret\n").unwrap();
    fs::write(
        dir.path().join("portcullis.toml"),
        format!(
            "[storage]\nroot = \"data\"\n[users]\nfile = \"users.toml\"\n\
             [[identity.oidc]]\nname = \"sso\"\nissuer = \"{}\"\naudiences = [\"registry\"]\n\
             username_claim = \"preferred_username\"\ngroups_claim = \"groups\"\n\
             prefix = \"sso-\"\nallow_http = true\n\
             [login]\nissuer = \"sso\"\nclient_id = \"registry\"\n\
             client_secret_file = \"client-secret\"\nscopes = [\"profile\", \"groups\"]\n",
            provider.issuer
        ),
    )
    .unwrap();
    let (server, mut log) = crate::logs::serve(dir.path(), Some("info"));
    provider.register_redirect("registry", &format!("{}/login/callback", server.url));

    let browser = Browser::start(dir.path()).await;
    browser.goto(&format!("{}/login", server.url)).await;
    browser.wait_for("#sign-in", WAIT).await;
    browser.click("#sign-in").await;
    // At the provider: its own sign-in form.
    browser.wait_for("#login", WAIT).await;
    assert!(browser.current_url().await.starts_with(&provider.issuer));
    browser.fill("#login", "alice").await;
    browser.click("#submit").await;
    // Back on the page, signed in.
    browser.wait_for("#user", WAIT).await;
    assert_eq!(browser.text("#user").await, "sso-alice");
    assert!(browser.text("#groups").await.contains("sso-developers"));
    let rules = browser.text("#rules").await;
    assert!(
        rules.contains("prod/**") && rules.contains("sso-alice/**"),
        "{rules}"
    );
    log.wait_for(&["signed in on the sign-in page", "sso-alice"]);

    browser.fill("#name", "laptop").await;
    browser.fill("#scopes", "sso-alice/**:pull,push").await;
    browser.click("#make").await;
    browser.wait_for("#token", WAIT).await;
    let token = browser.text("#token").await;
    assert!(token.starts_with("pcat_"), "{token}");
    let login = browser.text("#docker-login").await;
    assert!(
        login.contains(&format!(
            "docker login {} --username sso-alice",
            server.host
        )),
        "{login}"
    );
    let shot = artifact("sign-in-page.png");
    browser.screenshot(&shot).await;
    eprintln!("screenshot of the sign-in page: {}", shot.display());

    // The token works with a real client, within its scope.
    let env = common::clients::ClientEnv::new(&server.host);
    let src = env.path("src");
    common::oci::write_layout(&src, "v1", &[10_000]);
    env.login("skopeo", "sso-alice", &token)
        .expect("skopeo login with the page's token");
    let authfile = env.auth_file();
    let push = |to: &str| {
        vec![
            "copy".to_owned(),
            "--dest-tls-verify=false".to_owned(),
            "--authfile".to_owned(),
            authfile.to_str().unwrap().to_owned(),
            common::oci::oci_ref(&src, "v1"),
            env.docker_ref(to),
        ]
    };
    let args = push("sso-alice/app:v1");
    env.skopeo(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let args = push("prod/app:v1");
    env.skopeo_fails(&args.iter().map(String::as_str).collect::<Vec<_>>());

    // Outside the browser: a form without the session's form token, or
    // without a session at all, makes nothing.
    let session = browser
        .cookie("portcullis_session")
        .await
        .expect("a session cookie");
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let post = |cookie: Option<String>, body: &'static str| {
        let mut request = client
            .post(format!("{}/login/tokens", server.url))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body);
        if let Some(cookie) = cookie {
            request = request.header("cookie", cookie);
        }
        request.send()
    };
    let form = "form_token=forged&name=stolen&expires_days=1&scopes=";
    for cookie in [Some(format!("portcullis_session={session}")), None] {
        let answer = post(cookie, form).await.unwrap();
        assert_eq!(answer.status(), 400);
        assert!(!answer.text().await.unwrap().contains("pcat_"));
    }
    // A made-up session cookie is no session.
    let forged = format!("portcullis_session={}x", &session[..session.len() - 1]);
    let answer = post(Some(forged), form).await.unwrap();
    assert_eq!(answer.status(), 400);
    // A callback that this browser did not start is refused.
    let answer = client
        .get(format!("{}/login/callback?code=abc&state=xyz", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 400);
    assert!(answer.text().await.unwrap().contains("sign in again"));
    // The issuer sending an error back (the person cancelled): its words
    // shown to the person, escaped, and no session made.
    let answer = client
        .get(format!(
            "{}/login/callback?error=access_denied&error_description=%3Cscript%3Ecancelled%3C%2Fscript%3E",
            server.url
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 400);
    assert!(!answer.headers().contains_key("set-cookie"));
    let page = answer.text().await.unwrap();
    assert!(
        page.contains("The sign-in did not complete: &lt;script&gt;cancelled"),
        "{page}"
    );

    // Revoked on the page: refused at once.
    browser.goto(&format!("{}/login", server.url)).await;
    browser.wait_for("#tokens button", WAIT).await;
    browser.click("#tokens button").await;
    browser.wait_for("#user", WAIT).await;
    assert_eq!(browser.text("#tokens").await, "None yet.");
    let http = reqwest::Client::new();
    let (status, body) = common::basic_token(
        &http,
        &server.url,
        ("sso-alice", &token),
        "repository:sso-alice/app:pull",
        &[],
    )
    .await;
    assert_eq!(status, 401, "{body}");
    drop(browser);
    drop(dir);
}
