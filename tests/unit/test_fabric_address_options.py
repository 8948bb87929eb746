"""fabric.peers and fabric.preflight find the job's nodes with the same options."""

from __future__ import annotations

from nodecheck.checks.fabric.common import ADDRESS_OPTIONS
from nodecheck.checks.registry import all_checks


def test_peers_and_preflight_take_the_shared_address_options():
    checks = all_checks()
    for cid in ("fabric.peers", "fabric.preflight"):
        opts = checks[cid].options
        assert {name: opts[name] for name in ADDRESS_OPTIONS} == ADDRESS_OPTIONS, cid


def test_each_check_gets_its_own_copy():
    checks = all_checks()
    assert checks["fabric.peers"].options is not checks["fabric.preflight"].options
    assert checks["fabric.peers"].options is not ADDRESS_OPTIONS
