"""The primary counter: a ``TorchDispatchMode`` that prices every ATen op with ``rules.FLOP_RULES``.

Counting at the dispatch level sees what really runs: functional ops (``x + y``, ``F.conv2d``, ``@``), modules
shared under several names (counted once per call, never once per name), and what a module decomposes into
(InstanceNorm runs ``batch_norm`` with ``training=True``). Global module hooks attribute each op to the innermost
module that is running, so the per-layer table's "self" columns add up exactly to the totals.

A few public functions are rewritten by ATen before any kernel runs, into ops that say less than the function did
(``adaptive_avg_pool2d(x, 1)`` becomes ``mean``; ``scaled_dot_product_attention`` becomes the math fallback or a
fused kernel depending on backend and mode). A companion ``TorchFunctionMode`` sees those calls first and prices
each as a whole with ``rules.COMPOSITE_RULES``, so the figure does not depend on which kernel the dispatcher picks.
"""

from __future__ import annotations

import functools
import types
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import FlopCounterMode
from torch.utils.hooks import RemovableHandle

from gflops_track.counting.counting_forward import run_counting_forward
from gflops_track.counting.layer_info import ROOT_LABEL, build_layer_table
from gflops_track.counting.rules import (
    COMPOSITE_RULES,
    FLOP_RULES,
    NO_TRAFFIC_OPS,
    ZERO_COST_OPS,
    Category,
    CompositeRule,
    OpCall,
    Rule,
    bind_arguments,
)
from gflops_track.counting.scope import ScopeTally, describe_shape, tensor_bytes
from gflops_track.results.counting import LayerCost

__all__ = [
    "CostReport",
    "ScopeTally",
    "count_cost",
    "op_label",
    "tensor_bytes",
    "validate_autocast",
    "validate_extra_rules",
]


@dataclass(frozen=True)
class CostReport:
    """Whole-batch cost of one forward pass, as our rules count it."""

    params: int
    macs: int
    flops: int
    flops_by_category: dict[str, int]
    layers: list[LayerCost]
    uncounted_ops: dict[str, int]  # "aten.op (in module)" -> calls; never silently zero
    dense_flops_by_op: dict[str, int]  # "aten.convolution" -> its conv/matmul FLOPs (for the FlopCounterMode check)
    backend: str
    backend_note: str = ""
    bytes_moved: int = 0  # unfused model: every op reads its tensor inputs and writes its outputs once
    min_bytes: int = 0  # lower bound: parameters + buffers + model inputs + model outputs, once each
    layer_traffic: dict[str, list[tuple[int, int]]] = field(default_factory=dict)  # layer -> per op (in, out) bytes
    torch_flops_by_op: dict[str, int] | None = None  # FlopCounterMode's FLOPs by op, seen in the same pass (or None)
    torch_counted_ops: frozenset[str] = frozenset()  # the ops FlopCounterMode has a formula for
    complex_op_calls: int = 0  # priced calls on complex tensors: priced as real ones (see ``complex_note``)


def op_label(packet: Any) -> str:
    """'aten.mm' for ``torch.ops.aten.mm``; 'mylib.op' for a custom ``torch.library`` op; 'aten.<name>' for
    anything else with a name (FlopCounterMode's registry also holds higher-order ops)."""
    qualified = getattr(packet, "_qualified_op_name", None)
    return qualified.replace("::", ".") if qualified else f"aten.{packet.__name__}"


def validate_extra_rules(extra_rules: Mapping[Any, Rule] | None) -> dict[Any, Rule]:
    """Per-call rules keyed by op packet (an ``OpOverload`` stands for its packet). An op that already has a rule
    or is deliberately zero-cost is refused: registering a rule twice is an error, not a silent override."""
    rules: dict[Any, Rule] = {}
    for op, rule in (extra_rules or {}).items():
        packet = getattr(op, "_overloadpacket", op)
        if not isinstance(packet, torch._ops.OpOverloadPacket):
            raise ValueError(f"extra_rules key {op!r} is not allowed: use an op such as torch.ops.mylib.my_op")
        if not callable(rule):
            raise ValueError(
                f"extra_rules[{op_label(packet)}]={rule!r} is not allowed: use a function (OpCall) -> OpCost"
            )
        tables = {"FLOP_RULES": FLOP_RULES, "ZERO_COST_OPS": ZERO_COST_OPS, "extra_rules (twice)": rules}
        where = next((name for name, table in tables.items() if packet in table), None)
        if where is not None:
            raise ValueError(
                f"extra_rules[{op_label(packet)}] is not allowed: {op_label(packet)} already has a rule in {where}; "
                "registering a rule twice is an error (give rules only for ops listed as uncounted)"
            )
        rules[packet] = rule
    return rules


