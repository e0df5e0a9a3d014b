"""What the per-layer pass produces: each module's time (``ModuleTime``, ``LayerTiming``), the roof a bound is taken
against (``BoundRoof``) and the layers table's row with time and bound joined to the count (``LayerRow``). The pass
is in ``timing/layers.py``; the bounds in ``peaks/bounds.py``.

Units: milliseconds, bytes, FLOPs, GFLOP/s and GB/s (10^9 bytes/s); shares and efficiency 0..1.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from gflops_track.common import names
from gflops_track.common.numbers import three_places
from gflops_track.results.counting import LayerCost, TrainingLayerCost

SELF_SUM_LIMIT = 0.10  # the self times add up to the forward's median within 10%
PROFILER_SHARE_LIMIT = 0.05  # each layer's share agrees with torch.profiler's per-op share within 5 points
BUSY_SKEW = 2.0  # as timing/engine.py's SKEW_LIMIT: a median over twice the minimum measures the machine's load
# CUDA: issuing the unhooked call took the CPU at least this share of its GPU time: little slack for the hooks' CPU time
LAUNCH_BOUND_SHARE = 0.5


def milliseconds(value: float) -> str:
    """Milliseconds that never round to nothing: 3 decimals from 0.1 ms up, 3 significant digits below."""
    return three_places(value)


@dataclass(frozen=True)
class ModuleTime:
    """One module's time per forward (all its calls summed), medians over the pass's iterations. ``self_ms`` is the
    time in no module called inside it: for a parent, its own functional code (``x + identity``, a reshape)."""

    name: str  # as in the layers table: '(root)' for the model itself
    calls: int  # calls per forward
    inclusive_ms: float
    self_ms: float
    self_iqr_ms: float  # spread of the self time: interquartile range over the iterations
    self_min_ms: float = 0.0  # the quickest: what the module costs when nothing else is running


@dataclass(frozen=True)
class LayerTiming:
    """The per-layer pass: how it timed (``method``), the hooked forward's median and every module's time."""

    method: str
    iterations: int
    forward_ms: float  # median of the whole forward under the hooks (the root's inclusive time)
    modules: list[ModuleTime]
    notes: list[str] = field(default_factory=list)
    plain_ms: float = 0.0  # median of the unhooked forwards timed beside the hooked ones (the side-by-side reference)
    plain_min_ms: float = 0.0  # the quickest of those
    plain_dispatch_ms: float = 0.0  # CUDA: the CPU's median time to issue those (0: not measured, as on CPU)
    total_s: float = 0.0  # the whole pass, warm-up forward to the last, seconds (a measuring phase, like timing's)
    # each module's share of the ATen op time torch.profiler recorded after the pass (CPU; empty: not checked)
    profiler_shares: dict[str, float] = field(default_factory=dict)

    @property
    def busy(self) -> bool:
        """The machine was busy: the unhooked forwards' median is over twice their minimum (the engine's skew rule),
        so medians measured the load, and each module's median missed the waits that landed elsewhere."""
        return self.plain_min_ms > 0 and self.plain_ms > BUSY_SKEW * self.plain_min_ms

    @property
    def launch_bound(self) -> bool:
        """CUDA: issuing the unhooked call took the CPU at least ``LAUNCH_BOUND_SHARE`` of the time the GPU ran it,
        so little slack is left: CPU time the hooks add between kernel launches leaves the GPU idle, inside the
        modules' events. (The CPU's time also counts any wait inside the call: a host sync such as ``.item()``, a
        full launch queue; a model that has one reads as launch-bound.)"""
        return self.plain_ms > 0 and self.plain_dispatch_ms >= LAUNCH_BOUND_SHARE * self.plain_ms

    @property
    def hooks_idle_the_gpu(self) -> bool:
        """The self times overstate the unhooked calls timed beside them by more than the limit, on a launch-bound
        GPU: the explanation the check note gives (an understatement, or a gap to the headline alone, has others)."""
        return self.launch_bound and self.gap(self.plain_ms) > SELF_SUM_LIMIT  # launch_bound: plain_ms > 0

    @property
    def fastest_gap(self) -> float | None:
        """Signed relative gap between the modules' quickest self times, summed, and the quickest unhooked forward:
        the check that holds on a busy machine, where minima still measure the model."""
        if not self.plain_min_ms:
            return None
        return (sum(module.self_min_ms for module in self.modules) - self.plain_min_ms) / self.plain_min_ms

    @property
    def profiler_gap(self) -> tuple[float, str] | None:
        """(the largest gap, its module) between a module's share of the self times and its share of the op time
        ``torch.profiler`` recorded, as fractions of the forward (0.05 = 5 percentage points); None when not checked.
        A module the profiler saw no op in has a share of 0 there."""
        if not self.profiler_shares or not self.self_sum_ms:
            return None
        ours = {module.name: module.self_ms / self.self_sum_ms for module in self.modules}
        return max(
            (abs(ours.get(name, 0.0) - self.profiler_shares.get(name, 0.0)), name)
            for name in {*ours, *self.profiler_shares}
        )

    @property
    def self_sum_ms(self) -> float:
        """Sum of the modules' median self times: what the forward's median should be, hooks aside."""
        return sum(module.self_ms for module in self.modules)

    def gap(self, reference_ms: float) -> float:
        """Signed relative gap between the self times' sum and ``reference_ms`` (the headline median)."""
        return (self.self_sum_ms - reference_ms) / reference_ms

    def check_metrics(self, prefix: str, reference_ms: float | None) -> dict[str, float]:
        """The truth checks as metrics under ``prefix`` (``layers/``, or ``step_layers/`` for the step's pass): the
        self times' gap to ``reference_ms`` (the headline median) and to the unhooked ones timed beside, whether the
        machine was busy, the quickest times' gap, and the profiler's share gap when it ran; unknown ones left out."""
        values: dict[str, float] = {}
        if self.plain_ms:
            values[f"{prefix}self_sum_gap_side_by_side"] = self.gap(self.plain_ms)
            values[f"{prefix}busy"] = float(self.busy)
        if self.plain_ms and self.plain_dispatch_ms:
            values[f"{prefix}dispatch_share"] = self.plain_dispatch_ms / self.plain_ms
        if self.fastest_gap is not None:
            values[f"{prefix}self_min_sum_gap"] = self.fastest_gap
        if self.profiler_gap is not None:
            values[f"{prefix}profiler_share_gap"] = self.profiler_gap[0]
        if reference_ms:
            values[f"{prefix}self_sum_gap"] = self.gap(reference_ms)
        return values

    # How the check note names the pass, its headline reference and what it times ("forward" or "step").
    SUBJECT: ClassVar[str] = "layers"
    REFERENCE: ClassVar[str] = "the latency median"
    UNIT: ClassVar[str] = "forward"

    def check_note(self, reference_ms: float | None) -> str:
        """The truth check in words: the self times' sum against the headline median (the forward's, or the
        step's) and against the unhooked ones timed beside, the limit, and on a busy machine the check on the
        quickest ones."""
        parts = []
        if reference_ms:
            parts.append(f"{self.gap(reference_ms):+.1%} of {self.REFERENCE}")
        if self.plain_ms:
            parts.append(f"{self.gap(self.plain_ms):+.1%} of the unhooked {self.UNIT}s timed beside")
        gaps = [abs(self.gap(reference)) for reference in (reference_ms, self.plain_ms) if reference]
        verdict = "within" if gaps and max(gaps) <= SELF_SUM_LIMIT else "NOT within"
        text = f"{self.SUBJECT}: self times add up to {self.self_sum_ms:,.3f} ms, {', '.join(parts)}: {verdict} 10%"
        fastest = self.fastest_gap
        if self.busy and fastest is not None:
            text += (
                f"; the machine was busy (median over twice the minimum), so the quickest {self.UNIT}s decide: the "
                f"modules' quickest self times add up to {fastest:+.1%} of the quickest {self.UNIT}"
            )
        if self.hooks_idle_the_gpu:
            text += (
                f"; the {self.UNIT} is launch-bound: issuing an unhooked {self.UNIT} takes the CPU "
                f"{milliseconds(self.plain_dispatch_ms)} ms of the {milliseconds(self.plain_ms)} ms the GPU runs it, "
                "so the CPU time the hooks add between kernel launches leaves the GPU idle inside the modules' "
                "events (a larger batch gives the GPU more work per launch)"
            )
        checked = self.profiler_gap
        if checked is not None:
            verdict = "within" if checked[0] <= PROFILER_SHARE_LIMIT else "NOT within"
            text += (
                f"; each layer's share of the time against torch.profiler's per-op time: largest gap "
                f"{checked[0] * 100:.1f} points ({checked[1]}): {verdict} 5 points"
            )
        return text


