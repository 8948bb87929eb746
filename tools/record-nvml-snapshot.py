#!/usr/bin/env python3
"""Record this node's GPUs, as NVML reports them, to a replay snapshot (JSON).

    tools/record-nvml-snapshot.py                    # print to stdout
    tools/record-nvml-snapshot.py -o node.json --comment "HGX H100, idle, healthy"
    tools/record-nvml-snapshot.py --gpus 0,1         # only some NVML indices

The file is what `nvml = "replay:/path/node.json"` replays and what tests/fixtures/nvml/
holds. It goes through the same collector the checks use (nodecheck.probes.nvml.real), so a
field NVML refuses is recorded as its real NVML error. Exit 1 when NVML cannot start (the
snapshot, with its init error, is still written). Add a `"replay": {"hang": {"call":
"nvmlDeviceGetRemappedRows", "gpu": 3}}` table by hand to make a replay hang.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nodecheck.probes.nvml import real
from nodecheck.probes.nvml.model import dumps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-o", "--output", type=Path, help="write here (default: stdout)")
    parser.add_argument("--gpus", help="comma-separated NVML indices (default: all)")
    parser.add_argument("--comment", default="", help="a line saying what this node is")
    parser.add_argument(
        "--keep-identity",
        action="store_true",
        help="keep UUIDs (by default they are replaced by stable placeholders)",
    )
    args = parser.parse_args(argv)
    indices = [int(i) for i in args.gpus.split(",")] if args.gpus else None
    snap = real.collect(indices, source="recorded")
    if not args.keep_identity:
        snap = replace(
            snap,
            gpus=tuple(
                replace(g, uuid=f"GPU-00000000-0000-4000-8000-{g.index:012d}") if g.uuid else g
                for g in snap.gpus
            ),
        )
    data = snap.to_dict()
    comment = args.comment or f"recorded on {socket.gethostname().split('.')[0]}"
    data = {"format": data.pop("format"), "comment": comment, **data}
    text = dumps(data)
    json.loads(text)  # what we write must read back
    if args.output:
        args.output.write_text(text, encoding="utf-8")
        print(
            f"{args.output}: {len(snap.gpus)} GPUs, driver {snap.driver_version}, "
            f"{snap.collect_s:.3f}s"
            + (f", init error {snap.init_error}" if snap.init_error else ""),
            file=sys.stderr,
        )
    else:
        sys.stdout.write(text)
    return 1 if snap.init_error else 0


if __name__ == "__main__":
    sys.exit(main())
