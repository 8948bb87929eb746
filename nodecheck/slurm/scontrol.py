"""Slurm backend over the scontrol CLI: argument lists only, never a shell.

Node state is read as JSON (`scontrol --json show node`, Slurm >= 23.02) where this scontrol
offers it, else as text; which one is decided once per backend from `scontrol --help`
(contacts no daemon; only the unhealthy path gets here at all). JSON needs no guessing
about where free text ends, and the text form changed shape across releases (24.05-24.11
print a whitespace-only line before `Reason=`). Real output of each release:
tests/fixtures/real/slurm/.
"""

from __future__ import annotations

import os
import re

from nodecheck.core.node import NodeInfo
from nodecheck.slurm import (
    SlurmError,
    checked_node_name,
    checked_reason,
    claims,
    failed,
    run_slurm_tool,
)
from nodecheck.slurm.claims import Claim, PartitionInfo, parse_claims, parse_partition
from nodecheck.slurm.node_json import parse_node_json, scontrol_offers_json

OUTPUT_FORMATS = ("auto", "json", "text")

# Slurm appends "[user@2026-11-25T21:40:01]" to the reason it prints.
_REASON_STAMP = re.compile(r"^(?P<text>.*?)\s*\[(?P<user>[^@\]]+)@(?P<time>[^\]]+)\]$")


def drain_args(scontrol: str, node: str, reason: str) -> list[str]:
    return [
        scontrol,
        "update",
        f"NodeName={checked_node_name(node)}",
        "State=DRAIN",
        # scontrol strips one leading and one trailing '"' from the value: give it that pair
        # so a reason ending in a quote survives intact.
        f'Reason="{checked_reason(reason)}"',
    ]


def resume_args(scontrol: str, node: str) -> list[str]:
    return [scontrol, "update", f"NodeName={checked_node_name(node)}", "State=RESUME"]


def show_node_args(scontrol: str, node: str | None = None, *, json: bool = False) -> list[str]:
    args = [scontrol, "--json", "show", "node"] if json else [scontrol, "show", "node"]
    if node is not None:
        args.append(checked_node_name(node))
    return args


def _records(text: str) -> list[list[str]]:
    """The lines of each node record: a record starts at `NodeName=` at the start of a line.

    Not at blank lines: Slurm 24.05-24.11 print a whitespace-only line inside a record,
    right before `Reason=`."""
    records: list[list[str]] = []
    for line in text.splitlines():
        if line.startswith("NodeName="):
            records.append([])
        if records and line.strip():
            records[-1].append(line.strip())
    return records


def parse_show_node(text: str) -> list[NodeInfo]:
    """Parse `scontrol show node` (the multi-line form)."""
    nodes: list[NodeInfo] = []
    for block in _records(text):
        fields: dict[str, str] = {}
        for stripped in block:
            # Reason holds free text with spaces and '=': it always owns its whole line.
            if stripped.startswith("Reason="):
                fields["Reason"] = stripped[len("Reason=") :]
                continue
            for token in stripped.split():
                key, sep, value = token.partition("=")
                if sep:
                    fields.setdefault(key, value)
        if "NodeName" not in fields:
            continue
        reason, user, when = fields.get("Reason", ""), "", ""
        if reason == "(null)":
            reason = ""
        stamped = _REASON_STAMP.match(reason)
        if stamped:
            reason, user, when = stamped["text"], stamped["user"], stamped["time"]
        partitions = fields.get("Partitions", "")
        nodes.append(
            NodeInfo(
                name=fields["NodeName"],
                states=tuple(s for s in fields.get("State", "").upper().split("+") if s),
                reason=reason,
                reason_user=user,
                reason_time=when,
                partitions=tuple(p for p in partitions.split(",") if p and p != "(null)"),
            )
        )
    return nodes


# StateComplete as scontrol's State= (lower case), the reason (free text) last, whole.
SINFO_NODE_FORMAT = "StateComplete:0|,Timestamp:0|,User:0|,Partition:0|,Reason:0"


