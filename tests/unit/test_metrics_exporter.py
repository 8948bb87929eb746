"""The metrics file as Prometheus sees it: Debian's node_exporter (textfile collector) scrapes
it on a loopback port, promtool's linter accepts it, and a check that was disabled loses
its series instead of keeping its last status.

Needs prometheus-node-exporter and prometheus (promtool), installed by
tools/install-system-deps.sh; skipped where they are absent.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from nodecheck.checks.registry import all_checks
from nodecheck.core.results import CheckResult, Status
from nodecheck.run.config import parse_config
from nodecheck.store import history, recording

NODE_EXPORTER = shutil.which("prometheus-node-exporter") or shutil.which("node_exporter")
PROMTOOL = shutil.which("promtool")
pytestmark = pytest.mark.skipif(
    not (NODE_EXPORTER and PROMTOOL),
    reason="needs prometheus-node-exporter and promtool (tools/install-system-deps.sh)",
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def exporter(tmp_path):
    """node_exporter with only the textfile collector, on a free loopback port."""
    directory = tmp_path / "textfile"
    directory.mkdir()
    port = free_port()
    proc = subprocess.Popen(
        [
            NODE_EXPORTER,
            "--collector.disable-defaults",
            "--collector.textfile",
            f"--collector.textfile.directory={directory}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )

    def scrape() -> dict[tuple[str, tuple], float]:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
            text = reply.read().decode()
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }

    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                scrape()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"node_exporter did not start: {proc.stderr.read()}")
                time.sleep(0.1)
        yield directory, scrape
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def config(tmp_path, directory, extra=None):
    data = {
        "state_dir": str(tmp_path / "state"),
        "metrics_file": str(directory / "nodecheck.prom"),
        "killswitch_file": str(tmp_path / "disabled"),
        **(extra or {}),
    }
    return parse_config(data, None, all_checks())


def health_run(cfg, *results):
    status = "FAIL" if any(r.status is Status.FAIL for r in results) else "PASS"
    rec = history.RunRecord(time.time(), "health", None, status, "none", 0.3, results)
    recording.record_run(cfg, "n1", rec, checks=all_checks)


def nodecheck_series(scraped, name, **labels):
    want = set(labels.items())
    return {
        key: value
        for key, value in scraped.items()
        if key[0] == name and want <= set(key[1]) and ("node", "n1") in key[1]
    }


def test_node_exporter_and_promtool_accept_the_file_and_no_series_goes_stale(tmp_path, exporter):
    directory, scrape = exporter
    mem = CheckResult("host.mem", Status.PASS, "ok", duration_s=0.01)
    mounts = CheckResult("host.mounts", Status.FAIL, "not mounted", "/scratch", duration_s=0.2)
    health_run(config(tmp_path, directory), mem, mounts)

    prom = directory / "nodecheck.prom"
    lint = subprocess.run(
        [PROMTOOL, "check", "metrics"],
        input=prom.read_bytes(),
        capture_output=True,
        timeout=30,
    )
    assert lint.returncode == 0, lint.stdout + lint.stderr

    scraped = scrape()
    assert scraped[("node_textfile_scrape_error", ())] == 0
    failing = nodecheck_series(scraped, "nodecheck_check_status", check="host.mounts")
    assert failing and failing[next(k for k in failing if ("status", "FAIL") in k[1])] == 1
    assert nodecheck_series(scraped, "nodecheck_build_info")

    # The admin disables the failing check: its series vanish at the next rewrite, the
    # others stay.
    off = config(tmp_path, directory, {"checks": {"host.mounts": {"enabled": False}}})
    health_run(off, mem)
    scraped = scrape()
    assert not nodecheck_series(scraped, "nodecheck_check_status", check="host.mounts")
    assert not nodecheck_series(scraped, "nodecheck_check_duration_seconds", check="host.mounts")
    assert nodecheck_series(scraped, "nodecheck_check_status", check="host.mem", status="PASS")

    # Dry-run shows; the killswitch shows after the health run's rewrite.
    dry = config(tmp_path, directory, {"dry_run": True})
    health_run(dry, mem)
    assert list(nodecheck_series(scrape(), "nodecheck_dry_run").values()) == [1]
    (tmp_path / "disabled").write_text("maintenance\n")
    recording.rewrite_while_disabled(dry, "n1", all_checks)
    scraped = scrape()
    assert list(nodecheck_series(scraped, "nodecheck_disabled").values()) == [1]
    assert nodecheck_series(scraped, "nodecheck_check_status", check="host.mem")  # kept
