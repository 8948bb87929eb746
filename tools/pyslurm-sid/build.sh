#!/usr/bin/env bash
# Prepare a Debian sid root (Slurm 26.05 from Debian's archive) with pyslurm 25.11.2 built
# against it, for tools/pyslurm-sid/run-tests.sh. Cached under .cache/ (gitignored): every
# step leaves a stamp and is skipped the next time. Root only (debootstrap, chroot).
#
#   bash tools/pyslurm-sid/build.sh            # build what is missing
#   SID_MIRROR=http://host/debian bash ...     # mirror override (default: the host's apt one)
#   rm -rf .cache/sid-root                     # start over (the sdist cache is kept)
#
# Steps: sdist (pip download on the host, sha256-pinned) -> debootstrap --variant=minbase sid
# -> packages (apt-get in the root) -> pyslurm (cythonize + compile with slurm-compat.h
# force-included and setup.py's Slurm version check relaxed, then install the wheel).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
CACHE=${PYSLURM_SID_CACHE:-$REPO/.cache}
ROOT=${SID_ROOT:-$CACHE/sid-root}
DIST=$CACHE/pyslurm-dist
STAMPS=$ROOT/.nodecheck-stamps   # inside the root: removing the root resets every stamp

PYSLURM_VERSION=25.11.2
PYSLURM_SHA256=6e0e4bc639ea3177591b102b77c1dd8df55a9e411ac42ef339a4adb3908cca34
SDIST=pyslurm-$PYSLURM_VERSION.tar.gz
SUITE=sid
# Runtime: Slurm daemons + client, munge, python3 + pytest for the contract tests.
# Build: libslurm-dev, python3-dev, gcc, cython3, setuptools (+ packaging, which setup.py uses).
PACKAGES=(slurmctld slurmd slurm-client munge libslurm-dev python3 python3-dev python3-pytest
          gcc cython3 python3-setuptools python3-packaging)

