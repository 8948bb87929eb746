"""deep.fabric: bandwidth and latency among the job's nodes, naming the slow node.

Every node of the job runs this check at the same time (a validation job: `srun nodecheck
run --tier deep --check deep.fabric` on each node). The measurement is
`nodecheck.probes.active.dist` (torch.distributed: NCCL on GPUs, gloo on CPUs); the
verdict here is a pure function of the figures, which every node holds identically:

- a node that pass 2 confirms slow (slow again with a node cleared in pass 1) FAILs, with
  its figure next to the healthy pairs' reference;
- every other node PASSes, and its values name the slow node(s) for the report;
- a slow pair whose two members are both fast with others is the path between them
  (a switch port, a route): WARN on both, nobody is drained for it;
- a node that never joins makes the test incomplete: WARN, never a reason to drain the
  nodes that did join (as fabric.peers does);
- a rank that hangs mid-run ends the check at `measure_timeout_s`: its own node FAILs
  (its worker froze, or every peer saw its heartbeat stop), every other node WARNs and
  names it. The measurement runs in a worker process of its own
  (probes/active/fabric_worker.py), so a hang, or NCCL's watchdog aborting that process,
  never takes the deep checks after this one with it.

The rendezvous listens on the first node's fabric address only, and every key of the run
lives under a prefix derived from a per-run secret that the job hands every node
(`NODECHECK_FABRIC_SECRET` in its environment, which srun passes on, or `secret_file`):
without it the check is an ERROR, and a peer without it never joins the run.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from nodecheck import hostlist
from nodecheck.checks.context import CheckContext
from nodecheck.checks.deep.common import GROUP, select_devices
from nodecheck.checks.registry import Option, check
from nodecheck.core.progress import note
from nodecheck.core.results import CheckResult, Status

if TYPE_CHECKING:
    from nodecheck.probes.active.fabric_worker import WorkerOutcome

CID = "deep.fabric"
MIB = 1024**2


@check(
    CID,
    tier="deep",
    group=GROUP,
    summary="bandwidth/latency among the job's nodes (torch.distributed); names the slow node",
    phases=("manual",),
    timeout_s=300.0,
    severity="high",
    remedy="check-cable",
    memory_limit_mb=0,
    options={
        "device": Option(str, "auto", "'auto' (a GPU with NCCL, else the CPU with gloo)"),
        "backend": Option(
            str, "auto", "'auto', 'nccl' or 'gloo'", choices=("auto", "nccl", "gloo")
        ),
        "address_template": Option(
            str, "{node}", "fabric address of a node ({node}, {num}); the rendezvous is node 1's"
        ),
        "addresses": Option(dict, {}, "node -> fabric address, overrides the template", item=str),
        "interface": Option(str, "", "netdev the backend binds (GLOO/NCCL_SOCKET_IFNAME)"),
        "port": Option(int, 29517, "TCP port of the rendezvous on the first node"),
        "join_timeout_s": Option((int, float), 60.0, "wait this long for every node to join"),
        "start_timeout_s": Option(
            (int, float), 60.0, "allowance for the worker to start (torch import, CUDA init)"
        ),
        "measure_timeout_s": Option(
            (int, float), 120.0, "a run not done this long after joining has a hung rank"
        ),
        "secret_env": Option(
            str, "NODECHECK_FABRIC_SECRET", "environment variable with the run's shared secret"
        ),
        "secret_file": Option(str, "", "file with the run's shared secret (instead of the env)"),
        "collective_mib": Option((int, float), 64, "all-reduce / all-to-all buffer (MiB)"),
        "pair_mib": Option((int, float), 64, "bytes each pair exchanges per direction (MiB)"),
        "repeats": Option(int, 5, "timed repeats per figure (the median counts)"),
        "slow_fraction": Option(
            float, 0.5, "a pair below this share of the healthy pairs' figure is slow"
        ),
        "min_busbw_gbps": Option((int, float), 0, "WARN when all-reduce busbw is below (0: off)"),
    },
)
def deep_fabric(ctx: CheckContext) -> Iterator[CheckResult]:
    """Runs torch.distributed among all nodes of the job (SLURM_NODELIST): all-reduce and
    all-to-all bus bandwidth and small-message latency, then pairwise exchanges around the
    ring and a second pass that pairs each suspect with a node already cleared. The node
    that is slow with every partner FAILs and is named on every node; a rank that hangs
    FAILs on its node and is named on the others. Needs the run's secret on every node
    (NODECHECK_FABRIC_SECRET). Fix: check that node's HCA port (ib.port, ib.counters),
    cable and switch port; `ib_write_bw` between it and a healthy node (deep.ibperf)
    confirms."""
    # Loaded here, in the probe child: torch, socket and threading stay off the hooks' path.
    from nodecheck.probes.active import dist, fabric_worker
    from nodecheck.probes.fabric.peers import node_address

    opts = ctx.options
    nodes = hostlist.expand(ctx.job.nodelist or "")
    if ctx.node not in nodes:
        yield CheckResult(CID, Status.SKIP, f"{ctx.node} is not in the job's node list")
        return
    if len(nodes) < 2:
        yield CheckResult(CID, Status.SKIP, "single-node job: no fabric between nodes")
        return
    secret, where = _secret(opts)
    if not secret:
        msg = (f"no per-run secret ({where}): give every node of the job the same one, e.g. "
               f"`{opts['secret_env']}=$(openssl rand -hex 16) srun ...`")  # fmt: skip
        yield CheckResult(CID, Status.ERROR, msg[:300], ctx.node)
        return
    chosen = select_devices(ctx, CID)
    yield from chosen.skipped
    if chosen.torch is None or not chosen.devices:
        return
    device = chosen.devices[0]
    backend = opts["backend"]
    if backend == "auto":
        backend = "nccl" if device.kind == "cuda" else "gloo"
    measure_s = float(opts["measure_timeout_s"])
    rv = dist.Rendezvous(
        master_addr=node_address(nodes[0], opts["address_template"], opts["addresses"]),
        port=int(opts["port"]),
        rank=nodes.index(ctx.node),
        world=len(nodes),
        timeout_s=float(opts["join_timeout_s"]),
        backend=backend,
        interface=opts["interface"],
        secret=secret,
        # The group's own timeout (NCCL's watchdog) comes after our stall report.
        group_timeout_s=measure_s + 60,
    )
    request = {
        "rendezvous": asdict(rv), "device": asdict(device), "measure_timeout_s": measure_s,
        "collective_bytes": int(opts["collective_mib"] * MIB),
        "pair_bytes": int(opts["pair_mib"] * MIB), "repeats": int(opts["repeats"]),
        "slow_fraction": float(opts["slow_fraction"]),
    }  # fmt: skip
    note(f"deep.fabric: rank {rv.rank} of {rv.world}, rendezvous {rv.master_addr}:{rv.port}")
    ran = fabric_worker.run_worker(request, float(opts["start_timeout_s"]), rv.timeout_s,
                                   measure_s)  # fmt: skip
    yield verdict(ctx.node, nodes, rv, ran, opts)


def _secret(opts: dict[str, Any] | Any) -> tuple[str, str]:
    """The run's secret and where it was looked for."""
    if opts["secret_file"]:
        try:
            with open(opts["secret_file"], encoding="utf-8") as f:
                return f.read().strip(), f"file {opts['secret_file']}"
        except OSError as exc:
            return "", f"{opts['secret_file']}: {exc.strerror}"
    name = opts["secret_env"]
    return os.environ.get(name, "").strip(), f"${name} is not set"


