"""nodecheck.log: structlog events to stderr, the log file, syslog and the journal's socket."""

import json
import os
import socket
import stat
import subprocess
import sys

import pytest

from nodecheck.log import bind_run, get_logger, setup_logging
from nodecheck.run.config import load_config
from nodecheck.run.config_file import ConfigError


@pytest.fixture(autouse=True)
def _restore_logging():
    yield
    setup_logging(None, to_stderr=True)


def lines(text):
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_json_lines_carry_the_run_fields_and_a_run_id(capsys):
    assert setup_logging(None, to_stderr=True) is None
    bind_run(node="n1", phase="prolog", job="4242")
    bind_run(node_class="h100")
    get_logger().info("check_result", check="gpu.ecc", component="gpu0", status="PASS")
    first = lines(capsys.readouterr().err)[-1]
    assert first["event"] == "check_result" and first["level"] == "info"
    assert (first["node"], first["phase"], first["node_class"]) == ("n1", "prolog", "h100")
    assert first["job"] == 4242  # a number where it is a number
    assert first["timestamp"].endswith("Z") and "T" in first["timestamp"]
    assert len(first["run_id"]) == 12

    setup_logging(None, to_stderr=True)  # a new run: a new id, nothing of the old one bound
    bind_run(job="12_3")  # an array task id stays text
    get_logger().info("verdict")
    second = lines(capsys.readouterr().err)[-1]
    assert second["run_id"] != first["run_id"] and "node" not in second
    assert second["job"] == "12_3"


def test_a_failed_result_is_a_warning_whatever_the_caller_said(capsys):
    setup_logging(None, to_stderr=True)
    get_logger().info("check_result", check="host.mounts", status="FAIL")
    get_logger().info("check_result", check="host.mem", status="WARN")
    get_logger().debug("check_result", check="host.disk", status="FAIL")  # not filtered out
    fail, warn, debug_fail = lines(capsys.readouterr().err)
    assert fail["level"] == "warning" and warn["level"] == "info"
    assert debug_fail["level"] == "warning"


def test_debug_lines_only_when_verbose(capsys):
    setup_logging(None, to_stderr=True)
    get_logger().debug("detail")
    assert capsys.readouterr().err == ""
    setup_logging(None, to_stderr=True, verbose=True)
    get_logger().debug("detail")
    assert lines(capsys.readouterr().err)[0]["level"] == "debug"


def test_exception_carries_the_traceback(capsys):
    setup_logging(None, to_stderr=True)
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        get_logger().exception("internal_error", error="boom")
    [line] = lines(capsys.readouterr().err)
    assert line["level"] == "error" and "RuntimeError: boom" in line["exception"]


def test_console_renderer_for_people(capsys):
    setup_logging(None, to_stderr=True, console=True)
    get_logger().warning("disabled", why="killswitch")
    err = capsys.readouterr().err
    assert not err.startswith("{") and "disabled" in err and "why=killswitch" in err


def test_log_file_is_root_only_and_reopened_after_logrotate(tmp_path, capsys):
    path = tmp_path / "log" / "nodecheck.log"
    assert setup_logging(str(path), to_stderr=False) is None
    get_logger().info("before_rotate")
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o750  # as the .deb makes it
    path.rename(tmp_path / "log" / "nodecheck.log.1")  # what logrotate does (no copytruncate)
    get_logger().info("after_rotate")
    assert [e["event"] for e in lines(path.read_text())] == ["after_rotate"]
    rotated = (tmp_path / "log" / "nodecheck.log.1").read_text()
    assert [e["event"] for e in lines(rotated)] == ["before_rotate"]
    assert capsys.readouterr().err == ""  # the file only


@pytest.fixture
def syslog_server(tmp_path):
    """A Unix datagram socket standing in for /dev/log (or journald's dev-log)."""
    path = str(tmp_path / "dev-log")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(path)
    server.settimeout(5)
    yield path, server
    server.close()


@pytest.mark.parametrize("target", ["syslog", "journald"])
def test_syslog_and_journald_get_the_same_json(syslog_server, target, capsys, monkeypatch):
    path, server = syslog_server
    if target == "journald":  # without python-systemd: the syslog protocol on its socket
        monkeypatch.setitem(__import__("sys").modules, "systemd", None)
    assert setup_logging(None, to_stderr=False, targets=[target], syslog_socket=path) is None
    bind_run(node="n7", job="9")
    get_logger().info("check_result", check="gpu.xid", status="FAIL")
    datagram = server.recv(65536).decode()
    # <priority> = facility daemon (3) * 8 + warning (4): the FAIL made it a warning
    assert datagram.startswith("<28>nodecheck: {")
    event = json.loads(datagram.removeprefix("<28>nodecheck: ").rstrip("\0"))
    assert (event["event"], event["node"], event["job"]) == ("check_result", "n7", 9)
    assert capsys.readouterr().err == ""


def test_unusable_target_falls_back_to_stderr_and_says_so(tmp_path, capsys):
    missing = str(tmp_path / "no-such-socket")
    problem = setup_logging(None, to_stderr=False, targets=["syslog"], syslog_socket=missing)
    assert problem and "syslog" in problem and missing in problem
    get_logger().info("still_logged")
    assert lines(capsys.readouterr().err)[0]["event"] == "still_logged"


def test_a_full_disk_is_reported_once_and_does_not_fail_the_run(capsys):
    setup_logging("/dev/full", to_stderr=True)
    get_logger().info("one")
    get_logger().info("two")
    events = lines(capsys.readouterr().err)
    assert [e["event"] for e in events] == ["log_file_write_failed", "one", "two"]
    assert events[0]["file"] == "/dev/full" and "No space left" in events[0]["error"]


@pytest.mark.parametrize(
    ("value", "expected"),
    [('"syslog"', ["syslog"]), ('["stderr", "journald"]', ["stderr", "journald"])],
)
def test_log_target_in_the_config(tmp_path, value, expected):
    cfg = tmp_path / "nodecheck.toml"
    cfg.write_text(f"log_target = {value}\n")
    cfg.chmod(0o644)
    assert load_config(str(cfg), os.environ, {}).log_target == expected


def test_unknown_log_target_is_a_config_error(tmp_path):
    cfg = tmp_path / "nodecheck.toml"
    cfg.write_text('log_target = ["stderr", "kafka"]\n')
    cfg.chmod(0o644)
    with pytest.raises(ConfigError, match="log_target"):
        load_config(str(cfg), os.environ, {})


def test_structlog_loads_without_rich_and_leaves_no_stand_in_behind():
    """rich stays out of the import (the hook's parent must not load it) and can still be
    imported afterwards; asyncio, if loaded, is the real module, never a stand-in."""
    probe = (
        "import sys, types, nodecheck.log\n"
        "print('rich' in sys.modules)\n"
        "asyncio = sys.modules.get('asyncio')\n"
        "print(asyncio is None or type(asyncio) is types.ModuleType)\n"
        "import rich\n"
        "print(rich is not None)\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "True", "True"]
