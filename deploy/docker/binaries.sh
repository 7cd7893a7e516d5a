#!/usr/bin/env bash
# Makes the image that deploy/Dockerfile takes Reservoir's binaries from
# (its BINARIES_IMAGE), with no registry: the binaries are built by this
# machine's cargo, stripped of debug info, and put with the shared libraries
# they load (from `ldd`), a passwd entry for the `reservoir` user (uid 10001)
# and its data folder into a root filesystem that `docker import` turns into
# an image. Nothing is pulled.
#
# Usage: deploy/docker/binaries.sh [--profile release|debug] [--tag TAG] [--no-build]
#   --profile   cargo profile to build and take the binaries from [release]
#   --tag       the image's name [reservoir-binaries:local]
#   --no-build  take the binaries already in target/PROFILE/
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
profile=release
tag=reservoir-binaries:local
build=1
while [ $# -gt 0 ]; do
    case "$1" in
        --profile) profile=${2:?--profile needs release or debug}; shift 2 ;;
        --tag) tag=${2:?--tag needs a name}; shift 2 ;;
        --no-build) build=0; shift ;;
        -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
        *) echo "binaries.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
case "$profile" in
    release) cargo_profile=(--release) ;;
    debug) cargo_profile=() ;;
    *) echo "binaries.sh: --profile must be release or debug, got $profile" >&2; exit 2 ;;
esac
bins=(reservoir reservoir-loadtest)

if [ "$build" = 1 ]; then
    echo "== cargo build ${cargo_profile[*]} (reservoir, reservoir-loadtest)"
    (cd "$root" && cargo build "${cargo_profile[@]}" -p reservoir-node -p reservoir-loadtest --bins)
fi

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
fs=$stage/rootfs
mkdir -p "$fs/usr/local/bin" "$fs/etc" "$fs/tmp" "$fs/var/lib/reservoir" "$fs/etc/reservoir"
chmod 1777 "$fs/tmp"

for bin in "${bins[@]}"; do
    src=$root/target/$profile/$bin
    [ -x "$src" ] || { echo "binaries.sh: $src is missing (build it, or drop --no-build)" >&2; exit 1; }
    objcopy --strip-debug "$src" "$fs/usr/local/bin/$bin"
    # Every shared library it loads, and the loader, at the same paths.
    ldd "$src" | awk '/=> \//{print $3} /^\t\/[^ ]*ld-linux/{print $1}' | while read -r lib; do
        mkdir -p "$fs$(dirname "$lib")"
        cp -L "$lib" "$fs$lib"
    done
done
# glibc resolves names from /etc/hosts and DNS (both built into libc since
# 2.34); the container runtime supplies /etc/hosts and /etc/resolv.conf.
printf 'hosts: files dns\n' >"$fs/etc/nsswitch.conf"
printf 'root:x:0:0:root:/root:/sbin/nologin\nreservoir:x:10001:10001:reservoir:/var/lib/reservoir:/sbin/nologin\n' >"$fs/etc/passwd"
printf 'root:x:0:\nreservoir:x:10001:\n' >"$fs/etc/group"

# Root owns everything but the data folder, which the reservoir user owns.
tar --numeric-owner --owner=0 --group=0 -C "$fs" --exclude=./var/lib/reservoir -cf "$stage/rootfs.tar" .
tar --numeric-owner --owner=10001 --group=10001 -C "$fs" -rf "$stage/rootfs.tar" ./var/lib/reservoir
docker import --message "reservoir binaries ($profile, $(cd "$root" && git rev-parse --short HEAD 2>/dev/null || echo unknown))" \
    "$stage/rootfs.tar" "$tag" >/dev/null
echo "== $tag: $(docker image inspect --format '{{.Size}}' "$tag" | awk '{printf "%.0f MB", $1/1e6}')"
