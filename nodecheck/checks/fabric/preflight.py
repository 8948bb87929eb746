"""fabric.preflight (opt-in): at job start, the allocation's nodes measure each other over
the fabric and the slow node FAILs (drained, the job requeued onto healthy nodes)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from nodecheck.checks.context import CheckContext
from nodecheck.checks.fabric.common import ADDRESS_OPTIONS
from nodecheck.checks.registry import Option, check
from nodecheck.core.progress import note
from nodecheck.core.results import CheckResult, Status

ID = "fabric.preflight"


@check(
    ID,
    summary="multi-node jobs: ring neighbours' fabric bandwidth measured at job start; "
    "the slow node FAILs (opt-in)",
    phases=("prolog",),
    timeout_s=15.0,
    enabled_by_default=False,
    severity="high",
    remedy="check-cable",
    options={
        **ADDRESS_OPTIONS,
        "port": Option(int, 18900, "first TCP port (open port..port+port_span-1 between nodes)"),
        "port_span": Option(
            int, 100, "the job's port is port + job id mod port_span", low=1, high=10000
        ),
        "key_file": Option(
            str, "/etc/munge/munge.key", "root-only key every node has; the job's key is derived"
        ),
        "join_s": Option((int, float), 3.0, "wait this long for every node to join", low=0.1),
        "measure_s": Option(
            (int, float), 5.0, "the coordinator's measurement budget after joining", low=0.5
        ),
        "transfer_mib": Option((int, float), 8, "bytes per direction per pair (MiB)", low=0.0625),
        "transfer_s": Option(
            (int, float), 0.25, "a bulk transfer stops sending after this", low=0.01
        ),
        "pings": Option(int, 20, "round trips timed per pair for the latency", low=1, high=1000),
        "repeats": Option(
            int,
            2,
            "transfers each way per pair, the best counts (a capped one: no more)",
            low=1,
            high=10,
        ),
        "slow_fraction": Option(
            float,
            0.25,
            "a pair below this share of the healthy median is slow (deep.fabric: 0.5)",
            low=0.01,
            high=0.99,
        ),
        "min_mb_s": Option(
            (int, float),
            0,
            "WARN when the allocation's median is below this (MB/s; 0: off)",
            low=0,
        ),
        "max_nodes": Option(int, 256, "larger jobs SKIP (one coordinator serves them all)"),
        "partitions": Option(
            list, [], "run only for jobs in these partitions ([]: every partition)", item=str
        ),
    },
)
def fabric_preflight(ctx: CheckContext) -> Iterator[CheckResult]:
    """One slow or flapping link in a multi-node job slows every rank. At job start every
    node of the allocation measures its ring neighbours (latency, bandwidth both ways) over
    the fabric; a node slow with both neighbours and again with a node cleared in the first
    pass FAILs with its figure against the allocation's healthy median, and Slurm requeues
    the job onto healthy nodes. A node that never joins, or a two-node job, only WARNs.
    Fix: the slow node's cable, port, HCA (ib.port rate/width, ib.counters), `ip -s link`."""
    from nodecheck import hostlist
    from nodecheck.checks.fabric.preflight_judge import JUDGING
    from nodecheck.probes.fabric import peers as peer_probe
    from nodecheck.probes.fabric import preflight, preflight_wire

    opts = ctx.options
    problems = []
    if opts["port"] < 1 or opts["port"] + opts["port_span"] > 65536:
        problems.append("port .. port + port_span - 1 must be within 1-65535")
    if opts["join_s"] + opts["measure_s"] > 60:
        problems.append("join_s + measure_s must be at most 60")
    # A member may wait for the others to join after it did, then for the measurement:
    # the whole preflight must end before the runner's deadline, or every node of the job
    # would be killed there and FAIL as "hung" for a setting.
    needed = 2 * opts["join_s"] + opts["measure_s"] + opts["resolve_timeout_s"]
    if ctx.timeout_s is not None and needed > ctx.timeout_s:
        problems.append(
            f"2 x join_s + measure_s + resolve_timeout_s ({needed:g} s) exceeds the check's "
            f"timeout_s ({ctx.timeout_s:g} s)"
        )
    if problems:
        yield CheckResult(ID, Status.ERROR, "bad options: " + "; ".join(problems))
        return
    job = ctx.job.job_id
    if not ctx.job.nodelist or not job:
        yield CheckResult(ID, Status.SKIP, "no job node list or job id (SLURM_NODELIST)")
        return
    try:
        nodes = sorted(set(hostlist.expand(ctx.job.nodelist)), key=_natural)
    except ValueError as exc:
        yield CheckResult(ID, Status.ERROR, f"node list not understood: {exc}")
        return
    if len(nodes) < 2:
        yield CheckResult(ID, Status.SKIP, "single-node job")
        return
    if ctx.node not in nodes:
        yield CheckResult(ID, Status.SKIP, f"{ctx.node} not in the job's node list")
        return
    if opts["partitions"] and ctx.job.partition not in opts["partitions"]:
        where = ctx.job.partition or "unknown"
        yield CheckResult(ID, Status.SKIP, f"partition {where} not among {opts['partitions']}")
        return
    if len(nodes) > opts["max_nodes"]:
        yield CheckResult(ID, Status.SKIP, f"{len(nodes)} nodes, above max_nodes")
        return
    try:
        root = preflight_wire.read_root_key(Path(opts["key_file"]))
    except preflight_wire.RootKeyError as exc:
        yield CheckResult(ID, Status.ERROR, str(exc))
        return
    try:
        hosts = {
            n: peer_probe.node_address(n, opts["address_template"], opts["addresses"])
            for n in nodes
        }
    except ValueError as exc:
        yield CheckResult(ID, Status.ERROR, f"address option: {exc}")
        return
    note(f"resolving {len(hosts)} fabric addresses")
    resolved = peer_probe.resolve_all(hosts.values(), opts["resolve_timeout_s"])
    own = resolved[hosts[ctx.node]]
    if own is None:
        msg = f"cannot resolve this node's fabric address {hosts[ctx.node]!r}"
        yield CheckResult(ID, Status.ERROR, msg, component=ctx.node)
        return
    unresolved = [n for n in nodes if resolved[hosts[n]] is None]
    if unresolved:
        msg = f"preflight incomplete: no fabric address for {', '.join(unresolved[:4])}"
        yield CheckResult(ID, Status.WARN, msg, component=own[1])
        return
    setup = preflight.Setup(
        me=ctx.node,
        nodes=tuple(nodes),
        job=job,
        key=preflight_wire.job_key(root, job),
        addresses={n: resolved[hosts[n]] for n in nodes},  # type: ignore[misc]
        port=opts["port"] + int(job) % opts["port_span"],
        join_s=float(opts["join_s"]),
        measure_s=float(opts["measure_s"]),
        max_bytes=int(opts["transfer_mib"] * (1 << 20)),
        transfer_s=float(opts["transfer_s"]),
        pings=opts["pings"],
        repeats=opts["repeats"],
        fraction=float(opts["slow_fraction"]),
        min_bps=float(opts["min_mb_s"]) * 1e6,
    )
    note(f"preflight of {len(nodes)} nodes on port {setup.port}, coordinator {nodes[0]}")
    outcome = preflight.run(setup, JUDGING)  # the probe measures, JUDGING decides
    if outcome.own_address_missing:
        # The template is wrong or the interface lost its address: not a verdict on the
        # node (net.link judges the interface itself).
        msg = f"fabric address {own[1]} is not on this node (address_template? interface?)"
        yield CheckResult(ID, Status.ERROR, msg, component=own[1])
        return
    verdict = outcome.verdict
    values = {
        **verdict.values,
        "role": outcome.role,
        "coordinator": nodes[0],
        "port": setup.port,
        "elapsed_s": outcome.elapsed_s,
        "joined_s": outcome.joined_s,
    }
    status = Status[verdict.status] if verdict.status in ("PASS", "WARN", "FAIL") else Status.WARN
    yield CheckResult(ID, status, verdict.message[:200], component=own[1], values=values)


def _natural(name: str) -> list[object]:
    from nodecheck.probes.fabric.sysfs import natural_key

    return natural_key(name)
