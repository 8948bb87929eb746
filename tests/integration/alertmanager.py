"""A real Alertmanager (Debian's prometheus-alertmanager) on loopback, for tests."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

BINARY = Path("/usr/bin/prometheus-alertmanager")
CONFIG = """route:
  receiver: "null"
receivers:
  - name: "null"
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def alertmanager(workdir: Path) -> Iterator[str]:
    """Start Alertmanager on a free loopback port; yield its base URL; stop it by its pid."""
    if not BINARY.exists():
        raise RuntimeError(f"{BINARY} missing: run tools/install-system-deps.sh")
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "am.yml").write_text(CONFIG)
    port = _free_port()
    log = (workdir / "alertmanager.log").open("w")
    proc = subprocess.Popen(
        [
            str(BINARY),
            f"--config.file={workdir / 'am.yml'}",
            f"--storage.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(url + "/-/ready", timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError((workdir / "alertmanager.log").read_text()[-2000:])
                time.sleep(0.2)
        yield url
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
        log.close()
        shutil.rmtree(workdir / "data", ignore_errors=True)


def active_alerts(url: str) -> list[dict]:
    with urllib.request.urlopen(url + "/api/v2/alerts", timeout=5) as response:
        return json.loads(response.read())
