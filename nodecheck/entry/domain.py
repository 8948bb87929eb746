"""`nodecheck domain`: the nodes of each NVLink domain (GB200/GB300 NVL72 rack) compared, and
the odd one named (nodecheck/run/rack.py). It reads what the nodes' own runs said:

    srun -w 'gb[001-018]' nodecheck run --check gpu.fabric --check gpu.nvlink --json > rack.json
    nodecheck domain rack.json --topology /etc/slurm/topology.conf

No controller call and no node state: the readings are the runs' JSON, the domains Slurm's
topology file (the same file slurmctld reads). Exit 0 when every domain agrees, 1 when a
node or a domain is named, 2 when the input cannot be read.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from nodecheck.core.codes import EXIT_FAIL, EXIT_INTERNAL, EXIT_OK


def domain_command(args: argparse.Namespace) -> int:
    from nodecheck.probes.slurm_topology import node_blocks, read_blocks
    from nodecheck.run.rack import judge, parse_documents, readings_from_runs

    try:
        texts = [Path(f).read_text(encoding="utf-8") for f in args.files] or [sys.stdin.read()]
        docs = [doc for text in texts for doc in parse_documents(text)]
        blocks = node_blocks(read_blocks(Path(args.topology))) if args.topology else None
    except (OSError, ValueError) as exc:
        print(f"nodecheck domain: {exc}", file=sys.stderr)
        return EXIT_INTERNAL
    verdicts = judge(readings_from_runs(docs), blocks)
    if args.json:
        print(json.dumps([asdict(v) for v in verdicts], indent=2))
    else:
        for v in verdicts:
            key = f"{v.key[0]} clique {v.key[1]}" if v.key else "no common domain"
            print(f"{v.domain}: {len(v.nodes)} node(s), {key}")
            if v.whole:
                print(f"  DOMAIN  {v.whole}")
            for odd in v.odd:
                print(f"  ODD     {odd.node}: {odd.why}")
            if v.missing:
                print(f"  (no reading from {len(v.missing)} node(s) of the block)")
    return EXIT_FAIL if any(v.odd or v.whole for v in verdicts) else EXIT_OK
