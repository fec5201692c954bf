//! The registry API tests again, with every server's storage on S3: each
//! `common::TestServer` gets a single-node Garage of its own (kept across a
//! restart over the same data directory). A second test crate, so that the
//! same files run unchanged; run it with `cargo test --test integration-s3`.
//! The few tests that look at the data directory's files skip themselves
//! here; `blob_downloads` (`sendfile` from those files) is not run.

/// See `tests/main.rs`.
pub const STORAGE_ON_S3: bool = true;

#[path = "common/mod.rs"]
mod common;

#[path = "api_blobs.rs"]
mod api_blobs;
#[path = "api_list_pages.rs"]
mod api_list_pages;
#[path = "api_lists.rs"]
mod api_lists;
#[path = "api_manifests.rs"]
mod api_manifests;
#[path = "api_names.rs"]
mod api_names;
#[path = "api_referrers.rs"]
mod api_referrers;
#[path = "api_schema1.rs"]
mod api_schema1;
#[path = "api_uploads.rs"]
mod api_uploads;
