"""Cross-check against PyTorch's own counter, ``torch.utils.flop_counter.FlopCounterMode``.

FlopCounterMode counts only dense ops (conv, matmul, attention) and no bias, norm or elementwise work, so the
comparison is made on the ops it has a formula for: there our conv/matmul FLOPs must equal its figure exactly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from gflops_track.counting.counting_forward import run_counting_forward
from gflops_track.counting.op_counter import CostReport, op_label
from gflops_track.results.counting import TorchCount


def torch_flop_count(
    model: nn.Module,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    ours: CostReport,
    prefer_meta: bool = True,
    device_type: str = "cpu",
) -> TorchCount:
    """Run FlopCounterMode over the same forward and compare op by op with ``ours``."""
    counter = run_counting_forward(
        model, args, kwargs, lambda: FlopCounterMode(display=False), prefer_meta, device_type=device_type
    ).counter
    assert counter is not None
    return agreement(counter, ours.dense_flops_by_op)


def agreement(counter: FlopCounterMode, ours_dense_flops_by_op: Mapping[str, int]) -> TorchCount:
    """FlopCounterMode's total, and ours on the ops it has a formula for; a note for every op where the two differ."""
    theirs = {op_label(op): flops for op, flops in counter.get_flop_counts().get("Global", {}).items()}
    registry = {op_label(op) for op in counter.flop_registry}
    ours_same = {op: flops for op, flops in ours_dense_flops_by_op.items() if op in registry}
    notes = [
        f"{op}: torch FlopCounterMode {theirs.get(op, 0):,} FLOPs, gflops-track {ours_same.get(op, 0):,} FLOPs"
        for op in sorted(set(theirs) | set(ours_same))
        if theirs.get(op, 0) != ours_same.get(op, 0)
    ]
    return TorchCount(flops=sum(theirs.values()), our_flops_on_same_ops=sum(ours_same.values()), notes=notes)
