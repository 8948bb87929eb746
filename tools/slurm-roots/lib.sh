# shellcheck shell=bash
# Shared helpers for the cached Debian roots (sourced by build-root.sh, run-contract.sh and
# tools/pyslurm-sid/build.sh). Needs LOG_TAG set by the caller.

log() { printf '[%s] %s\n' "${LOG_TAG:-slurm-roots}" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
now() { date +%s.%N; }
took() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
step_done() { # name, t0, how
  log "$(printf '%-12s %6s s  %s' "$1" "$(took "$2")" "$3")"
}

# Where roots live: outside any work tree, so fresh clones (CI) on this machine reuse them.
roots_cache() { printf '%s\n' "${NODECHECK_ROOTS_CACHE:-/var/cache/nodecheck/roots}"; }

# The root for a suite and package list: the key is the suite plus the sorted, de-duplicated
# package names, so a changed list builds a new root next to the old one.
root_key() { # suite package...
  local suite=$1
  shift
  # A foreign architecture (NODECHECK_ROOT_ARCH, e.g. arm64 under qemu-user) is part of the
  # key; the host's own keeps the keys of the roots already cached.
  local arch=""
  [ "$(root_arch)" = "$(dpkg --print-architecture)" ] || arch=" arch=$(root_arch)"
  printf '%s %s%s' "$suite" "$(printf '%s\n' "$@" | sort -u | tr '\n' ' ')" "$arch" \
    | sha256sum | cut -c1-12
}

# The Debian architecture of the roots to build: the host's, or NODECHECK_ROOT_ARCH.
root_arch() { printf '%s\n' "${NODECHECK_ROOT_ARCH:-$(dpkg --print-architecture)}"; }

# A foreign-architecture root runs its programs through qemu-user (binfmt_misc, with the F
# flag so chroots find the interpreter): install qemu-user-static, mount binfmt_misc and
# register the architecture from the package's own binfmt.d file when not done yet.
ensure_foreign_arch() { # debian-arch
  local arch=$1 qemu
  case "$arch" in arm64) qemu=aarch64 ;; ppc64el) qemu=ppc64le ;; *) qemu=$arch ;; esac
  [ "$arch" = "$(dpkg --print-architecture)" ] && return 0
  if [ ! -f "/usr/lib/binfmt.d/qemu-$qemu.conf" ]; then
    log "installing qemu-user-static on the host (for $arch roots)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-user-static >/dev/null 2>&1 \
      || die "cannot install qemu-user-static"
  fi
  [ -e /proc/sys/fs/binfmt_misc/register ] \
    || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc \
    || die "cannot mount binfmt_misc (a container without the right?)"
  [ -e "/proc/sys/fs/binfmt_misc/qemu-$qemu" ] \
    || cat "/usr/lib/binfmt.d/qemu-$qemu.conf" >/proc/sys/fs/binfmt_misc/register \
    || die "cannot register qemu-$qemu with binfmt_misc"
}
root_path() { # suite package...
  printf '%s/%s-%s\n' "$(roots_cache)" "$1" "$(root_key "$@")"
}

# Mount points under a root in this mount namespace (a run in progress elsewhere has its
# mounts in a private namespace and does not show here).
root_mounts() { awk -v r="$1/" 'index($2 "/", r) == 1 { print $2 }' /proc/self/mounts; }

# Run a bash script inside a root, with proc/dev mounted in a private mount namespace (the
# mounts vanish with it) and a clean environment.
in_root() { # root script
  unshare --mount --fork -- bash -euc '
    root=$1; shift
    mount -t proc proc "$root/proc"
    mount --rbind /dev "$root/dev"
    exec chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
      LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive bash -euc "$1"
  ' in_root "$1" "$2"
}

# Debian mirror: the host's own apt source for its release (no host name is hard-coded).
host_mirror() {
  local codename f
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

# Package names from a list file: one or more per line, '#' starts a comment.
read_package_list() { # file -> names on stdout, one a line
  sed -e 's/#.*//' "$1" | tr -s ' \t' '\n' | sed '/^$/d'
}
