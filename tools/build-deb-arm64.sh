#!/usr/bin/env bash
# `make deb-arm64`: the Debian package for arm64 (Grace nodes: GB200/GB300 NVL72, GH200), built
# by the same debian/ as `make deb`, natively inside an arm64 Debian root whose programs run
# under qemu-user (binfmt_misc): dh-virtualenv makes the venv with the root's own arm64
# python3 and pip takes arm64 wheels, gcc builds the agent's client for arm64. No cross
# toolchain is involved. Prints the .deb's path on stdout (dist/nodecheck_VERSION_arm64.deb).
#
# The root (bookworm + the build dependencies) is cached like the test roots
# (tools/slurm-roots/build-root.sh with NODECHECK_ROOT_ARCH=arm64); the build itself runs in
# a private mount namespace on a copy of the tree under build/deb-arm64, so neither the work
# tree nor the cached root is changed. It needs the network the host has (pip reaches PyPI
# as on the host: its CA bundle is bound into the root). Root only. Durations: docs/packaging.md.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ARCH=${NODECHECK_DEB_ARCH:-arm64}
SUITE=${DEB_ROOT_SUITE:-bookworm}
WORK=$REPO/build/deb-$ARCH
OUT=$REPO/dist
LOG_TAG=build-deb-$ARCH
# shellcheck source=tools/slurm-roots/lib.sh
. "$REPO/tools/slurm-roots/lib.sh"
[ "$(id -u)" = 0 ] || die "needs root (debootstrap, chroot, mounts)"

t0=$(now)
root=$(NODECHECK_ROOT_ARCH=$ARCH bash "$REPO/tools/slurm-roots/build-root.sh" "$SUITE" \
  debhelper dh-virtualenv dpkg-dev python3-venv gcc libc6-dev ca-certificates)
step_done root "$t0" "$root"

rm -rf "$WORK"
mkdir -p "$WORK/src" "$OUT"
(cd "$REPO" && git ls-files -z --cached --others --exclude-standard \
  | while IFS= read -r -d '' f; do [ -e "$f" ] || [ -L "$f" ] && printf '%s\0' "$f"; done \
  | tar --null -T - -cf -) | tar -xf - -C "$WORK/src"

t0=$(now)
# The same dpkg-buildpackage call as tools/build-deb.sh, chrooted into the arm64 root with
# the copy bound at /build; proc, dev, the host's CA bundle and resolv.conf only in this
# namespace. -d: the build dependencies are the root's package list above.
unshare --mount --fork -- bash -euc '
  root=$1 work=$2
  mount -t proc proc "$root/proc"
  mount --rbind /dev "$root/dev"
  mkdir -p "$root/build"
  mount --bind "$work" "$root/build"
  mount --bind /etc/ssl/certs "$root/etc/ssl/certs"
  mount --bind /etc/resolv.conf "$root/etc/resolv.conf"
  exec chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
    LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    PIP_DEFAULT_TIMEOUT=180 \
    bash -euc "cd /build/src && dpkg-buildpackage -b -us -uc -d"
' build "$root" "$WORK" >"$WORK/build.log" 2>&1 \
  || { tail -n 40 "$WORK/build.log" >&2; die "dpkg-buildpackage failed (log: $WORK/build.log)"; }
version=$(cd "$WORK/src" && dpkg-parsechangelog -S Version)
deb=$(ls "$WORK"/nodecheck_"$version"_"$ARCH".deb)
cp "$deb" "$OUT/"
step_done build "$t0" "$(basename "$deb") (log: $WORK/build.log)"
printf '%s\n' "$OUT/$(basename "$deb")"
