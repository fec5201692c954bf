//! `GET /healthz` (liveness) and `GET /readyz` (readiness), for load
//! balancers and orchestrators. Both answer without a token and to `HEAD`,
//! and stay out of the request trace: probes come every few seconds.
//!
//! The split is zot's (`/livez`, `/readyz`; its `/startupz` is `/readyz`
//! here, since Portcullis listens only once it has loaded everything) and
//! Kubernetes': a failed liveness probe restarts the process, a failed
//! readiness probe only takes it out of rotation, so liveness must not
//! depend on storage. distribution instead serves `/debug/health` on its
//! debug port, with periodic storage-driver checks behind thresholds.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::AppState;

/// Liveness: the process accepts and answers requests. Touches nothing.
pub fn live() -> Response {
    answer(StatusCode::OK, serde_json::json!({ "status": "ok" }))
}

/// How long the object store may take to answer a readiness probe's
/// request: probes come every few seconds and must answer in time.
const STORE_PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Readiness: requests can be served now. The storage root is still there
/// and writable (a `stat` and an `access`, no write per probe), or the S3
/// store answers a `HEAD` within [`STORE_PROBE_TIMEOUT`], and, with
/// authentication, the token authority (keys, users, policy) is loaded.
/// A 503 says what is wrong in a word or two, naming no path or secret.
pub async fn ready(state: &AppState) -> Response {
    let mut problems = Vec::new();
    if state.config.storage.s3.is_some() {
        // One small request to the store per probe: the bucket answers.
        if !state.storage.answers(STORE_PROBE_TIMEOUT).await {
            problems.push("storage: the store does not answer");
        }
    } else {
        let root = state.config.storage.root.clone();
        match tokio::task::spawn_blocking(move || storage_problem(&root)).await {
            Ok(None) => {}
            Ok(Some(problem)) => problems.push(problem),
            Err(_) => problems.push("storage: the check did not finish"),
        }
    }
    if state.config.auth.enabled && state.auth.is_none() {
        problems.push("auth: keys, users and policy are not loaded");
    }
    log_change(&problems);
    if problems.is_empty() {
        answer(StatusCode::OK, serde_json::json!({ "status": "ready" }))
    } else {
        answer(
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({ "status": "not ready", "problems": problems }),
        )
    }
}

/// What keeps the storage root from being used, if anything.
fn storage_problem(root: &Path) -> Option<&'static str> {
    match std::fs::metadata(root) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => return Some("storage: the root is not a directory"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Some("storage: the root is missing");
        }
        Err(_) => return Some("storage: the root cannot be read"),
    }
    if !writable(root) {
        return Some("storage: the root is not writable");
    }
    None
}

/// Whether this process may create entries in `dir` (`access(2)`, which
/// asks the kernel without writing anything).
fn writable(dir: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        let Ok(path) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
            return false;
        };
        // SAFETY: `path` is a valid NUL-terminated string that outlives the call.
        unsafe { libc::access(path.as_ptr(), libc::W_OK | libc::X_OK) == 0 }
    }
    #[cfg(not(unix))]
    {
        std::fs::metadata(dir).is_ok_and(|m| !m.permissions().readonly())
    }
}

/// Logs when readiness changes, not at every probe. One flag per process:
/// it only decides whether a line is written.
fn log_change(problems: &[&str]) {
    static READY: AtomicBool = AtomicBool::new(true);
    let ready = problems.is_empty();
    if READY.swap(ready, Ordering::Relaxed) != ready {
        if ready {
            tracing::info!("ready again");
        } else {
            tracing::warn!(problems = ?problems, "not ready");
        }
    }
}

fn answer(status: StatusCode, body: serde_json::Value) -> Response {
    let mut response = (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response();
    // A cached answer would say nothing about now.
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