def sinfo_node_args(sinfo: str, node: str) -> list[str]:
    """One node through sinfo: -a (hidden partitions too), -N (one line per partition)."""
    return [sinfo, "-a", "-N", "-h", "-n", node, "-O", SINFO_NODE_FORMAT]


def parse_sinfo_node(text: str, node: str) -> NodeInfo | None:
    """sinfo_node_args' answer: a line per partition of the node; None when there is none."""
    rows = [line.split("|", 4) for line in text.splitlines() if line.strip()]
    rows = [r for r in rows if len(r) == 5]
    if not rows:
        return None
    state, when, user, _, reason = rows[0]
    reason = reason.rstrip("\n")
    if reason == "none":
        reason = ""
    return NodeInfo(
        name=node,
        states=tuple(s for s in state.strip().upper().split("+") if s),
        reason=reason,
        reason_user="" if user in ("Unknown", "(null)") or not reason else user,
        reason_time="" if when == "Unknown" or not reason else when,
        partitions=tuple(dict.fromkeys(r[3].strip().rstrip("*") for r in rows if r[3].strip())),
    )


_CONFIG_TIME = re.compile(r"^Configuration data as of (?P<time>\S+)", re.MULTILINE)


def parse_config_time(text: str) -> float:
    """slurmctld's time in `scontrol show config` (local time, as reason times are printed,
    so both read the same way whatever the zone)."""
    from nodecheck.slurm import reason_epoch

    found = _CONFIG_TIME.search(text)
    when = reason_epoch(found["time"]) if found else None
    if when is None:
        raise SlurmError("scontrol show config: no 'Configuration data as of' time")
    return when


def json_controller_time(text: str) -> float | None:
    """The reply's own time ("last_update", slurmctld's clock when it answered)."""
    import json

    try:
        document = json.loads(text)
    except ValueError:
        return None
    stamp = document.get("last_update") if isinstance(document, dict) else None
    if isinstance(stamp, dict):
        stamp = stamp.get("number") if stamp.get("set") and not stamp.get("infinite") else None
    if isinstance(stamp, int) and not isinstance(stamp, bool) and stamp > 0:
        return float(stamp)
    return None


