#!/usr/bin/env bash
# Pushes and pulls 1 GiB blobs through the release binary and fails if the
# server's peak resident memory (VmHWM) reaches 100 MiB: blobs must stream.
#
# Only the server is a release build: the test (tests/memory.rs) drives HTTP
# from the debug test crate `cargo test` already built, and the peak it checks
# is the server process' own. Building the test crate and its dev-dependencies
# in release as well cost more than the rest of the suite's build.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

cargo build --release --bin portcullis
PORTCULLIS_MEMORY_BIN=target/release/portcullis \
    cargo test --test integration memory:: -- --ignored --nocapture
