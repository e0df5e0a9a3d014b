"""What ran inside one module, and the shape/byte helpers both the counter and the layer table use.

This module sits below ``op_counter`` and ``layer_info`` (it imports only ``rules``), so neither imports the other's
internals and no import cycle remains.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils._pytree import tree_leaves

from gflops_track.counting.rules import Category, OpCost


def tensor_bytes(value: Any) -> int:
    """Bytes of every tensor inside nested containers (works on meta tensors: numel x element size)."""
    return sum(leaf.numel() * leaf.element_size() for leaf in tree_leaves(value) if isinstance(leaf, torch.Tensor))


def unique_tensor_bytes(value: Any) -> int:
    """Bytes of the distinct tensors inside nested containers (``x * x`` reads ``x`` once): what one op must at least
    touch of them."""
    seen: dict[int, int] = {}
    for leaf in tree_leaves(value):
        if isinstance(leaf, torch.Tensor):
            seen[id(leaf)] = leaf.numel() * leaf.element_size()
    return sum(seen.values())


def describe_shape(value: Any) -> str:
    """Shape of a module output: '[2, 384, 32, 32]', or a tuple/list/dict of such."""
    if isinstance(value, torch.Tensor):
        return str(list(value.shape))
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{key}: {describe_shape(item)}" for key, item in value.items()) + "}"
    if isinstance(value, (tuple, list)):
        return "(" + ", ".join(describe_shape(item) for item in value) + ")"
    return type(value).__name__


@dataclass
class ScopeTally:
    """What ran directly inside one module (not inside its children)."""

    macs: int = 0
    flops: Counter[str] = field(default_factory=Counter)
    ops: Counter[str] = field(default_factory=Counter)
    dense_flops_by_op: Counter[str] = field(default_factory=Counter)
    uncounted: Counter[str] = field(default_factory=Counter)
    calls: int = 0
    output_shape: str = ""
    bytes_moved: int = 0
    output_bytes: int = 0
    op_traffic: list[tuple[int, int]] = field(default_factory=list)  # per op: (distinct input bytes, output bytes)

    def add_traffic(self, inputs: Any, output: Any) -> None:
        """File one op's bytes: the unfused model's (every input read, every output written once) and the op's own
        (distinct inputs, outputs), from which a cache-aware lower bound on memory traffic is derived."""
        self.bytes_moved += tensor_bytes(inputs) + tensor_bytes(output)
        self.op_traffic.append((unique_tensor_bytes(inputs), tensor_bytes(output)))

    def add(self, op_name: str, cost: OpCost, dense_by_op: Mapping[str, int] | None = None) -> None:
        """File one priced call. ``dense_by_op`` credits the conv/matmul FLOPs to the dispatched ops that did them
        (a composite's inner ops), which is how FlopCounterMode sees them; by default to ``op_name``."""
        self.macs += cost.macs
        self.flops.update({str(category): flops for category, flops in cost.flops.items()})
        self.ops[op_name] += 1
        if dense_by_op is None:
            dense_by_op = {op_name: cost.flops.get(Category.DENSE, 0)}
        self.dense_flops_by_op.update(dense_by_op)
