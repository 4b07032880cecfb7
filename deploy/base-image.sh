#!/usr/bin/env bash
# A local stand-in for docker.io/library/debian:bookworm-slim, for hosts that reach Debian's
# mirror but no container registry (CI): debootstrap --variant=minbase, imported into podman.
# Kept in podman's store and reused while it exists: ./base-image.sh prints its name.
#   IOT_BASE_IMAGE   the tag (default localhost/iotcloud-base:bookworm)
#   IOT_BASE_MIRROR  the Debian mirror (default http://deb.debian.org/debian)
#   --rebuild        build it again even if present
set -euo pipefail
tag=${IOT_BASE_IMAGE:-localhost/iotcloud-base:bookworm}
mirror=${IOT_BASE_MIRROR:-http://deb.debian.org/debian}
if [ "${1:-}" != "--rebuild" ] && podman image exists "$tag"; then
  echo "$tag"
  exit 0
fi
root=$(mktemp -d /var/tmp/iotcloud-base.XXXXXX)
trap 'rm -rf "$root"' EXIT
echo "base-image: debootstrap bookworm into $root" >&2
debootstrap --variant=minbase bookworm "$root" "$mirror" >"$root.log" 2>&1 || {
  tail -n 20 "$root.log" >&2
  echo "base-image: debootstrap failed (log above)" >&2
  exit 1
}
rm -f "$root.log"
# As the official slim image: its sources, no apt caches, no docs.
cat >"$root/etc/apt/sources.list" <<SOURCES
deb $mirror bookworm main
deb $mirror bookworm-updates main
deb http://deb.debian.org/debian-security bookworm-security main
SOURCES
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/usr/share/doc/* "$root"/usr/share/man/*
tar -C "$root" -c . | podman import --quiet --change 'CMD ["bash"]' - "$tag" >/dev/null
echo "$tag"
