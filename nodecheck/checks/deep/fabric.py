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
  nodes that did join (as fabric.peers does).
"""

from __future__ import annotations

from collections.abc import Iterator

from nodecheck import hostlist
from nodecheck.checks.context import CheckContext
from nodecheck.checks.deep.gpu import GROUP, select_devices
from nodecheck.checks.registry import Option, check
from nodecheck.run.progress import note
from nodecheck.run.results import CheckResult, Status

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
    that is slow with every partner FAILs and is named on every node. Fix: check that
    node's HCA port (ib.port, ib.counters), cable and switch port; `ib_write_bw` between
    it and a healthy node (deep.ibperf) confirms."""
    # Loaded here, in the probe child: torch, socket and threading stay off the hooks' path.
    from nodecheck.checks.deep import judge
    from nodecheck.probes.active import dist
    from nodecheck.probes.fabric.peers import node_address

    opts = ctx.options
    nodes = hostlist.expand(ctx.job.nodelist or "")
    if ctx.node not in nodes:
        yield CheckResult(CID, Status.SKIP, f"{ctx.node} is not in the job's node list")
        return
    if len(nodes) < 2:
        yield CheckResult(CID, Status.SKIP, "single-node job: no fabric between nodes")
        return
    chosen = select_devices(ctx, CID)
    yield from chosen.skipped
    if chosen.torch is None or not chosen.devices:
        return
    device = chosen.devices[0]
    backend = opts["backend"]
    if backend == "auto":
        backend = "nccl" if device.kind == "cuda" else "gloo"
    rv = dist.Rendezvous(
        master_addr=node_address(nodes[0], opts["address_template"], opts["addresses"]),
        port=int(opts["port"]),
        rank=nodes.index(ctx.node),
        world=len(nodes),
        timeout_s=float(opts["join_timeout_s"]),
        backend=backend,
        interface=opts["interface"],
    )
    torch = chosen.torch
    note(f"deep.fabric: joining {rv.world} ranks at {rv.master_addr}:{rv.port}")
    try:
        dist.join(torch, rv)
    except dist.JoinError as exc:
        missing = ", ".join(nodes[r] for r in exc.missing)
        msg = f"fabric test incomplete: {missing} did not join within {rv.timeout_s:g}s"
        yield CheckResult(CID, Status.WARN, msg, ctx.node, {"missing": missing.split(", ")})
        return
    except (RuntimeError, ValueError, OSError) as exc:
        where = f"{rv.master_addr}:{rv.port}"
        msg = f"fabric test incomplete: no rendezvous at {where}: {str(exc).splitlines()[0]}"
        yield CheckResult(CID, Status.WARN, msg[:300], ctx.node)
        return
    try:
        note("deep.fabric: measuring")
        figures = dist.measure(
            torch,
            device,
            collective_bytes=int(opts["collective_mib"] * MIB),
            pair_bytes=int(opts["pair_mib"] * MIB),
            repeats=int(opts["repeats"]),
            slow_fraction=float(opts["slow_fraction"]),
        )
    finally:
        dist.leave(torch)
    yield judge.judge_fabric(
        ctx.node,
        nodes,
        figures,
        slow_fraction=float(opts["slow_fraction"]),
        min_busbw_gbps=float(opts["min_busbw_gbps"]),
    )
