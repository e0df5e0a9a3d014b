"""Vendor peak throughput and memory bandwidth, and a theoretical CPU peak.

GPU figures are *dense* (no 2:4 structured sparsity): datasheets of Hopper/Blackwell (and the L4, which gives only
sparse figures) headline the sparse number, which is twice the dense one, so those are halved here and the comment
says so. GeForce tensor-core FP16/BF16 figures are with FP32 accumulate (what PyTorch uses), which runs at half the
FP16-accumulate rate those cards advertise. TFLOP/s per dtype; memory bandwidth in GB/s (10^9 bytes/s).
An unknown device gets no figure (``None``), never another card's.
"""

from __future__ import annotations

import re

import psutil

from gflops_track.machine.hardware import cpu_model_name
from gflops_track.results.peaks import CpuPeakEstimate, GpuSpec

# Matched in order against torch.cuda.get_device_name(): more specific patterns first. An entry of None stops the
# search with no figure: MIG slices (a "1g.5gb" slice has 1/7 of an A100's SMs and 1/8 of its memory bandwidth, and
# the fraction depends on the profile, so the full chip's figure would be wrong by up to 7x: no figure is given), and
# cut-down or re-clocked variants whose vendor gives no dense tensor figures.
GPU_SPECS: list[tuple[str, GpuSpec | None]] = [
    (r"\bMIG\b", None),  # e.g. "NVIDIA A100-SXM4-40GB MIG 1g.5gb", "NVIDIA H100 80GB HBM3 MIG 3g.40gb"
    # NVIDIA GH200 Grace Hopper Superchip datasheet (2024): the Hopper GPU at H100 SXM compute (sparse figures
    # halved); 96 GB HBM3 at 4 TB/s ("GH200 480GB": 480 GB is the Grace CPU's LPDDR5X) or 144 GB HBM3e at 4.9 TB/s.
    (r"GH200.*(144G|HBM3e)",
     GpuSpec("GH200 144GB HBM3e", {"fp32": 67, "tf32": 494.5, "fp16": 989.5, "bf16": 989.5}, 4900, "GH200 datasheet")),
    (r"GH200 480GB|GH200.*96GB",
     GpuSpec("GH200 96GB HBM3", {"fp32": 67, "tf32": 494.5, "fp16": 989.5, "bf16": 989.5}, 4000, "GH200 datasheet")),
    (r"GH200", None),  # another memory configuration: its bandwidth is not known here
    # NVIDIA H200 Tensor Core GPU datasheet (2024), H200 NVL column (FP32 60, TF32 835, BF16/FP16 1,671 sparse).
    (r"H200 NVL", GpuSpec("H200 NVL", {"fp32": 60, "tf32": 417.5, "fp16": 835.5, "bf16": 835.5}, 4800, "H200 datasheet")),
    # Same datasheet, H200 SXM column; sparse figures halved.
    (r"H200", GpuSpec("H200 SXM", {"fp32": 67, "tf32": 494.5, "fp16": 989.5, "bf16": 989.5}, 4800, "H200 datasheet")),
    # NVIDIA H100 Tensor Core GPU datasheet (2023), H100 NVL column; sparse figures halved.
    (r"H100 NVL", GpuSpec("H100 NVL", {"fp32": 60, "tf32": 417.5, "fp16": 835.5, "bf16": 835.5}, 3900, "H100 datasheet")),
    # Same datasheet, H100 PCIe column; sparse figures halved.
    (r"H100.*PCIe", GpuSpec("H100 PCIe", {"fp32": 51, "tf32": 378, "fp16": 756, "bf16": 756}, 2000, "H100 datasheet")),
    # Same datasheet, H100 SXM column; sparse figures halved.
    (r"H100", GpuSpec("H100 SXM", {"fp32": 67, "tf32": 494.5, "fp16": 989.5, "bf16": 989.5}, 3350, "H100 datasheet")),
    # GB200 (Grace Blackwell superchip): its B200 GPUs are clocked and powered unlike the HGX B200's, and the "B200"
    # pattern below would match "NVIDIA GB200": no figure.
    (r"GB200", None),
    # NVIDIA HGX B200 datasheet (2024): 8-GPU figures divided by 8; sparse figures halved.
    (r"B200", GpuSpec("B200", {"fp32": 75, "tf32": 1125, "fp16": 2250, "bf16": 2250}, 8000, "HGX B200 datasheet")),
    # NVIDIA A100 Tensor Core GPU datasheet (2021): dense figures given beside the sparse ones.
    (r"A100.*80GB.*PCIe|A100.*PCIe.*80GB",
     GpuSpec("A100 80GB PCIe", {"fp32": 19.5, "tf32": 156, "fp16": 312, "bf16": 312}, 1935, "A100 datasheet")),
    (r"A100.*SXM.*80GB|A100.*80GB",
     GpuSpec("A100 80GB SXM", {"fp32": 19.5, "tf32": 156, "fp16": 312, "bf16": 312}, 2039, "A100 datasheet")),
    (r"A100", GpuSpec("A100 40GB", {"fp32": 19.5, "tf32": 156, "fp16": 312, "bf16": 312}, 1555, "A100 datasheet")),
    # NVIDIA L40S datasheet (2023); sparse figures halved.
    (r"L40S", GpuSpec("L40S", {"fp32": 91.6, "tf32": 183, "fp16": 362, "bf16": 362}, 864, "L40S datasheet")),
    # NVIDIA L4 datasheet (2023) gives sparse tensor figures only (TF32 120, FP16/BF16 242): halved.
    (r"\bL4\b", GpuSpec("L4", {"fp32": 30.3, "tf32": 60, "fp16": 121, "bf16": 121}, 300, "L4 datasheet")),
    # NVIDIA A10 datasheet (2021): dense figures given beside the sparse ones.
    (r"\bA10\b", GpuSpec("A10", {"fp32": 31.2, "tf32": 62.5, "fp16": 125, "bf16": 125}, 600, "A10 datasheet")),
    # NVIDIA T4 datasheet (2019): mixed-precision FP16/FP32 65 TFLOPS; no TF32/BF16 (Turing).
    (r"\bT4\b", GpuSpec("T4", {"fp32": 8.1, "fp16": 65}, 320, "T4 datasheet")),
    # NVIDIA V100S datasheet (2019): single precision 16.4, tensor 130 TFLOPS, 1,134 GB/s; no TF32/BF16 (Volta).
    (r"V100S", GpuSpec("V100S PCIe", {"fp32": 16.4, "fp16": 130}, 1134, "V100S datasheet")),
    # NVIDIA V100 datasheet (2020): SXM2 and PCIe columns; no TF32/BF16 (Volta).
    (r"V100.*PCIE|V100.*PCIe", GpuSpec("V100 PCIe", {"fp32": 14, "fp16": 112}, 900, "V100 datasheet")),
    (r"V100", GpuSpec("V100 SXM2", {"fp32": 15.7, "fp16": 125}, 900, "V100 datasheet")),
    (r"RTX 3090 Ti", None),  # GA102 whitepaper covers the 3090 only: more SMs and a higher clock
    # NVIDIA Ampere GA102 architecture whitepaper, RTX 3090: tensor FP16/BF16 with FP32 accumulate (dense) 71.
    (r"RTX 3090", GpuSpec("RTX 3090", {"fp32": 35.6, "tf32": 35.6, "fp16": 71, "bf16": 71}, 936, "GA102 whitepaper")),
    # RTX 4090 D (114 of 128 SMs) and the Laptop GPU (a different chip, AD103, clocked by the laptop's power limit):
    # the whitepaper gives neither, so no figure.
    (r"RTX 4090 D\b|RTX 4090.*Laptop", None),
    # NVIDIA Ada Lovelace architecture whitepaper, RTX 4090: tensor FP16/BF16 with FP32 accumulate (dense) 165.2.
    (r"RTX 4090", GpuSpec("RTX 4090", {"fp32": 82.6, "tf32": 82.6, "fp16": 165.2, "bf16": 165.2}, 1008, "AD102 whitepaper")),
]  # fmt: skip


