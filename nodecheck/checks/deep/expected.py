"""What each GPU model should deliver: one table, each row from NVIDIA's datasheet.

Units: dense TFLOP/s (NVIDIA quotes tensor-core TFLOPS "with sparsity" by default, marked
with an asterisk; the dense figure is half of it and is what a plain GEMM can reach),
decimal GB/s. `host_gbps` is one direction of the PCIe x16 link (datasheets quote both
directions added, e.g. "PCIe Gen5: 128 GB/s" = 64 GB/s each way); `nvlink_gbps` is the
total over all of one GPU's NVLinks, both directions added, as datasheets quote it.

These are peaks. What a healthy part measures is a stable share of them (cuBLAS GEMM
60-80%, a device copy ~85-90% of HBM, pinned PCIe copies ~80-85%), so the deep checks judge
against a per-check `min_fraction` of the figure (docs/deep.md). Models are matched on the
name NVML and CUDA report (`nvidia-smi --query-gpu=name`), case-insensitively.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

H100_DATASHEET = (
    "NVIDIA H100 Tensor Core GPU datasheet (nvidia.com/en-us/data-center/h100; "
    "tensor TFLOPS quoted with sparsity, halved here)"
)
H200_DATASHEET = (
    "NVIDIA H200 Tensor Core GPU datasheet (nvidia.com/en-us/data-center/h200; "
    "tensor TFLOPS quoted with sparsity, halved here)"
)
A100_DATASHEET = (
    "NVIDIA A100 Tensor Core GPU datasheet, nvidia-a100-datasheet-us-nvidia-1758950-r4-web.pdf "
    "(dense TFLOPS; the sparsity figures are twice these)"
)
B200_DATASHEET = (
    "NVIDIA HGX B200 datasheet and Blackwell architecture technical brief "
    "(nvidia.com/en-us/data-center/hgx; per GPU at 1,000 W, sparsity figures halved)"
)

B300_SPECS = (
    "NVIDIA HGX B300 specifications (nvidia.com/en-us/data-center/hgx: 8 GPUs, FP16/BF16 36 "
    "and TF32 18 PFLOPS with sparsity, 1.8 TB/s GPU-to-GPU NVLink, up to 8 TB/s HBM3e per "
    "GPU), as reproduced by fibermall.com/blog/?p=17161 and acecloud.ai/blog/nvidia-hgx-b300; "
    "per GPU and dense (halved); dense figures agree with glennklockwood.com/garden/processors/B300"
)
NVL72_SPECS = (
    "NVIDIA {rack} specifications (nvidia.com/en-us/data-center/{page}: 72 GPUs, FP16/BF16 "
    "360 and TF32 180 PFLOPS with sparsity, 576 TB/s HBM3e, 130 TB/s NVLink), per GPU "
    "(divided by 72) and dense (halved)"
)


@dataclass(frozen=True)
class GpuSpec:
    """A GPU model's datasheet figures (see the module docstring for units)."""

    model: str  # short name used in messages, e.g. "H100 SXM"
    names: tuple[str, ...]  # the names NVML/CUDA give the part
    tflops: Mapping[str, float]  # dense: "bf16", "fp16", "tf32"
    hbm_gbps: float
    pcie_gen: int
    host_gbps: float  # PCIe x16, one direction
    nvlink_gbps: float  # all NVLinks of one GPU, both directions; 0 = none
    source: str
    note: str = ""
    # One NVLink, both directions: NVLink 3 (A100) and 4 (H100/H200) carry 25 GB/s each way
    # per link, NVLink 5 (B200) 50. A pair joined by n links (nvidia-smi topo -m: NV<n>)
    # should reach n times this; on NVSwitch systems every pair gets all of a GPU's links.
    nvlink_link_gbps: float = 50.0


