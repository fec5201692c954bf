#!/usr/bin/env bash
# Pushes and pulls 1 GiB blobs through the release binary and fails if the
# server's peak resident memory (VmHWM) reaches 100 MiB: blobs must stream.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

cargo test --release --test memory -- --ignored --nocapture
