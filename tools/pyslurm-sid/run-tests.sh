#!/usr/bin/env bash
# Run the Slurm backend contract tests (tests/contract) against a live 2-node Slurm 26.05
# inside the Debian sid root that build.sh prepared: once through pyslurm, once through
# scontrol (pytest ids [pyslurm-slurm26.05] and [scontrol-slurm26.05]).
#
# Isolation: one `unshare --net --mount --pid --fork --kill-child`:
#   - network namespace with only loopback (127.0.0.1 + 127.0.0.2, see in-namespace.sh),
#   - mount namespace: proc/dev/sys/tmp and the repo (read-only at /src) are mounted there
#     only, so nothing is ever mounted in the host's namespace,
#   - PID namespace: when its first process ends, the kernel kills whatever is left in it.
# Teardown (in-namespace.sh's trap, on success, failure or signal): daemons stopped by their
# recorded PIDs (testcluster.py down), mounts unmounted, then the namespaces end with it.
# Extra arguments go to pytest (e.g. -k drain, -x).
# shellcheck disable=SC2317  # functions run from traps
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
CACHE=${PYSLURM_SID_CACHE:-$REPO/.cache}
ROOT=${SID_ROOT:-$CACHE/sid-root}

log() { printf '[pyslurm-sid] %s\n' "$*" >&2; }

[ "$(id -u)" = 0 ] || { log "ERROR: needs root (namespaces, chroot)"; exit 1; }
[ -f "$ROOT/.nodecheck-stamps/pyslurm" ] || {
  log "ERROR: $ROOT is not built: run tools/pyslurm-sid/build.sh first"
  exit 1
}
command -v ip >/dev/null || { log "ERROR: needs iproute2's ip on the host"; exit 1; }

# Hold the build lock: build.sh must not rebuild the root under a running test.
exec 9>"$CACHE/sid-root.lock"
flock 9

t0=$(date +%s.%N)
rc=0
# unshare blocks SIGINT/SIGTERM while it waits for its child, so on a signal we pass SIGTERM to
# the namespace's PID 1 (in-namespace.sh), which stops pytest and then tears down. Should
# unshare itself be killed, --kill-child SIGKILLs that PID 1 and the kernel the rest.
unshare --net --mount --pid --fork --kill-child -- \
  bash "$HERE/in-namespace.sh" "$ROOT" "$REPO" "$@" &
UNSHARE=$!
forward() {
  local pid1
  pid1=$(pgrep -P "$UNSHARE" 2>/dev/null | head -n 1) || true
  [ -n "$pid1" ] && kill -TERM "$pid1" 2>/dev/null
  log "signal: stopping the tests and tearing down"
}
trap forward INT TERM
while :; do
  wait "$UNSHARE" && { rc=0; break; } || rc=$?
  kill -0 "$UNSHARE" 2>/dev/null || break # finished; otherwise a signal interrupted wait
done
trap - INT TERM

# The namespaces are gone with their last process; check nothing leaked into the host.
leaked=$(awk -v r="$ROOT/" 'index($2 "/", r) == 1 { print $2 }' /proc/self/mounts)
if [ -n "$leaked" ]; then
  log "ERROR: mounts left under $ROOT: $leaked"
  rc=1
fi
log "$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "tests %.1f s", b - a }') (exit $rc)"
exit "$rc"