SPECS: tuple[GpuSpec, ...] = (
    GpuSpec(
        "H100 SXM",
        ("NVIDIA H100 80GB HBM3", "NVIDIA H100 SXM5 80GB"),
        {"bf16": 989.5, "fp16": 989.5, "tf32": 494.5},
        hbm_gbps=3350,
        pcie_gen=5,
        host_gbps=64,
        nvlink_gbps=900,
        source=H100_DATASHEET + ", H100 SXM column",
    ),
    GpuSpec(
        "H100 PCIe",
        ("NVIDIA H100 PCIe",),
        {"bf16": 756.5, "fp16": 756.5, "tf32": 378},
        hbm_gbps=2000,
        pcie_gen=5,
        host_gbps=64,
        nvlink_gbps=600,
        source=H100_DATASHEET + ", H100 PCIe column; NVIDIA H100 PCIe product brief PB-11133-001",
        note="NVLink only with the optional NVLink bridge (pairs of cards)",
    ),
    GpuSpec(
        "H100 NVL",
        ("NVIDIA H100 NVL",),
        {"bf16": 835.5, "fp16": 835.5, "tf32": 417.5},
        hbm_gbps=3900,
        pcie_gen=5,
        host_gbps=64,
        nvlink_gbps=600,
        source=H100_DATASHEET + ", H100 NVL column",
    ),
    GpuSpec(
        "H200 SXM",
        ("NVIDIA H200",),
        {"bf16": 989.5, "fp16": 989.5, "tf32": 494.5},
        hbm_gbps=4800,
        pcie_gen=5,
        host_gbps=64,
        nvlink_gbps=900,
        source=H200_DATASHEET + ", H200 SXM column",
    ),
    GpuSpec(
        "H200 NVL",
        ("NVIDIA H200 NVL",),
        {"bf16": 835.5, "fp16": 835.5, "tf32": 417.5},
        hbm_gbps=4800,
        pcie_gen=5,
        host_gbps=64,
        nvlink_gbps=900,
        source=H200_DATASHEET + ", H200 NVL column",
        note="NVLink through 2- or 4-way bridges",
    ),
    GpuSpec(
        "A100 SXM 80GB",
        ("NVIDIA A100-SXM4-80GB",),
        {"bf16": 312, "fp16": 312, "tf32": 156},
        hbm_gbps=2039,
        pcie_gen=4,
        host_gbps=32,
        nvlink_gbps=600,
        source=A100_DATASHEET + ", A100 80GB SXM column",
    ),
    GpuSpec(
        "A100 SXM 40GB",
        ("NVIDIA A100-SXM4-40GB",),
        {"bf16": 312, "fp16": 312, "tf32": 156},
        hbm_gbps=1555,
        pcie_gen=4,
        host_gbps=32,
        nvlink_gbps=600,
        source=A100_DATASHEET + ", A100 40GB SXM column",
    ),
    GpuSpec(
        "A100 PCIe 80GB",
        ("NVIDIA A100 80GB PCIe",),
        {"bf16": 312, "fp16": 312, "tf32": 156},
        hbm_gbps=1935,
        pcie_gen=4,
        host_gbps=32,
        nvlink_gbps=600,
        source=A100_DATASHEET + ", A100 80GB PCIe column",
        note="NVLink only with the optional bridge (pairs of cards)",
    ),
    GpuSpec(
        "A100 PCIe 40GB",
        ("NVIDIA A100-PCIE-40GB",),
        {"bf16": 312, "fp16": 312, "tf32": 156},
        hbm_gbps=1555,
        pcie_gen=4,
        host_gbps=32,
        nvlink_gbps=600,
        source=A100_DATASHEET + ", A100 40GB PCIe column",
        note="NVLink only with the optional bridge (pairs of cards)",
    ),
    GpuSpec(
        "B200",
        ("NVIDIA B200",),
        {"bf16": 2250, "fp16": 2250, "tf32": 1100},
        hbm_gbps=8000,
        pcie_gen=5,
        host_gbps=64,
        nvlink_gbps=1800,
        source=B200_DATASHEET,
        note="the GPU supports PCIe Gen6; HGX B200 hosts run the link at Gen5",
        nvlink_link_gbps=100.0,
    ),
    GpuSpec(
        "B300",
        ("NVIDIA B300 SXM6 AC",),  # the name NVML gives an HGX B300's GPUs
        {"bf16": 2250, "fp16": 2250, "tf32": 1125},
        hbm_gbps=8000,
        pcie_gen=5,
        host_gbps=64,
        nvlink_gbps=1800,
        source=B300_SPECS,
        note="PCIe Gen6 GPU; judged at Gen5, what a Gen5 host link gives (a Gen6 host beats it)",
        nvlink_link_gbps=100.0,
    ),
    GpuSpec(
        "GB200",
        ("NVIDIA GB200",),
        {"bf16": 2500, "fp16": 2500, "tf32": 1250},
        hbm_gbps=8000,
        pcie_gen=5,
        host_gbps=0,  # host memory is behind NVLink-C2C (Grace), no per-GPU figure published
        nvlink_gbps=1800,
        source=NVL72_SPECS.format(rack="GB200 NVL72", page="gb200-nvl72"),
        note="host<->device over NVLink-C2C: judged against the node's median GPU",
        nvlink_link_gbps=100.0,
    ),
    GpuSpec(
        "GB300",
        ("NVIDIA GB300",),
        {"bf16": 2500, "fp16": 2500, "tf32": 1250},
        hbm_gbps=8000,
        pcie_gen=5,
        host_gbps=0,  # as GB200: NVLink-C2C
        nvlink_gbps=1800,
        source=NVL72_SPECS.format(rack="GB300 NVL72", page="gb300-nvl72"),
        note="host<->device over NVLink-C2C: judged against the node's median GPU",
        nvlink_link_gbps=100.0,
    ),
)

_BY_NAME = {name.casefold(): spec for spec in SPECS for name in spec.names}


def lookup(name: str) -> GpuSpec | None:
    """The spec of the model NVML/CUDA calls `name`, or None for a model not in the table."""
    return _BY_NAME.get(name.strip().casefold())


def table_text() -> str:
    """The table as plain text, for `nodecheck explain` and docs/deep.md."""
    rows = [
        f"{'model':<15} {'bf16':>6} {'fp16':>6} {'tf32':>6} {'HBM GB/s':>8} "
        f"{'PCIe':>4} {'host GB/s':>9} {'NVLink GB/s':>11} {'per link':>8}"
    ]
    for spec in SPECS:
        rows.append(
            f"{spec.model:<15} {spec.tflops['bf16']:>6g} {spec.tflops['fp16']:>6g} "
            f"{spec.tflops['tf32']:>6g} {spec.hbm_gbps:>8g} {'gen' + str(spec.pcie_gen):>4} "
            f"{spec.host_gbps:>9g} {spec.nvlink_gbps:>11g} {spec.nvlink_link_gbps:>8g}"
        )
    sources = [f"{spec.model}: {spec.source}" for spec in SPECS]
    return "\n".join([*rows, "TFLOP/s dense; sources:", *(f"  - {source}" for source in sources)])
