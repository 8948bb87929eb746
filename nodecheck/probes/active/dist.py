"""Fabric measurements among a job's nodes with torch.distributed (NCCL on GPUs, gloo on CPUs).

One process per node (the deep check's probe child on each node) joins a process group:
rank = the node's place in the job's node list, the first node hosts the rendezvous store.
Then, in the same order on every rank:

1. collectives: all-reduce and all-to-all bus bandwidth (nccl-tests' definitions:
   all-reduce busbw = algbw * 2(n-1)/n, all-to-all busbw = algbw * (n-1)/n) and the
   latency of a small all-reduce;
2. pairwise pass 1: every ring pair (i, i+1) exchanges a buffer both ways; pairs in one
   round share no node, so they run at once;
3. pairwise pass 2: each *suspect* (a member of a slow pair that is in no fast pair) is
   paired with a *cleared* node (a member of a fast pair). A suspect still slow with a
   cleared partner is the slow node; one that is fast now was only slow by association.

The pair figures are shared with every rank through an all-reduce of a world x world
matrix, so every rank plans pass 2, and can name the slow node, from the same numbers.
The plans (`ring_rounds`, `classify`, `second_pass_rounds`) are pure functions.

Every timed region ends with the work completed: NCCL's send/recv and collectives return
once enqueued, so each is timed by `device.Stopwatch` (CUDA events, synchronised before
they are read; on the CPU, gloo's calls complete before they return).

The rendezvous: rank 0 listens on the fabric address only (a socket bound to it, handed to
the TCPStore), not on every interface, and every key of the run lives under a prefix
derived from a per-run secret the job gives all its ranks. A peer without the secret can
reach the port but never meets the run's keys: it is not counted as joined, and the group
never waits for it.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import socket
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from types import ModuleType
from typing import Any

from nodecheck.probes.active.device import GB, Device, Stopwatch, time_per_call

# The pure planners live in ringplan: the prolog's fabric.preflight shares them without
# importing this module.
from nodecheck.probes.fabric.ringplan import (
    Pair,
    PairPlan,
    classify,
    ring_rounds,
    second_pass_rounds,
)


@dataclass(frozen=True)
class Rendezvous:
    """Where and how this rank meets the others."""

    master_addr: str
    port: int
    rank: int
    world: int
    timeout_s: float
    backend: str  # "nccl" or "gloo"
    interface: str = ""  # GLOO_SOCKET_IFNAME / NCCL_SOCKET_IFNAME: the fabric netdev
    secret: str = ""  # the run's shared secret; its digest prefixes every key
    group_timeout_s: float = 0.0  # the process group's own timeout (0: timeout_s)

    @property
    def prefix(self) -> str:
        """The run's key prefix: a digest, so the secret itself never crosses the wire."""
        digest = hashlib.sha256(self.secret.encode()).hexdigest()[:32]
        return f"nodecheck/{digest}/"


@dataclass(frozen=True)
class Collectives:
    """Bus bandwidth of the collectives (GB/s) and small all-reduce latency (us)."""

    allreduce_busbw: float
    alltoall_busbw: float
    latency_us: float
    nbytes: int


@dataclass(frozen=True)
class FabricFigures:
    """Everything measured among the nodes, identical on every rank."""

    world: int
    collectives: Collectives | None
    pass1: dict[Pair, float]
    pass2: dict[Pair, float] = field(default_factory=dict)
    plan: PairPlan | None = None


class JoinError(Exception):
    """Not every rank joined in time; `missing` lists the ranks that never showed up."""

    def __init__(self, message: str, missing: Sequence[int]) -> None:
        super().__init__(message)
        self.missing = tuple(missing)


# --- plans (pure; the ring planners are in nodecheck.probes.fabric.ringplan) ----------


def bus_factor(op: str, world: int) -> float:
    """nccl-tests' algbw -> busbw factor (doc/PERFORMANCE.md)."""
    if world < 2:
        return 1.0
    return 2 * (world - 1) / world if op == "allreduce" else (world - 1) / world


# --- measurement ------------------------------------------------------------------------


