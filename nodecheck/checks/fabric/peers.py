"""fabric.peers (opt-in): the job's nodes reach each other over the fabric."""

from __future__ import annotations

from collections.abc import Iterator

from nodecheck.checks.context import CheckContext
from nodecheck.checks.registry import Option, check
from nodecheck.core.progress import note
from nodecheck.core.results import CheckResult, Status

# ---------------------------------------------------------------------------- fabric.peers


@check(
    "fabric.peers",
    summary="multi-node jobs: this node reaches the job's other nodes over the fabric (opt-in)",
    phases=("prolog",),
    timeout_s=15.0,
    enabled_by_default=False,
    severity="high",
    remedy="admin",
    options={
        "address_template": Option(
            str, "{node}", "a node's fabric address or name: {node}, {num} (e.g. 10.10.0.{num})"
        ),
        "addresses": Option(dict, {}, "node -> fabric address, overrides the template", item=str),
        "control_template": Option(
            str, "", "a node's control-network address ('' : none); proves a peer is up"
        ),
        "control_addresses": Option(dict, {}, "node -> control address", item=str),
        "port": Option(int, 18800, "TCP port of the probe (open it between the nodes)"),
        "deadline_s": Option((int, float), 5.0, "the probe never runs longer than this"),
        "resolve_timeout_s": Option((int, float), 1.0, "name lookups give up after this"),
        "max_peers": Option(int, 8, "probe at most this many peers (ring neighbours)"),
        "fail_min_peers": Option(
            int, 2, "FAIL only if this many silent peers are known up on the control network"
        ),
    },
)
def fabric_peers(ctx: CheckContext) -> Iterator[CheckResult]:
    """The job's nodes cannot talk over the fabric: a dead HCA path, wrong IPoIB/RoCE
    address, or a partition (PKey) problem. This node FAILs only when it reaches none of its
    peers while they are known up on the control network; a silent single peer is a WARN
    naming it. Fix: `ibstat`, `ip addr` on the fabric interface, the SM's partition config."""
    from nodecheck import hostlist
    from nodecheck.probes.fabric import peers as peer_probe

    opts = ctx.options
    problems = []
    if not 0 < opts["port"] < 65536:
        problems.append("port must be 1-65535")
    if not 0 < opts["deadline_s"] <= 60:
        problems.append("deadline_s must be in (0, 60]")
    if not 0 < opts["resolve_timeout_s"] <= 10:
        problems.append("resolve_timeout_s must be in (0, 10]")
    if opts["max_peers"] < 1:
        problems.append("max_peers must be at least 1")
    if problems:
        yield CheckResult("fabric.peers", Status.ERROR, "bad options: " + "; ".join(problems))
        return
    if not ctx.job.nodelist:
        yield CheckResult("fabric.peers", Status.SKIP, "no job node list (SLURM_NODELIST)")
        return
    try:
        nodes = hostlist.expand(ctx.job.nodelist)
    except ValueError as exc:
        yield CheckResult("fabric.peers", Status.ERROR, f"node list not understood: {exc}")
        return
    if len(nodes) < 2:
        yield CheckResult("fabric.peers", Status.SKIP, "single-node job")
        return
    peers = peer_probe.choose_peers(nodes, ctx.node, opts["max_peers"])
    if not peers:
        yield CheckResult("fabric.peers", Status.SKIP, f"{ctx.node} not in the job's node list")
        return
    try:
        own_host = peer_probe.node_address(ctx.node, opts["address_template"], opts["addresses"])
        hosts = {
            p: peer_probe.node_address(p, opts["address_template"], opts["addresses"])
            for p in peers
        }
        control_hosts = {}
        if opts["control_template"] or opts["control_addresses"]:
            template = opts["control_template"] or "{node}"
            control_hosts = {
                p: peer_probe.node_address(p, template, opts["control_addresses"]) for p in peers
            }
    except ValueError as exc:
        yield CheckResult("fabric.peers", Status.ERROR, f"address option: {exc}")
        return
    note(f"resolving {len(hosts) + len(control_hosts) + 1} addresses")
    resolved = peer_probe.resolve_all(
        [own_host, *hosts.values(), *control_hosts.values()], opts["resolve_timeout_s"]
    )
    own = resolved[own_host]
    if own is None:
        msg = f"cannot resolve this node's fabric address {own_host!r}"
        yield CheckResult("fabric.peers", Status.ERROR, msg, component=ctx.node)
        return
    note(f"probing {len(peers)} peers on port {opts['port']} for up to {opts['deadline_s']}s")
    report = peer_probe.probe(
        ctx.node,
        ctx.job.job_id or "-",
        own,
        {p: resolved[h] for p, h in hosts.items()},
        opts["port"],
        float(opts["deadline_s"]),
        {p: resolved[h] for p, h in control_hosts.items()} or None,
    )
    verdict = peer_probe.judge(report, own[1], opts["fail_min_peers"], bool(control_hosts))
    yield CheckResult(
        "fabric.peers",
        Status[verdict.status],
        verdict.message[:200],
        component=own[1],
        values=verdict.values,
    )