def gpu_spec(device_name: str) -> GpuSpec | None:
    """The datasheet entry for a CUDA device name, or None when we have none (never another card's): the first
    pattern that matches decides, and an entry of None means 'no figure'."""
    for pattern, spec in GPU_SPECS:
        if re.search(pattern, device_name, flags=re.IGNORECASE):
            return spec
    return None


def _cpu_clock_ghz() -> float:
    frequency = psutil.cpu_freq()
    if frequency is not None and (frequency.max or frequency.current):
        return (frequency.max or frequency.current) / 1000
    return 0.0


def fp32_flops_per_cycle(capability: str, cpu_model: str) -> int:
    """FP32 FLOPs per core per cycle for the vector ISA torch dispatches to.

    AVX-512 with two FMA units: 2 units x 16 lanes x 2 (FMA) = 64. Zen 4 runs AVX-512 as two 256-bit halves: 32.
    AVX2 + FMA: 2 units x 8 lanes x 2 = 32. Otherwise (SSE, NEON without more knowledge): 2 x 4 x 2 = 16.
    """
    amd = "AMD" in cpu_model.upper()
    if capability.startswith("AVX512"):
        return 32 if amd else 64  # Zen 4 executes 512-bit as 2x256; Intel server cores have 2 FMA units
    if capability.startswith("AVX2"):
        return 32
    return 16


def cpu_peak_estimate(threads: int | None = None) -> CpuPeakEstimate | None:
    """Theoretical FP32 peak of the cores torch uses; None when the clock is unknown."""
    import torch  # here, not at the top: of this module only the estimate needs torch

    clock = _cpu_clock_ghz()
    if clock <= 0:
        return None
    physical = psutil.cpu_count(logical=False) or psutil.cpu_count() or 1
    cores = min(physical, threads or torch.get_num_threads())
    per_cycle = fp32_flops_per_cycle(torch.backends.cpu.get_cpu_capability(), cpu_model_name())
    return CpuPeakEstimate(cores * clock * per_cycle, cores, clock, per_cycle)
