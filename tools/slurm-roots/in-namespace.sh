#!/usr/bin/env bash
# PID 1 of in-root.sh's private net+mount+pid namespace: mount the root, run the command
# chrooted, tear down. Usage (from in-root.sh only): in-namespace.sh ROOT REPO COMMAND [ARG...]
# shellcheck disable=SC2317  # functions run from traps
set -euo pipefail

ROOT=$1
REPO=$2
shift 2
MOUNTS=() # what we mounted, to unmount in reverse order
LOG_TAG=slurm-roots
# shellcheck source=tools/slurm-roots/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# The caller's NODECHECK_* settings pass through; nothing else of its environment does.
mapfile -t PASS_ENV < <(env | grep -E '^NODECHECK_[A-Z0-9_]+=' \
  | grep -Ev '^NODECHECK_ROOT_(OUT|OVERLAY)=' || true)
CHROOT_ENV=(chroot "$ROOT" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
            LANG=C.UTF-8 PYTHONPATH=/src PYTHONDONTWRITEBYTECODE=1 "${PASS_ENV[@]}")
in_chroot() { "${CHROOT_ENV[@]}" "$@"; }

leftovers() { # PIDs in this namespace other than ours and our own subshells
  [ -d "$ROOT/proc/self" ] || return 0
  local d pid
  for d in "$ROOT"/proc/[0-9]*; do
    pid=${d##*/}
    [ "$pid" = 1 ] && continue
    # our own $(...) subshells are children of PID 1 running this very script
    [ "$(cat "$d/comm" 2>/dev/null)" = bash ] && grep -q in-namespace "$d/cmdline" 2>/dev/null \
      && continue
    # zombies hold no mounts; they go with the namespace
    [ "$(awk '{ print $3 }' "$d/stat" 2>/dev/null)" = Z ] && continue
    [ -e "$d" ] && printf '%s:%s ' "$pid" "$(cat "$d/comm" 2>/dev/null)"
  done
}

cleanup() {
  local rc=$? i p state
  trap - EXIT INT TERM
  set +e
  for state in "$ROOT"/tmp/*/cluster.json; do
    [ -f "$state" ] || continue
    state=${state%/cluster.json}
    if [ "$rc" != 0 ] && [ -d "$state/log" ]; then
      for f in "$state"/log/*; do
        [ -s "$f" ] && { echo "--- ${f#"$ROOT"} (last 15 lines)"; tail -n 15 "$f"; }
      done >&2
    fi
    # Daemons: by the PIDs testcluster recorded when it started them (a no-op when the
    # command already stopped them).
    in_chroot python3 /src/tools/testcluster.py down --state-dir "${state#"$ROOT"}" >&2
  done
  # Anything else still alive in this PID namespace (a daemon's helper that outlived it) was
  # started by this run: give it a moment, then SIGKILL it by PID, before unmounting.
  for i in 1 2 3 4 5 6 7 8 9 10 0; do
    others=$(leftovers)
    [ -z "$others" ] && break
    if [ "$i" = 0 ]; then
      log "killing leftover processes: $others"
      for p in $others; do kill -KILL "${p%%:*}" 2>/dev/null; done
      sleep 0.2
    else
      sleep 0.2
    fi
  done
  for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do
    umount -R "${MOUNTS[$i]}" || umount -R -l "${MOUNTS[$i]}" || rc=1
  done
  [ -n "${SCRATCH:-}" ] && rmdir "$SCRATCH"
  exit "$rc"
}
CHILD=
on_signal() { # in-root.sh forwards SIGINT/SIGTERM as SIGTERM to us (PID 1 here)
  trap - INT TERM
  [ -n "$CHILD" ] && kill -TERM "$CHILD" 2>/dev/null && wait "$CHILD" 2>/dev/null
  exit 143
}
trap cleanup EXIT
trap on_signal INT TERM

mnt() { # mount args... target (last argument)
  mount "$@"
  MOUNTS+=("${!#}")
}

# Only loopback here. Slurm resolves its listen address with getaddrinfo(AI_ADDRCONFIG),
# which does not count 127.0.0.1: a second address on lo makes it work.
ip link set lo up
ip addr add 127.0.0.2/8 dev lo

# NODECHECK_ROOT_OVERLAY=1: the command changes a throw-away copy. The cached root is the
# read-only lower layer of an overlay whose upper layer is a tmpfs; installing packages (the
# .deb test, tests/packaging) then starts from the clean root every time and leaves it as it
# was. The overlay lives in this mount namespace only.
if [ "${NODECHECK_ROOT_OVERLAY:-}" = 1 ]; then
  SCRATCH=$(mktemp -d /tmp/nodecheck-root-overlay.XXXXXX)
  mnt -t tmpfs -o mode=0755 tmpfs "$SCRATCH"
  mkdir -p "$SCRATCH/upper" "$SCRATCH/work" "$SCRATCH/merged"
  mnt -t overlay overlay \
    -o "lowerdir=$ROOT,upperdir=$SCRATCH/upper,workdir=$SCRATCH/work" "$SCRATCH/merged"
  ROOT=$SCRATCH/merged
  CHROOT_ENV[1]=$ROOT
fi

mnt -t proc proc "$ROOT/proc"          # this PID namespace's processes only
mnt --rbind /dev "$ROOT/dev"
mnt -t sysfs sysfs "$ROOT/sys"          # no cgroup fs under it: testcluster then writes
                                        # CgroupPlugin=disabled for slurmd >= 23.11
# Slurm before 23.11 has no CgroupPlugin=disabled: its slurmd dies without a cgroup fs
# ("No filesystem mounted on /sys/fs/cgroup") even with proctrack/linuxproc. Give such a root
# the host's cgroup tree (slurmd only reads it with the test cluster's plugins).
slurmd_version=$(in_chroot sh -c 'slurmd -V 2>/dev/null' | awk '{ print $2 }')
case "$slurmd_version" in
  1[0-9].* | 2[0-2].* | 23.0[0-9].*)
    [ -d /sys/fs/cgroup ] && mnt --rbind /sys/fs/cgroup "$ROOT/sys/fs/cgroup" ;;
esac
mnt -t tmpfs -o mode=1777 tmpfs "$ROOT/tmp"
mkdir -p "$ROOT/src" "$ROOT/out"
mnt --bind "$REPO" "$ROOT/src"
mount -o remount,bind,ro "$ROOT/src"
if [ -n "${NODECHECK_ROOT_OUT:-}" ]; then
  mnt --bind "$NODECHECK_ROOT_OUT" "$ROOT/out"
fi

log "$(in_chroot sh -c 'echo "$(slurmctld -V 2>/dev/null || echo no slurm), $(python3 -V)"')"

# In the background + wait, so a forwarded SIGTERM is handled at once. (A plain command, not
# the in_chroot function: $! is then the command's own PID, since chroot and env exec.)
"${CHROOT_ENV[@]}" "$@" &
CHILD=$!
rc=0
wait "$CHILD" || rc=$?
CHILD=
exit "$rc"