def listener(address: str, port: int) -> int:
    """A TCP socket listening on `address` only (the fabric interface's), as a descriptor
    for the TCPStore to take over. TCPStore alone listens on every interface."""
    family, kind, proto, _, where = socket.getaddrinfo(address, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(where)
        sock.listen(256)
    except OSError:
        sock.close()
        raise
    return sock.detach()  # the store owns it from here; Python must not close it


def store_client(torch: ModuleType, rv: Rendezvous, timeout_s: float) -> Any:
    """Another connection to the run's store, under its prefix (for a second thread)."""
    dist = torch.distributed
    raw = dist.TCPStore(rv.master_addr, rv.port, rv.world, is_master=False,
                        timeout=datetime.timedelta(seconds=timeout_s))  # fmt: skip
    return dist.PrefixStore(rv.prefix, raw)


def join(torch: ModuleType, rv: Rendezvous) -> Any:
    """Join the group; JoinError naming the ranks that did not arrive within the timeout.
    Returns the run's (prefixed) store."""
    if rv.interface:
        os.environ["GLOO_SOCKET_IFNAME"] = rv.interface
        os.environ["NCCL_SOCKET_IFNAME"] = rv.interface
    dist = torch.distributed
    timeout = datetime.timedelta(seconds=rv.timeout_s)
    fd = listener(rv.master_addr, rv.port) if rv.rank == 0 else None
    raw = dist.TCPStore(
        rv.master_addr, rv.port, rv.world, is_master=rv.rank == 0, timeout=timeout,
        wait_for_workers=False, master_listen_fd=fd,
    )  # fmt: skip
    store = dist.PrefixStore(rv.prefix, raw)
    store.set(f"joined/{rv.rank}", "1")
    keys = [f"joined/{r}" for r in range(rv.world)]
    try:
        store.wait(keys, timeout)
    except (RuntimeError, dist.DistStoreError) as exc:
        missing = [r for r in range(rv.world) if not store.check([keys[r]])]
        raise JoinError(f"ranks {missing} did not join within {rv.timeout_s:g}s", missing) from exc
    group_timeout = datetime.timedelta(seconds=rv.group_timeout_s or rv.timeout_s)
    dist.init_process_group(rv.backend, store=store, rank=rv.rank, world_size=rv.world,
                            timeout=group_timeout)  # fmt: skip
    return store


def leave(torch: ModuleType) -> None:
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def _buffer(torch: ModuleType, device: Device, nbytes: int, fill: float = 1.0) -> Any:
    return torch.full((max(1, nbytes // 4),), fill, dtype=torch.float32, device=device.torch_name)


def _timed(torch: ModuleType, device: Device, work: Any, repeats: int) -> float:
    return time_per_call(torch, device, work, repeats)


Progress = Callable[[str], None]  # told the name of each step as it starts


def _quiet(_step: str) -> None:
    pass


def collectives(
    torch: ModuleType, device: Device, nbytes: int, repeats: int, step: Progress = _quiet
) -> Collectives:
    dist = torch.distributed
    world = dist.get_world_size()
    data = _buffer(torch, device, nbytes)
    step("all-reduce")
    seconds = _timed(torch, device, lambda: dist.all_reduce(data), repeats)
    allreduce = data.numel() * 4 / seconds / GB * bus_factor("allreduce", world)
    count = max(world, (data.numel() // world) * world)
    send = _buffer(torch, device, count * 4)
    recv = torch.empty_like(send)
    step("all-to-all")
    seconds = _timed(torch, device, lambda: dist.all_to_all_single(recv, send), repeats)
    alltoall = count * 4 / seconds / GB * bus_factor("alltoall", world)
    tiny = _buffer(torch, device, 8)
    step("latency")
    latency = _timed(torch, device, lambda: dist.all_reduce(tiny), max(repeats, 10)) * 1e6
    return Collectives(allreduce, alltoall, latency, data.numel() * 4)


def _exchange(torch: ModuleType, buf: Any, recv: Any, me: int, peer: int) -> None:
    """Both directions of one pair, in an order both ends agree on (lower rank sends first).
    On NCCL these return once enqueued: the caller's Stopwatch waits for completion."""
    dist = torch.distributed
    if me < peer:
        dist.send(buf, peer)
        dist.recv(recv, peer)
    else:
        dist.recv(recv, peer)
        dist.send(buf, peer)


def pair_rounds(
    torch: ModuleType,
    device: Device,
    rounds: list[list[Pair]],
    nbytes: int,
    repeats: int,
    step: Progress = _quiet,
    label: str = "pass 1",
) -> dict[Pair, float]:
    """Run the rounds; every rank returns every pair's figure (GB/s, both ways counted)."""
    dist = torch.distributed
    me, world = dist.get_rank(), dist.get_world_size()
    buf = _buffer(torch, device, nbytes)
    recv = torch.empty_like(buf)
    seen = torch.zeros(world, world, dtype=torch.float64)
    for number, round_pairs in enumerate(rounds):
        mine = next((p for p in round_pairs if me in p), None)
        if mine is not None:
            peer = mine[1] if mine[0] == me else mine[0]
            step(f"{label} round {number} exchange with rank {peer}")
            _exchange(torch, buf, recv, me, peer)  # warm-up: connection and buffers
            samples = []
            for _ in range(max(1, repeats)):
                watch = Stopwatch(torch, device)
                watch.start()
                _exchange(torch, buf, recv, me, peer)
                samples.append(watch.stop())  # the transfer completed, not only enqueued
            if me == mine[0]:  # the lower rank records the pair
                # The best repeat: a slow link is slow every time, a busy CPU only sometimes.
                seen[mine] = 2 * buf.numel() * 4 / max(min(samples), 1e-9) / GB
        step(f"{label} round {number} barrier")
        dist.barrier()
    step(f"{label} sharing the figures")
    seen = share(torch, device, seen)
    return {p: float(seen[p]) for r in rounds for p in r}


def share(torch: ModuleType, device: Device, seen: Any) -> Any:
    """Every rank's pair figures summed into every rank's matrix (each pair is recorded by
    one rank only). NCCL reduces device tensors only."""
    dist = torch.distributed
    if device.kind == "cuda":
        shared = seen.to(device.torch_name)
        dist.all_reduce(shared)
        return shared.cpu()
    dist.all_reduce(seen)
    return seen


def measure(
    torch: ModuleType,
    device: Device,
    *,
    collective_bytes: int,
    pair_bytes: int,
    repeats: int,
    slow_fraction: float,
    step: Progress = _quiet,
) -> FabricFigures:
    """Collectives, then the two pairwise passes. The group must be joined already."""
    world = torch.distributed.get_world_size()
    coll = collectives(torch, device, collective_bytes, repeats, step) if world > 1 else None
    pass1 = pair_rounds(torch, device, ring_rounds(world), pair_bytes, repeats, step)
    plan = classify(pass1, slow_fraction) if pass1 else None
    pass2 = {}
    if plan is not None and plan.slow:
        pass2 = pair_rounds(torch, device, second_pass_rounds(plan), pair_bytes, repeats,
                            step, "pass 2")  # fmt: skip
    return FabricFigures(world, coll, pass1, pass2, plan)


# --- the figures as JSON (the worker process hands them to the check) --------------------


def _pairs_out(pairs: dict[Pair, float]) -> dict[str, float]:
    return {f"{a}-{b}": bw for (a, b), bw in pairs.items()}


def _pairs_in(data: dict[str, float]) -> dict[Pair, float]:
    out: dict[Pair, float] = {}
    for key, bw in data.items():
        a, b = key.split("-")
        out[(int(a), int(b))] = float(bw)
    return out


def figures_to_dict(figures: FabricFigures) -> dict[str, Any]:
    plan = figures.plan
    return {
        "world": figures.world,
        "collectives": asdict(figures.collectives) if figures.collectives else None,
        "pass1": _pairs_out(figures.pass1),
        "pass2": _pairs_out(figures.pass2),
        "plan": None if plan is None else {
            "reference": plan.reference, "slow": [list(p) for p in plan.slow],
            "suspects": list(plan.suspects), "cleared": list(plan.cleared),
        },
    }  # fmt: skip


def figures_from_dict(data: dict[str, Any]) -> FabricFigures:
    plan = data.get("plan")
    coll = data.get("collectives")
    return FabricFigures(
        int(data["world"]),
        Collectives(**coll) if coll else None,
        _pairs_in(data.get("pass1") or {}),
        _pairs_in(data.get("pass2") or {}),
        None if plan is None else PairPlan(
            float(plan["reference"]), tuple((int(a), int(b)) for a, b in plan["slow"]),
            tuple(plan["suspects"]), tuple(plan["cleared"]),
        ),
    )  # fmt: skip
