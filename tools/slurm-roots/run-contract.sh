#!/usr/bin/env bash
# The Slurm backend contract tests (tests/contract) against the Slurm inside ROOT, run with the
# root's own python3 and pytest (test ids [scontrol-slurmXX.YY], plus [pyslurm-...] where
# pyslurm is usable there). Extra arguments go to pytest (e.g. -k drain, -x).
#
#   bash tools/slurm-roots/run-contract.sh ROOT [PYTEST-ARG...]
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
[ $# -ge 1 ] || { echo "usage: run-contract.sh ROOT [PYTEST-ARG...]" >&2; exit 2; }
ROOT=$1
shift
# --confcutdir: only tests/contract's conftest (the others need pip packages the root lacks).
# The cluster's state dir is fixed under the namespace's /tmp, so teardown finds it whatever
# happens to pytest.
NODECHECK_REQUIRE_SLURM=1 NODECHECK_CONTRACT_STATE_DIR=/tmp/contract-cluster \
  exec bash "$HERE/in-root.sh" "$ROOT" \
  python3 -m pytest -p no:cacheprovider --rootdir=/src --confcutdir=/src/tests/contract \
  -v --tb=short /src/tests/contract "$@"
