"""deep.fabric's measurement in a process of its own: `python -m ...fabric_worker`.

Why a separate process: the deep checks share one probe process, and a fabric run can end
it. A rank that hangs makes NCCL's watchdog abort the process when its collective times
out, and a CUDA context poisoned by a failed transfer stays poisoned: every later deep check
would become an ERROR. Here only this worker dies; it is a fresh interpreter (never a fork of
a process that initialised CUDA), in its own session, killed with its parent.

Two halves:
- `run_worker` (the check's side): starts the worker, hands it the request on stdin (the
  run's secret included: never on a command line), reads its events (one JSON object per
  line on stdout) and kills its session at the deadline;
- `main` (the worker): joins the group, measures, and prints the figures. A heartbeat
  thread writes `beat/<rank>` to the run's store every half second and the main thread
  writes `step/<rank>` as each step starts. When the measurement is not done by
  `measure_timeout_s` (or a collective fails), the worker reads every rank's beats and
  steps: a rank whose heartbeat stopped (its process is frozen), or that is behind the
  step the others wait in, is the hung one; a store that no longer answers is rank 0's.
  It prints that as a "stalled" event and exits. A worker frozen itself prints nothing:
  its parent kills it at the deadline, and that is its own rank's hang.

Measurement and what was read only: deep.fabric (checks/deep/fabric.py) decides.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime
import json
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

BEAT_S = 0.5
JOIN_GRACE_S = 8.0  # rank 0 keeps the store up this long after a failed join
# ... and at most this long after a stall, until every rank it saw alive has read the board:
# a rank slower to look (a loaded node) would otherwise find the store gone and blame rank 0.
STALL_GRACE_S = 15.0
# The worker's command; tests replace it (a worker that hangs, one that aborts).
COMMAND: tuple[str, ...] = (sys.executable, "-m", "nodecheck.probes.active.fabric_worker")


@dataclass(frozen=True)
class WorkerOutcome:
    """What the worker printed, how it ended (None: killed at the deadline), its last step,
    and the tail of its stderr."""

    events: tuple[dict[str, Any], ...]
    returncode: int | None
    last_step: str = ""
    stderr_tail: str = ""
    took_s: float = 0.0
    joined: bool = False

    def last(self, kind: str) -> dict[str, Any] | None:
        return next((e for e in reversed(self.events) if e.get("event") == kind), None)


def run_worker(request: dict[str, Any], start_s: float, join_s: float, measure_s: float,
               command: Sequence[str] | None = None) -> WorkerOutcome:  # fmt: skip
    """Run one worker to its end or its deadline: `start_s + join_s` to join, then
    `measure_s` plus a grace for the stall report."""
    started = time.monotonic()
    deadline = started + start_s + join_s
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(
            list(command or COMMAND), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=err, start_new_session=True,
        )  # fmt: skip
        assert proc.stdin is not None and proc.stdout is not None
        with contextlib.suppress(BrokenPipeError):
            proc.stdin.write(json.dumps({**request, "parent": os.getpid()}).encode())
            proc.stdin.close()
        events, buffer, last_step, joined = [], b"", "", False
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                if not sel.select(left):
                    continue
                chunk = os.read(proc.stdout.fileno(), 65536)
                if not chunk:
                    break
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    with contextlib.suppress(ValueError):
                        event = json.loads(line)
                        events.append(event)
                        if event.get("event") == "step":
                            last_step = event.get("step", "")
                        elif event.get("event") == "joined":
                            joined = True
                            # The stall report needs a few seconds after measure_s.
                            deadline = time.monotonic() + measure_s + 20
        timed_out = proc.poll() is None and time.monotonic() >= deadline
        if proc.poll() is None and not timed_out:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)  # said its last; let it exit
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        code = proc.wait()
        err.seek(0)
        tail = err.read()[-2000:].decode(errors="replace").strip().splitlines()[-1:] or [""]
    return WorkerOutcome(tuple(events), None if timed_out else code, last_step, tail[0],
                         time.monotonic() - started, joined)  # fmt: skip


# --- the worker ---------------------------------------------------------------------------


def _emit(event: str, **values: Any) -> None:
    sys.stdout.write(json.dumps({"event": event, **values}) + "\n")
    sys.stdout.flush()


def _die_with(parent: int) -> None:
    """SIGKILL when the probe process dies (even by kill -9): no orphan holds a GPU."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    if parent and os.getppid() != parent:
        os._exit(1)


