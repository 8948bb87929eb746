#!/bin/sh
# Install the system packages the developer set-up needs (Debian/Ubuntu): what the tests
# run (Slurm, munge, Alertmanager, slurmdbd with MariaDB), the packaging tools of `make deb` / `make test-deb`,
# and a C compiler for the agent's client (`make client`).
# Idempotent: does nothing (and touches no network) when everything is already installed.
set -eu

# prometheus-node-exporter and prometheus (for promtool): the metrics file's test
# (tests/unit/test_metrics_exporter.py).
PACKAGES="slurmctld slurmd slurm-client munge iproute2 procps prometheus-alertmanager
          prometheus-node-exporter prometheus
          slurmdbd mariadb-server
          python3-venv debhelper dh-virtualenv dpkg-dev debootstrap gcc libc6-dev"

if [ "$(id -u)" -ne 0 ]; then
    echo "install-system-deps.sh: must run as root (it installs Debian packages)" >&2
    exit 1
fi
if ! command -v dpkg-query >/dev/null 2>&1 || ! command -v apt-get >/dev/null 2>&1; then
    echo "install-system-deps.sh: needs a Debian-like system (dpkg-query and apt-get)" >&2
    exit 1
fi

# Keep package maintainer scripts from starting daemons (no init system here, and the test
# cluster runs its own daemons from a private state dir). Only created when absent, and kept.
if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod 0755 /usr/sbin/policy-rc.d
fi

missing=""
for pkg in $PACKAGES; do
    status=$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)
    if [ "$status" != "installed" ]; then
        missing="$missing $pkg"
    fi
done

if [ -z "$missing" ]; then
    echo "install-system-deps.sh: all present ($PACKAGES)"
    exit 0
fi

echo "install-system-deps.sh: installing:$missing"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# shellcheck disable=SC2086  # word splitting of the package list is intended
apt-get install -y -qq --no-install-recommends $missing >/dev/null
echo "install-system-deps.sh: done"
