#!/usr/bin/env bash
# Prepare a Debian sid root (Slurm 26.05 from Debian's archive) with pyslurm 25.11.2 built
# against it, for tools/pyslurm-sid/run-tests.sh. The root itself (debootstrap + the packages
# in tools/pyslurm-sid/packages) comes from tools/slurm-roots/build-root.sh, cached outside
# the repo ($NODECHECK_ROOTS_CACHE, default /var/cache/nodecheck/roots); this script adds the
# pyslurm build to it, with a stamp that is skipped the next time. Root only.
#
#   bash tools/pyslurm-sid/build.sh            # build what is missing
#   DEBIAN_MIRROR=http://host/debian bash ...  # mirror override (default: the host's apt one)
#
# Steps: root (build-root.sh) -> sdist (pip download on the host, sha256-pinned) -> pyslurm
# (cythonize + compile with slurm-compat.h force-included and setup.py's Slurm version check
# relaxed, then install the wheel into the root).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
LOG_TAG=pyslurm-sid
# shellcheck source=tools/slurm-roots/lib.sh
. "$HERE/../slurm-roots/lib.sh"

PYSLURM_VERSION=25.11.2
PYSLURM_SHA256=6e0e4bc639ea3177591b102b77c1dd8df55a9e411ac42ef339a4adb3908cca34
SDIST=pyslurm-$PYSLURM_VERSION.tar.gz
mapfile -t PACKAGES < <(read_package_list "$HERE/packages")
DIST=$(roots_cache)/pyslurm-dist

[ "$(id -u)" = 0 ] || die "needs root (debootstrap, chroot, mounts)"
TOTAL_T0=$(now)

# ---------------------------------------------------------------------------- 1. root
ROOT=$(bash "$HERE/../slurm-roots/build-root.sh" sid "${PACKAGES[@]}")
STAMPS=$ROOT/.nodecheck-stamps
LOGS=$ROOT.logs
mkdir -p "$LOGS"
# Exclusive: the build changes the root, and runs (in-root.sh) hold the lock shared.
exec 9>"$ROOT.lock"
flock 9
[ -z "$(root_mounts "$ROOT")" ] \
  || die "something is mounted under $ROOT: $(root_mounts "$ROOT" | tr '\n' ' ')"

# ---------------------------------------------------------------------------- 2. sdist
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

# ---------------------------------------------------------------------------- 3. pyslurm
t0=$(now)
build_key="$PYSLURM_SHA256 $(sha256sum "$HERE/slurm-compat.h" "$HERE/build.sh" | cut -c1-16 | tr '\n' ' ')"
if [ -f "$STAMPS/pyslurm" ] && [ "$(cat "$STAMPS/pyslurm")" = "$build_key" ]; then
  step_done pyslurm "$t0" "cached"
else
  rm -f "$STAMPS/pyslurm"
  rm -rf "$ROOT/opt/pyslurm-build"
  mkdir -p "$ROOT/opt/pyslurm-build"
  cp "$DIST/$SDIST" "$HERE/slurm-compat.h" "$ROOT/opt/pyslurm-build/"
  in_root "$ROOT" "
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
  " >"$LOGS/pyslurm-build.log" 2>&1 \
    || { tail -n 30 "$LOGS/pyslurm-build.log" >&2; die "pyslurm build failed (log: $LOGS/pyslurm-build.log)"; }
  echo "$build_key" >"$STAMPS/pyslurm"
  warnings=$(grep -c 'warning:' "$LOGS/pyslurm-build.log" || true)
  step_done pyslurm "$t0" "$(tail -n 1 "$LOGS/pyslurm-build.log"); $warnings compiler warnings"
fi

log "$(printf '%-12s %6s s  root %s (%s)' total "$(took "$TOTAL_T0")" "$ROOT" "$(du -sh --one-file-system "$ROOT" | cut -f1)")"
