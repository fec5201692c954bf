//! The audit trail (`[audit] file`): one JSON line per decision and per
//! change, for the people who must later say who did what.
//!
//! | `event`      | when                                                       |
//! |--------------|------------------------------------------------------------|
//! | `token`      | a token request answered: granted (what, and each refusal with its rule) or refused (why) |
//! | `refused`    | a registry request refused at enforcement (401, 403)      |
//! | `push`       | a manifest stored (`tag` set when it moved a tag); a v1 tag pushed |
//! | `blob_push`  | a blob upload finished; a v1 image's layer pushed          |
//! | `delete`     | a manifest (or tag) deleted; a v1 tag or repository        |
//! | `blob_delete`| a blob link deleted                                        |
//!
//! Fields (absent when they do not apply): `time` (RFC 3339, UTC, ms),
//! `request_id` (as in the request's log lines, `X-Request-Id` and error
//! body), `event`, `result` (`granted`, `refused`, `ok`), `user`, `source` (the
//! identity source), `credential` (`password`, `oidc`, `pat`,
//! `certificate`, `token`), `addr`, `method`, `route`, `repository`,
//! `reference`, `tag`, `digest`, `asked`, `granted`, `refusals` (each
//! with the rule that decided), `status`, `reason`. Never a password, a
//! token or a secret: the lines are built from what the request log holds.
//!
//! Lines go through a bounded queue to one writer task, so a slow disk
//! never holds a request; a full queue drops the line and says so in the
//! log (`audit lines dropped`). The file is opened for appending (`0600`),
//! so `logrotate` with `copytruncate` rotates it; `-` writes to stdout for
//! the host's log system.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

/// Lines queued for the writer before new ones are dropped.
const QUEUE: usize = 16_384;

pub struct Audit {
    lines: Option<mpsc::Sender<String>>,
    dropped: AtomicU64,
}

impl Audit {
    pub fn disabled() -> Self {
        Self {
            lines: None,
            dropped: AtomicU64::new(0),
        }
    }

    /// Opens `file` (`-`: stdout) and starts the writer. Call inside the
    /// runtime.
    pub async fn open(file: &std::path::Path) -> Result<Self, String> {
        let (tx, rx) = mpsc::channel(QUEUE);
        if file == std::path::Path::new("-") {
            tokio::spawn(write_lines(rx, tokio::io::stdout()));
        } else {
            let out = tokio::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(file)
                .await
                .map_err(|e| format!("audit.file {}: {e}", file.display()))?;
            tokio::spawn(write_lines(rx, out));
        }
        Ok(Self {
            lines: Some(tx),
            dropped: AtomicU64::new(0),
        })
    }

    pub fn enabled(&self) -> bool {
        self.lines.is_some()
    }

    /// Records one event. The line is written from borrowed fields in one
    /// pass (a token request writes one per request).
    pub fn record(&self, line: &Line<'_>) {
        let Some(lines) = &self.lines else { return };
        let stamped = Stamped {
            time: now(),
            request_id: crate::api::request_id::current(),
            line,
        };
        let Ok(mut text) = serde_json::to_string(&stamped) else {
            return;
        };
        text.push('\n');
        if lines.try_send(text).is_err() {
            let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if dropped.is_power_of_two() {
                tracing::warn!(
                    dropped,
                    "audit lines dropped: the audit file cannot keep up"
                );
            }
        }
    }
}

/// One line of the trail; `None` fields are left out.
#[derive(Debug, Default, Serialize)]
pub struct Line<'a> {
    pub event: &'a str,
    pub result: &'a str,
    pub status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub certificate: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub addr: Option<std::net::IpAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<&'a str>,
    pub route: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repository: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reference: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tag: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub digest: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub asked: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub granted: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refusals: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'a str>,
}

#[derive(Serialize)]
struct Stamped<'a> {
    time: String,
    /// The request's id, as in its log lines and answer (every line is
    /// written while its request is served).
    #[serde(skip_serializing_if = "Option::is_none")]
    request_id: Option<crate::api::request_id::RequestId>,
    #[serde(flatten)]
    line: &'a Line<'a>,
}

async fn write_lines(mut rx: mpsc::Receiver<String>, mut out: impl tokio::io::AsyncWrite + Unpin) {
    let mut batch = String::new();
    while let Some(line) = rx.recv().await {
        batch.push_str(&line);
        while batch.len() < 64 << 10 {
            match rx.try_recv() {
                Ok(line) => batch.push_str(&line),
                Err(_) => break,
            }
        }
        if let Err(e) = out.write_all(batch.as_bytes()).await {
            tracing::error!(error = %e, "audit trail: write failed");
        }
        let _ = out.flush().await;
        batch.clear();
    }
}

/// Now, as RFC 3339 in UTC (the notifications' timestamps too).
pub(crate) fn now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}
