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

mod common;

mod api_blobs;
mod api_list_pages;
mod api_lists;
mod api_manifests;
mod api_names;
mod api_referrers;
mod api_uploads;
mod auth_clients;
mod auth_token;
mod blob_downloads;
mod cli;
mod cli_keygen;
mod cli_policy;
mod cli_users;
mod clients;
mod connections;
mod crash;
mod interop_distribution;
mod login_security;
mod memory;
mod policy_globs;
mod secrets_not_logged;
mod shutdown;
mod storage_driver;
mod stress;
mod upload_full_disk;
mod upload_recovery;
