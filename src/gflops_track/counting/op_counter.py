"""The primary counter: a ``TorchDispatchMode`` that prices every ATen op with ``rules.FLOP_RULES``.

Counting at the dispatch level sees what really runs: functional ops (``x + y``, ``F.conv2d``, ``@``), modules
shared under several names (counted once per call, never once per name), and what a module decomposes into
(InstanceNorm runs ``batch_norm`` with ``training=True``). Global module hooks attribute each op to the innermost
module that is running, so the per-layer table's "self" columns add up exactly to the totals.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.hooks import RemovableHandle

from gflops_track.counting.execution import CountingPass, run_counting_forward
from gflops_track.counting.layer_info import LayerCost, build_layer_table, describe_shape
from gflops_track.counting.rules import (
    FLOP_RULES,
    NO_TRAFFIC_OPS,
    ZERO_COST_OPS,
    Category,
    OpCall,
    OpCost,
    bind_arguments,
)


def tensor_bytes(value: Any) -> int:
    """Bytes of every tensor inside nested containers (works on meta tensors: numel x element size)."""
    return sum(leaf.numel() * leaf.element_size() for leaf in tree_leaves(value) if isinstance(leaf, torch.Tensor))


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

    def add(self, op_name: str, cost: OpCost) -> None:
        self.macs += cost.macs
        self.flops.update({str(category): flops for category, flops in cost.flops.items()})
        self.ops[op_name] += 1
        self.dense_flops_by_op[op_name] += cost.flops.get(Category.DENSE, 0)


@dataclass(frozen=True)
class CostReport:
    """Whole-batch cost of one forward pass, as our rules count it."""

    params: int
    macs: int
    flops: int
    flops_by_category: dict[str, int]
    layers: list[LayerCost]
    uncounted_ops: dict[str, int]  # "aten.op (in module)" -> calls; never silently zero
    op_calls: dict[str, int]  # every op that ran (counted or zero-cost) -> calls
    dense_flops_by_op: dict[str, int]  # "aten.convolution" -> its conv/matmul FLOPs (for the FlopCounterMode check)
    backend: str
    backend_note: str = ""
    bytes_moved: int = 0  # unfused model: every op reads its tensor inputs and writes its outputs once
    min_bytes: int = 0  # lower bound: parameters + buffers + model inputs + model outputs, once each


class _CountingMode(TorchDispatchMode):
    """Prices each op and files it under the module that is running (hooks keep a stack of module names)."""

    def __init__(self, module_names: Mapping[int, str]) -> None:
        super().__init__()
        self.module_names = module_names
        self.scopes: dict[str, ScopeTally] = {}
        self._stack: list[str] = []
        self._handles: list[RemovableHandle] = []

    def _scope(self, name: str) -> ScopeTally:
        return self.scopes.setdefault(name, ScopeTally())

    def _enter_module(self, module: nn.Module, _args: Any) -> None:
        name = self.module_names.get(id(module))
        if name is not None:
            self._stack.append(name)
            self._scope(name).calls += 1

    def _leave_module(self, module: nn.Module, _args: Any, output: Any) -> None:
        name = self.module_names.get(id(module))
        if name is not None and self._stack and self._stack[-1] == name:
            self._stack.pop()
            tally = self._scope(name)
            if not tally.output_shape:
                tally.output_shape = describe_shape(output)
                tally.output_bytes = tensor_bytes(output)

    def __enter__(self) -> _CountingMode:
        self._handles = [
            nn.modules.module.register_module_forward_pre_hook(self._enter_module),
            nn.modules.module.register_module_forward_hook(self._leave_module, always_call=True),
        ]
        return super().__enter__()

    def __exit__(self, *exc_info: Any) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        super().__exit__(*exc_info)

    def __torch_dispatch__(self, func: Any, types: Any, args: Sequence[Any] = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        packet = func._overloadpacket
        tally = self._scope(self._stack[-1] if self._stack else "")
        op_name = f"aten.{packet.__name__}"
        rule = FLOP_RULES.get(packet)
        if rule is not None:
            tally.add(op_name, rule(OpCall(str(func), bind_arguments(func, args, kwargs), out)))
        elif packet in ZERO_COST_OPS:
            tally.ops[op_name] += 1
        else:
            tally.uncounted[op_name] += 1
        if packet not in NO_TRAFFIC_OPS:
            tally.bytes_moved += tensor_bytes((args, kwargs)) + tensor_bytes(out)
        return out


def count_cost(
    model: nn.Module,
    args: Sequence[Any],
    kwargs: Mapping[str, Any] | None = None,
    prefer_meta: bool = True,
) -> CostReport:
    """Count params, MACs and FLOPs (by category and by layer) of ``model(*args, **kwargs)`` in eval mode."""
    module_names = {id(module): name for name, module in model.named_modules()}
    attempts: list[_CountingMode] = []

    def fresh_counter() -> _CountingMode:
        attempts.append(_CountingMode(module_names))
        return attempts[-1]

    counting_pass: CountingPass = run_counting_forward(model, args, kwargs or {}, fresh_counter, prefer_meta)
    scopes = attempts[-1].scopes
    state_bytes = tensor_bytes(list(model.parameters()) + list(model.buffers()))
    root = scopes.get("", ScopeTally())
    layers = build_layer_table(model, scopes)
    by_category: Counter[str] = Counter({str(category): 0 for category in Category})
    op_calls: Counter[str] = Counter()
    dense_by_op: Counter[str] = Counter()
    uncounted: dict[str, int] = {}
    for scope_name, tally in scopes.items():
        by_category.update(tally.flops)
        op_calls.update(tally.ops)
        dense_by_op.update(tally.dense_flops_by_op)
        for op_name, calls in tally.uncounted.items():
            uncounted[f"{op_name} (in {scope_name or type(model).__name__})"] = calls
    return CostReport(
        params=sum(parameter.numel() for parameter in model.parameters()),
        macs=sum(tally.macs for tally in scopes.values()),
        flops=sum(by_category.values()),
        flops_by_category=dict(by_category),
        layers=layers,
        uncounted_ops=uncounted,
        op_calls=dict(op_calls),
        dense_flops_by_op={op: flops for op, flops in dense_by_op.items() if flops},
        backend=counting_pass.backend,
        backend_note=counting_pass.note,
        bytes_moved=sum(tally.bytes_moved for tally in scopes.values()),
        min_bytes=state_bytes + tensor_bytes((tuple(args), dict(kwargs or {}))) + root.output_bytes,
    )