AUTOCAST_DTYPES = (torch.float16, torch.bfloat16)


def validate_autocast(
    model: nn.Module,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    autocast_dtype: torch.dtype | None,
    device_type: str,
) -> None:
    """Autocast acts per device type: one whose tensors are elsewhere would silently leave every op in fp32. Meta
    tensors (a model built without weights) count as being where the run is: their fake stand-ins are made there."""
    if autocast_dtype is None:
        return
    if autocast_dtype not in AUTOCAST_DTYPES:
        raise ValueError(f"autocast_dtype={autocast_dtype} is not allowed: use torch.float16 or torch.bfloat16")
    tensors = [*model.parameters(), *model.buffers(), *(leaf for leaf in tree_leaves((args, kwargs)))]
    devices = sorted({leaf.device.type for leaf in tensors if isinstance(leaf, torch.Tensor) and not leaf.is_meta})
    if devices and devices != [device_type]:
        raise ValueError(
            f"device_type={device_type!r} is not allowed here: the model and inputs are on {', '.join(devices)}, "
            "and autocast only casts tensors of its own device type"
        )


aten = torch.ops.aten
_TORCH_FUNCTION_GUARDS = ("has_torch_function", "has_torch_function_unary", "has_torch_function_variadic")


def _already_handled(*_args: Any) -> bool:
    """A torch-function guard's answer inside a call the mode is already handling: no, run the body."""
    return False


@functools.cache
def _body_seen_by_modes(func: Callable[..., Any]) -> Callable[..., Any] | None:
    """For a Python function of ``torch.nn.functional`` that guards itself with ``has_torch_function``
    (``multi_head_attention_forward``, ``interpolate``): the same code with its guards answering False, to run with
    the mode pushed again, so the calls it makes (the attention inside ``nn.MultiheadAttention``, the adaptive pool
    inside ``interpolate(mode="area")``) reach the mode too. torch pops a ``TorchFunctionMode`` while its handler
    runs, and calling ``func`` itself with the mode pushed would only hand the call back to the handler. None for
    anything else (builtins, Tensor methods, functions without guards): those run as they are."""
    code = getattr(func, "__code__", None)
    if (  # made once per function (a process's cache: the namespace is torch.nn.functional's, read at first use)
        not isinstance(func, types.FunctionType)
        or func.__module__ != F.__name__
        or code is None
        or not any(guard in code.co_names for guard in _TORCH_FUNCTION_GUARDS)
    ):
        return None
    namespace = {**func.__globals__, **dict.fromkeys(_TORCH_FUNCTION_GUARDS, _already_handled)}
    body = types.FunctionType(code, namespace, func.__name__, func.__defaults__, func.__closure__)
    body.__kwdefaults__ = func.__kwdefaults__
    return body


def _sdpa_on_meta_as_cpu_kernel(args: Sequence[Any], kwargs: Mapping[str, Any]) -> Any:
    """``F.scaled_dot_product_attention`` on meta tensors that need grad, run as the kernel the real CPU step runs
    (``_scaled_dot_product_flash_attention_for_cpu``): on meta the dispatcher takes the math decomposition, whose
    backward (autograd's, op by op) scales q and k (B*H*(L+S)*E) where every fused backward scales the scores
    (B*H*L*S: ``rules.attention_backward``), so a training step counted on meta differed from the one counted for
    real. Where the CPU step also takes the math path (dropout, 3-D inputs, a mask that needs grad) or the kernel
    refuses the arguments, None: the call runs as it is."""
    bound = bind_arguments(aten.scaled_dot_product_attention.default, args, kwargs)
    query, key, value, mask = (bound.get(name) for name in ("query", "key", "value", "attn_mask"))
    tensors = [t for t in (query, key, value) if isinstance(t, torch.Tensor)]
    if (
        len(tensors) != 3
        or not all(t.is_meta and t.dim() == 4 for t in tensors)
        or not torch.is_grad_enabled()
        or not any(t.requires_grad for t in tensors)
        or bound.get("dropout_p", 0.0)
        or (isinstance(mask, torch.Tensor) and mask.requires_grad)
    ):
        return None
    if isinstance(mask, torch.Tensor) and mask.dtype == torch.bool:  # the kernel adds a float mask; on meta its
        mask = torch.empty(mask.shape, dtype=query.dtype, device="meta")  # values are never read
    try:
        out, _logsumexp = aten._scaled_dot_product_flash_attention_for_cpu(
            query, key, value, 0.0, bool(bound.get("is_causal", False)), attn_mask=mask, scale=bound.get("scale")
        )
    except (RuntimeError, TypeError, ValueError):  # shapes this kernel does not take (GQA heads, say)
        return None
    return out


