"""What the steps produce, together: ``CountResult`` (the count step) and ``ProfileResult``, which holds the count,
the timing (``results.timing``), the peaks (``results.peaks``) and in train mode the training step
(``results.training``) with the fingerprint, and names every metric.

Units: ``params`` in parameters, ``macs`` in multiply-accumulates, ``flops`` in floating-point operations
(1 MAC = 2 FLOPs for the dense part), bytes in bytes, latency in milliseconds, throughput in samples per second,
``achieved_gflop_per_s`` = flops / median latency / 1e9, peaks in GFLOP/s and GB/s (10^9 bytes/s).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gflops_track.common import names
from gflops_track.options.runtime import RuntimeOptions
from gflops_track.results.counting import LayerCost, ThopCount, TorchCount
from gflops_track.results.fingerprint import Fingerprint
from gflops_track.results.layers import BoundRoof, LayerRow, LayerTiming, forward_bound_metrics
from gflops_track.results.peaks import CpuPeakEstimate, GpuSpec, MeasuredPeak, PeakReport, Roof, RooflinePoint
from gflops_track.results.timing import TimingResult, achieved_gflop_per_s
from gflops_track.results.training import TrainingStep


@dataclass(frozen=True)
class CountResult:
    """Whole-batch cost of one forward pass of one module on one input, with the cross-checks and their notes."""

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
    bytes_moved: int = 0  # unfused byte model: every op reads its inputs and writes its outputs once
    min_bytes: int = 0  # lower bound: params + buffers + model inputs + outputs once
    layer_traffic: dict[str, list[tuple[int, int]]] = field(default_factory=dict)  # layer -> per op (in, out) bytes
    thop: ThopCount | None = None
    torch_count: TorchCount | None = None
    notes: list[str] = field(default_factory=list)  # counter disagreements and caveats

    @property
    def arithmetic_intensity(self) -> float | None:
        """FLOPs per byte under the unfused byte model (a lower bound on the real intensity)."""
        return self.flops / self.bytes_moved if self.bytes_moved else None

    def metrics(self) -> dict[str, float]:
        """Counts and cross-checks under names that carry their unit."""
        values: dict[str, float] = {
            names.PARAMS: self.params,
            names.MACS: self.macs,
            names.GMACS: self.macs / 1e9,
            names.FLOPS: self.flops,
            names.GFLOPS: self.flops / 1e9,
            names.UNCOUNTED_OP_CALLS: sum(self.uncounted_ops.values()),
            **{f"{names.FLOPS_CATEGORY_PREFIX}{category}": flops for category, flops in self.flops_by_category.items()},
            names.BYTES_MOVED_MIB: self.bytes_moved / names.MIB,
            names.MIN_BYTES_MIB: self.min_bytes / names.MIB,
        }
        if self.bytes_moved:
            values[names.INTENSITY] = self.flops / self.bytes_moved
        if self.min_bytes:
            values[names.INTENSITY_MAX] = self.flops / self.min_bytes
        if self.thop is not None and not self.thop.error:
            values[names.THOP_MACS] = self.thop.macs
            values[names.THOP_PARAMS] = self.thop.params
            values[names.THOP_RAW_MACS] = self.thop.raw_macs
            values[names.THOP_RAW_PARAMS] = self.thop.raw_params
        if self.torch_count is not None:
            values[names.TORCH_FLOPS] = self.torch_count.flops
        return values


def _share(achieved: float | None, peak: float | None) -> float | None:
    return achieved / peak if achieved is not None and peak else None


@dataclass(frozen=True)
class ProfileResult:
    """Cost (whole batch), speed and peaks of one module on one input, and where it was measured; in train mode
    also the training step (``training``), whose MFU divides by the same peaks."""

    cost: CountResult
    fingerprint: Fingerprint
    runtime: RuntimeOptions = field(default_factory=RuntimeOptions)
    settings: dict[str, str] = field(default_factory=dict)  # effective precision/threading flags
    timing: TimingResult | None = None
    peaks: PeakReport | None = None
    training: TrainingStep | None = None
    run_notes: list[str] = field(default_factory=list)  # what the run itself says, e.g. a step skipped and why
    layer_timing: LayerTiming | None = None  # the per-layer pass (after the headline timing)
    layer_roof: BoundRoof | None = None  # what the layers' bounds are taken against
    layer_rows: list[LayerRow] = field(default_factory=list)  # the layers table with time and bound joined

    # What was counted (the count step's fields, read through).
    model_name = property(lambda self: self.cost.model_name)
    device = property(lambda self: self.cost.device)
    input_shapes = property(lambda self: self.cost.input_shapes)
    batch_size = property(lambda self: self.cost.batch_size)
    params = property(lambda self: self.cost.params)
    macs = property(lambda self: self.cost.macs)
    flops = property(lambda self: self.cost.flops)
    flops_by_category = property(lambda self: self.cost.flops_by_category)
    uncounted_ops = property(lambda self: self.cost.uncounted_ops)
    count_backend = property(lambda self: self.cost.count_backend)
    layers = property(lambda self: self.cost.layers)
    bytes_moved = property(lambda self: self.cost.bytes_moved)
    min_bytes = property(lambda self: self.cost.min_bytes)
    thop = property(lambda self: self.cost.thop)
    torch_count = property(lambda self: self.cost.torch_count)
    arithmetic_intensity = property(lambda self: self.cost.arithmetic_intensity)

    @property
    def gpu_spec(self) -> GpuSpec | None:
        return self.peaks.gpu_spec if self.peaks else None

    @property
    def spec_gflop_per_s(self) -> float | None:
        return self.peaks.spec_gflop_per_s if self.peaks else None

    @property
    def cpu_peak(self) -> CpuPeakEstimate | None:
        return self.peaks.cpu_peak if self.peaks else None

    @property
    def measured_peak(self) -> MeasuredPeak | None:
        return self.peaks.measured if self.peaks else None

    @property
    def mode(self) -> str:
        return "train" if self.training is not None else "inference"

    @property
    def notes(self) -> list[str]:
        """Every step's notes in pipeline order: the run's own (a step skipped), counting, timing (with its
        conditions), the training step's counting and timing, peaks."""
        timing_notes = self.timing.notes if self.timing else []
        training_notes: list[str] = []
        if self.training is not None:
            training_notes += [f"training step: {note}" for note in self.training.count.notes]
            if self.training.timing is not None:
                training_notes += [f"training step timing: {note}" for note in self.training.timing.step.notes]
            if self.training.layer_timing is not None:
                training_notes += self.training.layer_timing.notes
        peak_notes = self.peaks.notes if self.peaks else []
        layer_notes = self.layer_timing.notes if self.layer_timing else []
        return [*self.run_notes, *self.cost.notes, *timing_notes, *training_notes, *peak_notes, *layer_notes]

    @property
    def mfu_vs_spec(self) -> float | None:
        """Model FLOPs utilization against the datasheet peak (GPU): step FLOPs / step time / peak; unitless."""
        return _share(self.training.achieved_gflop_per_s, self.spec_gflop_per_s) if self.training else None

    @property
    def mfu_vs_measured(self) -> float | None:
        """Model FLOPs utilization against the measured roof (best of the GEMM and convolution probes); unitless."""
        measured = self.measured_peak
        if self.training is None or measured is None:
            return None
        return _share(self.training.achieved_gflop_per_s, measured.roof_gflop_per_s)

    @property
    def mfu(self) -> tuple[float, str] | None:
        """The headline MFU and the peak it divides by, in words: the datasheet peak where the GPU has one for the
        run's dtype, else the measured roof (CPU, or a GPU without a datasheet figure); None when neither is known
        or the step was not timed."""
        if self.mfu_vs_spec is not None and self.gpu_spec is not None and self.spec_gflop_per_s:
            spec = f"{self.gpu_spec.name}, {self.runtime.dtype} dense"
            return self.mfu_vs_spec, f"datasheet peak {self.spec_gflop_per_s:,.0f} GFLOP/s ({spec})"
        measured = self.measured_peak
        if self.mfu_vs_measured is not None and measured is not None:
            return self.mfu_vs_measured, (
                f"measured peak {measured.roof_gflop_per_s:,.1f} GFLOP/s ({measured.dtype}, best of the GEMM and "
                "convolution probes)"
            )
        return None

    @property
    def median_latency_ms(self) -> float | None:
        return self.timing.latency.median_ms if self.timing else None

    @property
    def throughput_samples_per_s(self) -> float | None:
        median = self.median_latency_ms
        return self.batch_size / (median / 1e3) if median else None

    @property
    def achieved_gflop_per_s(self) -> float | None:
        return achieved_gflop_per_s(self.flops, self.median_latency_ms)

    @property
    def utilization_vs_spec(self) -> float | None:
        """Achieved GFLOP/s over the vendor's dense peak for the run's dtype (GPU); unitless."""
        return _share(self.achieved_gflop_per_s, self.spec_gflop_per_s)

    @property
    def utilization_vs_estimate(self) -> float | None:
        """Achieved GFLOP/s over the theoretical CPU estimate; unitless."""
        return _share(self.achieved_gflop_per_s, self.cpu_peak.gflop_per_s if self.cpu_peak else None)

    @property
    def utilization_vs_measured(self) -> float | None:
        """Achieved GFLOP/s over the measured roof (best of the GEMM and convolution probes); unitless."""
        measured = self.measured_peak
        return _share(self.achieved_gflop_per_s, measured.roof_gflop_per_s if measured else None)

    def roofs(self) -> list[Roof]:
        return self.peaks.roofs() if self.peaks else []

    def roofline_points(self, label: str) -> list[RooflinePoint]:
        """The inference forward at its arithmetic intensity; in train mode the step too, placed at the forward's
        intensity (no byte model of the backward: the label says so)."""
        intensity = self.arithmetic_intensity
        if intensity is None:
            return []
        points = []
        if self.achieved_gflop_per_s is not None:
            points.append(RooflinePoint(label, intensity, self.achieved_gflop_per_s))
        step = self.training.achieved_gflop_per_s if self.training else None
        if step is not None:
            points.append(RooflinePoint(f"{label} train step (at forward intensity)", intensity, step))
        return points

    def metrics(self) -> dict[str, float]:
        """Every measured number under a name that carries its unit (see ``names``)."""
        values = self.cost.metrics()
        if self.timing is not None:
            values.update(self._timing_metrics(self.timing))
        if self.training is not None:
            values.update(self.training.metrics())
        values.update(self._peak_metrics())
        values.update(self._layer_metrics())
        return values

    def top_layers(self, count: int = 3) -> list[LayerRow]:
        """The ``count`` layers that take the most self time (the timed rows only)."""
        timed = [row for row in self.layer_rows if row.self_ms is not None]
        return sorted(timed, key=lambda row: row.self_ms or 0.0, reverse=True)[:count]

    def _layer_metrics(self) -> dict[str, float]:
        """The per-layer pass: its forward, the self times' sum and its gap to the headline median; the bounds."""
        timing = self.layer_timing
        if timing is None:
            return {}
        values = {
            names.LAYERS_FORWARD_MS: timing.forward_ms,
            names.LAYERS_SELF_SUM_MS: timing.self_sum_ms,
            names.LAYERS_ITERATIONS: float(timing.iterations),
            names.LAYERS_TOTAL_S: timing.total_s,
        }
        values.update(timing.check_metrics(names.LAYERS_PREFIX, self.median_latency_ms))
        if self.layer_roof is not None:
            values.update(forward_bound_metrics(self.layer_rows, self.median_latency_ms))
            values[names.LAYERS_ROOF_GFLOP_PER_S] = self.layer_roof.gflop_per_s
            if self.layer_roof.bandwidth_gb_s is not None and self.layer_roof.on_chip_bytes is not None:
                values[names.LAYERS_ROOF_BANDWIDTH] = self.layer_roof.bandwidth_gb_s
                values[names.LAYERS_ON_CHIP_MIB] = self.layer_roof.on_chip_bytes / names.MIB
        return values

    def _timing_metrics(self, timing: TimingResult) -> dict[str, float]:
        values = {
            **timing.metrics(self.flops),
            names.THROUGHPUT: self.throughput_samples_per_s or 0.0,
            names.ACHIEVED: self.achieved_gflop_per_s or 0.0,
        }
        if timing.graph_latency is not None:
            values[names.GRAPH_ACHIEVED] = achieved_gflop_per_s(self.flops, timing.graph_latency.median_ms) or 0.0
        return values

    def _peak_metrics(self) -> dict[str, float]:
        values: dict[str, float] = {}
        if self.spec_gflop_per_s and self.gpu_spec is not None:
            values[names.SPEC_PEAK] = self.spec_gflop_per_s
            values[names.SPEC_BANDWIDTH] = self.gpu_spec.bandwidth_gb_s
        if self.cpu_peak is not None:
            values[names.CPU_ESTIMATED_PEAK] = self.cpu_peak.gflop_per_s
        if self.measured_peak is not None:
            values.update(self.measured_peak.metrics(self.achieved_gflop_per_s))
        mfu = self.mfu
        if mfu is not None:
            values[names.MFU] = mfu[0]
        for key, share in (
            (names.UTILIZATION_SPEC, self.utilization_vs_spec),
            (names.UTILIZATION_ESTIMATE, self.utilization_vs_estimate),
            (names.MFU_SPEC, self.mfu_vs_spec),
            (names.MFU_MEASURED, self.mfu_vs_measured),
        ):
            if share is not None:
                values[key] = share
        return values
