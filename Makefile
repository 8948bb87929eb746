.PHONY: cluster-up cluster-down cluster-status

PYTHON ?= python3
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
