"""Trend checks: degradation judged from the node's own history of readings (series kept in
the state file, store/series.py), not from one run. Off by default: a site turns each on."""

from nodecheck.checks.trend import fabric, gpu, xid  # noqa: F401  (registers the checks)
