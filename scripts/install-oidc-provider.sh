#!/usr/bin/env bash
# Installs the OpenID provider the OIDC tests run: the npm package
# `oidc-provider` (an OpenID Certified implementation), at the version
# tests/oidc/package-lock.json pins, into tests/oidc/node_modules (not in
# git). Needs node and npm (scripts/install-test-deps.sh installs them).
# Idempotent: the pinned version already installed is left alone; `npm ci`
# takes a few seconds when it is not.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../tests/oidc"

wanted=$(node -p 'require("./package-lock.json").packages["node_modules/oidc-provider"].version')
have=$(node -p 'try { require("./node_modules/oidc-provider/package.json").version } catch { "" }')
if [[ $have == "$wanted" ]]; then
    echo "install-oidc-provider: oidc-provider $have in tests/oidc/node_modules"
    exit 0
fi

npm ci --no-audit --no-fund --loglevel=error
echo "install-oidc-provider: oidc-provider $wanted installed in tests/oidc/node_modules"