class Board:
    """This rank's heartbeat and step on the run's store, and the reading of everyone's."""

    def __init__(self, torch: Any, rv: Any) -> None:
        from nodecheck.probes.active import dist

        self._torch, self._rv, self._dist = torch, rv, dist
        self._steps = dist.store_client(torch, rv, 10.0)
        self._index = 0
        self._stop = threading.Event()

    def start(self) -> None:
        threading.Thread(target=self._beat, name="nodecheck-beat", daemon=True).start()

    def _beat(self) -> None:
        try:
            client = self._dist.store_client(self._torch, self._rv, 5.0)
            count = 0
            while not self._stop.is_set():
                client.set(f"beat/{self._rv.rank}", str(count))
                count += 1
                self._stop.wait(BEAT_S)
        except Exception:  # the store went away: the stall report will say so
            return

    def step(self, name: str) -> None:
        self._index += 1
        _emit("step", step=name)
        with contextlib.suppress(Exception):
            self._steps.set(f"step/{self._rv.rank}", f"{self._index}|{name}")

    def done(self) -> None:
        self._stop.set()

    def reported(self) -> None:
        """This rank has read the board for its stall report."""
        with contextlib.suppress(Exception):
            self._steps.set(f"reported/{self._rv.rank}", "1")

    def wait_for_reports(self, hung: list[int], timeout_s: float) -> None:
        """On rank 0, the store's host: until every other rank not named hung has read it."""
        alive = [r for r in range(self._rv.world) if r != self._rv.rank and r not in hung]
        with contextlib.suppress(Exception):
            keys = [f"reported/{r}" for r in alive]
            self._steps.wait(keys, datetime.timedelta(seconds=timeout_s))

    def analyse(self) -> dict[str, Any]:
        """Whose heartbeat stopped, who is behind: the hung ranks as this rank sees them."""
        world, me = self._rv.world, self._rv.rank
        try:
            client = self._dist.store_client(self._torch, self._rv, 5.0)

            def read(key: str) -> str | None:
                return client.get(key).decode() if client.check([key]) else None

            first = [read(f"beat/{r}") for r in range(world)]
            time.sleep(4 * BEAT_S)
            second = [read(f"beat/{r}") for r in range(world)]
            steps = [read(f"step/{r}") or "0|not started" for r in range(world)]
        except Exception as exc:
            why = f"the rendezvous store on rank 0 does not answer ({type(exc).__name__})"
            return {"hung": [] if me == 0 else [0], "silent": [], "steps": {}, "why": why}
        silent = [
            r for r in range(world) if r != me and (second[r] is None or second[r] == first[r])
        ]
        index = [int(s.split("|", 1)[0]) for s in steps]
        behind = [r for r in range(world) if index[r] < max(index)]
        named = {str(r): s.split("|", 1)[1] for r, s in enumerate(steps)}
        if silent:
            why = "heartbeat stopped"
        elif behind:
            why = "behind the step the others wait in"
        else:
            why = "every rank alive and at the same step: none identifiable"
        return {"hung": silent or behind, "silent": silent, "steps": named, "why": why}


def main() -> int:
    request = json.loads(sys.stdin.read())
    _die_with(int(request.get("parent", 0)))
    from nodecheck.probes.active import device as active
    from nodecheck.probes.active import dist

    torch = active.load_torch()
    dev = active.Device(**request["device"])
    if dev.kind == "cuda":
        torch.cuda.set_device(dev.index)
    rv = dist.Rendezvous(**request["rendezvous"])
    _emit("started", rank=rv.rank, pid=os.getpid())
    try:
        store = dist.join(torch, rv)
    except dist.JoinError as exc:
        _emit("join_error", missing=list(exc.missing), message=str(exc))
        if rv.rank == 0:
            # The others time out moments later (they started later) and ask the store who
            # is missing: it is ours, so it stays up a little while they read it.
            time.sleep(JOIN_GRACE_S)
        return 0
    except (RuntimeError, ValueError, OSError) as exc:
        _emit("no_rendezvous", message=str(exc).splitlines()[0][:300] if str(exc) else repr(exc))
        return 0
    _emit("joined", rank=rv.rank)
    board = Board(torch, rv)
    board.start()
    reported = threading.Lock()

    def stalled(reason: str) -> None:
        if reported.acquire(blocking=False):
            found = board.analyse()
            _emit("stalled", reason=reason, **found)
            if rv.rank == 0:
                board.wait_for_reports(found["hung"], STALL_GRACE_S)
            else:
                board.reported()
            os._exit(3)  # a collective may be stuck in C++: no clean way out

    timer = threading.Timer(float(request["measure_timeout_s"]), stalled, ("timeout",))
    timer.daemon = True
    timer.start()
    try:
        figures = dist.measure(
            torch, dev, collective_bytes=int(request["collective_bytes"]),
            pair_bytes=int(request["pair_bytes"]), repeats=int(request["repeats"]),
            slow_fraction=float(request["slow_fraction"]), step=board.step,
        )  # fmt: skip
    except Exception as exc:
        stalled(f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}")
        return 3
    timer.cancel()
    board.done()
    _emit("result", figures=dist.figures_to_dict(figures))
    # Rank 0 hosts the store: it stays until every rank has its figures, so that no rank's
    # last collective or store write meets a closed socket.
    store.set(f"done/{rv.rank}", "1")
    if rv.rank == 0:
        with contextlib.suppress(Exception):
            store.wait([f"done/{r}" for r in range(rv.world)], datetime.timedelta(seconds=15))
    sys.stdout.flush()
    os._exit(0)  # destroying the group could wait on peers that are already gone


if __name__ == "__main__":
    sys.exit(main())