log() { printf '[pyslurm-sid] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
now() { date +%s.%N; }
took() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

TOTAL_T0=$(now)
step_done() { # name, t0, how
  log "$(printf '%-12s %6s s  %s' "$1" "$(took "$2")" "$3")"
}

[ "$(id -u)" = 0 ] || die "needs root (debootstrap, chroot, mounts)"
case "$ROOT" in /*/*) ;; *) die "refusing odd root path: $ROOT" ;; esac

# Serialise concurrent builds of the same cache.
mkdir -p "$CACHE"
exec 9>"$CACHE/sid-root.lock"
flock 9

# Refuse to touch a root that still has something mounted inside (a run in progress, or a
# crashed one that left mounts in the host's namespace).
root_mounts() { awk -v r="$ROOT/" 'index($2 "/", r) == 1 { print $2 }' /proc/self/mounts; }
if [ -n "$(root_mounts)" ]; then
  die "something is mounted under $ROOT (another run?): $(root_mounts | tr '\n' ' ')"
fi

# Run a command inside the root, in a private mount namespace (mounts vanish with it).
in_root() { # script (bash), runs with proc/dev mounted and a clean environment
  unshare --mount --fork -- bash -euc '
    root=$1; shift
    mount -t proc proc "$root/proc"
    mount --rbind /dev "$root/dev"
    exec chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
      LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive bash -euc "$1"
  ' in_root "$ROOT" "$1"
}

# Debian mirror: the host's own apt source for its release (no host name is hard-coded).
host_mirror() {
  local codename
  codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
  {
    # deb822 (*.sources): URIs + Suites in the same stanza.
    for f in /etc/apt/sources.list.d/*.sources; do
      [ -f "$f" ] || continue
      awk -v cn="$codename" '
        /^[ \t]*$/ { if (uri != "" && suites ~ ("(^| )" cn "( |$)")) print uri; uri = ""; suites = "" }
        /^URIs:/ { uri = $2 }
        /^Suites:/ { $1 = ""; suites = $0 " " }
        END { if (uri != "" && suites ~ ("(^| )" cn "( |$)")) print uri }' "$f"
    done
    # one-line format (*.list)
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
      [ -f "$f" ] || continue
      awk -v cn="$codename" '$1 == "deb" {
          i = 2; if ($2 ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
          if ($(i + 1) == cn) print $i }' "$f"
    done
  } | grep -v -- '-security' | head -n 1
}

# ---------------------------------------------------------------------------- 1. sdist
t0=$(now)
sdist_ok() { [ -f "$DIST/$SDIST" ] && echo "$PYSLURM_SHA256  $DIST/$SDIST" | sha256sum -c --quiet - 2>/dev/null; }
if sdist_ok; then
  step_done sdist "$t0" "cached $DIST/$SDIST"
else
  mkdir -p "$DIST"
  req=$(mktemp)
  echo "pyslurm==$PYSLURM_VERSION --hash=sha256:$PYSLURM_SHA256" >"$req"
  # --no-binary pyslurm (not :all:): pip prepares metadata in an isolated env, and building
  # Cython and setuptools from source for that would take minutes.
  PIP=(python3 -m pip)
  "${PIP[@]}" download -q --no-deps --no-binary pyslurm --require-hashes -r "$req" -d "$DIST" \
    2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
  rm -f "$req"
  sdist_ok || die "pyslurm sdist missing or hash mismatch in $DIST"
  step_done sdist "$t0" "pip download pyslurm==$PYSLURM_VERSION (sha256 pinned)"
fi

# ---------------------------------------------------------------------------- 2. debootstrap
t0=$(now)
if [ -f "$STAMPS/debootstrap" ]; then
  step_done debootstrap "$t0" "cached $ROOT"
else
  if ! command -v debootstrap >/dev/null; then
    log "installing debootstrap on the host"
    apt-get install -y -qq debootstrap >/dev/null 2>&1 \
      || { apt-get update -qq && apt-get install -y -qq debootstrap >/dev/null; }
  fi
  mirror=${SID_MIRROR:-$(host_mirror)}
  [ -n "$mirror" ] || die "no Debian mirror found in /etc/apt; set SID_MIRROR"
  [ -e "$ROOT" ] && { log "removing unfinished $ROOT"; rm -rf --one-file-system "$ROOT"; }
  mkdir -p "$ROOT"
  log "debootstrap --variant=minbase $SUITE from $mirror"
  debootstrap --variant=minbase "$SUITE" "$ROOT" "$mirror" >"$CACHE/debootstrap.log" 2>&1 \
    || { tail -n 20 "$CACHE/debootstrap.log" >&2; die "debootstrap failed (log: $CACHE/debootstrap.log)"; }
  mkdir -p "$STAMPS"
  echo "$mirror" >"$STAMPS/debootstrap"
  step_done debootstrap "$t0" "minbase $SUITE"
fi

# ---------------------------------------------------------------------------- 3. packages
t0=$(now)
pkg_key="${PACKAGES[*]}"
if [ -f "$STAMPS/packages" ] && [ "$(cat "$STAMPS/packages")" = "$pkg_key" ]; then
  step_done packages "$t0" "cached"
else
  # Daemons must never start from maintainer scripts; the tests start their own.
  printf '#!/bin/sh\nexit 101\n' >"$ROOT/usr/sbin/policy-rc.d"
  chmod 755 "$ROOT/usr/sbin/policy-rc.d"
  # The archive this machine reaches may be a dated snapshot whose Release file is past its
  # Valid-Until; signatures are still checked.
  cat >"$ROOT/etc/apt/apt.conf.d/99nodecheck" <<'EOF'
Acquire::Check-Valid-Until "false";
Acquire::Retries "3";
APT::Install-Recommends "false";
APT::Install-Suggests "false";
EOF
  cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
  in_root "apt-get update -qq && apt-get install -y -qq ${PACKAGES[*]} && apt-get clean" \
    >"$CACHE/packages.log" 2>&1 \
    || { tail -n 20 "$CACHE/packages.log" >&2; die "apt-get in the root failed (log: $CACHE/packages.log)"; }
  echo "$pkg_key" >"$STAMPS/packages"
  step_done packages "$t0" "$(in_root 'dpkg-query -W -f "\${Version}" slurmctld') slurm + build deps"
fi

# ---------------------------------------------------------------------------- 4. pyslurm
t0=$(now)
build_key="$PYSLURM_SHA256 $(sha256sum "$HERE/slurm-compat.h" "$HERE/build.sh" | cut -c1-16 | tr '\n' ' ')"
if [ -f "$STAMPS/pyslurm" ] && [ "$(cat "$STAMPS/pyslurm")" = "$build_key" ]; then
  step_done pyslurm "$t0" "cached"
else
  rm -f "$STAMPS/pyslurm"
  rm -rf "$ROOT/opt/pyslurm-build"
  mkdir -p "$ROOT/opt/pyslurm-build"
  cp "$DIST/$SDIST" "$HERE/slurm-compat.h" "$ROOT/opt/pyslurm-build/"
  in_root "
    cd /opt/pyslurm-build
    tar xzf $SDIST
    cd pyslurm-$PYSLURM_VERSION
    # pyslurm's setup.py refuses any Slurm but its own major.minor (25.11): relax that one
    # check, and fail loudly if a new sdist changed the line.
    grep -q 'if Version(self.version) != Version(SLURM_VERSION):' setup.py
    sed -i 's/if Version(self.version) != Version(SLURM_VERSION):/if False:  # nodecheck: relaxed/' setup.py
    # The header goes in CPPFLAGS; CFLAGS replaces Python's default compile flags: -O0 keeps
    # the compile short (a test build), -Wall keeps it honest (no warnings expected).
    export CPPFLAGS='-include /opt/pyslurm-build/slurm-compat.h'
    export CFLAGS='-O0 -Wall'
    export SLURM_INCLUDE_DIR=/usr/include
    export SLURM_LIB_DIR=/usr/lib/\$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || gcc -dumpmachine)
    export PYSLURM_BUILD_JOBS=\$(nproc)
    python3 setup.py build_ext -j \$(nproc) bdist_wheel -d /opt/pyslurm-build/dist
    site=\$(python3 -c 'import sysconfig; print(sysconfig.get_path(\"platlib\"))')
    mkdir -p \"\$site\"
    rm -rf \"\$site\"/pyslurm \"\$site\"/pyslurm-*.dist-info
    python3 -m zipfile -e /opt/pyslurm-build/dist/pyslurm-$PYSLURM_VERSION-*.whl \"\$site\"
    cd / && rm -rf /opt/pyslurm-build/pyslurm-$PYSLURM_VERSION
    PYSLURM_DISABLE_AUTO_INIT=1 python3 -c 'import pyslurm; print(\"pyslurm\", pyslurm.__version__, \"built against Slurm %d.%02d.%d\" % pyslurm.slurm_api_version())'
  " >"$CACHE/pyslurm-build.log" 2>&1 \
    || { tail -n 30 "$CACHE/pyslurm-build.log" >&2; die "pyslurm build failed (log: $CACHE/pyslurm-build.log)"; }
  echo "$build_key" >"$STAMPS/pyslurm"
  warnings=$(grep -c 'warning:' "$CACHE/pyslurm-build.log" || true)
  step_done pyslurm "$t0" "$(tail -n 1 "$CACHE/pyslurm-build.log"); $warnings compiler warnings"
fi

log "$(printf '%-12s %6s s  root %s (%s)' total "$(took "$TOTAL_T0")" "$ROOT" "$(du -sh --one-file-system "$ROOT" | cut -f1)")"
