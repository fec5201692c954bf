#!/usr/bin/env bash
# Builds a container image of Portcullis with buildah, without a daemon:
# FROM scratch, holding only the binary and, when it is dynamically linked,
# exactly the shared libraries `ldd` names and the ELF interpreter.
#
#   packaging/build-image.sh BINARY [IMAGE]
#
# BINARY: the portcullis to ship (a static musl build needs nothing beside
# it; see README "Packaging"). IMAGE: the name to commit to (default
# localhost/portcullis:VERSION). Prints the image id.
#
# The image runs as uid/gid 65532 (no name needed; a one-line /etc/passwd
# gives it one for tools that ask) in /var/lib/portcullis, a volume, where
# the default configuration keeps everything relative: data/, certs/,
# users.toml, policies/ (the embedded default policy while it is absent).
# Entrypoint `portcullis`, default command `serve` on 0.0.0.0:5000.
#
# buildah's storage is the usual one; CONTAINERS_STORAGE_CONF (or buildah's
# own environment) chooses another, as the tests do.
set -euo pipefail

if [[ $# -lt 1 || $# -gt 2 ]]; then
    echo "usage: $0 BINARY [IMAGE]" >&2
    exit 2
fi
binary=$1
if [[ ! -x $binary ]]; then
    echo "$0: $binary is not an executable file" >&2
    exit 2
fi
# The version the binary itself reports: the label and the default tag.
version=$("$binary" --version | awk '{print $2}')
if [[ -z $version ]]; then
    echo "$0: $binary --version said nothing" >&2
    exit 1
fi
image=${2:-localhost/portcullis:$version}
uid=65532
home=/var/lib/portcullis

stage=$(mktemp -d)
container=
cleanup() {
    rm -rf "$stage"
    if [[ -n $container ]]; then
        buildah rm "$container" >/dev/null 2>&1 || true
    fi
}
trap cleanup EXIT

# The root file system, staged: the binary, what the loader needs, a user.
install -D -m 0755 "$binary" "$stage/usr/local/bin/portcullis"
# `ldd` lists `name => /path (addr)` for each library and `/path (addr)` for
# the interpreter; a static binary makes it fail ("not a dynamic
# executable"), and then nothing else is needed. Each file is copied under
# the path the loader looks for, with the content of what that path links to.
if libraries=$(ldd "$binary" 2>/dev/null); then
    while read -r path; do
        install -D -m 0755 "$(readlink -f "$path")" "$stage$path"
    done < <(awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' <<<"$libraries" | sort -u)
fi
mkdir -p "$stage/etc" "$stage$home"
echo "portcullis:x:$uid:$uid:Portcullis:$home:/nonexistent" >"$stage/etc/passwd"
echo "portcullis:x:$uid:" >"$stage/etc/group"
# The system's roots, for upstream registries and OpenID issuers over https
# (rustls-native-certs reads this file).
if [[ -f /etc/ssl/certs/ca-certificates.crt ]]; then
    install -D -m 0644 /etc/ssl/certs/ca-certificates.crt "$stage/etc/ssl/certs/ca-certificates.crt"
fi

container=$(buildah from scratch)
buildah copy --quiet "$container" "$stage/usr" /usr >/dev/null
buildah copy --quiet "$container" "$stage/etc" /etc >/dev/null
for dir in lib lib64; do
    if [[ -d $stage/$dir ]]; then
        buildah copy --quiet "$container" "$stage/$dir" "/$dir" >/dev/null
    fi
done
buildah copy --quiet --chown "$uid:$uid" "$container" "$stage$home" "$home" >/dev/null
buildah config \
    --user "$uid:$uid" \
    --workingdir "$home" \
    --env PATH=/usr/local/bin \
    --volume "$home" \
    --port 5000/tcp \
    --entrypoint '["/usr/local/bin/portcullis"]' \
    --cmd '["serve", "--listen", "0.0.0.0:5000"]' \
    --label org.opencontainers.image.title=portcullis \
    --label "org.opencontainers.image.description=Registry front door: token server, policies, v1/v2 routing and a built-in OCI v2 storage server" \
    --label "org.opencontainers.image.version=$version" \
    --label org.opencontainers.image.licenses=Apache-2.0 \
    --label "org.opencontainers.image.created=$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
    "$container"
buildah commit --quiet --rm "$container" "$image"
container=