@dataclass(frozen=True)
class StepModuleTime:
    """One row of the training step's per-layer pass, medians over its iterations (ms): a module's forward and
    backward, self and inclusive, or a row of the step's own, '(loss)', '(optimizer)' (``optimizer.step()``) or
    '(zero_grad)', whose time is in ``optimizer_ms``. Backward self time is the time of the autograd nodes the
    module's forward made (labelled as the step's count labels them); backward inclusive adds its submodules'."""

    name: str
    calls: int  # forward calls per step
    forward_self_ms: float
    forward_inclusive_ms: float
    forward_self_iqr_ms: float
    backward_self_ms: float
    backward_inclusive_ms: float
    backward_self_iqr_ms: float
    optimizer_ms: float = 0.0
    self_min_ms: float = 0.0  # the quickest step's forward + backward + optimizer self time of this row

    @property
    def self_ms(self) -> float:
        """The row's own time per step: forward self + backward self + optimizer (what the check adds up)."""
        return self.forward_self_ms + self.backward_self_ms + self.optimizer_ms


@dataclass(frozen=True)
class StepLayerTiming(LayerTiming):
    """The training step's per-layer pass: ``modules`` are ``StepModuleTime`` rows, ``forward_ms`` is the median of
    the whole hooked step (forward, loss, backward, optimizer step, zero_grad), ``plain_ms`` that of the unhooked
    steps timed beside."""

    SUBJECT: ClassVar[str] = "step layers"
    REFERENCE: ClassVar[str] = "the step's latency median"
    UNIT: ClassVar[str] = "step"


