#!/usr/bin/env bash
# Installs Garage, the S3-compatible object store the S3 tests and the
# benchmark run Portcullis against, into $PORTCULLIS_GARAGE_HOME (default
# /var/cache/portcullis/garage), which the machine keeps between runs.
# Idempotent: a working binary of the pinned version is left alone.
#
# Garage is built from crates.io (`cargo install`, its lock file), once per
# machine: 11 minutes on two cores (2026-12-03). Only what the tests use is
# built: the LMDB metadata engine (C, bundled), without metrics and K2V.
set -euo pipefail

HOME_DIR=${PORTCULLIS_GARAGE_HOME:-/var/cache/portcullis/garage}
VERSION=2.5.0
BIN=$HOME_DIR/bin/garage

works() {
    # It says `garage cargo:2.5.0 [features: …]` when built from crates.io.
    [[ -x $BIN ]] && "$BIN" --version 2>/dev/null | grep -qE "[v:]$VERSION( |$)"
}

if works; then
    echo "install-garage: garage $VERSION in $HOME_DIR"
    exit 0
fi

started=$SECONDS
partial=$HOME_DIR.partial
rm -rf "$partial"
mkdir -p "$partial"
# Its own target directory, removed afterwards: the build is large and
# nothing of it is reused.
CARGO_TARGET_DIR=$partial/target cargo install garage --version "=$VERSION" --locked \
    --root "$partial" --no-default-features --features bundled-libs,lmdb
rm -rf "$partial/target"
rm -rf "$HOME_DIR"
mv "$partial" "$HOME_DIR"
if ! works; then
    echo "install-garage: $BIN does not report version $VERSION" >&2
    exit 1
fi
echo "install-garage: garage $VERSION installed in $HOME_DIR ($((SECONDS - started)) s)"
