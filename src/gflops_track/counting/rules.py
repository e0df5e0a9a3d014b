"""Counting rules as data: one table from ATen op to a small cost function (the fvcore pattern).

Convention (also in docs/counting-convention.md):

* 1 MAC (multiply-accumulate) = 2 FLOPs. MACs are counted for dense ops only (convolution, matmul, attention).
* Every other op is counted in FLOPs per element, one FLOP per elementary arithmetic operation; a transcendental
  (exp, log, tanh, erf, sqrt) counts as one FLOP, a comparison (max, ReLU) as one FLOP.
* Per-channel or per-group scalar work (e.g. ``rsqrt(var + eps)`` once per channel) is not counted: it is O(C), not
  O(elements).

Adding an op is one line in ``FLOP_RULES`` (or ``ZERO_COST_OPS`` for pure data movement). An op in neither table is
reported as *uncounted*, never silently counted as zero.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import torch
import torch.nn.functional as F

aten = torch.ops.aten


class Category(StrEnum):
    """Where a FLOP goes in the breakdown."""

    DENSE = "conv_matmul"  # convolution, matmul, attention products: 2 FLOPs per MAC
    BIAS = "bias"  # bias adds of conv/linear/addmm
    NORM = "norm"  # batch/group/instance/layer/RMS norm
    ACTIVATION = "activation"  # ReLU, GELU, softmax, ...
    ELEMENTWISE = "elementwise"  # add, mul, reductions, ...
    POOLING = "pool_resample"  # pooling and interpolation


@dataclass(frozen=True)
class OpCost:
    """Cost of one op call: MACs (dense ops only) and FLOPs by category."""

    macs: int = 0
    flops: Mapping[Category, int] = field(default_factory=dict)


@dataclass(frozen=True)
class OpCall:
    """One dispatched op: its arguments bound to their schema names, and its output."""

    name: str
    args: Mapping[str, Any]
    out: Any

    def tensor(self, *names: str) -> torch.Tensor | None:
        """The first of the named arguments that is a tensor (ops name their main input 'self' or 'input')."""
        for name in names:
            value = self.args.get(name)
            if isinstance(value, torch.Tensor):
                return value
        return None

    @property
    def spatial_dims(self) -> int:
        """1, 2 or 3 for ops named ``*1d``/``*2d``/``*3d``."""
        return next((int(d) for d in "123" if f"{d}d" in self.name), 2)

    @property
    def out_tensor(self) -> torch.Tensor:
        out = self.out
        while isinstance(out, (tuple, list)):
            out = out[0]
        return out


Rule = Callable[[OpCall], OpCost]


def bind_arguments(func: torch._ops.OpOverload, args: Sequence[Any], kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """Map positional and keyword arguments of an ATen call to the names in its schema (defaults filled in)."""
    bound: dict[str, Any] = {}
    for position, schema_arg in enumerate(func._schema.arguments):
        if position < len(args):
            bound[schema_arg.name] = args[position]
        elif schema_arg.name in kwargs:
            bound[schema_arg.name] = kwargs[schema_arg.name]
        elif schema_arg.has_default_value():
            bound[schema_arg.name] = schema_arg.default_value
    return bound


# ---------------------------------------------------------------------------------------------------------------------
# Dense ops: MACs, 2 FLOPs each, plus their bias adds
# ---------------------------------------------------------------------------------------------------------------------


def _dense(macs: int, bias_flops: int = 0) -> OpCost:
    flops = {Category.DENSE: 2 * macs}
    if bias_flops:
        flops[Category.BIAS] = bias_flops
    return OpCost(macs=macs, flops=flops)


def _conv_macs(x: torch.Tensor, weight: torch.Tensor, out: torch.Tensor, transposed: bool) -> int:
    """``positions * weight[1:].numel()``, positions from the output (plain) or the input (transposed)."""
    return (x.numel() if transposed else out.numel()) * math.prod(weight.shape[1:])


def convolution(call: OpCall) -> OpCost:
    """``aten.convolution``/``_convolution(input, weight, bias, ..., transposed, ...)``.

    MACs = N * C_out * prod(out spatial) * (C_in/groups) * prod(kernel); transposed: per *input* position.
    Weight is (C_out, C_in/groups, *k) for a plain conv and (C_in, C_out/groups, *k) for a transposed one, so both
    are ``positions * weight[1:].numel()`` with positions taken from the output (plain) or the input (transposed).
    Bias: 1 FLOP per output element.
    """
    x, weight, out = call.tensor("input"), call.tensor("weight"), call.out_tensor
    assert x is not None and weight is not None
    bias_flops = out.numel() if call.tensor("bias") is not None else 0
    return _dense(_conv_macs(x, weight, out, bool(call.args["transposed"])), bias_flops)


def backend_convolution(call: OpCall) -> OpCost:
    """Backend convolutions ``cudnn_convolution(self, weight, ...)`` (no bias argument: its bias, if any, runs as a
    separate add) and ``mkldnn_convolution(self, weight, bias?, ...)``: MACs as ``convolution``, output positions;
    bias 1 FLOP per output element when given."""
    x, weight, out = call.tensor("self"), call.tensor("weight"), call.out_tensor
    assert x is not None and weight is not None
    bias_flops = out.numel() if call.tensor("bias") is not None else 0
    return _dense(_conv_macs(x, weight, out, transposed=False), bias_flops)


def backend_convolution_transpose(call: OpCall) -> OpCost:
    """``cudnn_convolution_transpose(self, weight, ...)``: weight (C_in, C_out/groups, *k), MACs = input elements *
    (C_out/groups) * prod(kernel) (per *input* position); no bias argument."""
    x, weight, out = call.tensor("self"), call.tensor("weight"), call.out_tensor
    assert x is not None and weight is not None
    return _dense(_conv_macs(x, weight, out, transposed=True))


def _added_term(call: OpCall, elements: int) -> int:
    """The bias FLOPs of ``beta * self + alpha * (product)`` over ``elements`` outputs: the add (none when beta is 0),
    plus a multiply for alpha != 1 (scale the product) and for beta not in (0, 1) (scale the added term)."""
    flops = elements if call.args.get("beta", 1) != 0 else 0
    if call.args.get("alpha", 1) != 1:
        flops += elements
    if call.args.get("beta", 1) not in (0, 1):
        flops += elements
    return flops


def mm(call: OpCall) -> OpCost:
    """(M, K) @ (K, N): M*N*K MACs."""
    a, b = call.tensor("self"), call.tensor("mat2")
    assert a is not None and b is not None
    return _dense(a.shape[0] * a.shape[1] * b.shape[1])


def addmm(call: OpCall) -> OpCost:
    """bias + (M, K) @ (K, N): M*N*K MACs and M*N bias FLOPs (more when alpha/beta scale)."""
    a, b = call.tensor("mat1"), call.tensor("mat2")
    assert a is not None and b is not None
    return _dense(a.shape[0] * a.shape[1] * b.shape[1], _added_term(call, a.shape[0] * b.shape[1]))


def bmm(call: OpCall) -> OpCost:
    """(B, M, K) @ (B, K, N): B*M*N*K MACs."""
    a, b = call.tensor("self"), call.tensor("mat2")
    assert a is not None and b is not None
    return _dense(a.shape[0] * a.shape[1] * a.shape[2] * b.shape[2])


def baddbmm(call: OpCall) -> OpCost:
    """bias + (B, M, K) @ (B, K, N): B*M*N*K MACs and B*M*N bias FLOPs."""
    a, b = call.tensor("batch1"), call.tensor("batch2")
    assert a is not None and b is not None
    out_elements = a.shape[0] * a.shape[1] * b.shape[2]
    return _dense(out_elements * a.shape[2], _added_term(call, out_elements))


def linear(call: OpCall) -> OpCost:
    """``F.linear(input (..., in), weight (out, in) or (in,), bias?)``: output elements * in MACs; bias 1 FLOP per
    output element. Priced as a whole (``COMPOSITE_RULES``): ATen runs it as ``addmm`` on a 2-D view, or, for a
    batched input it cannot view (non-contiguous, as ``nn.MultiheadAttention`` projects), as ``mm``/``bmm`` and a
    separate ``add``, which would file the bias under "elementwise"."""
    weight, out = call.tensor("weight"), call.out_tensor
    assert weight is not None
    bias_flops = out.numel() if call.tensor("bias") is not None else 0
    return _dense(out.numel() * weight.shape[-1], bias_flops)


def mv(call: OpCall) -> OpCost:
    """(M, K) @ (K,): M*K MACs."""
    a = call.tensor("self")
    assert a is not None
    return _dense(a.shape[0] * a.shape[1])


def dot(call: OpCall) -> OpCost:
    """(K,) . (K,): K MACs."""
    a = call.tensor("self")
    assert a is not None
    return _dense(a.numel())


def addbmm(call: OpCall) -> OpCost:
    """bias + sum over b of (B, M, K) @ (B, K, N): B*M*N*K MACs (the sum over the batch is in the accumulate) and M*N
    bias FLOPs (more when alpha/beta scale)."""
    a, b = call.tensor("batch1"), call.tensor("batch2")
    assert a is not None and b is not None
    out_elements = a.shape[1] * b.shape[2]
    return _dense(a.shape[0] * out_elements * a.shape[2], _added_term(call, out_elements))


def addmv(call: OpCall) -> OpCost:
    """bias + (M, K) @ (K,): M*K MACs and M bias FLOPs (more when alpha/beta scale)."""
    a = call.tensor("mat")
    assert a is not None
    return _dense(a.shape[0] * a.shape[1], _added_term(call, a.shape[0]))


def _unsqueezed(shape: Sequence[int], dims: Sequence[int]) -> list[int]:
    sizes = list(shape)
    for dim in sorted(dims):
        sizes.insert(dim, 1)
    return sizes


def trilinear(call: OpCall) -> OpCost:
    """``_trilinear(i1, i2, i3, expand1, expand2, expand3, sumdim)`` (``nn.Bilinear``: y = x1^T W x2 + b): each input
    unsqueezed at its ``expand`` dims, broadcast together; one MAC per element of that broadcast (x1 W first, then
    the product with x2: N*out*in1*in2 MACs for a bilinear layer)."""
    tensors = [call.tensor(name) for name in ("i1", "i2", "i3")]
    assert all(tensor is not None for tensor in tensors)
    shapes = [
        _unsqueezed(tensor.shape, call.args.get(f"expand{index}", ()))  # type: ignore[union-attr]
        for index, tensor in enumerate(tensors, start=1)
    ]
    return _dense(math.prod(torch.broadcast_shapes(*shapes)))


def attention(call: OpCall) -> OpCost:
    """Scaled-dot-product attention, q (B,H,L,E), k (B,H,S,E), v (B,H,S,Ev), priced as one fused op.

    MACs = B*H*L*S*E (Q K^T) + B*H*L*S*Ev (P V); on the B*H*L*S scores: 1 FLOP for the scale (elementwise),
    5 FLOPs softmax (activation), 1 FLOP for a mask (``attn_mask``/``attn_bias`` given, or ``is_causal``;
    elementwise), 2 FLOPs for dropout when ``dropout_p > 0`` (elementwise, as ``native_dropout``).

    Reads the names shared by ``aten.scaled_dot_product_attention`` and the fused kernels
    (``_scaled_dot_product_{flash,efficient,cudnn}_attention``, ``..._flash_attention_for_cpu``). The scale is
    1 per score because that is what the fused kernels do; the math fallback scales q and k instead (B*H*(L+S)*E
    FLOPs), so ``F.scaled_dot_product_attention`` is priced by this rule as a whole (``COMPOSITE_RULES``) whatever
    kernel the dispatcher picks, and meta and real forwards agree.
    """
    q, k, v = (call.tensor(name) for name in ("query", "key", "value"))
    assert q is not None and k is not None and v is not None
    batch_heads = math.prod(q.shape[:-2])
    length, source = q.shape[-2], k.shape[-2]
    scores = batch_heads * length * source
    macs = scores * q.shape[-1] + scores * v.shape[-1]
    has_mask = any(call.tensor(name) is not None for name in ("attn_mask", "attn_bias")) or bool(
        call.args.get("is_causal", False)
    )
    dropout = 2 if call.args.get("dropout_p", 0.0) else 0
    return OpCost(
        macs=macs,
        flops={
            Category.DENSE: 2 * macs,
            Category.ELEMENTWISE: scores * (1 + (1 if has_mask else 0) + dropout),
            Category.ACTIVATION: scores * SOFTMAX_FLOPS_PER_ELEMENT,
        },
    )


# ---------------------------------------------------------------------------------------------------------------------
# Normalisation: statistics 4 FLOPs/element (mean: add; variance: sub, square, add), normalise 2 (sub mean, mul
# rstd), affine 1 per weight (mul) and 1 per bias (add). RMS norm: statistics 2 (square, add), normalise 1 (mul).
# ---------------------------------------------------------------------------------------------------------------------

NORM_STATS_FLOPS = 4
NORM_APPLY_FLOPS = 2
RMS_STATS_FLOPS = 2
RMS_APPLY_FLOPS = 1


def _norm(
    call: OpCall, *, computes_stats: bool, stats: int = NORM_STATS_FLOPS, apply: int = NORM_APPLY_FLOPS
) -> OpCost:
    x = call.tensor("input")
    assert x is not None
    per_element = (stats if computes_stats else 0) + apply
    per_element += sum(call.tensor(name) is not None for name in ("weight", "bias"))
    return OpCost(flops={Category.NORM: per_element * x.numel()})


def batch_norm(call: OpCall) -> OpCost:
    """Reads ``training``: batch statistics are computed in training mode (and by InstanceNorm, which runs
    batch_norm with training=True on a (1, N*C, ...) view); eval mode uses the running statistics."""
    return _norm(call, computes_stats=bool(call.args.get("training", False)))


def batch_norm_legit_no_training(call: OpCall) -> OpCost:
    return _norm(call, computes_stats=False)


def stats_norm(call: OpCall) -> OpCost:
    """Group and layer norm always compute their statistics from the input."""
    return _norm(call, computes_stats=True)


def rms_norm(call: OpCall) -> OpCost:
    """``_fused_rms_norm`` and ``rms_norm(input, normalized_shape, weight?, eps?)``: statistics 2 (square, add),
    normalise 1, weight 1 per element. ``F.rms_norm`` is priced as a whole (``COMPOSITE_RULES``): on CPU and meta ATen
    decomposes it into pow, mean, add, rsqrt and mul before any kernel runs, which would land in "elementwise"."""
    return _norm(call, computes_stats=True, stats=RMS_STATS_FLOPS, apply=RMS_APPLY_FLOPS)


# ---------------------------------------------------------------------------------------------------------------------
# Per-element ops: FLOPs = cost * output elements (output shape already includes broadcasting)
# ---------------------------------------------------------------------------------------------------------------------

SOFTMAX_FLOPS_PER_ELEMENT = 5  # max, subtract, exp, sum, divide


def per_element(flops_per_element: int, category: Category) -> Rule:
    def rule(call: OpCall) -> OpCost:
        return OpCost(flops={category: flops_per_element * call.out_tensor.numel()})

    rule.__doc__ = f"{flops_per_element} FLOP(s) per output element ({category})."
    return rule


def activation(flops_per_element: int) -> Rule:
    return per_element(flops_per_element, Category.ACTIVATION)


def elementwise(flops_per_element: int) -> Rule:
    return per_element(flops_per_element, Category.ELEMENTWISE)


def comparison(call: OpCall) -> OpCost:
    """eq/ne/lt/gt/le/ge, logical_and/or/xor/not, bitwise_and/or/xor/not: 1 FLOP per output element (a comparison
    or a logical operation, broadcast shape). Shifted-window attention builds its mask with these."""
    return OpCost(flops={Category.ELEMENTWISE: call.out_tensor.numel()})


def masked_fill(call: OpCall) -> OpCost:
    """``masked_fill(self, mask, value)``: 1 FLOP per output element, a select like ``where``."""
    return OpCost(flops={Category.ELEMENTWISE: call.out_tensor.numel()})


def add_sub(call: OpCall) -> OpCost:
    """a + alpha*b: 1 FLOP per output element, 2 when alpha != 1."""
    per = 1 if call.args.get("alpha", 1) == 1 else 2
    return OpCost(flops={Category.ELEMENTWISE: per * call.out_tensor.numel()})


def clamp(call: OpCall) -> OpCost:
    """``clamp(self, min?, max?)``: 1 FLOP per output element per bound given (``clamp(min=0)`` costs what ReLU
    does)."""
    bounds = sum(call.args.get(name) is not None for name in ("min", "max"))
    return OpCost(flops={Category.ELEMENTWISE: bounds * call.out_tensor.numel()})


def gelu(call: OpCall) -> OpCost:
    """Exact 0.5*x*(1+erf(x/sqrt2)): 5 FLOPs; tanh form 0.5*x*(1+tanh(sqrt(2/pi)*(x+0.044715x^3))): 9 FLOPs."""
    per = 9 if call.args.get("approximate", "none") == "tanh" else 5
    return OpCost(flops={Category.ACTIVATION: per * call.out_tensor.numel()})


def reduction(call: OpCall) -> OpCost:
    """sum/mean/max-style reductions: one FLOP per *input* element (binary max/min: one per output element)."""
    x = call.tensor("self", "input")
    assert x is not None
    elements = call.out_tensor.numel() if call.tensor("other") is not None else x.numel()
    return OpCost(flops={Category.ELEMENTWISE: elements})


def per_input_element(flops_per_element: int) -> Rule:
    """``flops_per_element`` FLOPs per element of the input ``self`` (elementwise): scans and selections."""

    def rule(call: OpCall) -> OpCost:
        x = call.tensor("self", "input")
        assert x is not None
        return OpCost(flops={Category.ELEMENTWISE: flops_per_element * x.numel()})

    rule.__doc__ = f"{flops_per_element} FLOP(s) per input element (elementwise)."
    return rule


def vector_norm(call: OpCall) -> OpCost:
    """``linalg_vector_norm(self, ord=2, ...)`` (``F.normalize``, ``torch.norm``): per input element 2 FLOPs for
    ord 2 (square, add), 1 and inf (abs, add or max), 1 for ord 0 (compare, count); 3 for any other p (abs, pow,
    add). The root on each result is O(outputs)."""
    x = call.tensor("self")
    assert x is not None
    order = float(call.args.get("ord", 2))
    per = 1 if order == 0 else 2 if order in (1.0, 2.0, math.inf, -math.inf) else 3
    return OpCost(flops={Category.ELEMENTWISE: per * x.numel()})


def sort(call: OpCall) -> OpCost:
    """``sort(self, dim)``: n * ceil(log2 n) comparisons per sorted row of n (elementwise)."""
    x = call.tensor("self")
    assert x is not None
    n = x.shape[call.args.get("dim", -1)] if x.dim() else 1
    return OpCost(flops={Category.ELEMENTWISE: x.numel() * math.ceil(math.log2(n)) if n > 1 else 0})


FFT_COMPLEX_FLOPS = 5  # a complex FFT of n points: 5 n log2(n) real FLOPs (radix-2 count); real input/output: half


def fft(flops_per_point_log: float, of: str = "self") -> Rule:
    """``_fft_c2c``/``_fft_r2c``/``_fft_c2r(self, dim, ...)``: ``flops_per_point_log`` * n * log2(n) per transform
    of n points (n: the product of the transformed dims' sizes, of the complex input or, for c2r, the real output);
    5 for complex, 2.5 for real in or out (the radix-2 count; elementwise)."""

    def rule(call: OpCall) -> OpCost:
        tensor = call.out_tensor if of == "out" else call.tensor(of)
        assert tensor is not None
        points = math.prod(tensor.shape[d] for d in call.args.get("dim", ()))
        flops = flops_per_point_log * tensor.numel() * math.log2(points) if points > 1 else 0
        return OpCost(flops={Category.ELEMENTWISE: round(flops)})

    return rule


def embedding_bag(call: OpCall) -> OpCost:
    """``_embedding_bag(weight, indices, offsets, ..., mode, ..., per_sample_weights)``: per looked-up row of D: D
    adds (sum and mean; max: D compares), D multiplies with ``per_sample_weights``; mean divides each output once."""
    weight, indices = call.tensor("weight"), call.tensor("indices")
    assert weight is not None and indices is not None
    gathered = indices.numel() * weight.shape[-1]
    flops = gathered * (2 if call.tensor("per_sample_weights") is not None else 1)
    flops += call.out_tensor.numel() if call.args.get("mode", 0) == 1 else 0  # 0 sum, 1 mean, 2 max
    return OpCost(flops={Category.ELEMENTWISE: flops})


def scatter_add(call: OpCall) -> OpCost:
    """``scatter_add(self, dim, index, src)``: 1 FLOP per index element (only the part of ``src`` the index covers is
    added); ``index_add(self, dim, index, source, alpha?)``: 1 per source element, 2 with alpha != 1."""
    added = call.tensor("index") if "src" in call.args else call.tensor("source")
    assert added is not None
    per = 1 if call.args.get("alpha", 1) == 1 else 2
    return OpCost(flops={Category.ELEMENTWISE: per * added.numel()})


def index_put(call: OpCall) -> OpCost:
    """``index_put(self, indices, values, accumulate)``: with ``accumulate``, 1 FLOP per indexed element (the index
    tensors' broadcast shape times the dims they leave whole; a scalar value is added to each), else a copy (0). A
    boolean mask's selection is not known from shapes: the values' elements then."""
    x, values = call.tensor("self"), call.tensor("values")
    indices = list(call.args.get("indices") or ())
    assert x is not None and values is not None
    if not call.args.get("accumulate", False):
        return OpCost()
    given = [index for index in indices if isinstance(index, torch.Tensor)]
    if any(index.dtype == torch.bool for index in given) or not given:
        return OpCost(flops={Category.ELEMENTWISE: values.numel()})
    whole = [size for dim, size in enumerate(x.shape) if dim >= len(indices) or indices[dim] is None]
    indexed = math.prod(torch.broadcast_shapes(*(index.shape for index in given))) * math.prod(whole)
    return OpCost(flops={Category.ELEMENTWISE: indexed})


def cdist(call: OpCall) -> OpCost:
    """``_cdist_forward(x1 (B, P, M), x2 (B, R, M), p)``: per pair and coordinate a difference, its power (abs,
    square) and an add: 3 FLOPs * B*P*R*M (elementwise); the root per pair is O(B*P*R)."""
    x1, x2 = call.tensor("x1"), call.tensor("x2")
    assert x1 is not None and x2 is not None
    return OpCost(flops={Category.ELEMENTWISE: 3 * x1.numel() * x2.shape[-2]})


# ---------------------------------------------------------------------------------------------------------------------
# Pooling and interpolation
# ---------------------------------------------------------------------------------------------------------------------


def _window(call: OpCall) -> int:
    kernel = call.args.get("kernel_size")
    sizes = list(kernel) if isinstance(kernel, (list, tuple)) else [int(kernel)]
    if len(sizes) == 1:  # [k] means k in every spatial dim
        sizes = sizes * call.spatial_dims
    return math.prod(sizes)


def window_pool(call: OpCall) -> OpCost:
    """Max/avg pooling: prod(kernel) FLOPs per output element (compares, or adds plus the divide)."""
    return OpCost(flops={Category.POOLING: _window(call) * call.out_tensor.numel()})


def avg_pool_backward(call: OpCall) -> OpCost:
    """``avg_pool2d_backward(grad_output, ...)``: each gradient, divided, is added to its window: prod(kernel) FLOPs
    per grad_output element, as the forward."""
    grad = call.tensor("grad_output")
    assert grad is not None
    return OpCost(flops={Category.POOLING: _window(call) * grad.numel()})


def adaptive_pool(call: OpCall) -> OpCost:
    """Adaptive pooling visits each input element once: one FLOP per input element (exact for divisible sizes).

    ``F.adaptive_avg_pool2d(x, 1)`` never reaches the dispatcher as a pool: ATen rewrites it to ``mean`` (plus an
    ``as_strided_`` restride for channels-last input) before any kernel runs, on meta and for real. So the public
    functions are priced by this rule as a whole (``COMPOSITE_RULES``) and land in the pool category.
    """
    x = call.tensor("self")
    assert x is not None
    return OpCost(flops={Category.POOLING: x.numel()})


LERP_FLOPS = 3  # a + w*(b - a)
CUBIC_FLOPS = 7  # 4 taps: 4 mul + 3 add


def interpolation(lerps: int, per_lerp: int = LERP_FLOPS) -> Rule:
    """linear: 1 lerp, bilinear: 3, trilinear: 7 (3 FLOPs each); bicubic: 5 cubic passes (7 FLOPs each)."""

    def rule(call: OpCall) -> OpCost:
        return OpCost(flops={Category.POOLING: lerps * per_lerp * call.out_tensor.numel()})

    return rule


# ---------------------------------------------------------------------------------------------------------------------
# Training: backward ops and optimizer kernels (a training step is counted with the same table; see training.py)
# ---------------------------------------------------------------------------------------------------------------------


def _mask(call: OpCall, name: str, size: int) -> list[bool]:
    """An op's ``output_mask``/``grad_input_mask`` (which gradients it computes); all when absent."""
    mask = call.args.get(name)
    flags = [bool(flag) for flag in mask][:size] if mask is not None else []
    return flags + [True] * (size - len(flags))


def convolution_backward(call: OpCall) -> OpCost:
    """``convolution_backward(grad_output, input, weight, ..., transposed, ..., output_mask)``.

    Each gradient the mask asks for costs what the forward convolution costs: grad_input (mask[0]) M MACs,
    grad_weight (mask[1]) M MACs, with M = positions * weight[1:].numel() as in ``convolution``; grad_bias (mask[2])
    1 FLOP per grad_output element (the sum over batch and positions, bias category). An input that needs no grad
    (the first conv of a network) gets mask[0] = False: M MACs, not 2M.
    """
    grad_out, x, weight = call.tensor("grad_output"), call.tensor("input"), call.tensor("weight")
    assert grad_out is not None and x is not None and weight is not None
    want_input, want_weight, want_bias = _mask(call, "output_mask", 3)
    macs = _conv_macs(x, weight, grad_out, bool(call.args["transposed"])) * (int(want_input) + int(want_weight))
    return _dense(macs, grad_out.numel() if want_bias else 0)


NORM_GRAD_INPUT_FLOPS = 9  # dx = k*(dy - mean(dy) - xhat*mean(dy*xhat)): xhat 2, dy*xhat 1, two sums 2, 3 + scale 1
NORM_GRAD_WEIGHT_FLOPS = 4  # sum(dy * xhat): xhat 2, mul 1, add 1
NORM_GRAD_BIAS_FLOPS = 1  # sum(dy)


def _norm_backward(
    call: OpCall, *, batch_stats: bool, weight_per_element: bool, mask_name: str = "output_mask"
) -> OpCost:
    x = call.tensor("input")
    assert x is not None
    want_input, want_weight, want_bias = _mask(call, mask_name, 3)
    has_weight = call.tensor("weight") is not None
    per_element = 0
    if want_input:
        per_element += NORM_GRAD_INPUT_FLOPS if batch_stats else 1
        per_element += 1 if batch_stats and has_weight and weight_per_element else 0
    per_element += NORM_GRAD_WEIGHT_FLOPS if want_weight and has_weight else 0
    per_element += NORM_GRAD_BIAS_FLOPS if want_bias and has_weight else 0
    return OpCost(flops={Category.NORM: per_element * x.numel()})


def batch_norm_backward(call: OpCall) -> OpCost:
    """``native_batch_norm_backward(grad_out, input, weight, ..., train, eps, output_mask)``, per input element:
    grad_input 9 with batch statistics (dx = k*(dy - mean(dy) - xhat*mean(dy*xhat)): xhat 2, dy*xhat 1, two sums 2,
    sub/mul/sub 3, the scale k = weight*rstd (per channel, folded) 1), 1 with running statistics (dy*k);
    grad_weight 4 (sum(dy*xhat)); grad_bias 1 (sum(dy)); each only when ``output_mask`` asks."""
    return _norm_backward(call, batch_stats=bool(call.args.get("train", True)), weight_per_element=False)


def stats_norm_backward(call: OpCall) -> OpCost:
    """``native_group_norm_backward`` / ``native_layer_norm_backward``, per input element: grad_input 9 as for batch
    norm plus 1 when there is a weight (dy*weight: the weight runs along another axis than the statistics, so it
    cannot be folded); grad_weight 4; grad_bias 1; each only when ``output_mask`` asks."""
    return _norm_backward(call, batch_stats=True, weight_per_element=True)


def backward_per_element(flops_per_element: int, category: Category, of: str = "grad_output") -> Rule:
    """``flops_per_element`` FLOPs per element of the gradient tensor ``of``."""

    def rule(call: OpCall) -> OpCost:
        tensor = call.tensor(of)
        assert tensor is not None
        return OpCost(flops={category: flops_per_element * tensor.numel()})

    rule.__doc__ = f"{flops_per_element} FLOP(s) per {of} element ({category})."
    return rule


def gelu_backward(call: OpCall) -> OpCost:
    """Per element, exact: cdf 4 (scale, erf, add 1, mul 0.5), pdf 4 (square, scale, exp, mul const), x*pdf + cdf 2,
    times grad 1 = 11; tanh form: inner 5 (x^2, x^3, scale, add, scale), tanh 1, 1+t and 0.5x(1+t) 3, derivative
    of the tanh 5 (t^2, 1-t^2, chain 3), sum 1, times grad 1 = 16."""
    grad = call.tensor("grad_output")
    assert grad is not None
    per = 16 if call.args.get("approximate", "none") == "tanh" else 11
    return OpCost(flops={Category.ACTIVATION: per * grad.numel()})


def attention_backward(call: OpCall) -> OpCost:
    """SDPA backward variants, q (B,H,L,E), k (B,H,S,E), v (B,H,S,Ev): four products, as FlopCounterMode counts them:
    dV = P^T dO (B*H*S*L*Ev MACs), dP = dO V^T (B*H*L*S*Ev), dQ = dS K (B*H*L*S*E), dK = dS^T Q (B*H*S*L*E);
    on the B*H*L*S scores: softmax backward 4 FLOPs (activation, as ``_softmax_backward_data``) and the scale 1
    (elementwise). Kernels that recompute P (flash) do more work than this; the convention counts the model's
    FLOPs, not the kernel's."""
    q, k, v = (call.tensor(name) for name in ("query", "key", "value"))
    assert q is not None and k is not None and v is not None
    scores = math.prod(q.shape[:-2]) * q.shape[-2] * k.shape[-2]
    macs = 2 * scores * q.shape[-1] + 2 * scores * v.shape[-1]
    return OpCost(
        macs=macs,
        flops={Category.DENSE: 2 * macs, Category.ACTIVATION: 4 * scores, Category.ELEMENTWISE: scores},
    )


def nll_loss_forward(call: OpCall) -> OpCost:
    """``nll_loss_forward``/``nll_loss2d_forward(self, target, ...)``: pick -x[target] and sum: 2 FLOPs per target
    element (negate, add); the mean's single divide is O(1)."""
    target = call.tensor("target")
    assert target is not None
    return OpCost(flops={Category.ELEMENTWISE: 2 * target.numel()})


def nll_loss_backward(call: OpCall) -> OpCost:
    """``nll_loss_backward``/``nll_loss2d_backward``: writes -grad/N at each target: 1 FLOP per target element."""
    target = call.tensor("target")
    assert target is not None
    return OpCost(flops={Category.ELEMENTWISE: target.numel()})


def _list_elements(call: OpCall, name: str = "self") -> int:
    """Elements across a tensor-list argument (the foreach and fused optimizer ops work on lists)."""
    value = call.args.get(name)
    if isinstance(value, torch.Tensor):
        return value.numel()
    return sum(tensor.numel() for tensor in value or () if isinstance(tensor, torch.Tensor))


def foreach(flops_per_element: int) -> Rule:
    """A ``_foreach_*`` op: the single-tensor op's cost per element, over every tensor in ``self``."""

    def rule(call: OpCall) -> OpCost:
        return OpCost(flops={Category.ELEMENTWISE: flops_per_element * _list_elements(call)})

    rule.__doc__ = f"{flops_per_element} FLOP(s) per element of every tensor in the list (elementwise)."
    return rule


def foreach_add(call: OpCall) -> OpCost:
    """``_foreach_add_``/``_foreach_sub_``: 1 FLOP per element, 2 when alpha != 1 (as ``add``)."""
    per = 1 if call.args.get("alpha", 1) == 1 else 2
    return OpCost(flops={Category.ELEMENTWISE: per * _list_elements(call)})


ADAMW_FLOPS = 12  # decay 1, lerp 3, v*b2 1, addcmul 2, sqrt 1, /sqrt(bc2) 1, +eps 1, addcdiv 2
ADAM_FLOPS = ADAMW_FLOPS - 1  # no decoupled decay multiply


def fused_adam(decoupled_decay: bool) -> Rule:
    """``_fused_adamw_``/``_fused_adam_``: what the single-tensor path costs under these rules, per parameter element:
    p *= 1 - lr*wd 1 (AdamW only), m.lerp_(g, 1-b1) 3, v *= b2 1, v.addcmul_(g, g) 2, sqrt 1, / sqrt(bc2) 1, + eps 1,
    p.addcdiv_(m, denom) 2 = 12 (AdamW) / 11 (Adam); Adam's L2 weight decay g += wd*p +2; amsgrad +1 (max)."""

    def rule(call: OpCall) -> OpCost:
        per = ADAMW_FLOPS if decoupled_decay else ADAM_FLOPS
        per += 2 if not decoupled_decay and call.args.get("weight_decay", 0) else 0
        per += 1 if call.args.get("amsgrad") else 0
        return OpCost(flops={Category.ELEMENTWISE: per * _list_elements(call)})

    return rule


def fused_sgd(call: OpCall) -> OpCost:
    """``_fused_sgd_``, per parameter element, as the single-tensor path under these rules: p -= lr*g 2 (add with
    alpha); weight decay g += wd*p 2; momentum b = m*b + (1-d)*g 2 (3 when dampening != 0; 0 on the first step,
    where b = g is a copy); nesterov g += m*b 2."""
    per = 2
    if call.args.get("weight_decay", 0):
        per += 2
    if call.args.get("momentum", 0):
        per += 0 if call.args.get("is_first_step") else (3 if call.args.get("dampening", 0) else 2)
        per += 2 if call.args.get("nesterov") else 0
    return OpCost(flops={Category.ELEMENTWISE: per * _list_elements(call)})


BACKWARD_RULES: dict[Any, Rule] = {
    aten.convolution_backward: convolution_backward,
    aten.native_batch_norm_backward: batch_norm_backward,
    aten.native_group_norm_backward: stats_norm_backward,
    aten.native_layer_norm_backward: stats_norm_backward,
    aten.threshold_backward: backward_per_element(1, Category.ACTIVATION),  # select: x > t ? dy : 0
    aten.hardtanh_backward: backward_per_element(2, Category.ACTIVATION),  # two compares, select
    aten.leaky_relu_backward: backward_per_element(2, Category.ACTIVATION),  # compare, dy * slope
    aten.elu_backward: backward_per_element(4, Category.ACTIVATION),  # compare, exp-derived term, scale, mul
    aten.gelu_backward: gelu_backward,
    aten.sigmoid_backward: backward_per_element(3, Category.ACTIVATION),  # dy * y * (1 - y)
    aten.tanh_backward: backward_per_element(3, Category.ACTIVATION),  # dy * (1 - y^2)
    aten.silu_backward: backward_per_element(9, Category.ACTIVATION),  # s = sigmoid 4, dy*s*(1 + x*(1-s)) 5
    aten.hardswish_backward: backward_per_element(5, Category.ACTIVATION),  # two compares, (2x+3)/6, mul
    aten.hardsigmoid_backward: backward_per_element(2, Category.ACTIVATION),  # compare, dy/6
    aten.softplus_backward: backward_per_element(4, Category.ACTIVATION),  # sigmoid(beta*x) via exp 3, mul
    aten._softmax_backward_data: backward_per_element(4, Category.ACTIVATION),  # y*(dy - sum(dy*y))
    aten._log_softmax_backward_data: backward_per_element(4, Category.ACTIVATION),  # dy - exp(y)*sum(dy)
    aten.native_dropout_backward: backward_per_element(2, Category.ELEMENTWISE),  # mask multiply, scale
    aten.embedding_dense_backward: backward_per_element(1, Category.ELEMENTWISE),  # each row added to its id's row
    aten.max_pool2d_with_indices_backward: backward_per_element(1, Category.POOLING),  # each added at its argmax
    aten.max_pool3d_with_indices_backward: backward_per_element(1, Category.POOLING),
    aten.avg_pool2d_backward: avg_pool_backward,
    aten.avg_pool3d_backward: avg_pool_backward,
    aten._adaptive_avg_pool2d_backward: backward_per_element(1, Category.POOLING, of="self"),  # as the forward
    aten._adaptive_avg_pool3d_backward: backward_per_element(1, Category.POOLING, of="self"),
    aten.adaptive_max_pool2d_backward: backward_per_element(1, Category.POOLING, of="self"),
    aten.adaptive_max_pool3d_backward: backward_per_element(1, Category.POOLING, of="self"),
    # interpolation backward: each output gradient spread over its taps, as the forward per grad_output element
    aten.upsample_linear1d_backward: backward_per_element(LERP_FLOPS, Category.POOLING),
    aten.upsample_bilinear2d_backward: backward_per_element(3 * LERP_FLOPS, Category.POOLING),
    aten.upsample_trilinear3d_backward: backward_per_element(7 * LERP_FLOPS, Category.POOLING),
    aten.upsample_bicubic2d_backward: backward_per_element(5 * CUBIC_FLOPS, Category.POOLING),
    aten._scaled_dot_product_flash_attention_backward: attention_backward,
    aten._scaled_dot_product_efficient_attention_backward: attention_backward,
    aten._scaled_dot_product_cudnn_attention_backward: attention_backward,
    aten._scaled_dot_product_flash_attention_for_cpu_backward: attention_backward,
    aten.nll_loss_forward: nll_loss_forward,
    aten.nll_loss2d_forward: nll_loss_forward,
    aten.nll_loss_backward: nll_loss_backward,
    aten.nll_loss2d_backward: nll_loss_backward,
    # optimizer steps: the single-tensor path's in-place ops, then the foreach and fused kernels
    aten.addcmul_: elementwise(2),
    aten.addcdiv_: elementwise(2),
    aten.lerp_: elementwise(3),
    aten.sqrt_: elementwise(1),
    aten._foreach_add: foreach_add,
    aten._foreach_add_: foreach_add,
    aten._foreach_sub: foreach_add,
    aten._foreach_sub_: foreach_add,
    aten._foreach_mul: foreach(1),
    aten._foreach_mul_: foreach(1),
    aten._foreach_div: foreach(1),
    aten._foreach_div_: foreach(1),
    aten._foreach_neg: foreach(1),
    aten._foreach_neg_: foreach(1),
    aten._foreach_sqrt: foreach(1),
    aten._foreach_sqrt_: foreach(1),
    aten._foreach_reciprocal_: foreach(1),
    aten._foreach_maximum_: foreach(1),
    aten._foreach_addcmul_: foreach(2),
    aten._foreach_addcdiv_: foreach(2),
    aten._foreach_lerp_: foreach(3),
    aten._fused_adamw_: fused_adam(decoupled_decay=True),
    aten._fused_adam_: fused_adam(decoupled_decay=False),
    aten._fused_sgd_: fused_sgd,
}


# ---------------------------------------------------------------------------------------------------------------------
# The tables
# ---------------------------------------------------------------------------------------------------------------------

COMPARISON_OPS: tuple[Any, ...] = (
    aten.eq, aten.eq_, aten.ne, aten.ne_, aten.lt, aten.lt_, aten.gt, aten.gt_, aten.le, aten.le_, aten.ge, aten.ge_,
    aten.logical_and, aten.logical_and_, aten.logical_or, aten.logical_or_, aten.logical_xor, aten.logical_xor_,
    aten.logical_not, aten.logical_not_, aten.bitwise_and, aten.bitwise_and_, aten.bitwise_or, aten.bitwise_or_,
    aten.bitwise_xor, aten.bitwise_xor_, aten.bitwise_not, aten.bitwise_not_,
)  # fmt: skip

# one FLOP per output element: transcendentals, rounding, signs, remainders, NaN tests
ONE_FLOP_OPS: tuple[Any, ...] = (
    aten.log1p, aten.expm1, aten.log2, aten.log10, aten.exp2, aten.tan, aten.asin, aten.acos, aten.atan, aten.atan2,
    aten.sinh, aten.cosh, aten.erfinv, aten.sign, aten.sgn, aten.floor, aten.ceil, aten.round, aten.trunc, aten.frac,
    aten.fmod, aten.remainder, aten.floor_divide, aten.isnan, aten.nan_to_num,
)  # fmt: skip

FLOP_RULES: dict[Any, Rule] = {
    # dense
    aten.convolution: convolution,
    aten._convolution: convolution,
    aten.cudnn_convolution: backend_convolution,
    aten.cudnn_convolution_transpose: backend_convolution_transpose,
    aten.mkldnn_convolution: backend_convolution,
    aten.mm: mm,
    aten.addmm: addmm,
    aten.bmm: bmm,
    aten.baddbmm: baddbmm,
    aten.addbmm: addbmm,
    aten.mv: mv,
    aten.addmv: addmv,
    aten.dot: dot,
    aten.vdot: dot,
    aten._trilinear: trilinear,
    aten._scaled_dot_product_flash_attention: attention,
    aten._scaled_dot_product_efficient_attention: attention,
    aten._scaled_dot_product_cudnn_attention: attention,
    aten._scaled_dot_product_flash_attention_for_cpu: attention,
    # normalisation
    aten.native_batch_norm: batch_norm,
    aten._native_batch_norm_legit: batch_norm,
    aten._native_batch_norm_legit_functional: batch_norm,
    aten._native_batch_norm_legit_no_training: batch_norm_legit_no_training,
    aten.cudnn_batch_norm: batch_norm,
    aten.miopen_batch_norm: batch_norm,
    aten.native_group_norm: stats_norm,
    aten.native_layer_norm: stats_norm,
    aten._fused_rms_norm: rms_norm,
    # activations
    aten.relu: activation(1),
    aten.relu_: activation(1),
    aten.threshold: activation(1),
    aten.threshold_: activation(1),
    aten.hardtanh: activation(2),
    aten.hardtanh_: activation(2),
    aten.leaky_relu: activation(2),
    aten.leaky_relu_: activation(2),
    aten._prelu_kernel: activation(2),
    aten.elu: activation(4),
    aten.elu_: activation(4),
    aten.celu: activation(4),  # as ELU
    aten.celu_: activation(4),
    aten.glu: activation(5),  # per output element: sigmoid of the gate 4, times the value 1
    aten.log_sigmoid_forward: activation(4),  # -softplus(-x): neg, exp, add, log
    aten.softshrink: activation(2),  # compare, shift
    aten.hardshrink: activation(2),  # compare, select
    aten.gelu: gelu,
    aten.gelu_: gelu,
    aten.sigmoid: activation(4),
    aten.sigmoid_: activation(4),
    aten.tanh: activation(1),
    aten.tanh_: activation(1),
    aten.silu: activation(5),
    aten.silu_: activation(5),
    aten.mish: activation(5),
    aten.hardswish: activation(5),
    aten.hardswish_: activation(5),
    aten.hardsigmoid: activation(4),
    aten.hardsigmoid_: activation(4),
    aten.softplus: activation(3),
    aten._softmax: activation(SOFTMAX_FLOPS_PER_ELEMENT),
    aten._safe_softmax: activation(SOFTMAX_FLOPS_PER_ELEMENT),
    aten._log_softmax: activation(SOFTMAX_FLOPS_PER_ELEMENT + 1),
    # elementwise arithmetic (broadcast output elements)
    aten.add: add_sub,
    aten.add_: add_sub,
    aten.sub: add_sub,
    aten.sub_: add_sub,
    aten.rsub: add_sub,
    aten.mul: elementwise(1),
    aten.mul_: elementwise(1),
    aten.div: elementwise(1),
    aten.div_: elementwise(1),
    aten.neg: elementwise(1),
    aten.abs: elementwise(1),
    aten.exp: elementwise(1),
    aten.log: elementwise(1),
    aten.sqrt: elementwise(1),
    aten.rsqrt: elementwise(1),
    aten.reciprocal: elementwise(1),
    aten.pow: elementwise(1),
    aten.erf: elementwise(1),
    aten.sin: elementwise(1),  # rotary position embeddings (Llama, ...): one sin and one cos per angle
    aten.cos: elementwise(1),
    **dict.fromkeys(ONE_FLOP_OPS, elementwise(1)),
    aten.clamp: clamp,
    aten.clamp_: clamp,
    aten.clamp_max: elementwise(1),
    aten.clamp_max_: elementwise(1),
    aten.clamp_min: elementwise(1),
    aten.clamp_min_: elementwise(1),
    aten.maximum: elementwise(1),
    aten.minimum: elementwise(1),
    aten.where: elementwise(1),
    aten.addcmul: elementwise(2),
    aten.addcdiv: elementwise(2),
    aten.lerp: elementwise(3),
    aten.native_dropout: elementwise(2),  # training only: mask multiply and 1/(1-p) scale
    # comparisons, logical and bitwise ops, masked fill: 1 per output element
    **dict.fromkeys(COMPARISON_OPS, comparison),
    aten.masked_fill: masked_fill,
    aten.masked_fill_: masked_fill,
    # reductions
    aten.sum: reduction,
    aten.mean: reduction,
    aten.amax: reduction,
    aten.amin: reduction,
    aten.max: reduction,
    aten.min: reduction,
    aten.var: reduction,
    aten.var_mean: reduction,
    aten.std: reduction,
    aten.std_mean: reduction,
    aten.prod: reduction,
    aten.argmax: reduction,
    aten.argmin: reduction,
    aten.any: reduction,
    aten.all: reduction,
    aten.logsumexp: per_input_element(4),  # max, subtract, exp, add (the log per result is O(outputs))
    aten.cumsum: per_input_element(1),
    aten.cumsum_: per_input_element(1),
    aten.cumprod: per_input_element(1),
    aten.topk: per_input_element(1),  # one comparison per element against the running k-th
    aten.sort: sort,
    aten.linalg_vector_norm: vector_norm,
    aten._cdist_forward: cdist,
    aten._embedding_bag: embedding_bag,
    aten._embedding_bag_forward_only: embedding_bag,
    aten.scatter_add: scatter_add,
    aten.scatter_add_: scatter_add,
    aten.index_add: scatter_add,
    aten.index_add_: scatter_add,
    aten.index_put: index_put,
    aten.index_put_: index_put,
    # FFTs (torch.fft.*): the radix-2 count
    aten._fft_c2c: fft(FFT_COMPLEX_FLOPS),
    aten._fft_r2c: fft(FFT_COMPLEX_FLOPS / 2),
    aten._fft_c2r: fft(FFT_COMPLEX_FLOPS / 2, of="out"),
    # pooling and interpolation
    aten.max_pool1d: window_pool,
    aten.max_pool2d: window_pool,
    aten.max_pool3d: window_pool,
    aten.max_pool2d_with_indices: window_pool,
    aten.max_pool3d_with_indices: window_pool,
    aten.avg_pool1d: window_pool,
    aten.avg_pool2d: window_pool,
    aten.avg_pool3d: window_pool,
    aten._adaptive_avg_pool2d: adaptive_pool,
    aten._adaptive_avg_pool3d: adaptive_pool,
    aten.adaptive_max_pool2d: adaptive_pool,
    aten.adaptive_max_pool3d: adaptive_pool,
    aten.upsample_linear1d: interpolation(1),
    aten.upsample_bilinear2d: interpolation(3),
    aten._upsample_bilinear2d_aa: interpolation(3),
    aten.upsample_trilinear3d: interpolation(7),
    aten.upsample_bicubic2d: interpolation(5, CUBIC_FLOPS),
    **BACKWARD_RULES,
}

# Views, in-place restrides, metadata queries (``prim.device``: fake tensors ask it) and allocations: no arithmetic
# (0 FLOPs) and no memory traffic in the byte model (everything else reads all its tensor inputs and writes its
# outputs once).
VIEW_AND_METADATA_OPS: frozenset[Any] = frozenset(
    {
        aten.view, aten._unsafe_view, aten._reshape_alias, aten.t, aten.transpose, aten.permute, aten.expand,
        aten.squeeze, aten.unsqueeze, aten.alias, aten.detach, aten.lift_fresh, aten.as_strided, aten.as_strided_,
        aten.slice, aten.select, aten.split, aten.split_with_sizes, aten.unbind, aten.chunk, aten.narrow, aten.empty,
        aten.empty_like, aten.empty_strided, aten.new_empty, aten.new_empty_strided, aten.sym_size, aten.sym_stride,
        aten.sym_numel, aten.sym_storage_offset, aten.is_same_size, torch.ops.prim.device, torch.ops.prim.layout,
        aten.unsafe_split, aten.unsafe_split_with_sizes, aten.unsafe_chunk, aten.diagonal, aten.unsqueeze_,
        aten.squeeze_, aten.transpose_, aten.t_, aten.view_as_real, aten.view_as_complex, aten.unfold_copy,
        torch.ops.profiler._record_function_enter_new, torch.ops.profiler._record_function_exit,
    }
)  # fmt: skip

# Data movement and tensor creation that writes memory: copies, concatenation, padding, nearest upsampling, indexing,
# filled tensors, random numbers. 0 FLOPs (deliberately), but they read and write memory.
COPY_OPS: frozenset[Any] = frozenset(
    {
        aten.reshape, aten.flatten, aten.cat, aten.stack, aten.clone, aten.contiguous, aten.copy_, aten._to_copy,
        aten.zeros, aten.zeros_like, aten.ones, aten.ones_like, aten.full, aten.full_like, aten.fill_, aten.zero_,
        aten.new_zeros, aten.new_ones, aten.scalar_tensor, aten.arange, aten.constant_pad_nd, aten.reflection_pad2d,
        aten.replication_pad2d, aten.pixel_shuffle, aten.pixel_unshuffle, aten.embedding, aten.index,
        aten.index_select, aten.gather, aten.upsample_nearest1d, aten.upsample_nearest2d, aten.upsample_nearest3d,
        aten._upsample_nearest_exact2d, aten.roll, aten.flip, aten.repeat, aten.unfold, aten.im2col, aten.col2im,
        aten._local_scalar_dense, aten.item, aten.randn, aten.rand, aten.randn_like, aten.rand_like, aten.bernoulli,
        aten.select_backward, aten.slice_backward,  # backward of views: the gradient copied into zeros
        aten.tril, aten.triu, aten.tril_, aten.triu_, aten.scatter, aten.scatter_, aten.diag_embed,
        aten.masked_scatter, aten._unsafe_index, aten.new_full, aten.eye, aten.linspace, aten.bernoulli_,
        aten._upsample_nearest_exact1d, aten._upsample_nearest_exact3d, aten.diagonal_backward,
    }
)  # fmt: skip

# Derived, never written twice: what the byte model skips, and what is deliberately counted as 0 FLOPs.
NO_TRAFFIC_OPS: frozenset[Any] = VIEW_AND_METADATA_OPS
ZERO_COST_OPS: frozenset[Any] = VIEW_AND_METADATA_OPS | COPY_OPS


@dataclass(frozen=True)
class CompositeRule:
    """A public function ATen decomposes before any kernel runs, priced as a whole: ``schema`` is the ATen op whose
    argument names the call is bound to, ``rule`` prices it. The ops it decomposes into are not priced on their own
    (their conv/matmul FLOPs still feed the FlopCounterMode cross-check, which sees them). Its memory traffic is its
    own inputs and outputs, once (``fused``: one kernel), or else that of the ops it runs (``F.linear``: under
    autocast its casts are traffic of their own)."""

    schema: Any
    rule: Rule
    fused: bool = True


# Keyed by the function object a ``TorchFunctionMode`` sees: the Python wrappers in ``torch.nn.functional`` and the
# builtins they call (either can be called directly).
COMPOSITE_RULES: dict[Callable[..., Any], CompositeRule] = {
    F.scaled_dot_product_attention: CompositeRule(aten.scaled_dot_product_attention, attention),
    F.linear: CompositeRule(aten.linear, linear, fused=False),
    torch.adaptive_avg_pool1d: CompositeRule(aten.adaptive_avg_pool1d, adaptive_pool),
    F.adaptive_avg_pool2d: CompositeRule(aten.adaptive_avg_pool2d, adaptive_pool),
    torch._C._nn.adaptive_avg_pool2d: CompositeRule(aten.adaptive_avg_pool2d, adaptive_pool),
    F.adaptive_avg_pool3d: CompositeRule(aten.adaptive_avg_pool3d, adaptive_pool),
    torch._C._nn.adaptive_avg_pool3d: CompositeRule(aten.adaptive_avg_pool3d, adaptive_pool),
    F.rms_norm: CompositeRule(aten.rms_norm, rms_norm),
    torch.rms_norm: CompositeRule(aten.rms_norm, rms_norm),
}
