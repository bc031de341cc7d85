#!/usr/bin/env bash
# The Python base the image test builds the Dockerfile on (as PYTHON_IMAGE): these machines have no
# registry to pull python:3.11-slim from, so debootstrap makes a Debian bookworm root filesystem with
# Debian's own Python 3.11 and podman imports it into local storage. Made once per machine (~1 min);
# a present image is kept, so a warm machine spends no time here. Prints nothing on success but the
# image name, which tests/image reads. See ../shared/IMAGE-BUILD.md for the recipe this follows.
set -euo pipefail
IMAGE="${MAILGATE_IMAGE_BASE:-localhost/bookworm-python:3.11}"
if podman image exists "$IMAGE"; then
    echo "$IMAGE"
    exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
# The host's own Debian mirror (deb822 or one-line format), so a machine with a local mirror uses it.
MIRROR=$(grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2; exit}' || true)
[ -n "$MIRROR" ] || MIRROR=$(grep -hs '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list | awk '{print $2; exit}' || true)
[ -n "$MIRROR" ] || MIRROR=http://deb.debian.org/debian
rootfs=$(mktemp -d)
trap '$SUDO rm -rf "$rootfs"' EXIT
echo "building $IMAGE with debootstrap from $MIRROR" >&2
$SUDO debootstrap --variant=minbase --include=python3,python3-venv,python-is-python3,ca-certificates \
    bookworm "$rootfs" "$MIRROR" >/dev/null
$SUDO tar -C "$rootfs" -c . | podman import --quiet - "$IMAGE" >/dev/null
echo "$IMAGE"
