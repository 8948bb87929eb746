"""Issue 25, item 2: deep.fabric measures the transfer, survives a hung rank, and meets only
the run's own peers.

- NCCL's send/recv and collectives return once enqueued: every timed region now ends with
  the work completed (CUDA events, synchronised before they are read). Tested on the CPU
  with a fake CUDA device that records the order of the calls.
- The measurement runs in a worker process of its own: a rank that hangs ends the check at
  `measure_timeout_s` (FAIL on its node, named on the others) and an aborting worker does
  not take the deep checks after deep.fabric with it.
- The rendezvous listens on the fabric address only, and a peer without the run's secret
  is never counted as joined. Real gloo between worker processes on loopback addresses.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import asdict
from types import SimpleNamespace

import pytest
from helpers import make_check, make_ctx

from nodecheck.checks.context import JobInfo
from nodecheck.core.results import CheckResult, Status
from nodecheck.probes.active import device, dist, fabric_worker

torch = pytest.importorskip("torch")

# --- timing wraps completion --------------------------------------------------------------


class FakeCuda:
    """torch.cuda as far as Stopwatch uses it; every call lands in `log`."""

    def __init__(self, log: list[str]) -> None:
        self.log = log

    def Event(self, enable_timing: bool = False):
        log = self.log
        return SimpleNamespace(
            record=lambda stream: log.append(f"record on {stream}"),
            synchronize=lambda: log.append("synchronize end event"),
            elapsed_time=lambda end: (log.append("read elapsed"), 4.0)[1],
        )

    def current_stream(self, index: int) -> str:
        return f"stream of cuda:{index}"

    def synchronize(self, index: int | None = None) -> None:
        self.log.append(f"synchronize cuda:{index}")


GPU = device.Device("cuda", 0, "NVIDIA H100 80GB HBM3", "00000000:18:00.0")


def test_a_timed_region_ends_when_the_gpu_work_completes():
    log: list[str] = []
    fake = SimpleNamespace(cuda=FakeCuda(log))
    seconds = device.time_per_call(fake, GPU, lambda: log.append("enqueue work"), repeats=1)
    assert log[-5:] == ["record on stream of cuda:0", "enqueue work", "record on stream of cuda:0",
                        "synchronize end event", "read elapsed"]  # fmt: skip
    assert seconds == pytest.approx(0.004)


def test_each_pair_exchange_is_timed_to_its_completion_on_nccl(monkeypatch):
    """pair_rounds on a CUDA device: send and recv return once enqueued (NCCL), so the
    figure must come from events recorded around them and read after synchronising."""
    log: list[str] = []
    fake_dist = SimpleNamespace(
        get_rank=lambda: 0, get_world_size=lambda: 2, barrier=lambda: log.append("barrier"),
        send=lambda buf, peer: log.append(f"send to {peer}"),
        recv=lambda buf, peer: log.append(f"recv from {peer}"),
    )  # fmt: skip
    fake = SimpleNamespace(
        cuda=FakeCuda(log), distributed=fake_dist, float32=torch.float32,
        float64=torch.float64, zeros=torch.zeros, empty_like=torch.empty_like,
        full=lambda shape, fill, dtype, device: torch.full(shape, fill, dtype=dtype),
    )  # fmt: skip
    monkeypatch.setattr(dist, "share", lambda _t, _d, seen: seen)
    figures = dist.pair_rounds(fake, GPU, [[(0, 1)]], nbytes=4096, repeats=1)
    timed = log[log.index("send to 1", log.index("send to 1") + 1) - 1 :]  # the timed repeat
    assert timed[:6] == ["record on stream of cuda:0", "send to 1", "recv from 1",
                         "record on stream of cuda:0", "synchronize end event",
                         "read elapsed"]  # fmt: skip
    assert figures[(0, 1)] == pytest.approx(2 * 4096 / 0.004 / 1e9)


# --- the rendezvous ------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(rank: int, world: int, port: int, secret: str, master: str = "127.0.0.1",
            join_s: float = 8.0, measure_s: float = 20.0) -> dict:  # fmt: skip
    rv = dist.Rendezvous(master, port, rank, world, join_s, "gloo", "lo", secret, measure_s + 30)
    return {"rendezvous": asdict(rv), "device": asdict(device.Device("cpu", 0, "cpu")),
            "measure_timeout_s": measure_s, "collective_bytes": 65536, "pair_bytes": 65536,
            "repeats": 2, "slow_fraction": 0.1}  # fmt: skip


def run_ranks(requests: list[dict]) -> list[fabric_worker.WorkerOutcome]:
    out: dict[int, fabric_worker.WorkerOutcome] = {}

    def one(rank: int, req: dict) -> None:
        rv = req["rendezvous"]
        out[rank] = fabric_worker.run_worker(req, 60, rv["timeout_s"], req["measure_timeout_s"])

    threads = [threading.Thread(target=one, args=(r, q)) for r, q in enumerate(requests)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [out[r] for r in range(len(requests))]


def events(outcome: fabric_worker.WorkerOutcome) -> list[str]:
    return [e["event"] for e in outcome.events]


def test_ranks_with_the_runs_secret_measure_and_agree():
    port = free_port()
    ranks = run_ranks([request(r, 3, port, "s3cret") for r in range(3)])
    for outcome in ranks:
        assert outcome.returncode == 0 and events(outcome)[-1] == "result", outcome
    assert {json.dumps(o.last("result")["figures"]["pass1"]) for o in ranks} != set()


def test_a_peer_without_the_runs_secret_is_never_counted_as_joined():
    port = free_port()
    member, impostor = run_ranks([request(0, 2, port, "right"), request(1, 2, port, "wrong")])
    assert member.last("join_error")["missing"] == [1]
    assert "joined" not in events(member) and "joined" not in events(impostor)


def test_the_rendezvous_listens_on_the_fabric_address_only():
    port = free_port()
    req = request(0, 2, port, "s", master="127.0.0.2", join_s=6)
    worker = threading.Thread(target=fabric_worker.run_worker, args=(req, 60, 6, 20))
    worker.start()
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # until the worker has imported torch and listens
            try:
                socket.create_connection(("127.0.0.2", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.2)
        else:
            pytest.fail("rank 0 never listened on its fabric address")
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=1)
    finally:
        worker.join()


# --- a hung rank -----------------------------------------------------------------------------


def test_a_frozen_rank_is_named_by_the_others_and_they_end_in_time():
    """Three worker processes; rank 2's is stopped (SIGSTOP: its heartbeat and its part of
    every exchange stop) once it has started measuring. Ranks 0 and 1 report it by
    measure_timeout_s and exit; its own parent then kills it at the deadline."""
    port = free_port()
    procs = []
    for rank in range(3):
        proc = subprocess.Popen(list(fabric_worker.COMMAND), stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                start_new_session=True)  # fmt: skip
        req = {**request(rank, 3, port, "s", measure_s=6), "parent": os.getpid()}
        proc.stdin.write(json.dumps(req).encode())
        proc.stdin.close()
        procs.append(proc)
    try:
        for line in procs[2].stdout:  # rank 2: stop it in its first measuring step
            if json.loads(line)["event"] == "step":
                os.kill(procs[2].pid, signal.SIGSTOP)
                break
        started = time.monotonic()
        reports = []
        for proc in procs[:2]:
            out = proc.stdout.read()  # to EOF: the worker has exited
            proc.wait(timeout=10)
            reports.append([json.loads(x) for x in out.splitlines()])
        assert time.monotonic() - started < 30
        for report in reports:
            stall = next(e for e in report if e["event"] == "stalled")
            assert stall["hung"] == [2] and stall["why"] == "heartbeat stopped", stall
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def test_each_node_decides_from_its_workers_end():
    from nodecheck.checks.deep.fabric import verdict

    rv = dist.Rendezvous("10.0.0.1", 1, 1, 3, 60, "nccl", "", "s")
    opts = {"slow_fraction": 0.5, "min_busbw_gbps": 0}
    nodes = ["n1", "n2", "n3"]
    stall = {"event": "stalled", "hung": [2], "why": "heartbeat stopped",
             "steps": {"2": "pass 1 round 0 exchange with rank 1"}}  # fmt: skip
    named = verdict("n2", nodes, rv, fabric_worker.WorkerOutcome((stall,), 3), opts)
    assert named.status is Status.WARN and "rank 2 (n3) hung" in named.message
    frozen = fabric_worker.WorkerOutcome(({"event": "joined"},), None, "all-reduce", "", 181, True)
    own = verdict("n3", nodes, dist.Rendezvous("10.0.0.1", 1, 2, 3, 60, "nccl"), frozen, opts)
    assert own.status is Status.FAIL and own.values["hung_ranks"] == [2]
    assert "rank 2 (n3) hung in all-reduce" in own.message


def fabric_ctx(secret_env: str):
    from nodecheck.checks.registry import all_checks

    options = {n: o.default for n, o in all_checks()["deep.fabric"].options.items()}
    options.update(device="cpu", address_template="127.0.0.1", interface="lo",
                   port=free_port(), join_timeout_s=3, start_timeout_s=5, measure_timeout_s=2,
                   secret_env=secret_env)  # fmt: skip
    ctx = make_ctx(phase="manual", options=options, job=JobInfo(job_id="7", nodelist="n[1-2]"))
    return ctx


def test_a_worker_that_aborts_or_hangs_leaves_the_next_deep_check_running(monkeypatch, tmp_path):
    """NCCL's watchdog aborts the process of a hung collective: with the measurement in a
    worker, deep.fabric ends (ERROR for an abort, FAIL for a hang at the deadline) and the
    next check of the deep group still runs in the same probe process."""
    from nodecheck.checks.deep.fabric import deep_fabric
    from nodecheck.checks.registry import all_checks
    from nodecheck.run.runner import Planned, run_checks

    monkeypatch.setenv("TEST_FABRIC_SECRET", "s")
    fabric = all_checks()["deep.fabric"]
    after = make_check("deep.after", lambda ctx: [CheckResult("deep.after", Status.PASS, "ran")],
                       group="deep")  # fmt: skip
    for body, status in (("import os; os.abort()", Status.ERROR),
                         ("import time; time.sleep(600)", Status.FAIL)):  # fmt: skip
        monkeypatch.setattr(fabric_worker, "COMMAND", (sys.executable, "-c", body))
        planned = [Planned(fabric, fabric_ctx("TEST_FABRIC_SECRET"), 60.0),
                   Planned(after, make_ctx(phase="manual"), 5.0)]  # fmt: skip
        results = {r.check_id: r for r in run_checks(planned, budget_s=90)}
        assert results["deep.fabric"].status is status, results["deep.fabric"]
        assert results["deep.after"].status is Status.PASS
    assert deep_fabric  # the check the runner ran is the registered one


def test_without_the_runs_secret_the_check_is_an_error(monkeypatch):
    from nodecheck.checks.deep.fabric import deep_fabric

    monkeypatch.delenv("NODECHECK_FABRIC_SECRET", raising=False)
    [result] = list(deep_fabric(fabric_ctx("NODECHECK_FABRIC_SECRET")))
    assert result.status is Status.ERROR and "no per-run secret" in result.message
