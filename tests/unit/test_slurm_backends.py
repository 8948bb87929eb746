import os
import time

import pytest

from nodecheck.core.node import NodeInfo
from nodecheck.slurm import SlurmError, set_call_deadline
from nodecheck.slurm.scontrol import drain_args, parse_show_node, resume_args, show_node_args

N1_REASON = "nodecheck: gpu.remap gpu3: row remap pending (needs GPU reset) [prolog job 812]"
SHOW = f"""NodeName=n1 Arch=x86_64 CoresPerSocket=1
   CPUAlloc=0 CPUEfctv=2 CPUTot=2 CPULoad=0.10
   State=IDLE+DRAIN ThreadsPerCore=1 TmpDisk=0 Weight=1 Owner=N/A MCS_label=N/A
   Partitions=debug,gpu
   Reason={N1_REASON} [root@2026-11-25T21:40:01]

NodeName=n2 Arch=x86_64 CoresPerSocket=1
   State=MIXED ThreadsPerCore=1
   Partitions=debug

NodeName=n3 Arch=x86_64
   State=DOWN+DRAIN+NOT_RESPONDING
   Reason=replaced PSU, Reason=odd text [alice@2026-11-20T10:00:00]
"""


def test_parse_show_node():
    n1, n2, n3 = parse_show_node(SHOW)
    assert n1 == NodeInfo(
        name="n1",
        states=("IDLE", "DRAIN"),
        reason=N1_REASON,
        reason_user="root",
        reason_time="2026-11-25T21:40:01",
        partitions=("debug", "gpu"),
    )
    assert n1.drained_by_nodecheck
    assert not n2.drained and n2.reason == ""
    assert n3.drained and not n3.drained_by_nodecheck
    assert n3.reason == "replaced PSU, Reason=odd text" and n3.reason_user == "alice"


def test_argument_lists_never_need_a_shell():
    reason = 'nodecheck: x.y z: a "quoted" $(thing); rm'
    args = drain_args("/usr/bin/scontrol", "gpu001", reason)
    assert args == [
        "/usr/bin/scontrol",
        "update",
        "NodeName=gpu001",
        "State=DRAIN",
        f'Reason="{reason}"',
    ]
    assert resume_args("/usr/bin/scontrol", "n1")[-1] == "State=RESUME"
    assert show_node_args("/usr/bin/scontrol") == ["/usr/bin/scontrol", "show", "node"]


@pytest.mark.parametrize("node", ["n1;reboot", "-h", "n1 n2", "", "a" * 200, "$(x)"])
def test_hostile_node_names_are_refused(node):
    with pytest.raises(SlurmError):
        drain_args("/usr/bin/scontrol", node, "nodecheck: a.b c: d")


@pytest.mark.parametrize("reason", ["", "two\nlines", "nul\0"])
def test_bad_reasons_are_refused(reason):
    with pytest.raises(SlurmError):
        drain_args("/usr/bin/scontrol", "n1", reason)


LIBSLURM = "/usr/lib/x86_64-linux-gnu/slurm-wlm/libslurmfull.so"


@pytest.fixture
def call_deadline():
    set_call_deadline(None)  # whatever an earlier in-process run left
    yield set_call_deadline
    set_call_deadline(None)


@pytest.mark.skipif(not os.path.exists(LIBSLURM), reason="Debian's libslurm not installed")
def test_the_libslurm_version_probe_keeps_to_the_runs_deadline(call_deadline):
    from nodecheck.slurm import pyslurm_backend

    assert pyslurm_backend._library_release(LIBSLURM)[:2] >= (20, 2)  # the real library
    call_deadline(time.monotonic() - 1)  # the budget is spent: no probe at all
    assert pyslurm_backend._library_release(LIBSLURM) is None
