"""Run the deep fabric measurement as one test host would, inside its network namespace.

Usage: python tests/netns/deep_fabric_host.py '{"node": "h1", "nodelist": "h[1-4]", ...}'
Prints the node's deep.fabric verdict as JSON. It goes through the same steps as the
check (`nodecheck.checks.deep.fabric.deep_fabric`): expand the job's node list, join
torch.distributed with gloo on the fabric interface, measure, judge.
"""

from __future__ import annotations

import json
import sys
import time

from nodecheck.checks.deep.judge import judge_fabric
from nodecheck.probes.active import device, dist
from nodecheck.probes.fabric.peers import expand_nodelist, node_address


def main() -> None:
    args = json.loads(sys.argv[1])
    nodes = expand_nodelist(args["nodelist"])
    torch = device.load_torch()
    [cpu] = device.find_devices(torch, "cpu")
    rv = dist.Rendezvous(
        master_addr=node_address(nodes[0], args["address_template"], {}),
        port=args["port"],
        rank=nodes.index(args["node"]),
        world=len(nodes),
        timeout_s=args["join_timeout_s"],
        backend="gloo",
        interface=args["interface"],
    )
    started = time.monotonic()
    dist.join(torch, rv)
    try:
        figures = dist.measure(
            torch,
            cpu,
            collective_bytes=args["collective_bytes"],
            pair_bytes=args["pair_bytes"],
            repeats=args["repeats"],
            slow_fraction=args["slow_fraction"],
        )
    finally:
        dist.leave(torch)
    result = judge_fabric(args["node"], nodes, figures, slow_fraction=args["slow_fraction"])
    print(json.dumps({"result": result.as_dict(), "took_s": time.monotonic() - started}))


if __name__ == "__main__":
    main()
