"""Run the deep.fabric check as one test host would, inside its network namespace.

Usage: python tests/netns/deep_fabric_host.py '{"node": "h1", "nodelist": "h[1-4]", ...}'
Prints the check's results as JSON. The check (`nodecheck.checks.deep.fabric.deep_fabric`)
does what it does on a node of a job: expands the job's node list, joins torch.distributed
with gloo on the fabric interface, measures, judges.
"""

from __future__ import annotations

from host import run_check

from nodecheck.checks.deep import fabric

if __name__ == "__main__":
    run_check("deep.fabric", fabric.deep_fabric, "manual")
