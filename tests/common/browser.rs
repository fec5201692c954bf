//! A real headless Chromium for the tests, driven through `chromedriver`
//! over W3C WebDriver (plain JSON over HTTP, so reqwest is the whole client).
//!
//! Real Chromium rather than an HTTP client playing browser: the sign-in page
//! test drives an OpenID provider's login form the way a user does (its
//! scripts, cookies, redirects and form posts as a browser handles them), and
//! only a browser says whether that page works.
//!
//! Facts this harness relies on, found on Debian 12 (Chromium and
//! chromedriver 148, packages `chromium` and `chromium-driver`):
//!
//! - `chromedriver --port=0` binds a free port and logs `ChromeDriver was
//!   started successfully on port N` (to stdout and to `--log-path`): an
//!   ephemeral port without binding, dropping and rebinding one. It listens
//!   on 127.0.0.1 and ::1 and only accepts local clients.
//! - `/usr/bin/chromium` is Debian's launcher script, which sources
//!   `/etc/chromium.d/*` (adding flags of its own) and then `exec`s
//!   `/usr/lib/chromium/chromium`, so chromedriver's child is Chromium
//!   itself. chromedriver sends Chromium's output nowhere unless told to.
//! - As root Chromium refuses to start without `--no-sandbox`.
//! - Chromium's processes stay in chromedriver's process group (the harness
//!   makes chromedriver a group leader), except its crash handler
//!   (`chrome_crashpad_handler`, started whatever the flags say:
//!   `--disable-crash-reporter` and `--disable-breakpad` do not stop it, and
//!   `--disable-crashpad-for-testing` leaves every navigation timing out),
//!   which starts a session of its own, keeps its database under HOME and
//!   exits some 30 ms after Chromium.
//! - Deleting the session makes chromedriver close Chromium and answer once
//!   it has exited (some 0.2 s). Dropping a [`Browser`] does that, kills the
//!   group, and then kills what still names the browser's HOME on its
//!   command line (the crash handler) and waits for it to be gone: no
//!   Chromium outlives its test, even when the delete fails, and nothing
//!   writes into the directory once the test removes it. (Chromium's helpers
//!   are left as zombies until PID 1 reaps them, which on this project's VM
//!   takes a while.)
#![allow(dead_code)]

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
pub const CHROMIUM: &str = "/usr/bin/chromium";

/// How long chromedriver may take to listen and Chromium to start (well
/// under a second each when idle; the margin is for a loaded machine).
const START_DEADLINE: Duration = Duration::from_secs(60);
/// How long one WebDriver command may take (a page load included).
const COMMAND_DEADLINE: Duration = Duration::from_secs(60);
/// Between two probes of a condition polled until a deadline.
const PAUSE: Duration = Duration::from_millis(20);

/// The key of an element reference in WebDriver's JSON (W3C, "web element
/// identifier").
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A Chromium session. Dropping it quits Chromium and stops chromedriver.
pub struct Browser {
    child: Child,
    /// `http://127.0.0.1:PORT`, chromedriver's.
    driver: String,
    port: u16,
    session: String,
    http: reqwest::Client,
    log: PathBuf,
    /// The HOME Chromium is given, which the crash handler's command line
    /// names (its database is in it).
    home: PathBuf,
}

/// An element of the current page, as WebDriver refers to it.
#[derive(Clone, Debug)]
pub struct Element {
    pub id: String,
}

impl Element {
    /// Its JSON reference, for a script's `args` (`arguments[i]` is the DOM
    /// element there).
    pub fn json(&self) -> Value {
        json!({ ELEMENT_KEY: self.id })
    }
}

/// Fails (never skips) when chromedriver or Chromium is missing.
fn require_browser() {
    assert!(
        Path::new(CHROMEDRIVER).is_file() && Path::new(CHROMIUM).is_file(),
        "{CHROMEDRIVER} or {CHROMIUM} is not installed; the browser tests need a real \
         browser. Install them with scripts/install-test-deps.sh (as root)"
    );
}

