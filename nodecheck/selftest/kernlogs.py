"""Canary kernel logs for gpu.xid, copied line for line from the project's real-data
fixtures (tests/fixtures/real/kernlog/; its SOURCES.md names where each was published).
gpu.xid reads them as a site's saved log (`kmsg = "/path"`), in the format each was
published in. Long lines are split into adjacent literals; the text is unchanged.
"""

from __future__ import annotations

# Good: `dmesg -T` with Xid 43, 31 and 94 (contained): the applications' own faults,
# only recorded (akash-network/support issue #244).
# Source: tests/fixtures/real/kernlog/dmesg-ctime-xid94.txt.
APP_FAULTS = (
    "[Sun Jul 28 09:15:27 2024] NVRM: loading NVIDIA UNIX x86_64 Kernel Module  535.1"
    "83.01  Sun May 12 19:39:15 UTC 2024\n"
    "[Wed Jul 31 23:14:18 2024] NVRM: GPU at PCI:0000:00:05: GPU-efbdfde9-5798-a6e7-4"
    "c46-12518fa15375\n"
    "[Wed Jul 31 23:14:18 2024] NVRM: GPU Board Serial Number: 1650423013443\n"
    "[Wed Jul 31 23:14:18 2024] NVRM: Xid (PCI:0000:00:05): 43, pid=1045242, name=pt_"
    "main_thread, Ch 00000008\n"
    "[Wed Jul 31 23:15:26 2024] NVRM: Xid (PCI:0000:00:05): 43, pid=1084984, name=pt_"
    "main_thread, Ch 00000008\n"
    "[Mon Aug  5 03:54:13 2024] NVRM: GPU at PCI:0000:00:07: GPU-3b6ec030-5adc-1847-e"
    "155-79f635584b4e\n"
    "[Mon Aug  5 03:54:13 2024] NVRM: GPU Board Serial Number: 1652923017935\n"
    "[Mon Aug  5 03:54:13 2024] NVRM: Xid (PCI:0000:00:07): 31, pid=2512125, name=pyt"
    "hon3.10, Ch 00000008, intr 00000000. MMU Fault: ENGINE GRAPHICS GPCCLIENT_T1_8 f"
    "aulted @ 0x73ac_1c000000. Fault is of type FAULT_PDE ACCESS_TYPE_VIRT_WRITE\n"
    "[Fri Aug  9 13:32:56 2024] NVRM: GPU at PCI:0000:00:08: GPU-c24840ec-8de1-83d5-b"
    "126-08000173ae32\n"
    "[Fri Aug  9 13:32:56 2024] NVRM: GPU Board Serial Number: 1652923018111\n"
    "[Fri Aug  9 13:32:56 2024] NVRM: Xid (PCI:0000:00:08): 94, pid='<unknown>', name"
    "=<unknown>, Contained: SM (0x1). RST: No, D-RST: No\n"
)

