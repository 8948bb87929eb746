#!/usr/bin/env bash
# `make deb`: the Debian package of this work tree, built by Debian's own tooling
# (dpkg-buildpackage, debhelper, dh-virtualenv; debian/). The tree (tracked and untracked
# files git does not ignore) is copied to build/deb/ first, so the build leaves the work tree
# alone; the .deb lands in dist/. Prints the .deb's path on stdout.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORK=$REPO/build/deb
OUT=$REPO/dist

log() { printf '[build-deb] %s\n' "$*" >&2; }

missing=""
for pkg in debhelper dh-virtualenv dpkg-dev python3-venv gcc libc6-dev; do
  [ "$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null)" = installed ] \
    || missing="$missing $pkg"
done
[ -z "$missing" ] || { log "ERROR: missing build packages:$missing (make install adds them)"; exit 1; }

rm -rf "$WORK"
mkdir -p "$WORK/src" "$OUT"
# Files that exist (a tracked file deleted in the work tree is left out).
(cd "$REPO" && git ls-files -z --cached --others --exclude-standard \
  | while IFS= read -r -d '' f; do [ -e "$f" ] || [ -L "$f" ] && printf '%s\0' "$f"; done \
  | tar --null -T - -cf -) | tar -xf - -C "$WORK/src"

t0=$(date +%s)
# -d: the build dependencies are checked above (dpkg-checkbuilddeps would also demand
# build-essential; the agent's client needs only gcc and libc6-dev of it).
(cd "$WORK/src" && dpkg-buildpackage -b -us -uc -d) >"$WORK/build.log" 2>&1 \
  || { tail -n 40 "$WORK/build.log" >&2; log "ERROR: dpkg-buildpackage failed (log: $WORK/build.log)"; exit 1; }
version=$(cd "$WORK/src" && dpkg-parsechangelog -S Version)
deb=$(ls "$WORK"/nodecheck_"$version"_*.deb)
cp "$deb" "$OUT/"
log "built $(basename "$deb") in $(($(date +%s) - t0)) s (log: $WORK/build.log)"
printf '%s\n' "$OUT/$(basename "$deb")"
