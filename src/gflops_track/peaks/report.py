"""The peak step: which peaks apply to a run on this device, and what a reader must know about them.

GPU: the vendor's dense datasheet figure for the run's dtype (none for an unknown card: never another card's).
CPU: a theoretical estimate (cores x clock x FLOPs per cycle). Either device: optionally the measured roof (the best
of the GEMM and convolution probes, cached per machine), raised when a run beats it. Notes say which figure to trust.
"""

from __future__ import annotations

import torch

from gflops_track.options.peaks import PeakOptions
from gflops_track.peaks.probes import raise_roof
from gflops_track.peaks.table import cpu_peak_estimate, gpu_spec
from gflops_track.results.peaks import CpuPeakEstimate, GpuSpec, MeasuredPeak, PeakReport


def _spec_notes(device_name: str, spec: GpuSpec | None, dtype: str) -> list[str]:
    if spec is None:
        return [f"no vendor peak known for {device_name!r}: utilization vs spec not reported"]
    if spec.tflops.get(dtype) is None:
        return [f"{spec.name} has no {dtype} peak in its datasheet: utilization vs spec not reported"]
    return []


def _estimate_notes(achieved: float | None, estimate: CpuPeakEstimate | None) -> list[str]:
    if achieved and estimate is not None and achieved > estimate.gflop_per_s:
        return [
            f"achieved {achieved:,.1f} GFLOP/s exceeds the estimated CPU peak {estimate.gflop_per_s:,.1f} "
            f"({estimate.cores} cores x {estimate.clock_ghz:.2f} GHz x {estimate.flops_per_cycle}): the "
            "reported clock is likely the base (TSC) rate, not the boost clock; trust the measured peak"
        ]
    return []


def roof_above_spec_notes(measured: MeasuredPeak | None, spec_gflop_per_s: float | None, dtype: str) -> list[str]:
    """A measured roof above the datasheet's figure, explained: a convolution (or a run) there does fewer arithmetic
    operations than the ones counted (cuDNN's Winograd or FFT algorithms), so its GFLOP/s are counted FLOPs per
    second, not the chip's; a GEMM there means the card runs above the datasheet's clocks or the probe mis-timed.
    Said, so nobody reads utilization vs the roof as a share of the chip's rate."""
    if measured is None or not spec_gflop_per_s or measured.roof_gflop_per_s <= spec_gflop_per_s:
        return []
    roof = measured.roof_gflop_per_s
    kernel = measured.compute_kernel if measured.compute_gflop_per_s > measured.gemm_gflop_per_s else "GEMM"
    why = (
        "a GEMM cannot do fewer operations than counted: this card runs above the datasheet's clocks, the datasheet "
        "entry is another variant's (SXM against PCIe or NVL), or the probe's timing is wrong"
        if kernel.lower().startswith("gemm")
        else "its kernel does fewer arithmetic operations than counted (a convolution by Winograd or FFT), so it is "
        "counted FLOPs per second, not the chip's rate; utilization vs spec is the share of the chip"
    )
    return [
        f"the measured roof, {roof:,.1f} GFLOP/s ({kernel}), is {roof / spec_gflop_per_s:.1%} of the datasheet's "
        f"{spec_gflop_per_s:,.1f} GFLOP/s for {dtype}: {why}"
    ]


def compare_with_peaks(
    device: torch.device,
    dtype: str,
    hardware: str,
    device_name: str,
    achieved_gflop_per_s: float | None,
    options: PeakOptions | None = None,
    kernel: str = "a profiled run",
) -> PeakReport:
    """The peaks for ``device`` running in ``dtype`` (``hardware``: the fingerprint's label, the probe cache key;
    ``device_name``: the GPU name the datasheet is looked up by; ``kernel``: what achieved the rate, named when it
    raises the measured roof), with notes where a peak is unknown or beaten."""
    options = options or PeakOptions()
    spec, spec_gflop_per_s, estimate, notes = None, None, None, []
    if device.type == "cuda":
        spec = gpu_spec(device_name)
        tflops = spec.tflops.get(dtype) if spec else None
        spec_gflop_per_s = tflops * 1e3 if tflops else None
        notes += _spec_notes(device_name, spec, dtype)
    else:
        estimate = cpu_peak_estimate()
    measured = None
    if options.measure:  # a run that beats the cached roof raises it: utilization never exceeds the measured roof
        measured, raised = raise_roof(
            device, dtype, hardware, achieved_gflop_per_s or 0.0, options.cache_dir, kernel=kernel
        )
        notes += [
            *measured.notes,
            *([raised] if raised else []),
            *roof_above_spec_notes(measured, spec_gflop_per_s, dtype),
        ]
    notes += _estimate_notes(achieved_gflop_per_s, estimate)
    return PeakReport(spec, spec_gflop_per_s, estimate, measured, notes)
