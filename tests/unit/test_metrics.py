"""Metrics file: node_exporter textfile format, parsed back with prometheus_client's parser."""

from __future__ import annotations

import json
import time

from prometheus_client.parser import text_string_to_metric_families

import nodecheck
from nodecheck.checks.registry import all_checks
from nodecheck.core.results import CheckResult, Status
from nodecheck.log import setup_logging
from nodecheck.run.config import parse_config
from nodecheck.store import history, metrics, recording


def samples(text: str) -> dict[tuple[str, tuple], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def config_for(tmp_path, metrics_file):
    data = {"state_dir": str(tmp_path / "state"), "metrics_file": metrics_file}
    return parse_config(data, None, all_checks())


def run(phase, results, status, action="none", duration=0.25):
    return history.RunRecord(time.time(), phase, "9", status, action, duration, tuple(results))


def test_record_run_writes_a_parseable_textfile(tmp_path):
    prom = tmp_path / "tc" / "nodecheck.prom"
    cfg = config_for(tmp_path, str(tmp_path / "tc" / "{node}.prom"))
    ok = CheckResult("host.mem", Status.PASS, "ok", duration_s=0.02)
    bad = CheckResult("host.mounts", Status.FAIL, "not mounted", "/x", duration_s=0.5)
    bad2 = CheckResult("host.mounts", Status.PASS, "mounted", "/", duration_s=0.1)
    recording.record_run(cfg, "nodecheck", run("prolog", [ok, bad, bad2], "FAIL", "drained"))
    recording.record_run(cfg, "nodecheck", run("health", [ok], "PASS", duration=0.5))
    assert prom.stat().st_mode & 0o777 == 0o644
    assert [p.name for p in prom.parent.iterdir()] == ["nodecheck.prom"]  # no temp files
    got = samples(prom.read_text())
    node = ("node", "nodecheck")

    def val(name, **labels):
        return got[(name, tuple(sorted([node, *labels.items()])))]

    assert val("nodecheck_check_status", check="host.mounts", status="FAIL") == 1
    assert val("nodecheck_check_status", check="host.mounts", status="PASS") == 0
    assert val("nodecheck_check_status", check="host.mem", status="PASS") == 1
    assert val("nodecheck_check_duration_seconds", check="host.mounts") == 0.5
    assert val("nodecheck_run_duration_seconds", phase="health") == 0.5
    assert val("nodecheck_run_status", phase="prolog", status="FAIL") == 1
    assert val("nodecheck_last_run_timestamp_seconds", phase="prolog") > time.time() - 60
    assert val("nodecheck_check_last_run_timestamp_seconds", check="host.mem") > 0
    assert val("nodecheck_drains_total") == 0  # counted by actions on a real drain
    assert val("nodecheck_resumes_total") == 0
    assert val("nodecheck_flap_holds_total") == 0
    assert val("nodecheck_drained", check="", component="") == 0
    assert val("nodecheck_dry_run") == 0 and val("nodecheck_disabled") == 0
    [build] = [k for k in got if k[0] == "nodecheck_build_info"]
    assert dict(build[1])["version"] == nodecheck.__version__ and got[build] == 1


def test_counters_and_drained_come_from_the_state(tmp_path):
    cfg = config_for(tmp_path, str(tmp_path / "m.prom"))

    def drained(h):
        with h.write():
            h.add_event("drain", "nodecheck: host.mem node: low [prolog]", time.time())
            h.add_event("drain", "nodecheck: host.mem node: low [prolog]", time.time())
            h.add_event("resume", "", time.time())
            reason = "nodecheck: gpu.ecc gpu3: 2 uncorrectable [health sev=critical act=reset]"
            h.put(history.DRAIN_MARKER, {"reason": reason, "at": time.time()})

    history.with_history(tmp_path / "state", drained)
    recording.record_run(cfg, "n7", run("health", [], "PASS"))
    got = samples((tmp_path / "m.prom").read_text())
    assert got[("nodecheck_drains_total", (("node", "n7"),))] == 2
    assert got[("nodecheck_resumes_total", (("node", "n7"),))] == 1
    held = (("check", "gpu.ecc"), ("component", "gpu3"), ("node", "n7"))
    assert got[("nodecheck_drained", held)] == 1  # which check holds the drain


def test_empty_metrics_file_disables_metrics(tmp_path):
    cfg = config_for(tmp_path, "")
    recording.record_run(cfg, "n1", run("prolog", [], "PASS"))
    assert cfg.metrics_file_for("n1") is None
    assert not list(tmp_path.glob("**/*.prom"))


def test_without_prometheus_client_metrics_are_skipped_and_history_kept(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr(metrics, "available", lambda: False)
    setup_logging(None, to_stderr=True)  # log lines go to stderr, as in a hook run
    try:
        cfg = config_for(tmp_path, str(tmp_path / "m.prom"))
        recording.record_run(cfg, "n1", run("health", [], "PASS"))
    finally:
        setup_logging(None, to_stderr=False)
    assert not (tmp_path / "m.prom").exists()
    assert len(history.with_history(tmp_path / "state", lambda h: h.runs())) == 1
    err = capsys.readouterr().err
    logged = [json.loads(x) for x in err.splitlines() if x.startswith("{")]
    assert [e for e in logged if e.get("event") == "metrics_skipped"], err


def test_unwritable_metrics_dir_does_not_lose_the_run(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    cfg = config_for(tmp_path, str(blocker / "sub" / "m.prom"))
    recording.record_run(cfg, "n1", run("prolog", [], "PASS"))
    assert len(history.with_history(tmp_path / "state", lambda h: h.runs())) == 1


def test_render_is_valid_with_no_runs_yet():
    text = metrics.render("n1", {}, {}, None).decode()
    names = {f.name for f in text_string_to_metric_families(text)}
    assert {"nodecheck_drains", "nodecheck_drained"} <= names


def test_a_healthy_prolog_leaves_the_metrics_file_to_the_health_run(tmp_path):
    prom = tmp_path / "m.prom"
    cfg = config_for(tmp_path, str(prom))
    recording.record_run(cfg, "n1", run("prolog", [], "PASS"))
    recording.record_run(cfg, "n1", run("epilog", [], "PASS"))
    assert not prom.exists()  # prometheus_client stays off job start
    recording.record_run(cfg, "n1", run("health", [], "PASS"))
    got = samples(prom.read_text())
    # the health run's file still carries the prolog/epilog runs, from the history
    for phase in ("prolog", "epilog", "health"):
        key = ("nodecheck_run_status", (("node", "n1"), ("phase", phase), ("status", "PASS")))
        assert got[key] == 1
    prom.unlink()
    bad = CheckResult("host.mem", Status.FAIL, "low")
    recording.record_run(cfg, "n1", run("prolog", [bad], "FAIL", action="drained"))
    assert prom.exists()  # a problem is exported at once
    prom.unlink()
    eager = parse_config(
        {
            "state_dir": str(tmp_path / "state"),
            "metrics_file": str(prom),
            "metrics_on_job_path": True,
        },
        None,
        all_checks(),
    )
    recording.record_run(eager, "n1", run("prolog", [], "PASS"))
    assert prom.exists()


def test_the_callers_registry_decides_which_checks_are_exported(tmp_path):
    """The store sits below the checks: the caller passes the registry's loader, and only
    checks enabled for the node are exported; without one, every check the history has."""
    prom = tmp_path / "m.prom"
    data = {
        "state_dir": str(tmp_path / "state"),
        "metrics_file": str(prom),
        "checks": {"host.mounts": {"enabled": False}},
    }
    cfg = parse_config(data, None, all_checks())
    results = [
        CheckResult("host.mem", Status.PASS, "ok"),
        CheckResult("host.mounts", Status.PASS, "ok", "/"),
    ]
    recording.record_run(cfg, "n1", run("health", results, "PASS"), checks=all_checks)
    exported = {dict(k[1]).get("check") for k in samples(prom.read_text())}
    assert "host.mem" in exported and "host.mounts" not in exported
    recording.record_run(cfg, "n1", run("health", results, "PASS"))
    exported = {dict(k[1]).get("check") for k in samples(prom.read_text())}
    assert {"host.mem", "host.mounts"} <= exported


def test_the_registry_is_loaded_only_for_a_rewrite_and_its_failure_costs_no_run(tmp_path):
    prom = tmp_path / "m.prom"
    cfg = config_for(tmp_path, str(prom))
    loads = []

    def broken():
        loads.append(1)
        raise ImportError("a check family that cannot load")

    recording.record_run(cfg, "n1", run("prolog", [], "PASS"), checks=broken)
    assert loads == [] and not prom.exists()  # a healthy prolog leaves the file alone
    ok = CheckResult("host.mem", Status.PASS, "ok")
    recording.record_run(cfg, "n1", run("health", [ok], "PASS"), checks=broken)
    assert loads == [1]
    got = samples(prom.read_text())
    assert got[
        ("nodecheck_check_status", (("check", "host.mem"), ("node", "n1"), ("status", "PASS")))
    ]
    assert len(history.with_history(tmp_path / "state", lambda h: h.runs())) == 2


def test_node_flags_without_a_registry_read_the_top_level_values(tmp_path):
    cfg = parse_config(
        {"state_dir": str(tmp_path), "dry_run": True, "killswitch_file": str(tmp_path / "off")},
        None,
        all_checks(),
    )
    assert metrics.node_flags(cfg, "n1") == metrics.NodeFlags(None, True, False)
    with_registry = metrics.node_flags(cfg, "n1", all_checks, disabled=True)
    assert with_registry.checks and "host.mem" in with_registry.checks
    assert with_registry.dry_run and with_registry.disabled
