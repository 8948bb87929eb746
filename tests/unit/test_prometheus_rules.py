"""The Prometheus rules nodecheck ships (nodecheck/prometheus/rules.yml): promtool loads them,
its unit tests (tests/prometheus/rules_test.yml) fire the alerts they should and no others,
and every nodecheck_* series the rules and the tests name is one the exporter writes.

Cost: three promtool runs, well under a second each. Needs promtool (the `prometheus`
package, tools/install-system-deps.sh); skipped without it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from nodecheck.prometheus import rules_path
from nodecheck.store import metrics

REPO = Path(__file__).resolve().parents[2]
RULES_TEST = REPO / "tests" / "prometheus" / "rules_test.yml"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(not PROMTOOL, reason="needs promtool (prometheus package)")
NAME = re.compile(r"(?<![:\w])nodecheck_[a-z_]+\b(?!:)")  # not a recording rule's name


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=60)


@needs_promtool
def test_rules_load():
    out = promtool("check", "rules", str(rules_path()))
    assert out.returncode == 0 and "SUCCESS: 9 rules found" in out.stdout, out.stdout + out.stderr


@needs_promtool
def test_rule_unit_tests_pass():
    out = promtool("test", "rules", str(RULES_TEST))
    assert out.returncode == 0 and "SUCCESS" in out.stdout, out.stdout + out.stderr


@needs_promtool
def test_a_wrong_expectation_fails(tmp_path):
    """The unit tests can fail: the same file expecting the trend alert on a node that has
    only an ordinary check's FAIL (g3, gpu.ecc) is refused."""
    text = RULES_TEST.read_text().replace("node: g2\n", "node: g3\n", 1)
    bad = tmp_path / "rules_test.yml"
    bad.write_text(text.replace("../../nodecheck/prometheus/rules.yml", str(rules_path())))
    out = promtool("test", "rules", str(bad))
    assert out.returncode != 0 and "NodecheckTrendAlert" in out.stdout + out.stderr


def exported_names() -> set[str]:
    """Every metric name the exporter renders (a node with a drain, a breaker hold, a
    selftest and unsaved state), as node_exporter reads them."""
    pytest.importorskip("prometheus_client")
    last = {
        "checks": {"trend.gpu_ecc": {"status": "FAIL", "duration_s": 0.1, "at": 1.0}},
        "runs": {"health": {"status": "FAIL", "duration_s": 0.2, "at": 1.0}},
    }
    counters = {"drains": 3, "resumes": 2, "flap_holds": 0, "breaker_trips": 1}
    reason = "nodecheck: trend gpu.ecc gpu3: correctable ECC 480/h [health sev=medium act=validate]"
    text = b"".join(
        (
            metrics.render("n1", last, counters, reason),
            metrics.render_breaker_hold("n1", 1.0),
            metrics.render_selftest("n1", {"gpu.ecc": False}, {"ok": 1}, 1.0, 2.0),
            metrics.render_state_unsaved("n1", 1.0),
        )
    ).decode()
    names = set()
    for line in text.splitlines():
        if line and not line.startswith("#"):
            names.add(line.split("{", 1)[0].split(" ", 1)[0])
    return names


def test_every_series_named_is_one_nodecheck_exports():
    used = set(NAME.findall(rules_path().read_text())) | set(NAME.findall(RULES_TEST.read_text()))
    used = {n for n in used if not n.endswith("_")}
    exported = exported_names()
    assert used and used <= exported, sorted(used - exported)


def test_the_drained_series_names_the_trend_check():
    pytest.importorskip("prometheus_client")
    reason = "nodecheck: trend gpu.ecc gpu3: correctable ECC 480/h [health sev=medium act=validate]"
    text = metrics.render("n1", {}, {}, reason).decode()
    assert 'nodecheck_drained{check="trend.gpu_ecc",component="gpu3",node="n1"} 1.0' in text
