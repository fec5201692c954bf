//! The browser harness (`common::browser`) against a page of the test's own:
//! a form filled in and posted by a real headless Chromium.

use crate::common;

use std::time::Duration;

use axum::Router;
use axum::response::Html;
use axum::routing::{get, post};
use common::browser::Browser;

const WAIT: Duration = Duration::from_secs(20);

/// A page with a form, and the page its post answers with.
async fn serve_form() -> String {
    let app = Router::new()
        .route(
            "/",
            get(|| async {
                Html(
                    "<!doctype html><form method=post action=/hello>\
                     <input id=name name=name><button id=go>Go</button></form>",
                )
            }),
        )
        .route(
            "/hello",
            // The form's body by hand: the crate's axum has no `form` feature.
            post(|body: String| async move {
                let name = form_urlencoded::parse(body.as_bytes())
                    .find(|(key, _)| key == "name")
                    .map(|(_, value)| value.into_owned())
                    .unwrap_or_default();
                let name = name.replace('&', "&amp;").replace('<', "&lt;");
                Html(format!("<!doctype html><p id=hello>hello {name}</p>"))
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

#[tokio::test(flavor = "multi_thread")]
async fn a_real_browser_fills_in_and_posts_a_form() {
    let url = serve_form().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let browser = Browser::start(dir.path()).await;
    browser.goto(&url).await;
    // A value already there is replaced, not added to.
    browser.fill("#name", "someone else").await;
    browser.fill("#name", "Zoë").await;
    let typed = browser
        .execute(
            "return arguments[0].value",
            vec![browser.element("#name").await.json()],
        )
        .await;
    assert_eq!(typed, "Zoë");
    browser.click("#go").await;
    browser.wait_for("#hello", WAIT).await;
    assert_eq!(browser.text("#hello").await, "hello Zoë");
    let landed = browser.wait_for_url(|u| u.ends_with("/hello"), WAIT).await;
    assert_eq!(landed, format!("{url}/hello"));
    assert!(browser.source().await.contains("hello Zoë"));

    let shot = dir.path().join("hello.png");
    browser.screenshot(&shot).await;
    let png = std::fs::read(&shot).expect("screenshot file");
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n"),
        "not a PNG: {:?}",
        &png[..png.len().min(16)]
    );
}
