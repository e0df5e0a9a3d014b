"""What the peak step produces: the datasheet entry (``GpuSpec``), the CPU estimate, the measured roof
(``MeasuredPeak``) and the ``PeakReport`` of a run, and the roofs and points a roofline draws. The tables, probes and
the step that fill them are in ``gflops_track.peaks``.

Units: GFLOP/s and GB/s (10^9 bytes/s); ``GpuSpec.tflops`` in TFLOP/s.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gflops_track.common import names


@dataclass(frozen=True)
class GpuSpec:
    name: str
    tflops: dict[str, float]  # dtype -> dense TFLOP/s: fp32 (no tensor cores), tf32, fp16, bf16
    bandwidth_gb_s: float
    source: str


@dataclass(frozen=True)
class CpuPeakEstimate:
    """cores x clock x FP32 FLOPs per cycle; an estimate (VMs often report the TSC rate as the clock)."""

    gflop_per_s: float
    cores: int
    clock_ghz: float
    flops_per_cycle: int


@dataclass(frozen=True)
class Roof:
    """A compute roof (GFLOP/s) and a memory roof (GB/s), e.g. the vendor's or the measured ones."""

    label: str
    gflop_per_s: float
    bandwidth_gb_s: float

    @property
    def ridge(self) -> float:
        """Arithmetic intensity (FLOP/byte) where the memory roof meets the compute roof."""
        return self.gflop_per_s / self.bandwidth_gb_s


@dataclass(frozen=True)
class RooflinePoint:
    """One run on the roofline: arithmetic intensity (FLOP/byte) and achieved GFLOP/s."""

    label: str
    intensity: float
    gflop_per_s: float


@dataclass(frozen=True)
class MeasuredPeak:
    """GFLOP/s and GB/s (10^9 bytes/s). ``gemm_*``: the best GEMM probe; ``compute_*``: the roof — the best of every
    probed kernel, raised by any run that beat it. ``bandwidth_gb_s`` is None when no copy buffer fit in memory."""

    gemm_gflop_per_s: float
    gemm_size: int
    bandwidth_gb_s: float | None
    bandwidth_buffer_mib: float | None
    dtype: str
    cached: bool = False
    compute_gflop_per_s: float = 0.0
    compute_kernel: str = ""
    measured_at: float = 0.0  # unix time of the probe
    notes: tuple[str, ...] = field(default=(), compare=False)

    @property
    def roof_gflop_per_s(self) -> float:
        """The compute roof: what utilization divides by (never below the GEMM probe)."""
        return max(self.compute_gflop_per_s, self.gemm_gflop_per_s)

    def metrics(self, achieved_gflop_per_s: float | None = None) -> dict[str, float]:
        """``measured_peak_gflop_per_s`` is the roof (what a roofline draws and utilization divides by);
        ``measured_gemm_gflop_per_s`` the GEMM probe; bandwidth only when known."""
        values = {names.MEASURED_PEAK: self.roof_gflop_per_s, names.MEASURED_GEMM: self.gemm_gflop_per_s}
        if self.bandwidth_gb_s is not None:
            values[names.MEASURED_BANDWIDTH] = self.bandwidth_gb_s
        if achieved_gflop_per_s is not None:
            values[names.UTILIZATION_MEASURED] = achieved_gflop_per_s / self.roof_gflop_per_s
        return values


@dataclass(frozen=True)
class PeakReport:
    """The peaks that apply to one run; GFLOP/s and GB/s (10^9 bytes/s)."""

    gpu_spec: GpuSpec | None = None
    spec_gflop_per_s: float | None = None  # vendor dense peak for the run's dtype (GPU)
    cpu_peak: CpuPeakEstimate | None = None  # theoretical estimate (CPU)
    measured: MeasuredPeak | None = None
    notes: list[str] = field(default_factory=list)

    def roofs(self) -> list[Roof]:
        """The roofs we know: vendor spec (GPU), CPU estimate paired with measured bandwidth, measured."""
        roofs = []
        if self.gpu_spec is not None and self.spec_gflop_per_s:
            roofs.append(Roof(f"{self.gpu_spec.name} spec", self.spec_gflop_per_s, self.gpu_spec.bandwidth_gb_s))
        bandwidth = self.measured.bandwidth_gb_s if self.measured is not None else None
        if self.cpu_peak is not None and bandwidth:
            roofs.append(Roof("CPU estimate", self.cpu_peak.gflop_per_s, bandwidth))
        if self.measured is not None and bandwidth:
            roofs.append(Roof("measured", self.measured.roof_gflop_per_s, bandwidth))
        return roofs
