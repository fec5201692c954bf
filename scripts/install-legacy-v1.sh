#!/usr/bin/env bash
# Installs the real legacy v1 registry the v1 tests run behind Portcullis:
# docker-registry 0.9.1 (the last release of the Python v1 registry, from
# PyPI) under CPython 2.7, and a third-party v1 client (the npm package
# docker-registry-client), into $PORTCULLIS_LEGACY_V1_HOME
# (default /var/cache/portcullis/legacy-v1), which the machine keeps between
# runs. Idempotent: what is there and works is left alone.
#
# Facts it relies on (Debian 12, pyenv's CPython 2.7.18):
# - Debian ships no python2; pyenv's 2.7 is used, or any python2.7 on PATH.
# - A plain `pip install docker-registry==0.9.1` fails: its pin M2Crypto
#   0.22.3 cannot build against OpenSSL 3, and is only imported to load an
#   optional key, so a three-file stub stands in; its pin gevent 1.0.1 needs
#   SSLv3 in `gevent.ssl`, so gevent 1.2.2 (a wheel) is used.
# - virtualenv below 20.22 is the last that creates 2.7 environments.
# - backports.lzma, PyYAML, simplejson and SQLAlchemy build C extensions:
#   gcc and liblzma-dev are needed (install-test-deps.sh installs them).
set -euo pipefail

HOME_DIR=${PORTCULLIS_LEGACY_V1_HOME:-/var/cache/portcullis/legacy-v1}
PY=$HOME_DIR/py27/bin/python

registry_works() {
    [[ -x $PY ]] && DOCKER_REGISTRY_CONFIG=config_sample.yml SETTINGS_FLAVOR=dev \
        "$PY" -c 'import docker_registry.wsgi, gevent.ssl, flask' 2>/dev/null
}

install_registry() {
    py2=${PORTCULLIS_PYTHON2:-}
    if [[ -z $py2 ]]; then
        for candidate in "$(pyenv root 2>/dev/null || true)"/versions/2.7*/bin/python2.7 \
            /root/.pyenv/versions/2.7*/bin/python2.7 "$(command -v python2.7 || true)"; do
            if [[ -n $candidate && -x $candidate ]] && "$candidate" -c 'import sys' 2>/dev/null; then
                py2=$candidate
                break
            fi
        done
    fi
    if [[ -z $py2 ]]; then
        echo "install-legacy-v1: no CPython 2.7 found (set PORTCULLIS_PYTHON2); docker-registry 0.9.1 needs one" >&2
        exit 3
    fi

    # The C extensions' headers: Debian's -dev packages, as root.
    if [[ ! -e /usr/include/lzma.h ]]; then
        if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
            DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends liblzma-dev gcc
        else
            echo "install-legacy-v1: liblzma-dev is missing (apt-get install liblzma-dev, as root)" >&2
            exit 1
        fi
    fi

    started=$SECONDS
    rm -rf "$HOME_DIR.partial"
    mkdir -p "$HOME_DIR.partial"
    work=$HOME_DIR.partial
    python3 -m venv "$work/tools"
    "$work/tools/bin/pip" install -q --disable-pip-version-check 'virtualenv<20.22'
    # Built in place under its final name: a virtualenv's scripts name their
    # own path, so the environment cannot be moved after it is made.
    rm -rf "$HOME_DIR"
    mkdir -p "$HOME_DIR"
    "$work/tools/bin/virtualenv" -q -p "$py2" "$HOME_DIR/py27"

    stub=$work/m2crypto-stub
    mkdir -p "$stub/M2Crypto"
    printf "from setuptools import setup\nsetup(name='M2Crypto', version='0.22.3', packages=['M2Crypto'])\n" >"$stub/setup.py"
    : >"$stub/M2Crypto/__init__.py"
    printf "class RSAError(Exception):\n    pass\n\n\ndef load_pub_key_bio(bio):\n    raise RSAError('M2Crypto is a stub here')\n" >"$stub/M2Crypto/RSA.py"
    printf "class MemoryBuffer(object):\n    def __init__(self, data=None):\n        self.data = data\n" >"$stub/M2Crypto/BIO.py"

    pip=$HOME_DIR/py27/bin/pip
    # docker-registry 0.9.1's and docker-registry-core 2.0.3's own pins, less
    # M2Crypto (the stub) and setuptools; their dependencies at late-2014 releases.
    "$pip" install -q --disable-pip-version-check "$stub" \
        backports.lzma==0.0.3 blinker==1.3 Flask==0.10.1 gevent==1.2.2 greenlet==2.0.2 \
        gunicorn==19.1.1 PyYAML==3.11 requests==2.3.0 sqlalchemy==0.9.4 boto==2.34.0 \
        redis==2.10.3 simplejson==3.6.2 Werkzeug==0.9.6 Jinja2==2.7.3 itsdangerous==0.24 \
        MarkupSafe==0.23 2>&1 | grep -v DEPRECATION || true
    "$pip" install -q --disable-pip-version-check --no-deps docker-registry==0.9.1 \
        docker-registry-core==2.0.3 2>&1 | grep -v DEPRECATION || true
    rm -rf "$work"
    if ! registry_works; then
        echo "install-legacy-v1: the installed registry does not import" >&2
        exit 1
    fi
    echo "install-legacy-v1: docker-registry 0.9.1 installed in $HOME_DIR ($((SECONDS - started)) s)"
}

if registry_works; then
    echo "install-legacy-v1: docker-registry 0.9.1 present in $HOME_DIR"
else
    install_registry
fi

# The npm client (Node.js and npm are on the machine): pinned versions.
if [[ ! -d $HOME_DIR/node/node_modules/docker-registry-client ]]; then
    mkdir -p "$HOME_DIR/node"
    npm install --prefix "$HOME_DIR/node" --no-audit --no-fund --silent \
        docker-registry-client@3.4.0 bunyan@2.0.5
    echo "install-legacy-v1: docker-registry-client 3.4.0 installed in $HOME_DIR/node"
fi

