"""What a profile produces: one dataclass that the tracking layer logs and the console prints."""

from __future__ import annotations

from dataclasses import dataclass, field

from gflops_track.counting.layer_info import LayerCost
from gflops_track.counting.thop_compare import ThopCount
from gflops_track.counting.torch_crosscheck import TorchCount
from gflops_track.hardware import Fingerprint
from gflops_track.peaks import CpuPeakEstimate, GpuSpec
from gflops_track.plots import Roof, RooflinePoint
from gflops_track.probes import MeasuredPeak
from gflops_track.runtime import RuntimeOptions
from gflops_track.timing import LatencyStats, TimingResult

MIB = 2**20


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    return numerator / denominator if numerator is not None and denominator else None


@dataclass(frozen=True)
class ProfileResult:
    """Cost (whole batch) and speed of one module on one input, and where it was measured.

    Units: ``params`` in parameters, ``macs`` in multiply-accumulates, ``flops`` in floating-point operations
    (1 MAC = 2 FLOPs for the dense part), bytes in bytes, latency in milliseconds, throughput in samples per second,
    ``achieved_gflop_per_s`` = flops / median latency / 1e9, peaks in GFLOP/s and GB/s (10^9 bytes/s).
    """

    model_name: str
    device: str
    input_shapes: list[list[int]]
    batch_size: int
    params: int
    macs: int
    flops: int
    flops_by_category: dict[str, int]
    uncounted_ops: dict[str, int]
    count_backend: str
    layers: list[LayerCost]
    fingerprint: Fingerprint
    bytes_moved: int = 0  # unfused byte model: every op reads its inputs and writes its outputs once
    min_bytes: int = 0  # lower bound: params + buffers + model inputs + outputs once
    runtime: RuntimeOptions = field(default_factory=RuntimeOptions)
    settings: dict[str, str] = field(default_factory=dict)  # effective precision/threading flags
    thop: ThopCount | None = None
    torch_count: TorchCount | None = None
    timing: TimingResult | None = None
    gpu_spec: GpuSpec | None = None
    spec_gflop_per_s: float | None = None  # vendor dense peak for the run's dtype (GPU)
    cpu_peak: CpuPeakEstimate | None = None  # theoretical estimate (CPU)
    measured_peak: MeasuredPeak | None = None
    notes: list[str] = field(default_factory=list)  # counter disagreements and caveats, shown and logged

    @property
    def median_latency_ms(self) -> float | None:
        return self.timing.latency.median_ms if self.timing else None

    @property
    def throughput_samples_per_s(self) -> float | None:
        median = self.median_latency_ms
        return self.batch_size / (median / 1e3) if median else None

    @property
    def achieved_gflop_per_s(self) -> float | None:
        median = self.median_latency_ms
        return self.flops / (median / 1e3) / 1e9 if median else None

    @property
    def arithmetic_intensity(self) -> float | None:
        """FLOPs per byte under the unfused byte model (a lower bound on the real intensity)."""
        return _ratio(self.flops, self.bytes_moved)

    def roofs(self) -> list[Roof]:
        """The device's roofs we know: vendor spec (GPU), CPU estimate paired with measured bandwidth, measured."""
        roofs = []
        if self.gpu_spec is not None and self.spec_gflop_per_s:
            roofs.append(Roof(f"{self.gpu_spec.name} spec", self.spec_gflop_per_s, self.gpu_spec.bandwidth_gb_s))
        measured = self.measured_peak
        if self.cpu_peak is not None and measured is not None:
            roofs.append(Roof("CPU estimate", self.cpu_peak.gflop_per_s, measured.bandwidth_gb_s))
        if measured is not None:
            roofs.append(Roof("measured", measured.gemm_gflop_per_s, measured.bandwidth_gb_s))
        return roofs

    def roofline_point(self, label: str) -> RooflinePoint | None:
        if self.arithmetic_intensity is None or self.achieved_gflop_per_s is None:
            return None
        return RooflinePoint(label, self.arithmetic_intensity, self.achieved_gflop_per_s)

    def metrics(self) -> dict[str, float]:
        """Every measured number under a name that carries its unit."""
        values: dict[str, float] = {
            "params": self.params,
            "macs": self.macs,
            "gmacs": self.macs / 1e9,
            "flops": self.flops,
            "gflops": self.flops / 1e9,
            "uncounted_op_calls": sum(self.uncounted_ops.values()),
            **{f"flops_{category}": flops for category, flops in self.flops_by_category.items()},
            "bytes_moved_mib": self.bytes_moved / MIB,
            "min_bytes_mib": self.min_bytes / MIB,
        }
        if self.bytes_moved:
            values["arithmetic_intensity_flop_per_byte"] = self.flops / self.bytes_moved
        if self.min_bytes:
            values["arithmetic_intensity_max_flop_per_byte"] = self.flops / self.min_bytes
        if self.thop is not None and not self.thop.error:
            values.update(
                thop_macs=self.thop.macs,
                thop_params=self.thop.params,
                thop_raw_macs=self.thop.raw_macs,
                thop_raw_params=self.thop.raw_params,
            )
        if self.torch_count is not None:
            values["torch_flop_counter_flops"] = self.torch_count.flops
        if self.timing is not None:
            values.update(self._timing_metrics(self.timing))
        values.update(self._peak_metrics())
        return values

    def _timing_metrics(self, timing: TimingResult) -> dict[str, float]:
        values = {
            **_latency_metrics("latency", timing.latency),
            "latency_cold_start_ms": timing.cold_start_ms,
            "precision_target": timing.target_precision,
            "precision_target_met": float(timing.precision_met),
            "throughput_samples_per_s": self.throughput_samples_per_s or 0.0,
            "achieved_gflop_per_s": self.achieved_gflop_per_s or 0.0,
            "peak_memory_mib": timing.peak_memory_bytes / MIB,
            "warmup_iterations": timing.warmup_iterations,
            "warmup_s": timing.warmup_s,
            "warmup_settled": float(timing.warmup_settled),
            "timed_iterations": timing.timed_iterations,
            "l2_flushed": float(timing.l2_flushed),
            **{f"cond_{key}": value for key, value in timing.conditions.metrics.items()},
        }
        if timing.graph_latency is not None:
            values.update(_latency_metrics("graph_latency", timing.graph_latency))
            values["graph_achieved_gflop_per_s"] = self.flops / (timing.graph_latency.median_ms / 1e3) / 1e9
        return values

    def _peak_metrics(self) -> dict[str, float]:
        achieved = self.achieved_gflop_per_s
        values: dict[str, float] = {}
        if self.spec_gflop_per_s and self.gpu_spec is not None:
            values["spec_peak_gflop_per_s"] = self.spec_gflop_per_s
            values["spec_bandwidth_gb_per_s"] = self.gpu_spec.bandwidth_gb_s
            if achieved is not None:
                values["utilization_vs_spec_peak"] = achieved / self.spec_gflop_per_s
        if self.cpu_peak is not None:
            values["cpu_estimated_peak_gflop_per_s"] = self.cpu_peak.gflop_per_s
            if achieved is not None:
                values["utilization_vs_estimated_peak"] = achieved / self.cpu_peak.gflop_per_s
        if self.measured_peak is not None:
            values["measured_peak_gflop_per_s"] = self.measured_peak.gemm_gflop_per_s
            values["measured_bandwidth_gb_per_s"] = self.measured_peak.bandwidth_gb_s
            if achieved is not None:
                values["utilization_vs_measured_peak"] = achieved / self.measured_peak.gemm_gflop_per_s
        return values


def _latency_metrics(prefix: str, latency: LatencyStats) -> dict[str, float]:
    return {
        f"{prefix}_mean_ms": latency.mean_ms,
        f"{prefix}_median_ms": latency.median_ms,
        f"{prefix}_std_ms": latency.std_ms,
        f"{prefix}_min_ms": latency.min_ms,
        f"{prefix}_max_ms": latency.max_ms,
        f"{prefix}_p90_ms": latency.p90_ms,
        f"{prefix}_p95_ms": latency.p95_ms,
        f"{prefix}_cv": latency.cv,
        f"{prefix}_ci95_low_ms": latency.ci_low_ms,
        f"{prefix}_ci95_high_ms": latency.ci_high_ms,
        f"{prefix}_precision": latency.precision,
    }
