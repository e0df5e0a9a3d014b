"""Roofline bounds per layer: the least time a layer's FLOPs and bytes allow on a device, which no measurement can
beat. A bound is only a bound if every figure in it errs low, so:

* compute: the *highest* rate known for the device — the measured roof (best GEMM/convolution probe, raised by any
  run that beat it), the CPU estimate (cores x clock x FLOPs/cycle) times ``CPU_BOOST_ALLOWANCE`` (2: the clock a
  VM reports is often the base clock, and a boost clock runs well above it — on this project's Zen 4 VM the seed
  block's convolution reached 228 GFLOP/s against an estimate of 166) or the datasheet's dense figure (for fp32 on a
  GPU, the TF32 figure too, since PyTorch may allow TF32);
* memory: not the unfused byte model (every op reads its inputs from and writes its outputs to memory), which
  overstates the traffic of tensors that stay in cache. An op whose distinct inputs total ``I`` bytes and whose
  outputs total ``O`` must read at least ``I - C`` of its inputs from off-chip memory and write at least ``O - C``
  of its outputs there, where ``C`` is everything the device keeps on chip (CPU: every cache level; GPU: L2, shared
  memory and registers), because no more than ``C`` can be on chip when it starts or when it ends. So the memory
  bound counts ``max(0, I - C) + max(0, O - C)`` per op, at the highest bandwidth known: a GPU's datasheet figure or
  its measured copy bandwidth, whichever is higher; a CPU's measured copy bandwidth x 1.5, because the copy probe
  counts 2 bytes per byte copied where a write-allocate cache moves 3. Where the on-chip size or the bandwidth is
  unknown there is no memory bound (the compute bound alone), and the rule says so.

A layer whose tensors all fit on chip is therefore bounded by compute alone: the honest answer when the data never
needs to leave the chip, and the reason a bound here can sit far below the time measured.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict

from gflops_track.common import names
from gflops_track.results.counting import LayerCost
from gflops_track.results.layers import BoundRoof, LayerBound, LayerRow, LayerTiming
from gflops_track.results.peaks import GpuSpec, PeakReport

CPU_BOOST_ALLOWANCE = 2.0  # the CPU estimate uses the reported clock, often the base one: boost runs above it
CPU_WRITE_ALLOCATE = 1.5  # the copy probe's 2 bytes per byte copied against the 3 a write-allocate cache moves

# On-chip bytes per datasheet card, in MiB: L2 + SMs x (L1/shared memory + register file), from the vendors'
# architecture whitepapers. Hopper: 50 MB L2 (the H100 SXM5/PCIe/NVL, H200 and GH200 dies), 256 KB L1/shared + 256 KB
# registers per SM; Ampere A100: 40 MB L2, 108 SMs x (192 + 256) KB; Ada: 256 KB registers + 128 KB L1 per SM.
GPU_ON_CHIP_MIB: dict[str, float] = {
    "GH200 144GB HBM3e": 50 + 132 * 0.5,
    "GH200 96GB HBM3": 50 + 132 * 0.5,
    "H200 NVL": 50 + 132 * 0.5,
    "H200 SXM": 50 + 132 * 0.5,
    "H100 NVL": 50 + 132 * 0.5,
    "H100 PCIe": 50 + 114 * 0.5,
    "H100 SXM": 50 + 132 * 0.5,
    "A100 80GB PCIe": 80 / 2 + 108 * 0.4375,
    "A100 80GB SXM": 80 / 2 + 108 * 0.4375,
    "A100 40GB": 40 + 108 * 0.4375,
    "L40S": 96 + 142 * 0.375,
    "L4": 48 + 58 * 0.375,
    "RTX 4090": 72 + 128 * 0.375,
}


def offchip_bytes(traffic: Sequence[Sequence[int]], on_chip: int | None) -> int:
    """Bytes that must cross the chip's edge: per op ``max(0, I - C) + max(0, O - C)`` (0 with ``on_chip`` None)."""
    if on_chip is None:
        return 0
    return sum(max(0, inputs - on_chip) + max(0, outputs - on_chip) for inputs, outputs in traffic)


def layer_bound(flops: int, traffic: Sequence[Sequence[int]], roof: BoundRoof) -> LayerBound:
    """The least time (ms) ``flops`` FLOPs and ``traffic`` (per op: distinct input bytes, output bytes) take."""
    offchip = offchip_bytes(traffic, roof.on_chip_bytes) if roof.bandwidth_gb_s else 0
    memory_ms = offchip / (roof.bandwidth_gb_s * 1e9) * 1e3 if roof.bandwidth_gb_s else 0.0
    return LayerBound(flops / (roof.gflop_per_s * 1e9) * 1e3, memory_ms, offchip)


