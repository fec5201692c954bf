//! The integration tests, one crate: each `tests/<name>.rs` is a module here
//! (`autotests = false` in Cargo.toml), so the suite is linked once and
//! `tests/common` is compiled once. A new test file starts with
//! `use crate::common;` (if it uses the harness) and gets its `mod` line
//! below; run one file's tests with `cargo test --test integration <name>::`.
//!
//! Everything here shares one process: a test must not change process-wide
//! state (environment variables, rlimits, signal handlers, a global tracing
//! subscriber, the current directory); what needs its own process starts the
//! real binary (`common::process`).

/// The servers `common::TestServer` starts keep their storage on the
/// filesystem here; `tests/s3_api.rs` runs the registry API tests again
/// with it on S3.
pub const STORAGE_ON_S3: bool = false;

mod common;

mod access_tokens;
mod api_blobs;
mod api_list_pages;
mod api_lists;
mod api_manifests;
mod api_names;
mod api_referrers;
mod api_schema1;
mod api_uploads;
mod audit;
mod auth_clients;
mod auth_token;
mod blob_downloads;
mod browser;
mod cli;
mod cli_check;
mod cli_keygen;
mod cli_policy;
mod cli_users;
mod client_certs;
mod clients;
mod connections;
mod crash;
mod docker;
mod garage;
mod gc;
mod health;
mod identity_token;
mod interop_distribution;
mod ldap;
mod legacy_v1;
mod login_security;
mod logs;
mod memory;
mod metadata_cache;
mod metrics;
mod migrate;
mod notifications;
mod oidc;
mod packaging;
mod policy_globs;
mod reload;
mod request_id;
mod s3;
mod secrets_not_logged;
mod shutdown;
mod sign_in;
mod slapd;
mod storage_driver;
mod stress;
mod tls;
mod upload_full_disk;
mod upload_recovery;
mod upstream;
mod v1_engines;
mod v1_proxy;
mod v1_routing;

/// With `autotests = false`, a `tests/<name>.rs` without its `mod` line above
/// would never be compiled or run, silently: every file must be declared.
#[test]
fn every_test_file_is_a_module_of_this_crate() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    let main = std::fs::read_to_string(dir.join("main.rs")).expect("read tests/main.rs");
    let declared: Vec<&str> = main
        .lines()
        .filter_map(|line| line.strip_prefix("mod ")?.strip_suffix(';'))
        .collect();
    let mut missing = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("read tests/") {
        let path = entry.expect("entry").path();
        let Some(name) = path.file_stem().and_then(|n| n.to_str()) else {
            continue;
        };
        // The crate roots: this one, and the one running the API tests on S3.
        if path.extension().is_some_and(|e| e == "rs")
            && !["main", "s3_api"].contains(&name)
            && !declared.contains(&name)
        {
            missing.push(name.to_owned());
        }
    }
    assert!(
        missing.is_empty(),
        "add `mod <name>;` to tests/main.rs for {missing:?}"
    );
}
