"""Every counting rule against its analytic formula, module and functional forms, and against FlopCounterMode."""

from __future__ import annotations

import ast
import itertools
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from conftest import requires_cuda
from gflops_track.counting import rules
from gflops_track.counting.op_counter import count_cost
from gflops_track.counting.rules import (
    FLOP_RULES,
    NO_TRAFFIC_OPS,
    ZERO_COST_OPS,
    Category,
    OpCall,
    OpCost,
    bind_arguments,
)
from gflops_track.counting.torch_crosscheck import report_agreement

CONVENTION = Path(__file__).resolve().parents[1] / "docs" / "counting-convention.md"


class Functional(nn.Module):
    """Wraps a function so it can be counted like a module."""

    def __init__(self, fn, *params: torch.Tensor) -> None:
        super().__init__()
        self.fn = fn
        self.weights = nn.ParameterList(params)

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        return self.fn(*xs, *self.weights)


def torch_flops(model: nn.Module, *inputs: torch.Tensor) -> int:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(*inputs)
    return counter.get_total_flops()


@pytest.mark.parametrize("meta", [True, False])
def test_conv2d_with_bias_strides_and_groups(meta: bool) -> None:
    n, c_in, c_out, h, w, k, groups, stride = 2, 8, 12, 15, 15, 3, 4, 2
    conv = nn.Conv2d(c_in, c_out, k, stride=stride, padding=1, groups=groups)
    x = torch.randn(n, c_in, h, w)
    h_out = (h + 2 * 1 - k) // stride + 1  # 8
    report = count_cost(conv, (x,), prefer_meta=meta)
    macs = n * c_out * h_out * h_out * (c_in // groups) * k * k
    assert report.macs == macs
    assert report.flops_by_category["conv_matmul"] == 2 * macs
    assert report.flops_by_category["bias"] == n * c_out * h_out * h_out
    assert report.params == c_out * (c_in // groups) * k * k + c_out
    assert report.backend == ("meta" if meta else "real")
    assert report.flops_by_category["conv_matmul"] == torch_flops(conv, x)


def test_transposed_conv_counts_per_input_position() -> None:
    n, c_in, c_out, h, k, s = 2, 6, 4, 5, 2, 2
    deconv = nn.ConvTranspose2d(c_in, c_out, k, stride=s, bias=False)
    x = torch.randn(n, c_in, h, h)
    report = count_cost(deconv, (x,))
    assert report.macs == n * c_in * h * h * c_out * k * k
    assert report.flops_by_category["bias"] == 0
    assert report.flops_by_category["conv_matmul"] == torch_flops(deconv, x)


def test_linear_is_addmm_with_bias() -> None:
    batch, tokens, d_in, d_out = 3, 7, 16, 10
    linear = nn.Linear(d_in, d_out)
    x = torch.randn(batch, tokens, d_in)
    report = count_cost(linear, (x,))
    rows = batch * tokens
    assert report.macs == rows * d_in * d_out
    assert report.flops_by_category["bias"] == rows * d_out
    assert report.flops == 2 * rows * d_in * d_out + rows * d_out
    assert report.flops_by_category["conv_matmul"] == torch_flops(linear, x)


def test_addmm_and_baddbmm_scale_factors() -> None:
    """out = beta * bias + alpha * (a @ b), (M, K) @ (K, N) = (5, 8) @ (8, 3): M*K*N = 120 MACs, and on the M*N = 15
    outputs: the bias add 1 FLOP each unless beta = 0 (the bias is ignored), plus 1 for beta not in (0, 1) (scale
    the bias) and 1 for alpha != 1 (scale the product), all in the bias category. baddbmm: the same per batch,
    B = 2: 2*5*8*3 = 240 MACs on 30 outputs."""
    m, k, n, batch = 5, 8, 3, 2
    a, b, bias = torch.randn(m, k), torch.randn(k, n), torch.randn(n)
    cases = {  # (alpha, beta) -> bias-category FLOPs per output element
        (1, 1): 1, (1, 0): 0, (1, 2): 1 + 1, (2, 1): 1 + 1, (2, 0): 0 + 1, (3, 0.5): 1 + 1 + 1,
    }  # fmt: skip
    for (alpha, beta), per_output in cases.items():
        model = Functional(lambda x, y, z, al=alpha, be=beta: torch.addmm(z, x, y, alpha=al, beta=be))
        report = count_cost(model, (a, b, bias))
        assert (alpha, beta, report.macs, report.flops_by_category["bias"]) == (
            alpha, beta, m * k * n, per_output * m * n
        )  # fmt: skip
        batched = Functional(lambda x, y, z, al=alpha, be=beta: torch.baddbmm(z, x, y, alpha=al, beta=be))
        inputs = (torch.randn(batch, m, k), torch.randn(batch, k, n), torch.randn(batch, m, n))
        report = count_cost(batched, inputs)
        assert (alpha, beta, report.macs, report.flops_by_category["bias"]) == (
            alpha, beta, batch * m * k * n, per_output * batch * m * n
        )  # fmt: skip


def test_functional_ops_are_counted() -> None:
    """x @ w, F.conv2d and a broadcast add: what thop cannot see."""
    a = torch.randn(4, 5, 6)
    b = torch.randn(4, 6, 3)
    matmul = Functional(lambda x, y: (x @ y) + torch.ones(3))  # bmm then a broadcast add onto (4, 5, 3)
    report = count_cost(matmul, (a, b))
    assert report.macs == 4 * 5 * 6 * 3
    assert report.flops_by_category["elementwise"] == 4 * 5 * 3
    weight = torch.randn(2, 3, 3, 3)
    conv = Functional(lambda x, wt: F.conv2d(x, wt), weight)
    x = torch.randn(1, 3, 10, 10)
    assert count_cost(conv, (x,)).macs == 1 * 2 * 8 * 8 * 3 * 3 * 3


def test_norms_read_training_flag_and_affine() -> None:
    n, c, h, w = 2, 16, 6, 6
    elements = n * c * h * w
    x = torch.randn(n, c, h, w)
    # eval batch norm: normalise 2 + affine 2 per element
    assert count_cost(nn.BatchNorm2d(c), (x,)).flops_by_category["norm"] == (2 + 2) * elements
    # group norm: stats 4 + normalise 2 + affine 2
    assert count_cost(nn.GroupNorm(4, c), (x,)).flops_by_category["norm"] == (4 + 2 + 2) * elements
    # instance norm runs batch_norm with training=True, no affine by default: stats 4 + normalise 2
    assert count_cost(nn.InstanceNorm2d(c), (x,)).flops_by_category["norm"] == (4 + 2) * elements
    assert count_cost(nn.InstanceNorm2d(c, affine=True), (x,)).flops_by_category["norm"] == 8 * elements
    # layer norm over (c, h, w) with weight and bias
    assert count_cost(nn.LayerNorm([c, h, w]), (x,)).flops_by_category["norm"] == 8 * elements


def test_batch_norm_counted_in_training_mode_when_called_in_training() -> None:
    """count_cost counts eval mode, but a functional batch_norm with training=True computes statistics."""
    x = torch.randn(2, 4, 3, 3)
    model = Functional(lambda t: F.batch_norm(t, None, None, training=True))
    assert count_cost(model, (x,)).flops_by_category["norm"] == (4 + 2) * x.numel()


def test_activations_softmax_pooling_upsampling() -> None:
    x = torch.randn(2, 4, 8, 8)
    e = x.numel()
    assert count_cost(nn.ReLU(), (x,)).flops_by_category["activation"] == 1 * e
    assert count_cost(nn.GELU(), (x,)).flops_by_category["activation"] == 5 * e
    assert count_cost(nn.GELU(approximate="tanh"), (x,)).flops_by_category["activation"] == 9 * e
    assert count_cost(nn.SiLU(), (x,)).flops_by_category["activation"] == 5 * e
    assert count_cost(nn.Softmax(dim=-1), (x,)).flops_by_category["activation"] == 5 * e
    out_elements = 2 * 4 * 4 * 4
    assert count_cost(nn.MaxPool2d(2), (x,)).flops_by_category["pool_resample"] == 2 * 2 * out_elements
    assert count_cost(nn.AvgPool2d(2), (x,)).flops_by_category["pool_resample"] == 2 * 2 * out_elements
    upsampled = 2 * 4 * 16 * 16
    bilinear = nn.Upsample(scale_factor=2, mode="bilinear")
    assert count_cost(bilinear, (x,)).flops_by_category["pool_resample"] == 3 * 3 * upsampled
    nearest = count_cost(nn.Upsample(scale_factor=2, mode="nearest"), (x,))
    assert nearest.flops == 0 and not nearest.uncounted_ops  # deliberately free, not silently missing


def test_fused_attention_matches_formula_and_flop_counter() -> None:
    """On a real CPU forward SDPA runs as one fused op: MACs = B*H*L*S*E + B*H*L*S*Ev."""
    b, h, length, source, e, ev = 2, 3, 5, 7, 8, 4
    q, k, v = torch.randn(b, h, length, e), torch.randn(b, h, source, e), torch.randn(b, h, source, ev)
    attention = Functional(F.scaled_dot_product_attention)
    report = count_cost(attention, (q, k, v), prefer_meta=False)
    scores = b * h * length * source
    assert report.macs == scores * e + scores * ev
    assert report.flops_by_category["conv_matmul"] == torch_flops(attention, q, k, v)
    assert report.flops_by_category["activation"] == 5 * scores


def test_op_without_rule_is_listed_not_zero() -> None:
    x = torch.randn(3, 4)
    model = Functional(torch.lgamma)  # no rule (yet): named, never a silent 0
    report = count_cost(model, (x,))
    assert report.uncounted_ops == {"aten.lgamma (in Functional)": 1}
    assert report.flops == 0


def test_rule_tables_do_not_overlap() -> None:
    assert not set(FLOP_RULES) & ZERO_COST_OPS


def test_shared_module_counted_once_per_call() -> None:
    shared = nn.Linear(4, 4, bias=False)
    model = nn.Sequential(shared, nn.ReLU(), shared)  # one module, two names, two calls
    x = torch.randn(5, 4)
    report = count_cost(model, (x,))
    assert report.macs == 2 * 5 * 4 * 4
    assert report.params == 16  # shared weight once
    rows = {row.name: row for row in report.layers}
    assert rows["0"].calls == 2 and "2" not in rows


# ---------------------------------------------------------------------------------------------------------------------
# Every rule against its op's real schema
# ---------------------------------------------------------------------------------------------------------------------

CONV = {"input": (2, 4, 6, 6), "self": (2, 4, 6, 6), "weight": (8, 4, 3, 3), "bias": (8,)}
CONV_MACS = 2 * 8 * 4 * 4 * (4 * 3 * 3)  # N * C_out * out positions * (C_in/groups) * k * k
CONV_T = {"self": (2, 4, 6, 6), "weight": (4, 8, 3, 3)}  # transposed weight: (C_in, C_out/groups, k, k)
CONV_T_MACS = 2 * 4 * 6 * 6 * (8 * 3 * 3)  # per *input* position
# rule -> (tensors by schema name, output shape, MACs); every other rule gets GENERIC tensors and MACs 0
SCHEMA_SAMPLES: dict[Callable[[OpCall], OpCost], tuple[dict[str, tuple[int, ...]], tuple[int, ...], int]] = {
    rules.convolution: (CONV, (2, 8, 4, 4), CONV_MACS),
    rules.backend_convolution: (CONV, (2, 8, 4, 4), CONV_MACS),
    rules.backend_convolution_transpose: (CONV_T, (2, 8, 8, 8), CONV_T_MACS),
    rules.mm: ({"self": (3, 4), "mat2": (4, 5)}, (3, 5), 3 * 4 * 5),
    rules.addmm: ({"self": (5,), "mat1": (3, 4), "mat2": (4, 5)}, (3, 5), 3 * 4 * 5),
    rules.bmm: ({"self": (2, 3, 4), "mat2": (2, 4, 5)}, (2, 3, 5), 2 * 3 * 4 * 5),
    rules.baddbmm: ({"self": (2, 3, 5), "batch1": (2, 3, 4), "batch2": (2, 4, 5)}, (2, 3, 5), 2 * 3 * 4 * 5),
    rules.mv: ({"self": (3, 4), "vec": (4,)}, (3,), 3 * 4),
    rules.addbmm: ({"self": (3, 5), "batch1": (2, 3, 4), "batch2": (2, 4, 5)}, (3, 5), 2 * 3 * 4 * 5),
    rules.addmv: ({"self": (3,), "mat": (3, 4), "vec": (4,)}, (3,), 3 * 4),
    # nn.Bilinear(4 -> 3 from 4 x 5) on 2 rows: i1 (2, 4) at (2, 1, 4, 1), W (3, 4, 5) at (1, 3, 4, 5), i2 (2, 5)
    # at (2, 1, 1, 5): one MAC per element of the (2, 3, 4, 5) broadcast
    rules.trilinear: ({"i1": (2, 4), "i2": (3, 4, 5), "i3": (2, 5)}, (2, 3), 2 * 3 * 4 * 5),
    rules.dot: ({"self": (4,), "tensor": (4,)}, (), 4),
    rules.attention: (
        {"query": (2, 3, 5, 8), "key": (2, 3, 7, 8), "value": (2, 3, 7, 4)},
        (2, 3, 5, 4),
        2 * 3 * 5 * 7 * (8 + 4),  # B*H*L*S*(E + Ev)
    ),
    # backward: the generic output_mask asks for every gradient: grad-input and grad-weight, M MACs each
    rules.convolution_backward: ({**CONV, "grad_output": (2, 8, 4, 4)}, (2, 4, 6, 6), 2 * CONV_MACS),
    rules.attention_backward: (
        {"query": (2, 3, 5, 8), "key": (2, 3, 7, 8), "value": (2, 3, 7, 4)},
        (2, 3, 5, 8),
        2 * 2 * 3 * 5 * 7 * (8 + 4),  # dQ, dK: B*H*L*S*E each; dV, dP: B*H*L*S*Ev each
    ),
}
GENERIC = (2, 4, 6, 6)
# rule -> non-tensor arguments that make the call do arithmetic (a clamp with no bound, an index_put that does not
# accumulate, are 0 FLOPs by the rule)
ARGUMENT_SAMPLES: dict[Callable[[OpCall], OpCost], dict[str, Any]] = {
    rules.clamp: {"min": 0.0},
    rules.index_put: {"accumulate": True},
    rules.trilinear: {"expand1": [1, 3], "expand2": [0], "expand3": [1, 2], "sumdim": [2, 3]},
}
NON_TENSOR_VALUES = {"bool": False, "int": 1, "SymInt": 1, "float": 1.0, "Scalar": 1, "str": "none"}


def _value_for(arg: Any, tensors: dict[str, tuple[int, ...]], generic: bool) -> Any:
    """A value of the argument's schema type: a meta tensor for a tensor, its default or a plain value otherwise."""
    kind = str(arg.type)
    if kind.startswith(("Tensor", "Optional[Tensor]")) or kind == "Tensor?":
        shape = tensors.get(arg.name, GENERIC if generic else None)
        return None if shape is None else torch.empty(shape, device="meta")
    if arg.has_default_value():
        return arg.default_value
    base = kind.removeprefix("Optional[").rstrip("]?")
    if "List[Tensor]" in kind:  # the foreach and fused optimizer ops take tensor lists
        return [torch.empty(GENERIC, device="meta")]
    if "[" in kind or kind.endswith("[]"):
        return [1.0] if "float" in kind else [3, 3]
    if base == "ScalarType":
        return torch.float32
    return NON_TENSOR_VALUES.get(base.split("[")[0], 1)


def test_every_rule_binds_its_ops_real_schema() -> None:
    """Each (op overload, rule) in FLOP_RULES: a call built from the overload's own schema binds, and the rule returns
    a sane cost (no KeyError, no assert): non-negative integers, something counted, dense MACs by formula."""
    failures: list[str] = []
    walked = 0
    for packet, rule in FLOP_RULES.items():
        tensors, out_shape, macs = SCHEMA_SAMPLES.get(rule, ({}, GENERIC, 0))
        generic = rule not in SCHEMA_SAMPLES
        for overload_name in packet.overloads():
            overload = getattr(packet, overload_name)
            schema = overload._schema
            has_tensor = any(str(arg.type).startswith("Tensor") for arg in schema.arguments)
            if not has_tensor or any(arg.is_out for arg in schema.arguments):
                continue  # TorchScript scalar overloads and out= variants never reach a dispatch-mode counter
            given = ARGUMENT_SAMPLES.get(rule, {})
            values = {a.name: given[a.name] if a.name in given else _value_for(a, tensors, generic)
                      for a in schema.arguments}  # fmt: skip
            positional = [values[a.name] for a in schema.arguments if not a.kwarg_only]
            keywords = {a.name: values[a.name] for a in schema.arguments if a.kwarg_only}
            call = OpCall(str(overload), bind_arguments(overload, positional, keywords), torch.empty(out_shape))
            walked += 1
            try:
                cost = rule(call)
            except (KeyError, AssertionError, AttributeError, TypeError) as error:
                failures.append(f"{overload}: {type(error).__name__}: {error}")
                continue
            values = [cost.macs, *cost.flops.values()]
            if not all(isinstance(v, int) and v >= 0 for v in values) or not set(cost.flops) <= set(Category):
                failures.append(f"{overload}: not a cost: {cost}")
            elif sum(cost.flops.values()) == 0 or cost.macs != macs:
                failures.append(f"{overload}: {cost.macs} MACs (formula: {macs}), {dict(cost.flops)} FLOPs")
    assert walked > len(FLOP_RULES)  # every op has at least one tensor overload; many have several
    assert failures == []


# ---------------------------------------------------------------------------------------------------------------------
# The counting table (docs/counting-convention.md): one case per row, each with its formula
# ---------------------------------------------------------------------------------------------------------------------


def readme_table_ops() -> list[str]:
    """The 'op' column of the first table in docs/counting-convention.md."""
    lines = CONVENTION.read_text().splitlines()
    start = next(index for index, line in enumerate(lines) if line.startswith("| "))
    table = list(itertools.takewhile(lambda line: line.startswith("| "), lines[start:]))
    rows = [line for line in table if not line.startswith("| ---")]
    return [row.split(" | ")[1] for row in rows[1:]]


X = (2, 4, 8, 8)  # N, C, H, W
E = math.prod(X)  # 512 elements
OUT2 = 2 * 4 * 4 * 4  # a 2x2 window, stride 2: (2, 4, 4, 4)
B, HEADS, L, S, EQK, EV = 2, 3, 5, 7, 8, 4
SCORES = B * HEADS * L * S  # 210


def _sdpa_inputs() -> tuple[torch.Tensor, ...]:
    return torch.randn(B, HEADS, L, EQK), torch.randn(B, HEADS, S, EQK), torch.randn(B, HEADS, S, EV)


# The table's op cell -> [(label, module, inputs, expected FLOPs by category (others 0), expected MACs)]
ROW_CASES: dict[str, list[tuple[str, nn.Module, tuple[torch.Tensor, ...], dict[str, int], int]]] = {
    "conv, matmul, attention products": [
        ("conv 3x3 4->6, no bias", nn.Conv2d(4, 6, 3, bias=False), (torch.randn(X),), {}, 2 * 6 * 6 * 6 * 4 * 9),
        ("matmul (3,5)@(5,7)", Functional(torch.matmul), (torch.randn(3, 5), torch.randn(5, 7)), {}, 3 * 5 * 7),
        (  # the sum over the batch is in the accumulate; the added (3, 7) term is a bias
            "addbmm (3,7) + sum_b (2,3,5)@(2,5,7)",
            Functional(torch.addbmm),
            (torch.randn(3, 7), torch.randn(2, 3, 5), torch.randn(2, 5, 7)),
            {"bias": 3 * 7},
            2 * 3 * 5 * 7,
        ),
        (
            "addmv (3,)+(3,5)@(5,)",
            Functional(torch.addmv),
            (torch.randn(3), torch.randn(3, 5), torch.randn(5)),
            {"bias": 3},
            15,
        ),
        ("vdot (5,).(5,)", Functional(torch.vdot), (torch.randn(5), torch.randn(5)), {}, 5),
        (  # y_k = x1^T W_k x2 + b_k on 2 rows: N*out*in1*in2 MACs; its bias is a broadcast add
            "Bilinear 4 x 5 -> 3",
            nn.Bilinear(4, 5, 3),
            (torch.randn(2, 4), torch.randn(2, 5)),
            {"elementwise": 2 * 3},
            2 * 3 * 4 * 5,
        ),
    ],
    "bias add of conv / linear / addmm": [
        ("linear 8->3", nn.Linear(8, 3), (torch.randn(5, 8),), {"bias": 5 * 3}, 5 * 8 * 3),
    ],
    "batch norm, eval (running stats)": [
        ("BatchNorm2d affine", nn.BatchNorm2d(4), (torch.randn(X),), {"norm": (2 + 1 + 1) * E}, 0),
    ],
    "batch norm, training; instance norm (runs batch norm with `training=True`); group norm; layer norm": [
        ("InstanceNorm2d", nn.InstanceNorm2d(4), (torch.randn(X),), {"norm": (4 + 2) * E}, 0),
        ("GroupNorm affine", nn.GroupNorm(2, 4), (torch.randn(X),), {"norm": (4 + 2 + 2) * E}, 0),
        ("LayerNorm affine", nn.LayerNorm(8), (torch.randn(X),), {"norm": (4 + 2 + 2) * E}, 0),
    ],
    "RMS norm": [("RMSNorm weight", nn.RMSNorm(8), (torch.randn(X),), {"norm": (2 + 1 + 1) * E}, 0)],
    "ReLU 1; hardtanh/ReLU6, leaky ReLU, PReLU 2; tanh 1; sigmoid 4 (neg, exp, add, divide); SiLU 5; GELU 5 (exact) or "
    "9 (tanh); ELU 4; hardswish 5": [
        ("ReLU", nn.ReLU(), (torch.randn(X),), {"activation": 1 * E}, 0),
        ("ReLU6", nn.ReLU6(), (torch.randn(X),), {"activation": 2 * E}, 0),
        ("LeakyReLU", nn.LeakyReLU(), (torch.randn(X),), {"activation": 2 * E}, 0),
        ("Sigmoid", nn.Sigmoid(), (torch.randn(X),), {"activation": 4 * E}, 0),
        ("SiLU", nn.SiLU(), (torch.randn(X),), {"activation": 5 * E}, 0),
        ("GELU tanh", nn.GELU(approximate="tanh"), (torch.randn(X),), {"activation": 9 * E}, 0),
        ("ELU", nn.ELU(), (torch.randn(X),), {"activation": 4 * E}, 0),
        ("Hardswish", nn.Hardswish(), (torch.randn(X),), {"activation": 5 * E}, 0),
    ],
    "softmax 5 (max, subtract, exp, sum, divide), log-softmax 6; scaled-dot-product attention adds 5 per score": [
        ("Softmax", nn.Softmax(-1), (torch.randn(X),), {"activation": 5 * E}, 0),
        ("LogSoftmax", nn.LogSoftmax(-1), (torch.randn(X),), {"activation": 6 * E}, 0),
        (
            "SDPA",
            Functional(F.scaled_dot_product_attention),
            _sdpa_inputs(),
            {"activation": 5 * SCORES, "elementwise": 1 * SCORES},
            SCORES * (EQK + EV),
        ),
    ],
    "add/sub (2 when `alpha != 1`), mul, div, neg, exp, log, sqrt, pow, ... 1; clamp 1 per bound; `where` 1; "
    "scaled-dot-product attention: 1 per score for the scale (+1 with a mask or `is_causal`, +2 with dropout)": [
        ("broadcast add", Functional(torch.add), (torch.randn(X), torch.randn(8)), {"elementwise": E}, 0),
        (
            "sub alpha=2",
            Functional(lambda a, b: torch.sub(a, b, alpha=2)),
            (torch.randn(X),) * 2,
            {"elementwise": 2 * E},
            0,
        ),
        ("clamp", Functional(lambda a: a.clamp(-1, 1)), (torch.randn(X),), {"elementwise": 2 * E}, 0),
        ("clamp(min=0), one bound", Functional(lambda a: a.clamp(min=0)), (torch.randn(X),), {"elementwise": E}, 0),
        (
            "SDPA, causal",
            Functional(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True)),
            _sdpa_inputs(),
            {"activation": 5 * SCORES, "elementwise": (1 + 1) * SCORES},
            SCORES * (EQK + EV),
        ),
        (
            "SDPA, dropout_p=0.5",
            Functional(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, dropout_p=0.5)),
            _sdpa_inputs(),
            {"activation": 5 * SCORES, "elementwise": (1 + 2) * SCORES},  # scale 1, dropout 2 (mask multiply, scale)
            SCORES * (EQK + EV),
        ),
    ],
    "comparisons (eq, ne, lt, gt, le, ge), logical and bitwise ops, `masked_fill`": [
        ("ne, broadcast", Functional(torch.ne), (torch.randn(X), torch.randn(8)), {"elementwise": E}, 0),
        (
            "masked_fill(x, x > 0, 0)",
            Functional(lambda a: a.masked_fill(a > 0, 0.0)),
            (torch.randn(X),),
            {"elementwise": E + E},  # gt, then the fill
            0,
        ),
        ("logical_and", Functional(torch.logical_and), (torch.randn(X) > 0, torch.randn(X) > 0), {"elementwise": E}, 0),
        (
            "bitwise_xor int",
            Functional(torch.bitwise_xor),
            (torch.randint(0, 9, X), torch.randint(0, 9, X)),
            {"elementwise": E},
            0,
        ),
    ],
    "reductions (sum, mean, max, var, ...)": [
        ("sum over W", Functional(lambda a: a.sum(-1)), (torch.randn(X),), {"elementwise": E}, 0),
        ("mean over H, W", Functional(lambda a: a.mean((2, 3))), (torch.randn(X),), {"elementwise": E}, 0),
        ("argmax over C", Functional(lambda a: a.argmax(1)), (torch.randn(X),), {"elementwise": E}, 0),
    ],
    "vector norm (`F.normalize`, `torch.norm`) 2 (ord 1, 2, inf; 3 for another p); logsumexp 4; cumsum, cumprod, "
    "top-k 1; sort `⌈log2 n⌉` (rows of n)": [
        (  # the norm 2 per element, clamp_min(eps) 1 per (2, 1, 8, 8) norm, the divide 1 per element
            "F.normalize over C",
            Functional(lambda a: F.normalize(a, dim=1)),
            (torch.randn(X),),
            {"elementwise": 2 * E + 2 * 8 * 8 + E},
            0,
        ),
        (
            "norm p=3",
            Functional(lambda a: torch.linalg.vector_norm(a, 3)),
            (torch.randn(X),),
            {"elementwise": 3 * E},
            0,
        ),
        ("logsumexp over W", Functional(lambda a: a.logsumexp(-1)), (torch.randn(X),), {"elementwise": 4 * E}, 0),
        ("cumsum over W", Functional(lambda a: a.cumsum(-1)), (torch.randn(X),), {"elementwise": E}, 0),
        ("topk 3 over W", Functional(lambda a: a.topk(3).values), (torch.randn(X),), {"elementwise": E}, 0),
        ("sort over W (n = 8)", Functional(lambda a: a.sort().values), (torch.randn(X),), {"elementwise": 3 * E}, 0),
    ],
    "`EmbeddingBag` 1 per looked-up element (+1 with per-sample weights; mean +1 per output element); `scatter_add`, "
    "`index_add`, accumulating `index_put` 1 per added element; `cdist` 3 per pair and coordinate": [
        (  # 2 bags of 3 ids into 16-wide rows: 6 * 16 adds, then each of the 2 * 16 outputs divided
            "EmbeddingBag mean",
            nn.EmbeddingBag(10, 16, mode="mean"),
            (torch.randint(0, 10, (2, 3)),),
            {"elementwise": 6 * 16 + 2 * 16},
            0,
        ),
        (
            "scatter_add of 8 values",
            Functional(lambda a, i: torch.zeros(4).scatter_add(0, i, a)),
            (torch.randn(8), torch.randint(0, 4, (8,))),
            {"elementwise": 8},
            0,
        ),
        (  # only the (2, 3) part of src that the index covers is added
            "scatter_add, src wider than its index",
            Functional(lambda a: torch.zeros(4, 8).scatter_add(0, torch.zeros(2, 3, dtype=torch.long), a)),
            (torch.randn(4, 8),),
            {"elementwise": 2 * 3},
            0,
        ),
        (  # one value added at each of 5 indexed places
            "index_put accumulate, a broadcast value",
            Functional(lambda a: a.index_put((torch.arange(5),), torch.tensor(1.0), accumulate=True)),
            (torch.zeros(5),),
            {"elementwise": 5},
            0,
        ),
        (  # B=1, P=5, R=6, M=4; p=2 below 25 rows runs _cdist_forward (above, a matmul form)
            "cdist 5 x 6 points in 4-D",
            Functional(lambda a, b: torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist")),
            (torch.randn(1, 5, 4), torch.randn(1, 6, 4)),
            {"elementwise": 3 * 5 * 6 * 4},
            0,
        ),
    ],
    "FFT (`torch.fft.*`): `5·n·log2(n)` per complex transform of n points, half that with a real input or output "
    "(`rfft`, `irfft`)": [
        (  # 2 * 4 * 8 rows of n = 8 complex points: 5 * 8 * 3 each
            "fft over W",
            Functional(lambda a: torch.view_as_real(torch.fft.fft(a.to(torch.complex64)))),
            (torch.randn(X),),
            {"elementwise": 64 * 5 * 8 * 3},
            0,
        ),
        (
            "rfft2 over H, W (n = 64)",
            Functional(lambda a: torch.view_as_real(torch.fft.rfft2(a))),
            (torch.randn(X),),
            {"elementwise": round(2.5 * E * 6)},
            0,
        ),
    ],
    "max/avg pool": [
        ("MaxPool2d(2)", nn.MaxPool2d(2), (torch.randn(X),), {"pool_resample": 2 * 2 * OUT2}, 0),
        ("AvgPool2d(2)", nn.AvgPool2d(2), (torch.randn(X),), {"pool_resample": 2 * 2 * OUT2}, 0),
    ],
    "adaptive pool (an adaptive average pool to 1×1 too, which ATen runs as `mean`)": [  # noqa: RUF001
        ("AdaptiveAvgPool2d(1)", nn.AdaptiveAvgPool2d(1), (torch.randn(X),), {"pool_resample": E}, 0),
        (
            "AdaptiveAvgPool2d(1), channels-last (mean + as_strided_)",
            nn.AdaptiveAvgPool2d(1),
            (torch.randn(X).to(memory_format=torch.channels_last),),
            {"pool_resample": E},
            0,
        ),
        ("AdaptiveAvgPool2d(4)", nn.AdaptiveAvgPool2d(4), (torch.randn(X),), {"pool_resample": E}, 0),
        ("AdaptiveAvgPool1d(1)", nn.AdaptiveAvgPool1d(1), (torch.randn(2, 4, 8),), {"pool_resample": 64}, 0),
        ("AdaptiveMaxPool2d(2)", nn.AdaptiveMaxPool2d(2), (torch.randn(X),), {"pool_resample": E}, 0),
    ],
    "interpolation: linear 3, bilinear 9, trilinear 21 (lerps of 3), bicubic 35": [
        (
            "bilinear x2",
            nn.Upsample(scale_factor=2, mode="bilinear"),
            (torch.randn(X),),
            {"pool_resample": 9 * 4 * E},
            0,
        ),
        (
            "bicubic x2",
            nn.Upsample(scale_factor=2, mode="bicubic"),
            (torch.randn(X),),
            {"pool_resample": 35 * 4 * E},
            0,
        ),
        (
            "linear x2",
            nn.Upsample(scale_factor=2, mode="linear"),
            (torch.randn(2, 4, 8),),
            {"pool_resample": 3 * 128},
            0,
        ),
    ],
    "views (`as_strided_` restrides too), copies, concatenation, padding, nearest upsampling, indexing, tensor "
    "creation": [
        (
            "permute + contiguous + cat",
            Functional(lambda a: torch.cat([a.permute(0, 1, 3, 2).contiguous(), a.mT])),
            (torch.randn(X),),
            {},
            0,
        ),
        ("as_strided_", Functional(lambda a: a.clone().as_strided_((4, 2), (1, 4))), (torch.randn(8),), {}, 0),
        (
            "diagonal, unsqueeze_, tril",
            Functional(lambda a: a[0, 0].diagonal().clone().unsqueeze_(0).tril()),
            (torch.randn(X),),
            {},
            0,
        ),
        ("nearest x2 + pad", nn.Sequential(nn.Upsample(scale_factor=2), nn.ZeroPad2d(1)), (torch.randn(X),), {}, 0),
    ],
}


def test_readme_table_rows_each_have_a_test() -> None:
    """The documented table and the cases below name the same rows, so neither can drift from the other."""
    assert readme_table_ops() == list(ROW_CASES)


@pytest.mark.parametrize("row", list(ROW_CASES))
@pytest.mark.parametrize("meta", [True, False], ids=["meta", "real"])
def test_readme_counting_table_row(row: str, meta: bool) -> None:
    for label, model, inputs, flops, macs in ROW_CASES[row]:
        report = count_cost(model, inputs, prefer_meta=meta)
        expected = {str(category): 0 for category in Category} | {"conv_matmul": 2 * macs} | flops  # 2 per MAC
        assert (label, report.flops_by_category, report.macs) == (label, expected, macs)
        assert (label, report.uncounted_ops) == (label, {})
        assert report.backend == ("meta" if meta else "real")


def test_sdpa_scale_is_one_per_score_whatever_kernel_runs() -> None:
    """The math fallback (what meta, and CPU under any dispatch mode, run) scales q and k: B*H*(L+S)*E = 576 FLOPs here.
    We price one per score, as the fused kernels do: 210, on meta and for real, with and without a mask."""
    q, k, v = _sdpa_inputs()
    assert B * HEADS * (L + S) * EQK == 576 and SCORES == 210
    mask = torch.randn(L, S)
    attention = Functional(F.scaled_dot_product_attention)
    for meta in (True, False):
        plain = count_cost(attention, (q, k, v), prefer_meta=meta, torch_check=True)
        masked = count_cost(attention, (q, k, v, mask), prefer_meta=meta)
        assert plain.flops_by_category["elementwise"] == 210
        assert masked.flops_by_category["elementwise"] == 210 + 210  # scale + additive mask
        assert [layer.ops for layer in plain.layers if layer.ops] == ["scaled_dot_product_attention x1"]
        torch_count = report_agreement(plain)
        assert torch_count.agrees and torch_count.flops == 2 * SCORES * (EQK + EV)  # its bmm's, our inner ops


def test_unfused_bytes_exceed_the_minimum_by_the_intermediate() -> None:
    """Linear(d_in, d_out) then ReLU on (rows, d_in), fp32: addmm reads bias, x, W and writes h; ReLU reads h and
    writes y. The minimum is W, bias, x and y once: the unfused model adds h written and read once more."""
    rows, d_in, d_out = 6, 5, 3
    model = nn.Sequential(nn.Linear(d_in, d_out), nn.ReLU())
    report = count_cost(model, (torch.randn(rows, d_in),))
    addmm = 4 * (d_out + rows * d_in + d_in * d_out) + 4 * rows * d_out
    relu = 4 * rows * d_out + 4 * rows * d_out
    assert report.bytes_moved == addmm + relu == 4 * (3 + 30 + 15 + 18) + 4 * 36 == 408
    assert report.min_bytes == 4 * (d_in * d_out + d_out + rows * d_in + rows * d_out) == 264
    assert report.bytes_moved - report.min_bytes == 2 * 4 * rows * d_out  # h: written once, read once


def test_as_strided_restride_moves_no_bytes() -> None:
    """clone copies 8 floats (read 32 B, write 32 B); the in-place restride after it is free and moves nothing."""
    report = count_cost(Functional(lambda a: a.clone().as_strided_((4, 2), (1, 4))), (torch.randn(8),))
    assert rules.aten.as_strided_ in NO_TRAFFIC_OPS
    assert (report.flops, report.uncounted_ops, report.bytes_moved) == (0, {}, 4 * 8 + 4 * 8)


# ---------------------------------------------------------------------------------------------------------------------
# Module layout: no import cycle
# ---------------------------------------------------------------------------------------------------------------------


def test_counting_modules_import_no_cycle() -> None:
    """The import graph of counting/ (TYPE_CHECKING imports included) is acyclic: layer_info and op_counter both
    sit on scope.py, and neither imports the other's internals."""
    package = Path(rules.__file__).parent
    graph: dict[str, set[str]] = {}
    for path in package.glob("*.py"):
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("gflops_track.counting."):
                imported.add(node.module.rsplit(".", 1)[1])
        graph[path.stem] = imported
    assert "op_counter" not in graph["layer_info"] and "scope" in graph["layer_info"]

    def reaches(start: str, target: str, seen: set[str]) -> bool:
        return any(nxt == target or (nxt not in seen and reaches(nxt, target, seen | {nxt})) for nxt in graph[start])

    assert [module for module in graph if reaches(module, module, set())] == []


# ---------------------------------------------------------------------------------------------------------------------
# Rules of your own, per call
# ---------------------------------------------------------------------------------------------------------------------


@torch.library.custom_op("gflops_test::scaled_square", mutates_args=())
def scaled_square(x: torch.Tensor, scale: float) -> torch.Tensor:
    """scale * x * x: 2 FLOPs per element."""
    return scale * x * x


@scaled_square.register_fake
def _(x: torch.Tensor, scale: float) -> torch.Tensor:
    return torch.empty_like(x)


def scaled_square_rule(call: OpCall) -> OpCost:
    """2 FLOPs (square, scale) per element of ``x``, read by its schema name."""
    x = call.tensor("x")
    assert x is not None and call.args["scale"] == 3.0
    return OpCost(flops={Category.ELEMENTWISE: 2 * x.numel()})


@pytest.mark.parametrize("meta", [True, False], ids=["meta", "real"])
def test_extra_rules_price_a_custom_op_for_one_call(meta: bool) -> None:
    op = torch.ops.gflops_test.scaled_square
    model = Functional(lambda t: op(t, 3.0) + 1)
    x = torch.randn(3, 4, 5)
    without = count_cost(model, (x,), prefer_meta=meta)
    assert without.uncounted_ops == {"gflops_test.scaled_square (in Functional)": 1}
    assert without.flops == x.numel()  # the + 1 only
    with_rule = count_cost(model, (x,), None, meta, extra_rules={op: scaled_square_rule})
    assert with_rule.uncounted_ops == {}
    assert with_rule.flops_by_category["elementwise"] == 2 * x.numel() + x.numel()
    assert op not in FLOP_RULES  # the global table is untouched ...
    assert (
        count_cost(model, (x,), prefer_meta=meta).uncounted_ops == without.uncounted_ops
    )  # ... and so is the next call


@pytest.mark.parametrize("op", [torch.ops.aten.mm, torch.ops.aten.mm.default, torch.ops.aten.view])
def test_extra_rule_for_an_op_that_has_one_is_an_error(op: Any) -> None:
    name = "aten.mm" if "mm" in str(op) else "aten.view"
    with pytest.raises(ValueError, match=rf"extra_rules\[{name}\] is not allowed: {name} already has a rule"):
        count_cost(nn.Linear(2, 2), (torch.randn(1, 2),), extra_rules={op: scaled_square_rule})


# ---------------------------------------------------------------------------------------------------------------------
# Bytes under autocast
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("meta", [True, False], ids=["fake", "real"])
def test_autocast_bytes_are_priced_in_the_autocast_dtype(meta: bool) -> None:
    """Conv2d -> ReLU -> Flatten -> Linear under bf16 autocast on CPU. Autocast casts the conv's input, weight and bias
    and the linear's weight and bias (each cast reads 4 and writes 2 bytes per element); conv, ReLU and addmm then read
    and write 2-byte tensors, half their fp32 traffic. FLOPs and MACs do not change."""
    n, c_in, c_out, size, classes = 2, 3, 8, 6, 10
    model = nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(c_out * 36, 10))
    x = torch.randn(n, c_in, size, size)
    xn, wc, yn = x.numel(), c_out * c_in * 9, n * c_out * size * size  # 216, 216, 576
    features = c_out * size * size  # 288
    conv, relu = (xn + wc + c_out) + yn, yn + yn  # elements read + written
    addmm = (classes + n * features + features * classes) + n * classes
    casts = xn + wc + c_out + features * classes + classes  # elements cast fp32 -> bf16
    fp32 = count_cost(model, (x,), prefer_meta=meta)
    bf16 = count_cost(model, (x,), None, meta, autocast_dtype=torch.bfloat16, device_type="cpu")
    assert fp32.bytes_moved == 4 * (conv + relu + addmm) == 22_616
    assert bf16.bytes_moved == 2 * (conv + relu + addmm) + (4 + 2) * casts == 31_288
    assert bf16.min_bytes == fp32.min_bytes - 2 * n * classes  # stored fp32 weights and input; a bf16 output
    assert (bf16.macs, bf16.flops_by_category) == (fp32.macs, fp32.flops_by_category)
    assert bf16.uncounted_ops == {}
    assert bf16.backend == ("fake" if meta else "real")
    assert next(model.parameters()).device.type == "cpu"  # the user's tensors are back


def test_autocast_with_another_device_type_is_refused() -> None:
    with pytest.raises(ValueError, match=r"device_type='cuda' is not allowed here: the model and inputs are on cpu"):
        count_cost(nn.Linear(2, 2), (torch.randn(1, 2),), autocast_dtype=torch.bfloat16, device_type="cuda")
    with pytest.raises(ValueError, match=r"autocast_dtype=torch.float64 is not allowed"):
        count_cost(nn.Linear(2, 2), (torch.randn(1, 2),), autocast_dtype=torch.float64)


@pytest.mark.cuda
@requires_cuda
def test_autocast_bytes_on_cuda_fake_tensors() -> None:
    """On CUDA the fake tensors are CUDA tensors, so autocast('cuda') casts them: fp16 halves the linear's traffic."""
    model = nn.Linear(64, 32, bias=False).cuda()
    x = torch.randn(16, 64, device="cuda")
    fp16 = count_cost(model, (x,), autocast_dtype=torch.float16, device_type="cuda")
    casts = (4 + 2) * (16 * 64 + 64 * 32)
    assert fp16.backend == "fake"
    assert fp16.bytes_moved == 2 * (16 * 64 + 64 * 32 + 16 * 32) + casts