def _memory_words(bandwidth: float | None, on_chip: int | None, source: str) -> str:
    if bandwidth is None or on_chip is None:
        missing = "bandwidth" if bandwidth is None else "on-chip size"
        return f"no memory bound (the {missing} is unknown): the compute bound alone"
    return (
        f"memory: each op's bytes beyond the {on_chip / names.MIB:,.1f} MiB kept on chip, at {bandwidth:,.1f} GB/s "
        f"({source})"
    )


def device_roof(report: PeakReport, dtype: str, on_chip: int | None, label: str) -> BoundRoof | None:
    """The roof the run's own layers are bounded by (see the module's rules); None when no compute rate is known."""
    rates = {"measured roof": report.measured.roof_gflop_per_s if report.measured else 0.0}
    if report.cpu_peak is not None:
        boosted = report.cpu_peak.gflop_per_s * CPU_BOOST_ALLOWANCE
        rates[f"CPU estimate x {CPU_BOOST_ALLOWANCE:g} for boost clocks"] = boosted
    if report.spec_gflop_per_s:
        rates["datasheet"] = report.spec_gflop_per_s
    if report.gpu_spec is not None and dtype == "fp32" and report.gpu_spec.tflops.get("tf32"):
        rates["datasheet TF32"] = report.gpu_spec.tflops["tf32"] * 1e3
    source, rate = max(rates.items(), key=lambda item: item[1])
    if rate <= 0:
        return None
    measured_bw = report.measured.bandwidth_gb_s if report.measured else None
    if report.gpu_spec is not None:
        bandwidth: float | None = max(report.gpu_spec.bandwidth_gb_s, measured_bw or 0.0)
        bw_source = "the higher of the datasheet and the measured copy"
    elif measured_bw:
        bandwidth = measured_bw * CPU_WRITE_ALLOCATE if report.cpu_peak is not None else measured_bw
        bw_source = "measured copy x 1.5 for write-allocate" if report.cpu_peak is not None else "measured copy"
    else:
        bandwidth, bw_source = None, ""
    rule = f"compute: {rate:,.1f} GFLOP/s ({source}, the highest known); " + _memory_words(
        bandwidth, on_chip, bw_source
    )
    return BoundRoof(label, rate, bandwidth, on_chip if bandwidth else None, rule)


def spec_roof(spec: GpuSpec, dtype: str) -> BoundRoof:
    """A datasheet card's roof for ``dtype`` (``ValueError`` naming the dtypes it has when it has none for it)."""
    tflops = spec.tflops.get(dtype)
    if tflops is None:
        raise ValueError(
            f"--dtype {dtype} is not allowed for {spec.name}: its datasheet gives {', '.join(sorted(spec.tflops))}"
        )
    on_chip_mib = GPU_ON_CHIP_MIB.get(spec.name)
    on_chip = int(on_chip_mib * names.MIB) if on_chip_mib is not None else None
    rule = f"compute: {tflops * 1e3:,.0f} GFLOP/s ({spec.source}, {dtype} dense); " + _memory_words(
        spec.bandwidth_gb_s if on_chip else None, on_chip, spec.source
    )
    return BoundRoof(spec.name, tflops * 1e3, spec.bandwidth_gb_s if on_chip else None, on_chip, rule)


def layer_rows(
    layers: Sequence[LayerCost],
    traffic: Mapping[str, Sequence[Sequence[int]]],
    timing: LayerTiming | None,
    roof: BoundRoof | None,
) -> list[LayerRow]:
    """The layers table with time, bytes and bound joined to each counted row (by name)."""
    times = {module.name: module for module in timing.modules} if timing else {}
    total = timing.self_sum_ms if timing else 0.0
    rows = []
    for layer in layers:
        values = asdict(layer)  # the count's columns, then what the pass and the bound add
        bound = layer_bound(layer.flops, traffic.get(layer.name, ()), roof) if roof is not None else None
        spent = times.get(layer.name)
        if spent is not None:
            seconds = spent.self_ms / 1e3
            values |= {
                "self_ms": spent.self_ms,
                "self_iqr_ms": spent.self_iqr_ms,
                "inclusive_ms": spent.inclusive_ms,
                "time_share": spent.self_ms / total if total else None,
                "gflop_per_s": layer.flops / seconds / 1e9 if seconds > 0 else None,
            }
        values["intensity"] = layer.flops / layer.bytes_moved if layer.bytes_moved else None
        if bound is not None:
            values |= {"offchip_bytes": bound.offchip_bytes, "bound": bound.limit, "bound_ms": bound.bound_ms}
            if spent is not None and spent.self_ms > 0:
                values["efficiency"] = bound.bound_ms / spent.self_ms
        rows.append(LayerRow(**values))
    return rows
