.PHONY: deb-arm64 test-deb-arm64 install client test test-unit test-integration lint format bench bench-cluster bench-scale clean cluster-up cluster-down cluster-status test-pyslurm test-slurm-releases wheel deb test-deb test-nvml-matrix test-gpu

PYTHON ?= python3
VENV ?= $(CURDIR)/.venv
VPY := $(VENV)/bin/python3

# The developer set-up of a fresh Debian 12 machine: Slurm + munge and the packaging tools
# from Debian, a venv with nodecheck (editable) and its dev tools. Not for production nodes:
# those install the .deb or the wheel (README "Deploying"). The venv's pip stays as Debian
# made it (no upgrade from the network).
install:
	bash tools/install-system-deps.sh
	test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q -e '.[dev,active]'
	$(MAKE) client

# The agent's compiled client (nodecheck/entry/agent_client.c; docs/agent.md), next to the
# Python one, where the entrypoints look for it. The Debian package builds its own.
CLIENT_CFLAGS ?= -O2 -Wall -Wextra -Werror -D_FORTIFY_SOURCE=2 -fstack-protector-strong -fPIE
CLIENT_LDFLAGS ?= -pie -Wl,-z,relro,-z,now
client:
	$(CC) $(CLIENT_CFLAGS) $(CLIENT_LDFLAGS) -o nodecheck/entry/agent-client nodecheck/entry/agent_client.c

# Unit tests, then integration tests against a throw-away Slurm started by the tests.
test:
	NODECHECK_REQUIRE_SLURM=$${NODECHECK_REQUIRE_SLURM:-1} $(VPY) -m pytest -q --durations=25

# The healthy-node soak at length (tests/soak/test_healthy_soak.py): 1,000 runs per phase and
# path instead of make test's 100 (about half an hour on 2 cores).
soak:
	NODECHECK_SOAK_RUNS=$${NODECHECK_SOAK_RUNS:-1000} $(VPY) -m pytest -q tests/soak/test_healthy_soak.py

test-unit:
	$(VPY) -m pytest -q tests/unit

test-integration:
	NODECHECK_REQUIRE_SLURM=1 $(VPY) -m pytest -q tests/integration

# The GPU acceptance run, on a GPU node (docs/deep.md, "make test-gpu"): tests/gpu, the NVML
# binding suite against the real driver, `nodecheck run --tier deep --json` on every GPU; the
# NVML snapshot, the figures and the GPU model, driver and CUDA versions are written under
# tests/fixtures/real/gpu-runs/<model>-<driver>/ to commit. Within 8 minutes on 8 GPUs.
# Without a GPU it exits 77 at once and says "no GPU".
test-gpu:
	$(VPY) tools/test-gpu.py $(TEST_GPU_ARGS)

# The NVML binding suite (tests/unit/test_nvml_bindings.py: the real pynvml over a stand-in
# libnvidia-ml) once per nvidia-ml-py release of a supported driver branch, pyproject's range
# from its floor to its newest: each installed alone (no deps) into its own --target dir under
# build/, reused on later runs, first on sys.path (docs/gpu.md, "nvidia-ml-py releases").
NVML_MATRIX ?= 12.550.89 12.570.172 12.575.51 13.580.126 13.615.71
NVML_MATRIX_DIR ?= $(CURDIR)/build/nvml-matrix
test-nvml-matrix:
	@set -e; for v in $(NVML_MATRIX); do \
	  d=$(NVML_MATRIX_DIR)/$$v; \
	  test -f $$d/pynvml.py || $(VPY) -m pip install -q --no-deps --target $$d nvidia-ml-py==$$v; \
	  echo "== nvidia-ml-py $$v"; \
	  NODECHECK_EXPECT_NVML_PY=$$v PYTHONPATH=$$d $(VPY) -m pytest -q -p no:cacheprovider \
	    tests/unit/test_nvml_bindings.py; \
	done

lint:
	$(VPY) -m ruff check .
	$(VPY) -m ruff format --check .

