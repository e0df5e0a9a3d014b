"""Cross-check against PyTorch's own counter, ``torch.utils.flop_counter.FlopCounterMode``.

FlopCounterMode counts only dense ops (conv, matmul, attention) and no bias, norm or elementwise work, so the
comparison is made on the ops it has a formula for: there our conv/matmul FLOPs must equal its figure exactly. It
counts the same pass as ours (``count_cost(..., torch_check=True)``), so both see the same kernels.
"""

from __future__ import annotations

from collections.abc import Mapping, Set

from torch.utils.flop_counter import FlopCounterMode

from gflops_track.counting.op_counter import CostReport, torch_counted_ops, torch_flops_by_op
from gflops_track.results.counting import TorchCount


def report_agreement(ours: CostReport) -> TorchCount:
    """The cross-check of a count made with ``torch_check=True``."""
    if ours.torch_flops_by_op is None:
        raise ValueError("this count ran without FlopCounterMode: count it with torch_check=True")
    return agreement(ours.torch_flops_by_op, ours.torch_counted_ops, ours.dense_flops_by_op)


def counter_agreement(counter: FlopCounterMode, ours_dense_flops_by_op: Mapping[str, int]) -> TorchCount:
    """The cross-check against a ``FlopCounterMode`` that counted a pass of its own (a training step)."""
    return agreement(torch_flops_by_op(counter), torch_counted_ops(counter), ours_dense_flops_by_op)


def agreement(
    theirs: Mapping[str, int], torch_counted_ops: Set[str], ours_dense_flops_by_op: Mapping[str, int]
) -> TorchCount:
    """FlopCounterMode's total, and ours on the ops it has a formula for; a note for every op where the two differ."""
    ours_same = {op: flops for op, flops in ours_dense_flops_by_op.items() if op in torch_counted_ops}
    notes = [
        f"{op}: torch FlopCounterMode {theirs.get(op, 0):,} FLOPs, gflops-track {ours_same.get(op, 0):,} FLOPs"
        for op in sorted(set(theirs) | set(ours_same))
        if theirs.get(op, 0) != ours_same.get(op, 0)
    ]
    return TorchCount(flops=sum(theirs.values()), our_flops_on_same_ops=sum(ours_same.values()), notes=notes)
