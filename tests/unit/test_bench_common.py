"""bench/common.py: what the bench scripts share (figures only; parsing must hold)."""

from __future__ import annotations

import os

from bench.common import machine_line, parse_sdiag

# sdiag's layout (Slurm 22.05), cut down: a type with and one without ave_time, users,
# the pending RPCs that must not be taken for users.
SDIAG = """\
*******************************************************
sdiag output at Mon Dec 07 02:00:00 2026 (1796522400)
Data since      Mon Dec 07 01:59:00 2026 (1796522340)
*******************************************************
Server thread count:  3
Agent queue size:     0
DBD Agent queue size: 12

Remote Procedure Call statistics by message type
\tREQUEST_NODE_INFO_SINGLE                ( 2040) count:31     ave_time:412    total_time:12772
\tREQUEST_UPDATE_NODE                     ( 3002) count:4      ave_time:1500   total_time:6000
\tMESSAGE_NODE_REGISTRATION_STATUS        ( 1002) count:8

Remote Procedure Call statistics by user
\troot            (       0) count:41     ave_time:560    total_time:22960
\tslurm           (     997) count:2      ave_time:100    total_time:200

Pending RPC statistics
\tREQUEST_TERMINATE_JOB                   ( 6011) count:1
"""


def test_parse_sdiag_counts_by_type_and_user_and_the_dbd_queue():
    got = parse_sdiag(SDIAG)
    assert got.by_type == {
        "REQUEST_NODE_INFO_SINGLE": 31,
        "REQUEST_UPDATE_NODE": 4,
        "MESSAGE_NODE_REGISTRATION_STATUS": 8,
    }
    assert got.by_user == {"root": 41, "slurm": 2}
    assert got.dbd_queue == 12
    assert got.ave_us == {"REQUEST_NODE_INFO_SINGLE": 412, "REQUEST_UPDATE_NODE": 1500}


def test_parse_sdiag_without_a_dbd_queue_says_minus_one():
    text = SDIAG.replace("DBD Agent queue size: 12\n", "")
    assert parse_sdiag(text).dbd_queue == -1


def test_machine_line_names_cpus_memory_and_load():
    line = machine_line()
    assert line.startswith("machine: ")
    assert f"nproc {os.cpu_count()}" in line and " GiB, " in line
    assert "load average " in line