format:
	$(VPY) -m ruff format .
	$(VPY) -m ruff check --fix .

bench:
	$(VPY) bench/bench.py
	$(VPY) bench/preflight.py

# Every node of a throw-away cluster fails at once: drain time and controller calls (root).
bench-cluster:
	$(VPY) bench/controller_load.py

# A failing wave against slurmctld + slurmdbd configured with 1,000 and 10,000 nodes
# (bench/scale.py; docs/performance.md). Root; about 15 min on a 2-core VM; not in CI.
bench-scale:
	$(VPY) bench/scale.py

# Production artefacts (README "Deploying"), in dist/: the wheel and sdist, and the Debian
# package (dpkg-buildpackage + dh-virtualenv; built from a copy of the tree under build/deb).
wheel:
	rm -f dist/nodecheck-*.whl dist/nodecheck-*.tar.gz
	$(VPY) -m build --outdir dist .

deb:
	bash tools/build-deb.sh

# The .deb installed into a clean Debian bookworm root (debootstrap, cached under
# /var/cache/nodecheck/roots) and run as Prolog by the root's own slurmd (root only;
# tests/packaging, docs/packaging.md).
DEB_ROOT_SUITE ?= bookworm
DEB_ROOT_PACKAGES ?= slurmctld slurmd slurm-client munge python3 logrotate
test-deb:
	deb=$$(bash tools/build-deb.sh) && \
	root=$$(bash tools/slurm-roots/build-root.sh $(DEB_ROOT_SUITE) $(DEB_ROOT_PACKAGES)) && \
	NODECHECK_DEB=$$deb NODECHECK_DEB_ROOT=$$root $(VPY) -m pytest -q tests/packaging

# arm64 (Grace: GB200/GB300 NVL72, GH200): the same package built inside an arm64 root under
# qemu-user, and the same scenario run in an arm64 root with its own arm64 Slurm (root only;
# not in CI: see docs/packaging.md for what it takes and how long).
deb-arm64:
	bash tools/build-deb-arm64.sh

test-deb-arm64:
	deb=$$(bash tools/build-deb-arm64.sh) && \
	root=$$(NODECHECK_ROOT_ARCH=arm64 bash tools/slurm-roots/build-root.sh $(DEB_ROOT_SUITE) $(DEB_ROOT_PACKAGES)) && \
	NODECHECK_DEB=$$deb NODECHECK_DEB_ROOT=$$root $(VPY) -m pytest -q tests/packaging

clean:
	rm -rf .pytest_cache .ruff_cache build dist *.egg-info
CLUSTER_DIR ?= $(CURDIR)/.testcluster
CLUSTER_NODES ?= 2
CLUSTER_ARGS ?=

# Local throw-away Slurm cluster on loopback (root only); see docs/testcluster.md.
cluster-up:
	$(PYTHON) tools/testcluster.py up --state-dir $(CLUSTER_DIR) --nodes $(CLUSTER_NODES) $(CLUSTER_ARGS)

cluster-down:
	$(PYTHON) tools/testcluster.py down --state-dir $(CLUSTER_DIR)

cluster-status:
	$(PYTHON) tools/testcluster.py status --state-dir $(CLUSTER_DIR)

# The backend contract tests against Slurm 26.05 from Debian sid, through pyslurm (built here
# against it) and scontrol, in a debootstrap root cached outside the repo (root only; see
# docs/pyslurm.md).
test-pyslurm:
	bash tools/pyslurm-sid/build.sh
	bash tools/pyslurm-sid/run-tests.sh

# The backend contract tests against three real Slurm releases: 22.05 (this host), 24.11 (a
# Debian trixie root), 26.05 (the sid root, with pyslurm). Roots are cached in
# /var/cache/nodecheck/roots (NODECHECK_ROOTS_CACHE); see docs/testcluster.md for the cost.
test-slurm-releases:
	NODECHECK_HOST_PYTHON=$(VPY) bash tools/slurm-roots/test-releases.sh