# Composites that, on meta tensors needing grad, run as another kernel: the one the real step runs, whose backward the
# rules price as the convention says. Each returns None where the real step would not take it either.
META_GRAD_KERNELS: dict[Callable[..., Any], Callable[[Sequence[Any], Mapping[str, Any]], Any]] = {
    F.scaled_dot_product_attention: _sdpa_on_meta_as_cpu_kernel,
}


class _CompositeCalls(TorchFunctionMode):
    """Hands the public functions of ``COMPOSITE_RULES`` to the counter, which prices each one as a whole, also when
    another function of ``torch.nn.functional`` calls them (see ``_body_seen_by_modes``)."""

    def __init__(self, counter: _CountingMode) -> None:
        super().__init__()
        self.counter = counter

    def __torch_function__(self, func: Any, types: Any, args: Sequence[Any] = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        try:
            composite = COMPOSITE_RULES.get(func)
        except TypeError:  # an unhashable callable is no composite
            composite = None
        if composite is not None:
            return self.counter.run_composite(func, composite, args, kwargs)
        body = _body_seen_by_modes(func)
        if body is None:
            return func(*args, **kwargs)
        with self:
            return body(*args, **kwargs)


class _CountingMode(TorchDispatchMode):
    """Prices each op and files it under the module that is running (hooks keep a stack of module names).

    With ``torch_counter``, PyTorch's ``FlopCounterMode`` runs in the same pass, below ours: it sees the very ops we
    see (the same kernels, backend, autocast and fast paths; our ``TorchFunctionMode`` switches off the fused
    ``nn.MultiheadAttention``/``nn.TransformerEncoderLayer`` inference path for both), so the two counters disagree
    only where their formulas do, never because two passes took different kernels."""

    def __init__(
        self,
        module_names: Mapping[int, str],
        extra_rules: Mapping[Any, Rule] | None = None,
        torch_counter: FlopCounterMode | None = None,
    ) -> None:
        super().__init__()
        self.torch_counter = torch_counter
        self.module_names = module_names
        self.rules: Mapping[Any, Rule] = {**FLOP_RULES, **(extra_rules or {})}
        self.scopes: dict[str, ScopeTally] = {}
        self._stack: list[str] = []
        self._handles: list[RemovableHandle] = []
        self._composite_mode = _CompositeCalls(self)
        self._inner_dense: Counter[str] | None = None  # set while a composite runs: dense FLOPs of its inner ops
        self._inner_traffic = False  # while a composite that is not one fused kernel runs: file its ops' bytes
        self.complex_calls = 0  # priced calls whose output is complex

    def _scope(self, name: str) -> ScopeTally:
        return self.scopes.setdefault(name, ScopeTally())

    def _current(self) -> ScopeTally:
        return self._scope(self._stack[-1] if self._stack else "")

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
        if self.torch_counter is not None:
            self.torch_counter.__enter__()  # first in, so its dispatch mode runs below ours and sees what we pass on
        self._handles = [
            nn.modules.module.register_module_forward_pre_hook(self._enter_module),
            nn.modules.module.register_module_forward_hook(self._leave_module, always_call=True),
        ]
        self._composite_mode.__enter__()
        return super().__enter__()

    def __exit__(self, *exc_info: Any) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        super().__exit__(*exc_info)
        self._composite_mode.__exit__(*exc_info)
        if self.torch_counter is not None:
            self.torch_counter.__exit__(*exc_info)

    def run_composite(
        self, func: Callable[..., Any], composite: CompositeRule, args: Sequence[Any], kwargs: Mapping[str, Any]
    ) -> Any:
        """Run ``func`` with its inner ops unpriced, then price the call with the composite's rule."""
        if self._inner_dense is not None:  # nested inside another composite: that one prices everything
            return func(*args, **kwargs)
        self._inner_dense, self._inner_traffic = Counter(), not composite.fused
        try:
            kernel = META_GRAD_KERNELS.get(func)
            out = kernel(args, kwargs) if kernel is not None else None
            out = func(*args, **kwargs) if out is None else out
        finally:
            inner_dense, self._inner_dense, self._inner_traffic = self._inner_dense, None, False
        overload = composite.schema.default
        first = overload._schema.arguments[0].name
        named = {first if key == "input" else key: value for key, value in kwargs.items()}
        cost = composite.rule(OpCall(str(overload), bind_arguments(overload, args, named), out))
        tally = self._current()
        tally.add(op_label(composite.schema), cost, dense_by_op=inner_dense)
        if composite.fused:
            tally.add_traffic((args, kwargs), out)
        return out

    def __torch_dispatch__(self, func: Any, types: Any, args: Sequence[Any] = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        packet = func._overloadpacket
        op_name = op_label(packet)
        rule = self.rules.get(packet)
        if self._inner_dense is not None:  # inside a composite: only feed the cross-check with its dense FLOPs
            if rule is not None:
                dense = rule(OpCall(str(func), bind_arguments(func, args, kwargs), out)).flops.get(Category.DENSE, 0)
                self._inner_dense[op_name] += dense
            if self._inner_traffic and packet not in NO_TRAFFIC_OPS:
                self._current().add_traffic((args, kwargs), out)
            return out
        tally = self._current()
        if rule is not None:
            tally.add(op_name, rule(OpCall(str(func), bind_arguments(func, args, kwargs), out)))
            self.complex_calls += any(leaf.is_complex() for leaf in tree_leaves(out) if isinstance(leaf, torch.Tensor))
        elif packet in ZERO_COST_OPS:
            tally.ops[op_name] += 1
        else:
            tally.uncounted[op_name] += 1
        if packet not in NO_TRAFFIC_OPS:
            tally.add_traffic((args, kwargs), out)
        return out


def count_cost(
    model: nn.Module,
    args: Sequence[Any],
    kwargs: Mapping[str, Any] | None = None,
    prefer_meta: bool = True,
    *,
    extra_rules: Mapping[Any, Rule] | None = None,
    autocast_dtype: torch.dtype | None = None,
    device_type: str = "cpu",
    torch_check: bool = False,
) -> CostReport:
    """Count params, MACs and FLOPs (by category and by layer) of ``model(*args, **kwargs)`` in eval mode.

    With ``torch_check``, ``FlopCounterMode`` counts the same pass (``torch_flops_by_op``; compared by
    ``torch_crosscheck.report_agreement``).

    ``extra_rules`` ({op packet: rule}) price ops of your own for this call only; an op that already has a rule is
    a ``ValueError``. With ``autocast_dtype`` the pass runs under ``torch.autocast(device_type, autocast_dtype)``
    (on fake tensors of that device type), so the byte model sees the casts and the 2-byte tensors the run sees;
    MACs and FLOPs do not depend on it.
    """
    rules = validate_extra_rules(extra_rules)
    validate_autocast(model, args, kwargs or {}, autocast_dtype, device_type)
    module_names = {id(module): name for name, module in model.named_modules()}
    counting_pass = run_counting_forward(
        model,
        args,
        kwargs or {},
        lambda: _CountingMode(module_names, rules, FlopCounterMode(display=False) if torch_check else None),
        prefer_meta,
        autocast_dtype=autocast_dtype,
        device_type=device_type,
    )
    assert counting_pass.counter is not None
    scopes = counting_pass.counter.scopes
    torch_counter = counting_pass.counter.torch_counter
    state_bytes = tensor_bytes(list(model.parameters()) + list(model.buffers()))
    root = scopes.get("", ScopeTally())
    layers = build_layer_table(model, scopes)
    by_category: Counter[str] = Counter({str(category): 0 for category in Category})
    dense_by_op: Counter[str] = Counter()
    uncounted: dict[str, int] = {}
    for scope_name, tally in scopes.items():
        by_category.update(tally.flops)
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
        dense_flops_by_op={op: flops for op, flops in dense_by_op.items() if flops},
        backend=counting_pass.backend,
        backend_note=counting_pass.note,
        bytes_moved=sum(tally.bytes_moved for tally in scopes.values()),
        min_bytes=state_bytes + tensor_bytes((tuple(args), dict(kwargs or {}))) + root.output_bytes,
        layer_traffic={name or ROOT_LABEL: tally.op_traffic for name, tally in scopes.items()},
        torch_flops_by_op=torch_flops_by_op(torch_counter) if torch_counter is not None else None,
        torch_counted_ops=torch_counted_ops(torch_counter) if torch_counter is not None else frozenset(),
        complex_op_calls=counting_pass.counter.complex_calls,
    )


def complex_note(calls: int) -> str:
    """What a count with complex tensors says: they are priced as real ones (by FlopCounterMode too)."""
    return (
        f"{calls:,} priced op call(s) ran on complex tensors and are counted as if real: one complex multiply-add "
        "is 4 real multiplies and 4 real adds, so their real arithmetic is up to 4x the MACs and FLOPs shown"
    )


def torch_flops_by_op(counter: FlopCounterMode) -> dict[str, int]:
    """FlopCounterMode's FLOPs of the whole pass, by op label ('aten.mm')."""
    return {op_label(op): flops for op, flops in counter.get_flop_counts().get("Global", {}).items()}


def torch_counted_ops(counter: FlopCounterMode) -> frozenset[str]:
    """The ops FlopCounterMode has a formula for, by op label: where its figure and ours must be equal."""
    return frozenset(map(op_label, counter.flop_registry))