class ScontrolBackend:
    name = "scontrol"

    def __init__(
        self,
        scontrol_path: str = "/usr/bin/scontrol",
        slurm_conf: str | None = None,
        timeout_s: float = 10.0,
        output: str = "auto",
    ) -> None:
        if output not in OUTPUT_FORMATS:
            raise SlurmError(f"scontrol output {output!r} not one of {', '.join(OUTPUT_FORMATS)}")
        self.scontrol = scontrol_path
        self.slurm_conf = slurm_conf
        self.timeout_s = timeout_s
        # None until the first read asks scontrol (auto); then "json" or "text" for good.
        self.output: str | None = None if output == "auto" else output
        # slurmctld's clock at the last JSON read (its "last_update"), for controller_time.
        self._controller_time: float | None = None
        # What this backend asked of slurmctld: calls made and bytes read (bench/scale.py).
        self.calls = 0
        self.bytes_read = 0
        # The nodes read so far, by name: act finds the draining node's partitions here
        # instead of asking slurmctld again.
        self.last_read: dict[str, NodeInfo] = {}
        # Breaker claims of the nodecheck_breaker license (False once Slurm said it has none).
        self.license_claims = True

    def _run(self, args: list[str]) -> str:
        proc = run_slurm_tool(args, self.slurm_conf, self.timeout_s, f"{args[0]} {args[1]}")
        if args[1] != "--help":  # --help contacts no daemon
            self.calls += 1
            self.bytes_read += len(proc.stdout)
        if proc.returncode != 0:
            raise failed(proc, " ".join(args[1:3]))
        return proc.stdout

    def _output(self) -> str:
        """json or text: asked of `scontrol --help` once (it contacts no daemon)."""
        if self.output is None:
            try:
                offers = scontrol_offers_json(self._run([self.scontrol, "--help"]))
            except SlurmError:
                # 24.11 fails --help without a config source; the text form is always there,
                # and a real problem shows in the next call.
                offers = False
            self.output = "json" if offers else "text"
        return self.output

    def _show_node(self, node: str | None) -> list[NodeInfo]:
        if self._output() == "json":
            text = self._run(show_node_args(self.scontrol, node, json=True))
            nodes = parse_node_json(text)
            self._controller_time = json_controller_time(text)
        else:
            nodes = parse_show_node(self._run(show_node_args(self.scontrol, node)))
        self.last_read.update((n.name, n) for n in nodes)
        return nodes

    def controller_time(self) -> float:
        """slurmctld's clock now, in epoch seconds: what Slurm's reason times are measured
        against (never the node's clock). The JSON node reply it read a moment ago carries
        it (slurmctld stamps every reply with its time); the text form does not, and then
        `scontrol show config` is asked: its "Configuration data as of" line is the time
        slurmctld answered."""
        if self._controller_time is not None:
            return self._controller_time
        return parse_config_time(self._run([self.scontrol, "show", "config"]))

    def node_info(self, node: str) -> NodeInfo:
        """One node. Through `sinfo -n NODE` where sinfo sits next to scontrol: slurmctld
        answers it with one node's record (REQUEST_NODE_INFO_SINGLE) and the partition
        list, where `scontrol show node NODE` loads the whole node table (REQUEST_NODE_INFO,
        5.8 MB at 10,000 nodes on 22.05, measured with sdiag) and picks the node out."""
        single = self._sinfo_node(node)
        if single is not None:
            self.last_read[single.name] = single
            return single
        found = [n for n in self._show_node(node) if n.name == node]
        if not found:
            raise SlurmError(f"node {node!r} not known to Slurm")
        return found[0]

    def list_nodes(self) -> list[NodeInfo]:
        return self._show_node(None)

    def _sinfo_node(self, node: str) -> NodeInfo | None:
        """None where there is no sinfo next to scontrol, or sinfo does not show the node
        (in no partition, or unknown): scontrol then reads it and says why."""
        sinfo = os.path.join(os.path.dirname(self.scontrol), "sinfo")
        if not os.access(sinfo, os.X_OK):
            return None
        return parse_sinfo_node(self._run(sinfo_node_args(sinfo, checked_node_name(node))), node)

    def drain(self, node: str, reason: str) -> None:
        self._run(drain_args(self.scontrol, node, reason))

    def resume(self, node: str) -> None:
        self._run(resume_args(self.scontrol, node))

    # The circuit breaker's slots (nodecheck/slurm/claims.py): reservations, not nodes.

    def claims(self) -> list[Claim]:
        return parse_claims(self._run(claims.show_claims_args(self.scontrol)))

    def claim(self, name: str, node: str, minutes: int) -> bool:
        """Take slot `name` for `node`; False when another node holds it. A license claim
        first; where slurm.conf declares no nodecheck_breaker license, a claim of the node
        (claims.py), and this backend asks for that one from then on."""
        while True:
            args = claims.claim_args(self.scontrol, name, node, minutes, self.license_claims)
            try:
                self._run(args)
            except SlurmError as exc:
                if claims.is_duplicate(str(exc)):
                    return False
                if self.license_claims and claims.is_bad_license(str(exc)):
                    self.license_claims = False
                    continue
                raise
            return True

    def release(self, name: str) -> None:
        self._run(claims.release_args(self.scontrol, name))

    def partition(self, name: str) -> PartitionInfo:
        return parse_partition(self._run(claims.show_partition_args(self.scontrol, name)), name)

    def partitions(self) -> list[PartitionInfo]:
        return claims.parse_partitions(self._run(claims.show_partition_args(self.scontrol)))
