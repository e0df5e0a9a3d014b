"""What a training step produces: its count by phase, category and layer (``TrainingCountResult``), its timing
(``TrainingTimingResult``: the whole step and the forward + loss alone), and both together (``TrainingStep``), with the
metric names they are logged under. The step itself is ``gflops_track.pipeline.training_step``."""

from __future__ import annotations

from dataclasses import dataclass, field

from gflops_track.common import names
from gflops_track.results.counting import TorchCount, TrainingCost
from gflops_track.results.layers import StepLayerRow, StepLayerTiming
from gflops_track.results.timing import TimingResult, achieved_gflop_per_s, latency_metrics


@dataclass(frozen=True)
class TrainingCountResult:
    """One training step's count: ``cost`` has MACs/FLOPs by phase (forward, backward, optimizer), by category and
    the per-layer forward/backward columns; ``torch_count`` is FlopCounterMode over the same step (dense ops)."""

    model_name: str
    device: str
    input_shapes: list[list[int]]
    batch_size: int
    cost: TrainingCost
    torch_count: TorchCount | None
    notes: list[str]

    @property
    def macs(self) -> int:
        return self.cost.macs

    @property
    def flops(self) -> int:
        return self.cost.flops


@dataclass(frozen=True)
class TrainingTimingResult:
    """One training step timed by the adaptive engine: ``step`` is forward + loss + backward + optimizer step +
    zero_grad (set to None), ``forward`` the forward + loss alone (recording autograd, as in the step); backward +
    optimizer is derived as the difference of the medians. ``step.memory_growth_bytes`` is the step's peak over the
    baseline: activations and gradients (each step frees its gradients, so they are allocated inside the window) and
    the optimizer's temporaries; the optimizer's persistent state (AdamW's moments, created by the first step) is in
    the baseline. On CUDA from ``max_memory_allocated``, on CPU the RSS high-water mark. ``step.cold_start_ms`` is
    the cold call; ``forward.cold_start_ms`` is not one (the step ran the forward before it) and is not reported."""

    step: TimingResult
    forward: TimingResult
    batch_size: int

    @property
    def step_ms(self) -> float:
        return self.step.latency.median_ms

    @property
    def forward_ms(self) -> float:
        return self.forward.latency.median_ms

    @property
    def backward_and_optimizer_ms(self) -> float:
        """Median step minus median forward, in ms (0 when noise makes the difference negative)."""
        return max(self.step_ms - self.forward_ms, 0.0)

    @property
    def samples_per_s(self) -> float | None:
        return self.batch_size / (self.step_ms / 1e3) if self.step_ms else None

    def achieved_gflop_per_s(self, step_flops: int) -> float | None:
        """Counted FLOPs of the step / median step latency, in GFLOP/s."""
        return achieved_gflop_per_s(step_flops, self.step_ms)


@dataclass(frozen=True)
class TrainingStep:
    """A training step of the module (``mode='train'``): its count (forward, backward, optimizer step) and, once
    timed, its timing (the whole step, and the forward + loss alone)."""

    count: TrainingCountResult
    timing: TrainingTimingResult | None = None
    layer_timing: StepLayerTiming | None = None  # the step's per-layer pass (after the step's timing)
    layer_rows: list[StepLayerRow] = field(default_factory=list)  # step_layers.csv with the pass's times joined

    @property
    def achieved_gflop_per_s(self) -> float | None:
        """Counted FLOPs of the step / median step latency, in GFLOP/s."""
        return self.timing.achieved_gflop_per_s(self.count.flops) if self.timing is not None else None

    def metrics(self) -> dict[str, float]:
        """The step's counts, and its timing once timed, under ``step_*`` names."""
        cost = self.count.cost
        values: dict[str, float] = {
            names.STEP_MACS: cost.macs,
            names.STEP_FLOPS: cost.flops,
            names.STEP_GFLOPS: cost.flops / 1e9,
            **{f"{names.STEP_FLOPS_PHASE_PREFIX}{phase}": flops for phase, flops in cost.flops_by_phase.items()},
        }
        if self.count.torch_count is not None:
            values[names.STEP_TORCH_FLOPS] = self.count.torch_count.flops
        timing = self.timing
        if timing is not None:
            values.update(latency_metrics(names.STEP_LATENCY_PREFIX, timing.step.latency))
            values[names.STEP_FORWARD_MS] = timing.forward_ms
            values[names.STEP_BACKWARD_OPTIMIZER_MS] = timing.backward_and_optimizer_ms
            values[names.STEP_THROUGHPUT] = timing.samples_per_s or 0.0
            values[names.STEP_ACHIEVED] = self.achieved_gflop_per_s or 0.0
            values[names.STEP_MEMORY_GROWTH_MIB] = timing.step.memory_growth_bytes / names.MIB
            values[names.STEP_TIMED_ITERATIONS] = timing.step.timed_iterations
            values[names.STEP_PRECISION_TARGET_MET] = float(timing.step.precision_met)
        values.update(self._layer_metrics())
        return values

    def _layer_metrics(self) -> dict[str, float]:
        """The step's per-layer pass: its step, the self times' sums by direction and the gaps to the step's median."""
        layers = self.layer_timing
        if layers is None:
            return {}
        optimizer = sum(module.optimizer_ms for module in layers.modules)
        backward = sum(module.backward_self_ms for module in layers.modules)
        values = {
            names.STEP_LAYERS_STEP_MS: layers.forward_ms,
            names.STEP_LAYERS_SELF_SUM_MS: layers.self_sum_ms,
            names.STEP_LAYERS_FORWARD_SELF_SUM_MS: layers.self_sum_ms - backward - optimizer,
            names.STEP_LAYERS_BACKWARD_SELF_SUM_MS: backward,
            names.STEP_LAYERS_OPTIMIZER_MS: optimizer,
            names.STEP_LAYERS_ITERATIONS: float(layers.iterations),
            names.STEP_LAYERS_TOTAL_S: layers.total_s,
        }
        reference_ms = self.timing.step_ms if self.timing is not None else None
        return {**values, **layers.check_metrics(names.STEP_LAYERS_PREFIX, reference_ms)}