impl Browser {
    /// Starts chromedriver and a headless Chromium session; everything they
    /// write (profile, logs, a private HOME) goes into `dir`.
    pub async fn start(dir: &Path) -> Self {
        require_browser();
        let home = dir.join("chromium-home");
        std::fs::create_dir_all(&home).expect("browser home");
        let log = dir.join("chromedriver.log");
        // What chromedriver prints besides its log (its banner).
        let out = std::fs::File::create(dir.join("chromedriver.out")).expect("chromedriver.out");
        let child = Command::new(CHROMEDRIVER)
            .arg("--port=0")
            .arg(format!("--log-path={}", log.display()))
            // Nothing of the machine's user: PATH for the launcher script,
            // HOME for whatever Chromium keeps outside its profile.
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &home)
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("chromedriver.out"))
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {CHROMEDRIVER}: {e}"));
        let http = reqwest::Client::builder()
            .timeout(COMMAND_DEADLINE)
            .build()
            .expect("HTTP client");
        let mut browser = Self {
            child,
            driver: String::new(),
            port: 0,
            session: String::new(),
            http,
            log,
            home,
        };
        browser.port = browser.announced_port().await;
        browser.driver = format!("http://127.0.0.1:{}", browser.port);
        browser.wait_until_ready().await;
        browser.session = browser.new_session(dir).await;
        browser
    }

    /// The port chromedriver logs once it listens.
    async fn announced_port(&mut self) -> u16 {
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let port = log
                .lines()
                .find_map(|l| l.split("started successfully on port ").nth(1))
                .and_then(|p| p.trim_end_matches('.').trim().parse().ok());
            if let Some(port) = port {
                return port;
            }
            if let Some(status) = self.child.try_wait().expect("chromedriver status") {
                panic!(
                    "chromedriver exited ({status}) before listening:\n{}",
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver did not listen within {START_DEADLINE:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(PAUSE).await;
        }
    }

    /// Waits until `/status` says chromedriver takes a new session.
    async fn wait_until_ready(&self) {
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            let status = async {
                let response = self.http.get(self.at("/status")).send().await.ok()?;
                response.json::<Value>().await.ok()
            };
            if status.await.is_some_and(|s| s["value"]["ready"] == true) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver was not ready within {START_DEADLINE:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(PAUSE).await;
        }
    }

    async fn new_session(&self, dir: &Path) -> String {
        let profile = dir.join("chromium-profile");
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless=new",
                    // The tests run as root, where Chromium's sandbox will not start.
                    "--no-sandbox",
                    "--disable-gpu",
                    // /dev/shm may be small (in a container); /tmp then.
                    "--disable-dev-shm-usage",
                    format!("--user-data-dir={}", profile.display()),
                    "--window-size=1280,1000",
                ],
            },
        }}});
        let response = self
            .http
            .post(self.at("/session"))
            .json(&capabilities)
            .send()
            .await
            .unwrap_or_else(|e| panic!("new session: {e}\n{}", self.log()));
        let status = response.status();
        let body: Value = response.json().await.unwrap_or_default();
        assert!(
            status.is_success(),
            "chromedriver did not start Chromium ({status}): {}\n{}",
            without_stacktrace(&body),
            self.log()
        );
        body["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session id in {body}"))
            .to_owned()
    }

    fn at(&self, path: &str) -> String {
        format!("{}{path}", self.driver)
    }

    /// A command on the session (`path` after `/session/ID`; a body means
    /// POST): its `value`, or the error WebDriver answered.
    async fn try_command(&self, path: &str, body: Option<Value>) -> Result<Value, Value> {
        let url = self.at(&format!("/session/{}{path}", self.session));
        let request = match body {
            Some(body) => self.http.post(url).json(&body),
            None => self.http.get(url),
        };
        // Not answering at all is an error too: the caller's message says
        // which command met it.
        let response = request
            .send()
            .await
            .map_err(|e| json!({ "error": format!("no answer from chromedriver: {e}") }))?;
        let status = response.status();
        let mut answer: Value = response
            .json()
            .await
            .map_err(|e| json!({ "error": format!("{status}, not JSON: {e}") }))?;
        let value = answer["value"].take();
        if status.is_success() {
            Ok(value)
        } else {
            Err(without_stacktrace(&value))
        }
    }

    /// [`Browser::try_command`], which must succeed.
    async fn command(&self, path: &str, body: Option<Value>) -> Value {
        let shown = body.as_ref().map(Value::to_string).unwrap_or_default();
        match self.try_command(path, body).await {
            Ok(value) => value,
            Err(error) => panic!(
                "WebDriver {path} {shown} failed: {error}\n{}",
                self.page_for_message().await
            ),
        }
    }

    /// Loads `url` and waits for its `load` event.
    pub async fn goto(&self, url: &str) {
        self.command("/url", Some(json!({ "url": url }))).await;
    }

    pub async fn current_url(&self) -> String {
        let url = self.command("/url", None).await;
        url.as_str().expect("the URL is a string").to_owned()
    }

    /// The page's HTML as the DOM has it now.
    /// The value of the cookie `name` of the current page, `HttpOnly` ones
    /// included (what a test needs to replay a request outside the
    /// browser).
    pub async fn cookie(&self, name: &str) -> Option<String> {
        let cookies = self.command("/cookie", None).await;
        cookies.as_array()?.iter().find_map(|c| {
            (c["name"] == name).then(|| c["value"].as_str().unwrap_or_default().to_owned())
        })
    }

    pub async fn source(&self) -> String {
        let source = self.command("/source", None).await;
        source.as_str().expect("the source is a string").to_owned()
    }

    /// The element `css` selects now; `None` when there is none.
    async fn find(&self, css: &str) -> Option<Element> {
        let query = json!({"using": "css selector", "value": css});
        match self.try_command("/element", Some(query)).await {
            Ok(found) => Some(Element {
                id: found[ELEMENT_KEY]
                    .as_str()
                    .unwrap_or_else(|| panic!("no element reference in {found}"))
                    .to_owned(),
            }),
            Err(error) if error["error"] == "no such element" => None,
            Err(error) => panic!("WebDriver find {css:?}: {error}"),
        }
    }

    /// The element `css` selects; panics when there is none.
    pub async fn element(&self, css: &str) -> Element {
        match self.find(css).await {
            Some(element) => element,
            None => panic!("no element {css:?} {}", self.page_for_message().await),
        }
    }

    /// Waits until `css` selects an element (a page that is still loading,
    /// a script that adds it) and returns it; panics past `timeout`, saying
    /// where the browser is and what the page holds.
    pub async fn wait_for(&self, css: &str, timeout: Duration) -> Element {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(element) = self.find(css).await {
                return element;
            }
            if Instant::now() >= deadline {
                panic!(
                    "no element {css:?} within {timeout:?} {}",
                    self.page_for_message().await
                );
            }
            tokio::time::sleep(PAUSE).await;
        }
    }

    /// Waits until the current URL satisfies `wanted` (e.g.
    /// `|url| url.starts_with(prefix)`) and returns it; panics past
    /// `timeout`.
    pub async fn wait_for_url(&self, wanted: impl Fn(&str) -> bool, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let url = self.current_url().await;
            if wanted(&url) {
                return url;
            }
            if Instant::now() >= deadline {
                panic!(
                    "the URL did not become the one wanted within {timeout:?} {}",
                    self.page_for_message().await
                );
            }
            tokio::time::sleep(PAUSE).await;
        }
    }

    /// Empties the field `css` selects and types `text` into it.
    pub async fn fill(&self, css: &str, text: &str) {
        let element = self.element(css).await;
        let path = format!("/element/{}", element.id);
        self.command(&format!("{path}/clear"), Some(json!({})))
            .await;
        self.command(&format!("{path}/value"), Some(json!({ "text": text })))
            .await;
    }

    /// Clicks the element `css` selects (as a user does: it must be shown).
    pub async fn click(&self, css: &str) {
        let element = self.element(css).await;
        self.command(&format!("/element/{}/click", element.id), Some(json!({})))
            .await;
    }

    /// The rendered text of the element `css` selects.
    pub async fn text(&self, css: &str) -> String {
        let element = self.element(css).await;
        let text = self
            .command(&format!("/element/{}/text", element.id), None)
            .await;
        text.as_str().expect("text is a string").to_owned()
    }

    /// Runs `script` (a function body: `return …`, `arguments[i]`) in the
    /// page and returns what it returned.
    pub async fn execute(&self, script: &str, args: Vec<Value>) -> Value {
        self.command(
            "/execute/sync",
            Some(json!({ "script": script, "args": args })),
        )
        .await
    }

    /// Writes a PNG of the viewport to `path`, e.g. to look at a failure.
    pub async fn screenshot(&self, path: &Path) {
        let encoded = self.command("/screenshot", None).await;
        let png = data_encoding::BASE64
            .decode(encoded.as_str().expect("base64 text").as_bytes())
            .expect("screenshot is base64");
        std::fs::write(path, png).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }

    /// chromedriver's log so far, for a failure's message.
    pub fn log(&self) -> String {
        format!(
            "chromedriver's log ({}):\n{}",
            self.log.display(),
            std::fs::read_to_string(&self.log).unwrap_or_default()
        )
    }

    /// Where the browser is and the start of the page, for a failure's
    /// message (what can be had: the browser may be what failed).
    async fn page_for_message(&self) -> String {
        const SHOWN: usize = 2000;
        let url = self.try_command("/url", None).await;
        let source = self.try_command("/source", None).await;
        let source = match &source {
            Ok(Value::String(html)) => html.chars().take(SHOWN).collect(),
            _ => "(no source)".to_owned(),
        };
        format!(
            "at {}; the page begins:\n{source}",
            url.map(|u| u.to_string()).unwrap_or_else(|e| e.to_string())
        )
    }

    /// Best effort: the session's DELETE as one blocking HTTP/1.0 request
    /// over std's TcpStream, so that Drop needs no runtime (and waits for
    /// no task of the test's runtime: chromedriver answers on its own).
    fn delete_session(&self) {
        let Ok(mut stream) = TcpStream::connect((Ipv4Addr::LOCALHOST, self.port)) else {
            return;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
        let request = format!(
            "DELETE /session/{} HTTP/1.0\r\nHost: 127.0.0.1:{}\r\n\r\n",
            self.session, self.port
        );
        if stream.write_all(request.as_bytes()).is_ok() {
            // The answer comes once Chromium has quit.
            let _ = stream.read_to_end(&mut Vec::new());
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            self.delete_session();
        }
        // The whole group: chromedriver and whatever Chromium left running.
        // SAFETY: kill(2) on the group our unreaped child leads.
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.wait();
        // Then what left the group: the crash handler. (Named by this
        // browser's own HOME, which nothing else's command line has.)
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = processes_naming(&self.home);
            if left.is_empty() {
                return;
            }
            if Instant::now() >= deadline {
                // Not a panic: Drop may run while a test panics already.
                eprintln!("processes of {} still run: {left:?}", self.home.display());
                return;
            }
            for pid in left {
                // SAFETY: kill(2) has no memory-safety preconditions; the
                // pid named this browser's own directory a moment ago.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            std::thread::sleep(PAUSE);
        }
    }
}

/// The processes whose command line names `dir` (a zombie has none).
fn processes_naming(dir: &Path) -> Vec<i32> {
    let wanted = dir.as_os_str().as_encoded_bytes();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|line| line.windows(wanted.len()).any(|w| w == wanted))
        })
        .collect()
}

/// A WebDriver error without its `stacktrace` (chromedriver's native frames,
/// of no use in a test's message).
fn without_stacktrace(value: &Value) -> Value {
    let mut value = value.clone();
    if let Some(map) = value.as_object_mut() {
        map.remove("stacktrace");
    }
    value
}