@dataclass(frozen=True)
class BoundRoof:
    """What a roofline bound is taken against: the highest compute rate and memory bandwidth known for the device,
    and the bytes that fit on chip (caches, and on a GPU the SMs' shared memory and registers). ``on_chip_bytes``
    None: no memory bound (the compute bound alone). ``rule`` says which, in words."""

    label: str
    gflop_per_s: float
    bandwidth_gb_s: float | None
    on_chip_bytes: int | None
    rule: str


@dataclass(frozen=True)
class LayerBound:
    """One layer's roofline bound: the least time its FLOPs and its off-chip bytes allow (ms)."""

    compute_ms: float
    memory_ms: float
    offchip_bytes: int  # bytes the memory bound counts: each op's traffic beyond what fits on chip

    @property
    def bound_ms(self) -> float:
        return max(self.compute_ms, self.memory_ms)

    @property
    def limit(self) -> str:
        """'compute' or 'memory': which roof sets the bound ('-' when the layer does nothing)."""
        if self.bound_ms <= 0:
            return "-"
        return "memory" if self.memory_ms > self.compute_ms else "compute"


@dataclass(frozen=True)
class LayerRow(LayerCost):
    """A row of the layers table once timed: the count's columns (``LayerCost``'s, the same fields in the same
    order), then time, bytes and the bound. ``self_ms`` and the columns after it are empty (None) for a module that
    never ran in the timed forward."""

    self_ms: float | None = None
    self_iqr_ms: float | None = None
    inclusive_ms: float | None = None
    time_share: float | None = None  # self_ms / the sum of every module's self time
    gflop_per_s: float | None = None  # self FLOPs / self time
    intensity: float | None = None  # FLOPs / bytes_moved (unfused byte model), FLOP/byte
    offchip_bytes: int | None = None
    bound: str = ""  # 'compute' or 'memory': which roof the bound comes from
    bound_ms: float | None = None
    efficiency: float | None = None  # bound_ms / self_ms: 1 = at the roof


@dataclass(frozen=True)
class StepLayerRow(TrainingLayerCost):
    """A row of ``step_layers.csv`` once the step's layer pass ran: the count's columns (``TrainingLayerCost``'s),
    then the pass's medians (ms) and the achieved rate per direction (GFLOP/s: the row's self FLOPs over its self
    time). The '(optimizer)' row carries the optimizer's FLOPs and time, '(zero_grad)' its time."""

    forward_self_ms: float | None = None
    forward_self_iqr_ms: float | None = None
    forward_inclusive_ms: float | None = None
    backward_self_ms: float | None = None
    backward_self_iqr_ms: float | None = None
    backward_inclusive_ms: float | None = None
    optimizer_flops: int = 0
    optimizer_ms: float | None = None
    time_share: float | None = None  # the row's self time / the sum of every row's self time
    forward_gflop_per_s: float | None = None
    backward_gflop_per_s: float | None = None
    optimizer_gflop_per_s: float | None = None


