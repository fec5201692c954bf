#!/usr/bin/env bash
# Installs the external programs the integration tests drive: real registry
# clients (skopeo, podman), a reference registry (docker-registry), an LDAP
# server and its tools (slapd, ldap-utils), a reverse proxy (nginx-light), a
# load generator (wrk), what rootless podman needs (uidmap, fuse-overlayfs) and
# a Docker engine (docker.io: dockerd and the docker CLI; it depends on
# containerd, runc and iptables, which apt pulls in), Node with npm for
# the OpenID provider of the OIDC tests (scripts/install-oidc-provider.sh),
# a headless browser (chromium with chromium-driver) for the sign-in
# page test, and for the packaging test an image builder that needs no
# daemon (buildah) and systemd-analyze (systemd) to check the unit.
#
# Idempotent: when every program is present it does nothing. When something is
# missing it installs it with apt-get if run as root, and otherwise lists what
# is missing and fails, so a test run never silently skips a client.
#
# Only packages are installed; no system service is started or configured for
# use (the tests start their own slapd, registry and nginx on ephemeral ports).
set -euo pipefail

# package:program pairs; a package counts as present when its program is found.
REQUIRED=(
    curl:curl
    openssl:openssl
    skopeo:skopeo
    podman:podman
    buildah:buildah
    docker-registry:docker-registry
    slapd:slapd
    ldap-utils:ldapsearch
    nginx-light:nginx
    wrk:wrk
    uidmap:newuidmap
    fuse-overlayfs:fuse-overlayfs
    docker.io:dockerd
    containerd:containerd
    runc:runc
    nodejs:node
    npm:npm
    chromium:chromium
    chromium-driver:chromedriver
    systemd:systemd-analyze
)

# Daemons live in sbin, which is often not on a non-root user's PATH.
have() {
    command -v "$1" >/dev/null 2>&1 && return 0
    local dir
    for dir in /usr/sbin /sbin /usr/local/sbin; do
        [[ -x "$dir/$1" ]] && return 0
    done
    return 1
}

missing_packages=()
missing_programs=()
for pair in "${REQUIRED[@]}"; do
    package=${pair%%:*}
    program=${pair#*:}
    if ! have "$program"; then
        missing_packages+=("$package")
        missing_programs+=("$program")
    fi
done

if [[ ${#missing_packages[@]} -eq 0 ]]; then
    echo "install-test-deps: all test dependencies present"
    exit 0
fi

echo "install-test-deps: missing programs: ${missing_programs[*]}"
echo "install-test-deps: from packages: ${missing_packages[*]}"

if [[ $(id -u) -ne 0 ]]; then
    echo "install-test-deps: not root; install them with:" >&2
    echo "  sudo $0" >&2
    echo "or: sudo apt-get install --no-install-recommends ${missing_packages[*]}" >&2
    exit 1
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-test-deps: apt-get not found; install the packages above with your package manager" >&2
    exit 1
fi

# Keep package scripts from starting daemons (nginx, slapd, docker-registry,
# dockerd, containerd):
# invoke-rc.d and deb-systemd-invoke consult policy-rc.d, and exit code 101
# means "action forbidden". An existing policy is left untouched.
policy=/usr/sbin/policy-rc.d
if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\n# Temporary: written by install-test-deps.sh\nexit 101\n' >"$policy"
    chmod +x "$policy"
    trap 'rm -f "$policy"' EXIT
fi

export DEBIAN_FRONTEND=noninteractive

# slapd's postinst would otherwise build a database for a domain guessed from
# the host name and ask for an admin password; the tests run their own slapd
# with their own configuration, so skip that step entirely.
if command -v debconf-set-selections >/dev/null 2>&1; then
    echo 'slapd slapd/no_configuration boolean true' | debconf-set-selections
fi

apt-get update
apt-get install -y --no-install-recommends "${missing_packages[@]}"

# Check again: a package name that exists but no longer ships the program
# should fail here, not in the middle of the test suite.
still_missing=()
for pair in "${REQUIRED[@]}"; do
    program=${pair#*:}
    have "$program" || still_missing+=("$program")
done
if [[ ${#still_missing[@]} -ne 0 ]]; then
    echo "install-test-deps: still missing after install: ${still_missing[*]}" >&2
    exit 1
fi
echo "install-test-deps: installed ${missing_packages[*]}"
