#!/usr/bin/env bash
# Run the Slurm backend contract tests (tests/contract) against a live 2-node Slurm 26.05
# inside the Debian sid root that build.sh prepared: once through pyslurm, once through
# scontrol (pytest ids [pyslurm-slurm26.05] and [scontrol-slurm26.05]); an unusable pyslurm
# is a failure here, not a skip. Isolation and teardown: tools/slurm-roots/in-root.sh.
# Extra arguments go to pytest (e.g. -k drain, -x).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
LOG_TAG=pyslurm-sid
# shellcheck source=tools/slurm-roots/lib.sh
. "$HERE/../slurm-roots/lib.sh"

mapfile -t PACKAGES < <(read_package_list "$HERE/packages")
ROOT=$(root_path sid "${PACKAGES[@]}")
[ -f "$ROOT/.nodecheck-stamps/pyslurm" ] || die "$ROOT is not built: run tools/pyslurm-sid/build.sh first"
NODECHECK_REQUIRE_PYSLURM=1 exec bash "$HERE/../slurm-roots/run-contract.sh" "$ROOT" "$@"
