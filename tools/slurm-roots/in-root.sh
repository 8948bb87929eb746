#!/usr/bin/env bash
# Run a command inside a root that build-root.sh made, isolated from the host:
#
#   bash tools/slurm-roots/in-root.sh ROOT COMMAND [ARG...]
#
# One `unshare --net --mount --pid --fork --kill-child`:
#   - network namespace with only loopback (127.0.0.1 + 127.0.0.2, see in-namespace.sh),
#   - mount namespace: proc/dev/sys/tmp and the repo (read-only at /src) are mounted there
#     only, so nothing is ever mounted in the host's namespace; with NODECHECK_ROOT_OUT=DIR,
#     DIR is mounted read-write at /out (to bring files back, e.g. captured Slurm output),
#     and with NODECHECK_ROOT_OVERLAY=1 the root is an overlay on a tmpfs, so whatever the
#     command installs or changes there is gone afterwards (the cached root stays clean),
#   - PID namespace: when its first process ends, the kernel kills whatever is left in it.
# The command runs chrooted with a clean environment (PATH, HOME, LANG, PYTHONPATH=/src and
# the NODECHECK_* variables of the caller). Teardown (in-namespace.sh's trap, on success,
# failure or signal): test clusters under /tmp stopped by their recorded PIDs
# (testcluster.py down), leftovers killed, mounts unmounted; the namespaces end with it.
# shellcheck disable=SC2317  # functions run from traps
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
LOG_TAG=slurm-roots
# shellcheck source=tools/slurm-roots/lib.sh
. "$HERE/lib.sh"

[ $# -ge 2 ] || die "usage: in-root.sh ROOT COMMAND [ARG...]"
ROOT=$(cd "$1" && pwd)
shift
[ "$(id -u)" = 0 ] || die "needs root (namespaces, chroot)"
[ -f "$ROOT/.nodecheck-stamps/packages" ] || die "$ROOT is not a finished root (build-root.sh)"
# A foreign-architecture root (NODECHECK_ROOT_ARCH at build time) runs under qemu-user.
[ ! -f "$ROOT/.nodecheck-stamps/arch" ] || ensure_foreign_arch "$(cat "$ROOT/.nodecheck-stamps/arch")"
command -v ip >/dev/null || die "needs iproute2's ip on the host"
if [ -n "${NODECHECK_ROOT_OUT:-}" ]; then
  mkdir -p "$NODECHECK_ROOT_OUT"
  NODECHECK_ROOT_OUT=$(cd "$NODECHECK_ROOT_OUT" && pwd)
  export NODECHECK_ROOT_OUT
fi

# Shared lock: several runs may use one root at once (each has its own namespaces and /tmp);
# a build step that changes the root (tools/pyslurm-sid/build.sh) takes it exclusively.
exec 9>"$ROOT.lock"
flock -s 9

t0=$(now)
rc=0
# unshare blocks SIGINT/SIGTERM while it waits for its child, so on a signal we pass SIGTERM to
# the namespace's PID 1 (in-namespace.sh), which stops the command and then tears down. Should
# unshare itself be killed, --kill-child SIGKILLs that PID 1 and the kernel the rest.
unshare --net --mount --pid --fork --kill-child -- \
  bash "$HERE/in-namespace.sh" "$ROOT" "$REPO" "$@" &
UNSHARE=$!
forward() {
  local pid1
  pid1=$(pgrep -P "$UNSHARE" 2>/dev/null | head -n 1) || true
  [ -n "$pid1" ] && kill -TERM "$pid1" 2>/dev/null
  log "signal: stopping the command and tearing down"
}
trap forward INT TERM
while :; do
  wait "$UNSHARE" && { rc=0; break; } || rc=$?
  kill -0 "$UNSHARE" 2>/dev/null || break # finished; otherwise a signal interrupted wait
done
trap - INT TERM

# The namespaces are gone with their last process; check nothing leaked into the host.
leaked=$(root_mounts "$ROOT")
if [ -n "$leaked" ]; then
  log "ERROR: mounts left under $ROOT: $leaked"
  rc=1
fi
log "$(basename "$ROOT"): $* took $(took "$t0") s (exit $rc)"
exit "$rc"