def verdict(
    me: str, nodes: list[str], rv: Any, ran: WorkerOutcome, opts: dict[str, Any] | Any
) -> CheckResult:
    """This node's result from how its worker ended (pure, given the outcome)."""
    from nodecheck.checks.deep import judge
    from nodecheck.probes.active import dist

    if (result := ran.last("result")) is not None:
        figures = dist.figures_from_dict(result["figures"])
        return judge.judge_fabric(me, nodes, figures, slow_fraction=float(opts["slow_fraction"]),
                                  min_busbw_gbps=float(opts["min_busbw_gbps"]))  # fmt: skip
    if (joined := ran.last("join_error")) is not None:
        missing = [nodes[r] for r in joined["missing"]]
        msg = f"fabric test incomplete: {', '.join(missing)} did not join within {rv.timeout_s:g}s"
        return CheckResult(CID, Status.WARN, msg[:300], me, {"missing": missing})
    if (failed := ran.last("no_rendezvous")) is not None:
        where = f"{rv.master_addr}:{rv.port}"
        msg = f"fabric test incomplete: no rendezvous at {where}: {failed['message']}"
        return CheckResult(CID, Status.WARN, msg[:300], me)
    if (stall := ran.last("stalled")) is not None:
        return _stalled(me, nodes, rv.rank, stall)
    if ran.returncode is None:
        step = ran.last_step or ("joining" if not ran.joined else "measuring")
        values = {"hung": True, "hung_ranks": [rv.rank], "step": step}
        msg = (f"fabric worker of rank {rv.rank} ({me}) hung in {step}: killed after "
               f"{ran.took_s:.0f}s")  # fmt: skip
        return CheckResult(CID, Status.FAIL, msg, me, values)
    msg = f"fabric worker ended without a result (exit {ran.returncode}): {ran.stderr_tail}"
    return CheckResult(CID, Status.ERROR, msg[:300], me, {"exit": ran.returncode})


def _stalled(me: str, nodes: list[str], rank: int, stall: dict[str, Any]) -> CheckResult:
    hung = [int(r) for r in stall.get("hung", [])]
    named = [f"rank {r} ({nodes[r]})" for r in hung]
    steps = stall.get("steps") or {}
    values = {
        "hung": True,
        "hung_ranks": hung,
        "hung_nodes": [nodes[r] for r in hung],
        "why": stall.get("why", ""),
        "steps": steps,
        "reason": stall.get("reason", ""),
    }
    if rank in hung:
        msg = f"rank {rank} ({me}) hung in {steps.get(str(rank), '?')}: {stall.get('why', '')}"
        return CheckResult(CID, Status.FAIL, msg[:300], me, values)
    if hung:
        where = steps.get(str(hung[0]), "?")
        msg = f"fabric test incomplete: {', '.join(named)} hung in {where} ({stall.get('why')})"
        return CheckResult(CID, Status.WARN, msg[:300], me, values)
    msg = f"fabric test stalled ({stall.get('reason', '')}): {stall.get('why', '')}"
    return CheckResult(CID, Status.WARN, msg[:300], me, values)
