#!/usr/bin/env bash
# The benchmark harness: Portcullis (tokens on) beside distribution 2.8,
# nginx and the machine's own limits, in one run, printed as a table of
# ratios. Extra arguments go to the harness (e.g. --only blobs,small).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/install-test-deps.sh
# The `s3` section's store (built once per machine, then left alone).
scripts/install-garage.sh
cargo bench --bench registry -- "$@"