def forward_bound_metrics(rows: list[LayerRow], latency_ms: float | None) -> dict[str, float]:
    """The forward's bound (sum of the layers'), its efficiency and how many layers beat their bound (must be 0)."""
    bound = sum(row.bound_ms or 0.0 for row in rows)
    below = sum(1 for row in rows if row.bound_ms and row.self_ms is not None and row.self_ms < row.bound_ms)
    values = {names.LAYERS_BOUND_MS: bound, names.LAYERS_BELOW_BOUND: float(below)}
    if latency_ms:
        values[names.LAYERS_BOUND_EFFICIENCY] = bound / latency_ms
    return values


_PARSERS: dict[str, Any] = {"int": int, "float": float, "str": str}


def rows_from_csv(text: str) -> list[LayerRow]:
    """A run's ``layers.csv`` (the timed table) back into rows; an empty cell of an optional column is None.
    ``ValueError`` naming the column when the table is not a timed layers table (a run from before the layer pass)."""
    reader = csv.DictReader(io.StringIO(text))
    columns = {column.name: str(column.type) for column in fields(LayerRow)}
    missing = [name for name in columns if name not in (reader.fieldnames or [])]
    if missing:
        raise ValueError(
            f"layers.csv has no column {missing[0]!r}: the run has no per-layer times (it predates the layer pass, "
            "ran with timing.layers=false, or in mode=train)"
        )
    rows = []
    for record in reader:
        values: dict[str, Any] = {}
        for name, kind in columns.items():
            cell = record[name]
            base = kind.replace(" | None", "")
            values[name] = None if cell == "" and kind.endswith("| None") else _PARSERS[base](cell)
        rows.append(LayerRow(**values))
    return rows


@dataclass(frozen=True)
class WhatIfLayer:
    """One layer here and there: the time measured here, its bound here, its bound there (ms), and which roof sets
    each bound ('compute', 'memory' or '-')."""

    name: str
    flops: int
    measured_ms: float | None
    bound_here_ms: float | None
    limit_here: str
    bound_there_ms: float
    limit_there: str


@dataclass(frozen=True)
class WhatIf:
    """The run's layers bounded on other hardware. Every figure but ``measured_*`` is a bound: the least time (or the
    most GFLOP/s) the roofs allow, never a prediction of what kernels there would reach."""

    hardware: str
    dtype: str
    rule: str
    layers: list[WhatIfLayer]
    flops: int
    measured_forward_ms: float | None  # here: the run's latency median

    @property
    def forward_bound_ms(self) -> float:
        """The least time the forward could take there: the sum of the layers' bounds."""
        return sum(layer.bound_there_ms for layer in self.layers)

    @property
    def forward_bound_here_ms(self) -> float | None:
        bounds = [layer.bound_here_ms for layer in self.layers if layer.bound_here_ms is not None]
        return sum(bounds) if bounds else None

    @property
    def max_gflop_per_s(self) -> float | None:
        """The most GFLOP/s the forward could reach there: its FLOPs over its least time."""
        return self.flops / self.forward_bound_ms / 1e6 if self.forward_bound_ms > 0 else None

    def flips(self) -> list[WhatIfLayer]:
        """Layers whose bound comes from another roof there than here (compute-bound here, memory-bound there, or
        the reverse)."""
        return [
            layer
            for layer in self.layers
            if "-" not in (layer.limit_here, layer.limit_there)
            and layer.limit_here
            and layer.limit_here != layer.limit_there
        ]

    def metrics(self) -> dict[str, float]:
        """What ``--log`` writes under ``whatif/<hardware>/``: bounds only, each named a bound."""
        values = {"forward_bound_ms": self.forward_bound_ms, "layers_flipping_bound": float(len(self.flips()))}
        if self.max_gflop_per_s is not None:
            values["max_gflop_per_s_bound"] = self.max_gflop_per_s
        if self.measured_forward_ms:
            values["bound_over_measured_here"] = self.forward_bound_ms / self.measured_forward_ms
        return values
