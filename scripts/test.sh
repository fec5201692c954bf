#!/usr/bin/env bash
# The whole check, in the order a reviewer would run it; stops at the first
# failure. Used by CI (.ci/run) and locally.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '\n==> %s\n' "$*"; }

step "test dependencies"
scripts/install-test-deps.sh
scripts/install-legacy-v1.sh
scripts/install-garage.sh
scripts/install-oidc-provider.sh

step "cargo fmt --check"
cargo fmt --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets -- -D warnings

step "cargo test"
cargo test

step "memory check"
scripts/bench-memory.sh

step "all checks passed"
