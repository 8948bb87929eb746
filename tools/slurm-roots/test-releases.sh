#!/usr/bin/env bash
# The Slurm backend contract suite (tests/contract) against three real Slurm releases:
#   22.05  the host's own (Debian 12 bookworm), through scontrol
#   24.11  a Debian trixie root (tools/slurm-roots/contract-packages), through scontrol
#   26.05  the Debian sid root with pyslurm (tools/pyslurm-sid), through pyslurm and scontrol
# Roots are built once and cached outside the repo (build-root.sh); every release runs even
# when an earlier one fails, and a summary with each one's time ends the output. Root only.
# Extra arguments go to every pytest run (e.g. -x, -k drain).
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
LOG_TAG=slurm-releases
# shellcheck source=tools/slurm-roots/lib.sh
. "$HERE/lib.sh"

HOST_PYTHON=${NODECHECK_HOST_PYTHON:-$REPO/.venv/bin/python3}
[ -x "$HOST_PYTHON" ] || HOST_PYTHON=python3
SUMMARY=()
FAILED=0

release() { # label, command...
  local label=$1 t0 rc
  shift
  t0=$(now)
  log "== $label"
  "$@"
  rc=$?
  SUMMARY+=("$(printf '%-34s %6s s  %s' "$label" "$(took "$t0")" "$([ "$rc" = 0 ] && echo ok || echo "FAILED (exit $rc)")")")
  [ "$rc" = 0 ] || FAILED=1
}

host_contract() {
  (cd "$REPO" && NODECHECK_REQUIRE_SLURM=1 "$HOST_PYTHON" -m pytest -p no:cacheprovider -q \
    tests/contract "$@")
}
trixie_contract() {
  local root
  mapfile -t packages < <(read_package_list "$HERE/contract-packages")
  root=$(bash "$HERE/build-root.sh" trixie "${packages[@]}") || return
  bash "$HERE/run-contract.sh" "$root" -q "$@"
}
sid_contract() {
  bash "$REPO/tools/pyslurm-sid/build.sh" || return
  bash "$REPO/tools/pyslurm-sid/run-tests.sh" -q "$@"
}

T0=$(now)
release "Slurm 22.05 (bookworm host)" host_contract "$@"
release "Slurm 24.11 (trixie root)" trixie_contract "$@"
release "Slurm 26.05 (sid root, pyslurm)" sid_contract "$@"
for line in "${SUMMARY[@]}"; do log "$line"; done
log "$(printf '%-34s %6s s' total "$(took "$T0")")"
exit "$FAILED"