# Bad: /dev/kmsg records of a GSP timeout, Xid 119 (leptonai/gpud testdata, re-stamped
# as kmsg records).
# Source: tests/fixtures/real/kernlog/kmsg-xid119-gsp.txt.
XID119_GSP = (
    "4,5120,8356000000,-;NVRM: GPU at PCI:0000:9b:00: GPU-509665ad-b600-ac93-3616-d75"
    "4b23d636d\n"
    "4,5121,8356037113,-;NVRM: GPU Board Serial Number: 1650124014249\n"
    "4,5122,8356074226,-;NVRM: Xid (PCI:0000:9b:00): 119, pid=2024380, name=nvidia-sm"
    "i, Timeout after 6s of waiting for RPC response from GPU4 GSP! Expected function"
    " 103 (GSP_RM_ALLOC) (0x2081 0x4).\n"
    "4,5123,8356111338,-;NVRM: GPU4 GSP RPC buffer contains function 103 (GSP_RM_ALLO"
    "C) and data 0x0000000000002081 0x0000000000000004.\n"
    "4,5124,8356148451,-;NVRM: GPU4 RPC history (CPU -> GSP):\n"
    "4,5125,8356185565,-;NVRM:     entry function                   data0            "
    "  data1              ts_start           ts_end             duration actively_pol"
    "ling\n"
    "4,5126,8356222678,-;NVRM:      0    103  GSP_RM_ALLOC          0x000000000000208"
    "1 0x0000000000000004 0x00062ed1a6bd61fa 0x0000000000000000          y\n"
    "6,5127,8356259791,-;CPU: 17 PID: 2024380 Comm: nvidia-smi Tainted: P           O"
    "E     5.15.0-112-generic #122-Ubuntu\n"
    "6,5128,8356296904,-;Hardware name: Dell Inc. PowerEdge XE9680/0KK0RG, BIOS 2.3.5"
    " 09/10/2024\n"
    "6,5129,8356334016,-;Call Trace:\n"
    "6,5130,8356371130,-; <TASK>\n"
    "6,5131,8356408243,-; show_stack+0x52/0x5c\n"
    "6,5132,8356445356,-; </TASK>\n"
    "4,5133,8362482469,-;NVRM: Xid (PCI:0000:9b:00): 119, pid=2024380, name=nvidia-sm"
    "i, Timeout after 6s of waiting for RPC response from GPU4 GSP! Expected function"
    " 10 (FREE) (0xa55a0210 0x0).\n"
    "6,5134,8368519582,-;clocksource: Long readout interval, skipping watchdog check:"
    " cs_nsec: 1584036171 wd_nsec: 1584036160\n"
    "4,5135,8368556694,-;NVRM: Xid (PCI:0000:9b:00): 119, pid=2024380, name=nvidia-sm"
    "i, Timeout after 6s of waiting for RPC response from GPU4 GSP! Expected function"
    " 10 (FREE) (0xa55a0090 0x0).\n"
    "4,5136,8374593808,-;NVRM: Rate limiting GSP RPC error prints for GPU at PCI:0000"
    ":9b:00 (printing 1 of every 30).  The GPU likely needs to be reset.\n"
    "4,5137,8530630921,-;NVRM: Xid (PCI:0000:9b:00): 119, pid=1263500, name=cache_mgr"
    "_main, Timeout after 6s of waiting for RPC response from GPU4 GSP! Expected func"
    "tion 76 (GSP_RM_CONTROL) (0x20801813 0x4c).\n"
    "4,5138,8711668034,-;NVRM: Xid (PCI:0000:9b:00): 119, pid=1240590, name=gpud, Tim"
    "eout after 6s of waiting for RPC response from GPU4 GSP! Expected function 76 (G"
    "SP_RM_CONTROL) (0x20803032 0x58c).\n"
)

# Bad: `journalctl` lines of a GPU fallen off the bus (Xid 79) and Xid 154 "Node Reboot
# Required" (an RTX 4080 warranty report).
# Source: tests/fixtures/real/kernlog/journal-short-xid79-154.txt.
XID79_154 = (
    "Jun 01 17:12:22 isaac-Predator-PO5-650 kernel: NVRM: Xid (PCI:0000:01:00): 79, G"
    "PU has fallen off the bus.\n"
    "Jun 01 17:12:22 isaac-Predator-PO5-650 kernel: NVRM: Xid (PCI:0000:01:00): 154, "
    "GPU recovery action changed from 0x0 (None) to 0x2 (Node Reboot Required)\n"
    "Jun 01 20:11:11 isaac-Predator-PO5-650 kernel: NVRM: Xid (PCI:0000:01:00): 79, G"
    "PU has fallen off the bus.\n"
    "Jun 01 20:11:11 isaac-Predator-PO5-650 kernel: NVRM: GPU 0000:01:00.0: GPU has f"
    "allen off the bus.\n"
    "Jun 01 20:11:11 isaac-Predator-PO5-650 kernel: NVRM: Xid (PCI:0000:01:00): 154, "
    "GPU recovery action changed from 0x0 (None) to 0x2 (Node Reboot Required)\n"
    "Jun 01 20:11:11 isaac-Predator-PO5-650 kernel: NVRM: nvCheckOkFailedNoLog: Check"
    " failed: GPU lost from the bus [NV_ERR_GPU_IS_LOST] (0x0000000F)\n"
)
