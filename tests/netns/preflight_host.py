"""Run fabric.preflight as one test host would, inside its network namespace; print JSON.

Usage: python tests/netns/preflight_host.py '{"node": "h1", "nodelist": "h[1-4]", "options": {...}}'
"""

from __future__ import annotations

from host import run_check

from nodecheck.checks.fabric import preflight

if __name__ == "__main__":
    run_check("fabric.preflight", preflight.fabric_preflight, "prolog")
