"""Prometheus recording and alerting rules for the series nodecheck exports (rules.yml),
shipped with the package: `nodecheck.prometheus.rules_path()` says where it is installed."""

from __future__ import annotations

from pathlib import Path


def rules_path() -> Path:
    return Path(__file__).resolve().parent / "rules.yml"
