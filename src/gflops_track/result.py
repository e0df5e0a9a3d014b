"""What a profile produces: one dataclass that the tracking layer logs and the console prints."""

from __future__ import annotations

from dataclasses import dataclass, field

from gflops_track.counting.layer_info import LayerCost
from gflops_track.counting.thop_compare import ThopCount
from gflops_track.counting.torch_crosscheck import TorchCount
from gflops_track.hardware import Fingerprint
from gflops_track.timing import TimingResult

MIB = 2**20


@dataclass(frozen=True)
class ProfileResult:
    """Cost (whole batch) and speed of one module on one input, and where it was measured.

    Units: ``params`` in parameters, ``macs`` in multiply-accumulates, ``flops`` in floating-point operations
    (1 MAC = 2 FLOPs for the dense part), latency in milliseconds, throughput in samples per second,
    ``achieved_gflop_per_s`` = flops / median latency / 1e9.
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
    thop: ThopCount | None = None
    torch_count: TorchCount | None = None
    timing: TimingResult | None = None
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
        }
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
            latency = self.timing.latency
            values.update(
                latency_mean_ms=latency.mean_ms,
                latency_median_ms=latency.median_ms,
                latency_std_ms=latency.std_ms,
                latency_min_ms=latency.min_ms,
                latency_max_ms=latency.max_ms,
                latency_p90_ms=latency.p90_ms,
                latency_p95_ms=latency.p95_ms,
                latency_cv=latency.cv,
                throughput_samples_per_s=self.throughput_samples_per_s or 0.0,
                achieved_gflop_per_s=self.achieved_gflop_per_s or 0.0,
                peak_memory_mib=self.timing.peak_memory_bytes / MIB,
                warmup_iterations=self.timing.warmup_iterations,
                timed_iterations=self.timing.timed_iterations,
            )
        return values
