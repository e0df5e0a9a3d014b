"""What counting produces, beside the totals: the per-layer table (``LayerCost``), thop's and FlopCounterMode's
figures (``ThopCount``, ``TorchCount``) and a training step's cost by phase and layer (``TrainingCost``). The counters
that fill them are in ``gflops_track.counting``.

Units: ``params`` in parameters, ``macs`` in multiply-accumulates, ``flops`` in floating-point operations.
"""

from __future__ import annotations

from dataclasses import dataclass, field

ORIGINAL_THOP = "thop"
ULTRALYTICS_THOP = "ultralytics-thop"


@dataclass(frozen=True)
class LayerCost:
    """One module. ``macs``/``flops`` are *self* costs (ops run in this module, not in its children), so the
    column sums equal the model totals; ``params`` are the module's own (shared tensors listed once)."""

    name: str
    type: str
    depth: int
    output_shape: str
    params: int
    calls: int
    macs: int
    flops: int
    flops_share: float  # of the model's total FLOPs, 0..1
    ops: str  # ATen ops that ran directly here, e.g. "convolution x1"
    bytes_moved: int = 0  # unfused byte model of the ops run here: every input read, every output written once


@dataclass(frozen=True)
class ThopCount:
    """thop's MACs and params: ``raw_*`` as the blog post ran it, the others with our custom_ops; why they differ."""

    raw_macs: int
    raw_params: int
    macs: int
    params: int
    unruled_types: list[str] = field(default_factory=list)  # module types thop has no rule for
    reasons: list[str] = field(default_factory=list)  # each names a few modules, then "(+N more)"
    error: str = ""
    distribution: str = ORIGINAL_THOP  # which distribution provides ``thop`` (see ``thop_distribution``)
    every_module: list[str] = field(default_factory=list)  # the reasons naming every module (the run's artifact)
    params_reasons: list[str] = field(default_factory=list)  # why thop's params are not ours, a few modules named
    params_every_module: list[str] = field(default_factory=list)  # the same naming every module (the artifact)


@dataclass(frozen=True)
class TorchCount:
    """FlopCounterMode's total, and how it compares with our dense FLOPs on the ops it counts."""

    flops: int
    our_flops_on_same_ops: int
    notes: list[str]

    @property
    def agrees(self) -> bool:
        return self.flops == self.our_flops_on_same_ops


@dataclass(frozen=True)
class TrainingLayerCost:
    """One module's *self* costs in the step: what ran directly in it in the forward, and the backward of those ops
    (so each column adds up to its phase total). ``params`` are its own trainable parameters (shared listed once)."""

    name: str
    type: str
    depth: int
    params: int
    forward_macs: int
    forward_flops: int
    backward_macs: int
    backward_flops: int
    forward_ops: str
    backward_ops: str


@dataclass(frozen=True)
class TrainingCost:
    """Whole-batch cost of one training step, by phase, by category and by layer."""

    params: int
    trainable_params: int
    loss: str
    optimizer: str
    macs_by_phase: dict[str, int]
    flops_by_phase: dict[str, int]
    flops_by_category: dict[str, int]  # the whole step
    flops_by_phase_category: dict[str, dict[str, int]]
    layers: list[TrainingLayerCost]  # modules in ``named_modules`` order, then ``(loss)``
    uncounted_ops: dict[str, int]  # "aten.op (phase, in module)" -> calls
    dense_flops_by_op: dict[str, int]  # whole step, for the FlopCounterMode cross-check
    backend: str  # 'meta' or 'real'
    backend_note: str = ""

    @property
    def macs(self) -> int:
        return sum(self.macs_by_phase.values())

    @property
    def flops(self) -> int:
        return sum(self.flops_by_phase.values())
