#!/usr/bin/env bash
# Build (or reuse) a cached Debian root for one suite and package list; print its path.
#
#   bash tools/slurm-roots/build-root.sh SUITE PACKAGE...
#   bash tools/slurm-roots/build-root.sh trixie slurmctld slurmd slurm-client munge python3 python3-pytest
#
# The root is $NODECHECK_ROOTS_CACHE/SUITE-KEY (default cache /var/cache/nodecheck/roots,
# outside any work tree so fresh clones on this machine reuse it), KEY a hash of the suite and
# the sorted package list. Steps leave stamps inside the root and are skipped once done:
# debootstrap --variant=minbase, then apt-get install --no-install-recommends in the root.
# A finished root is never changed by this script again; a new package list is a new root.
# Environment: DEBIAN_MIRROR (default: the host's own apt mirror); NODECHECK_ROOT_ARCH (a
# foreign Debian architecture, e.g. arm64: debootstrap --arch, programs run by qemu-user
# through binfmt_misc; lib.sh ensure_foreign_arch). Root only.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
LOG_TAG=slurm-roots
# shellcheck source=tools/slurm-roots/lib.sh
. "$HERE/lib.sh"

[ $# -ge 2 ] || die "usage: build-root.sh SUITE PACKAGE..."
SUITE=$1
shift
PACKAGES=("$@")
case "$SUITE" in *[!a-z0-9-]* | "") die "odd suite name: $SUITE" ;; esac
for p in "${PACKAGES[@]}"; do
  case "$p" in *[!a-z0-9.+-]* | "") die "odd package name: $p" ;; esac
done
[ "$(id -u)" = 0 ] || die "needs root (debootstrap, chroot, mounts)"

ROOT=$(root_path "$SUITE" "${PACKAGES[@]}")
STAMPS=$ROOT/.nodecheck-stamps # inside the root: removing the root resets every stamp
CACHE=$(roots_cache)

# Fast path, no lock: a finished root is immutable.
if [ -f "$STAMPS/packages" ]; then
  log "$SUITE root cached: $ROOT ($(cat "$STAMPS/packages"))"
  printf '%s\n' "$ROOT"
  exit 0
fi

mkdir -p "$CACHE"
exec 9>"$ROOT.lock"
flock 9 # another build of the same root finishes first; then its stamps make ours a no-op
[ -z "$(root_mounts "$ROOT")" ] \
  || die "something is mounted under $ROOT: $(root_mounts "$ROOT" | tr '\n' ' ')"
TOTAL_T0=$(now)
ensure_foreign_arch "$(root_arch)"

# ---------------------------------------------------------------------------- debootstrap
t0=$(now)
if [ -f "$STAMPS/debootstrap" ]; then
  step_done debootstrap "$t0" "cached $ROOT"
else
  if ! command -v debootstrap >/dev/null; then
    log "installing debootstrap on the host"
    apt-get install -y -qq debootstrap >/dev/null 2>&1 \
      || { apt-get update -qq && apt-get install -y -qq debootstrap >/dev/null; }
  fi
  mirror=${DEBIAN_MIRROR:-${SID_MIRROR:-$(host_mirror)}}
  [ -n "$mirror" ] || die "no Debian mirror found in /etc/apt; set DEBIAN_MIRROR"
  [ -e "$ROOT" ] && { log "removing unfinished $ROOT"; rm -rf --one-file-system "$ROOT"; }
  mkdir -p "$ROOT"
  arch=$(root_arch)
  log "debootstrap --variant=minbase --arch=$arch $SUITE from $mirror"
  debootstrap --variant=minbase --arch="$arch" "$SUITE" "$ROOT" "$mirror" \
    >"$ROOT.debootstrap.log" 2>&1 \
    || { tail -n 20 "$ROOT.debootstrap.log" >&2; die "debootstrap failed (log: $ROOT.debootstrap.log)"; }
  mkdir -p "$STAMPS"
  echo "$mirror" >"$STAMPS/debootstrap"
  echo "$arch" >"$STAMPS/arch" # in-root.sh registers qemu-user again for a foreign one
  step_done debootstrap "$t0" "minbase $SUITE"
fi

# ---------------------------------------------------------------------------- packages
t0=$(now)
# Daemons must never start from maintainer scripts; the tests start their own.
printf '#!/bin/sh\nexit 101\n' >"$ROOT/usr/sbin/policy-rc.d"
chmod 755 "$ROOT/usr/sbin/policy-rc.d"
# The archive this machine reaches may be a dated snapshot whose Release file is past its
# Valid-Until; signatures are still checked.
cat >"$ROOT/etc/apt/apt.conf.d/99nodecheck" <<'CONF'
Acquire::Check-Valid-Until "false";
Acquire::Retries "3";
APT::Install-Recommends "false";
APT::Install-Suggests "false";
CONF
cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
in_root "$ROOT" "apt-get update -qq && apt-get install -y -qq ${PACKAGES[*]} && apt-get clean" \
  >"$ROOT.packages.log" 2>&1 \
  || { tail -n 20 "$ROOT.packages.log" >&2; die "apt-get in the root failed (log: $ROOT.packages.log)"; }
summary="$SUITE: ${PACKAGES[*]}"
if in_root "$ROOT" 'dpkg-query -W slurmctld' >/dev/null 2>&1; then
  summary="$summary (slurm $(in_root "$ROOT" 'dpkg-query -W -f "\${Version}" slurmctld'))"
fi
echo "$summary" >"$STAMPS/packages"
step_done packages "$t0" "$summary"

log "$(printf '%-12s %6s s  root %s (%s)' total "$(took "$TOTAL_T0")" "$ROOT" \
  "$(du -sh --one-file-system "$ROOT" | cut -f1)")"
printf '%s\n' "$ROOT"
