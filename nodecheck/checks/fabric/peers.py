"""fabric.peers (opt-in): the job's nodes reach each other over the fabric.

The probe (nodecheck/probes/fabric/peers.py) reports what each peer's attempts proved:
reached, silent, or unresolved. The verdict is decided here. Only silence is evidence of a
fabric problem, and silence from one peer does not say whose fault it is. So: some peers
reached, some silent -> WARN naming the silent ones (their own prolog judges them). No peer
reached at all -> FAIL only when at least `fail_min_peers` of the silent peers are *known up*:
they answer on the control (management) network (`control_template`), so the peers live and
only our fabric path is dead. Without a control network, or with too few peers (a two-node
job cannot tell which end is broken) -> WARN.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from nodecheck.checks.context import CheckContext
from nodecheck.checks.fabric.common import ADDRESS_OPTIONS
from nodecheck.checks.registry import Option, check
from nodecheck.core.progress import note
from nodecheck.core.results import CheckResult, Status

if TYPE_CHECKING:
    from nodecheck.probes.fabric.peers import ProbeReport


@check(
    "fabric.peers",
    summary="multi-node jobs: this node reaches the job's other nodes over the fabric (opt-in)",
    phases=("prolog",),
    timeout_s=15.0,
    enabled_by_default=False,
    severity="high",
    remedy="admin",
    options={
        **ADDRESS_OPTIONS,
        "control_template": Option(
            str, "", "a node's control-network address ('' : none); proves a peer is up"
        ),
        "control_addresses": Option(dict, {}, "node -> control address", item=str),
        "port": Option(int, 18800, "TCP port of the probe (open it between the nodes)"),
        "deadline_s": Option((int, float), 5.0, "the probe never runs longer than this"),
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
    verdict = judge(report, own[1], opts["fail_min_peers"], bool(control_hosts))
    yield CheckResult(
        "fabric.peers",
        Status[verdict.status],
        verdict.message[:200],
        component=own[1],
        values=verdict.values,
    )


# ---------------------------------------------------------------------------- the verdict


@dataclass(frozen=True)
class Verdict:
    status: str  # "PASS" | "WARN" | "FAIL" | "ERROR"
    message: str
    values: dict


def judge(
    report: ProbeReport, own_address: str, fail_min_peers: int, control_configured: bool
) -> Verdict:
    """Turn a probe report into this node's verdict (see the module docstring)."""
    from nodecheck.probes.fabric.peers import REACHED, SILENT

    kinds = {p: o.kind for p, o in report.peers.items()}
    values: dict = {
        "peers": {p: o.kind for p, o in report.peers.items()},
        "elapsed_s": report.elapsed_s,
    }
    if report.control_alive:
        values["control_alive"] = dict(report.control_alive)
    if report.listen_error:
        values["listen_error"] = report.listen_error
    if report.own_address_missing:
        # Either the template is wrong or the interface lost its address: we cannot tell,
        # so this is not a verdict on the node (net.link judges the interface itself).
        msg = f"fabric address {own_address} is not on this node (address_template? interface?)"
        return Verdict("ERROR", msg, values)
    reached = sorted(p for p, k in kinds.items() if k in REACHED)
    silent = sorted(p for p, k in kinds.items() if k in SILENT)
    unresolved = sorted(p for p, k in kinds.items() if k == "unresolved")
    total = len(kinds)
    took = f"{report.elapsed_s:.1f}s"
    notes = []
    if unresolved:
        notes.append(f"no fabric address for {_names(unresolved)}")
    wrong = sorted(p for p, k in kinds.items() if k == "wrong_node")
    if wrong:
        notes.append(f"address of {_names(wrong)} answered as another node")
    if not silent:
        status = "WARN" if notes else "PASS"
        msg = "; ".join([f"reached {len(reached)} of {total} peers in {took}", *notes])
        return Verdict(status, msg, values)
    silent_text = ", ".join(f"{p} ({kinds[p]})" for p in silent[:4])
    silent_text += f" +{len(silent) - 4} more" if len(silent) > 4 else ""
    if reached:
        msg = f"no answer from {silent_text} within {took}; reached {len(reached)} of {total}"
        return Verdict("WARN", "; ".join([msg, *notes]), values)
    known_up = sorted(p for p in silent if report.control_alive.get(p))
    values["known_up"] = known_up
    if control_configured and len(known_up) >= max(1, fail_min_peers):
        msg = (
            f"reached none of {len(silent)} peers over the fabric within {took}, "
            f"though {len(known_up)} answer on the control network"
        )
        return Verdict("FAIL", msg, values)
    why = (
        "too few peers known up to blame this node"
        if control_configured
        else "no control network configured to tell whose fault"
    )
    msg = f"reached none of {len(silent)} peers ({silent_text}) within {took}; {why}"
    return Verdict("WARN", "; ".join([msg, *notes]), values)


def _names(nodes: list[str]) -> str:
    return ", ".join(nodes[:4]) + (f" +{len(nodes) - 4} more" if len(nodes) > 4 else "")
