#!/usr/bin/env bash
# The local base image for building keyhop's Dockerfile where no registry image can be
# pulled: Debian bookworm with python3, python3-venv and python3-pip, assembled from
# Debian's own packages with debootstrap and loaded with `podman import`.
#
# Prints the image's name on stdout (everything else goes to stderr). Cached twice, so the
# slow debootstrap runs once per machine: podman's image store, and a tarball under
# $KEYHOP_DOCKER_CACHE (default ~/.cache/keyhop/docker: outside the work tree, so every clone
# and worktree on the machine shares it, and it is never in git or in a build context). The
# name and the tarball carry a hash of the recipe, so changing the recipe builds a new base.
set -euo pipefail
cd "$(dirname "$0")/.."

SUITE=bookworm
PACKAGES=python3,python3-venv,python3-pip
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
CACHE=${KEYHOP_DOCKER_CACHE:-${XDG_CACHE_HOME:-${HOME:-/root}/.cache}/keyhop/docker}
recipe="$SUITE minbase $PACKAGES v1"
IMAGE="localhost/keyhop-base:$SUITE-$(printf '%s' "$recipe" | sha256sum | cut -c1-12)"
TARBALL="$CACHE/${IMAGE##*:}.tar"

say() { echo "docker/base.sh: $*" >&2; }

if podman image exists "$IMAGE"; then
  echo "$IMAGE"
  exit 0
fi

mkdir -p "$CACHE"

if [ ! -f "$TARBALL" ]; then
  command -v debootstrap >/dev/null || { say "debootstrap is missing (make podman installs it)"; exit 1; }
  root=$(mktemp -d "$CACHE/rootfs.XXXXXX")
  trap 'rm -rf "$root" "$TARBALL.$$.part"' EXIT
  say "assembling $SUITE with $PACKAGES from $MIRROR (once per machine, about a minute; log: $CACHE/debootstrap.log)"
  debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$root" "$MIRROR" \
    >"$CACHE/debootstrap.log" 2>&1 || { tail -n 30 "$CACHE/debootstrap.log" >&2; exit 1; }
  # what an image does not need: the package lists and downloaded .debs
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/archives/*.deb
  tar --numeric-owner -C "$root" -cf "$TARBALL.$$.part" .
  mv "$TARBALL.$$.part" "$TARBALL"
fi

say "importing $TARBALL as $IMAGE"
podman import --change 'CMD ["/bin/bash"]' "$TARBALL" "$IMAGE" >&2
echo "$IMAGE"
