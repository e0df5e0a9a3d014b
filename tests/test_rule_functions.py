"""Each counting rule's arithmetic, on calls bound to its op's real schema the way the counter binds them (defaults
filled in): the branches a CPU forward never takes (fused CUDA kernels, backend convolutions, optimizer kernels,
binary reductions, 3-D attention), and the rule factories themselves (``activation(n)``, ``foreach(n)``, ...), which
the tables call once at import. Shapes are meta tensors; every expected count is written as its formula."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F

from gflops_track.counting import rules
from gflops_track.counting.op_counter import count_cost
from gflops_track.counting.rules import Category, OpCall, OpCost, bind_arguments

aten = torch.ops.aten


def t(*shape: int) -> torch.Tensor:
    return torch.empty(shape, device="meta")


def call(op: Any, out: torch.Tensor | None = None, /, **values: Any) -> OpCall:
    """``op`` (an overload) called with ``values``, every other argument at its schema default (or None), bound by
    ``bind_arguments`` as the counting mode binds a dispatched call."""
    positional, keywords = [], {}
    for arg in op._schema.arguments:
        value = values.get(arg.name, arg.default_value if arg.has_default_value() else None)
        if arg.kwarg_only:
            keywords[arg.name] = value
        else:
            positional.append(value)
    return OpCall(str(op), bind_arguments(op, positional, keywords), out)


# --- factories -------------------------------------------------------------------------------------------------------


def test_per_element_factories() -> None:
    """n FLOPs per output element of (2, 5): 10 elements, in the factory's category."""
    out = t(2, 5)
    cases = {
        rules.per_element(3, Category.NORM): (Category.NORM, 3),
        rules.activation(4): (Category.ACTIVATION, 4),
        rules.elementwise(2): (Category.ELEMENTWISE, 2),
    }
    for rule, (category, per) in cases.items():
        assert rule(OpCall("op", {}, out)) == OpCost(flops={category: per * 10})
        assert rule.__doc__ == f"{per} FLOP(s) per output element ({category})."
    assert str(Category.ACTIVATION) == "activation"


def test_interpolation_factory() -> None:
    """bilinear: 3 lerps of 3 FLOPs per output element; bicubic: 5 cubic passes of 7 (4 mul + 3 add)."""
    out = t(2, 3, 4)  # 24 elements
    assert rules.interpolation(3)(OpCall("op", {}, out)) == OpCost(flops={Category.POOLING: 3 * 3 * 24})
    assert rules.interpolation(5, rules.CUBIC_FLOPS)(OpCall("op", {}, out)).flops == {Category.POOLING: 5 * 7 * 24}
    assert (rules.LERP_FLOPS, rules.CUBIC_FLOPS) == (3, 7)


def test_backward_per_element_factory() -> None:
    """n FLOPs per element of the named gradient tensor (grad_output by default), not of the output."""
    grad = t(4, 5)
    rule = rules.backward_per_element(3, Category.ACTIVATION)
    assert rule(OpCall("op", {"grad_output": grad}, t(1))) == OpCost(flops={Category.ACTIVATION: 3 * 20})
    assert rule.__doc__ == "3 FLOP(s) per grad_output element (activation)."
    by_target = rules.backward_per_element(2, Category.ELEMENTWISE, of="target")
    assert by_target(OpCall("op", {"grad_output": grad, "target": t(7)}, t(1))).flops == {Category.ELEMENTWISE: 14}
    with pytest.raises(AssertionError):
        rule(OpCall("op", {"grad_output": None}, t(1)))


def test_foreach_factories_count_every_tensor_of_the_list() -> None:
    """Over [(10,), (3, 5)]: 25 elements; a plain tensor argument counts its own elements; non-tensors are skipped."""
    tensors = [t(10), t(3, 5)]
    assert rules.foreach(2)(call(aten._foreach_mul_.List, None, self=tensors)).flops == {Category.ELEMENTWISE: 50}
    assert rules.foreach(1).__doc__ == "1 FLOP(s) per element of every tensor in the list (elementwise)."
    assert rules.foreach(3)(OpCall("op", {"self": t(4, 2)}, None)).flops == {Category.ELEMENTWISE: 24}
    assert rules.foreach(1)(OpCall("op", {"self": [t(3), 2.0]}, None)).flops == {Category.ELEMENTWISE: 3}
    assert rules.foreach(1)(OpCall("op", {}, None)).flops == {Category.ELEMENTWISE: 0}
    add = rules.foreach_add
    assert add(call(aten._foreach_add_.List, None, self=tensors, other=tensors)).flops == {Category.ELEMENTWISE: 25}
    scaled = call(aten._foreach_add_.List, None, self=tensors, other=tensors, alpha=0.5)
    assert add(scaled).flops == {Category.ELEMENTWISE: 2 * 25}  # a + alpha*b: the scale is one more per element
    assert add(call(aten._foreach_add_.Scalar, None, self=tensors, scalar=1.0)).flops == {Category.ELEMENTWISE: 25}


@pytest.mark.parametrize(
    ("decoupled", "weight_decay", "amsgrad", "per"),
    [
        (True, 0.0, False, 12),  # AdamW: decay 1, lerp 3, v*b2 1, addcmul 2, sqrt 1, /sqrt(bc2) 1, +eps 1, addcdiv 2
        (True, 0.01, False, 12),  # AdamW's decay is the decoupled multiply, already counted
        (True, 0.0, True, 12 + 1),  # amsgrad: a max
        (False, 0.0, False, 11),  # Adam: no decoupled multiply
        (False, 0.01, False, 11 + 2),  # Adam's L2 decay: g += wd * p
        (False, 0.01, True, 11 + 2 + 1),
    ],
)
def test_fused_adam_per_element(decoupled: bool, weight_decay: float, amsgrad: bool, per: int) -> None:
    params = [t(10), t(3, 5)]  # 25 elements
    op = aten._fused_adamw_.default if decoupled else aten._fused_adam_.default
    cost = rules.fused_adam(decoupled)(call(op, None, self=params, weight_decay=weight_decay, amsgrad=amsgrad))
    assert cost == OpCost(flops={Category.ELEMENTWISE: per * 25})
    assert (rules.ADAMW_FLOPS, rules.ADAM_FLOPS) == (12, 11)


@pytest.mark.parametrize(
    ("options", "per"),
    [
        ({}, 2),  # p -= lr * g
        ({"weight_decay": 0.1}, 2 + 2),  # g += wd * p
        ({"momentum": 0.9}, 2 + 2),  # b = m*b + g
        ({"momentum": 0.9, "dampening": 0.1}, 2 + 3),  # b = m*b + (1 - d)*g
        ({"momentum": 0.9, "is_first_step": True}, 2 + 0),  # b = g: a copy
        ({"momentum": 0.9, "nesterov": True}, 2 + 2 + 2),  # g += m*b
        ({"momentum": 0.9, "nesterov": True, "is_first_step": True, "weight_decay": 0.1}, 2 + 2 + 0 + 2),
        ({"nesterov": True, "dampening": 0.1}, 2),  # without momentum neither applies
    ],
)
def test_fused_sgd_per_element(options: dict[str, Any], per: int) -> None:
    params = [t(10), t(3, 5)]  # 25 elements
    values = {"weight_decay": 0.0, "momentum": 0.0, "dampening": 0.0, "nesterov": False, "is_first_step": False}
    cost = rules.fused_sgd(call(aten._fused_sgd_.default, None, self=params, **(values | options)))
    assert cost == OpCost(flops={Category.ELEMENTWISE: per * 25})


# --- forward rules on branches a CPU forward does not take -----------------------------------------------------------


def test_attention_on_the_fused_kernels_names_and_any_batch_dims() -> None:
    """Scores = prod(batch dims) * L * S; MACs = scores * (E + Ev); elementwise per score: the scale 1, a mask or
    bias 1 (``attn_mask`` in the math and CPU kernels, ``attn_bias`` in the efficient one; or ``is_causal``), dropout
    2; softmax 5 (activation). Inputs without a batch dim (H, L, E) and with three (A, B, H, L, E) too."""
    heads, length, source, e, ev = 3, 5, 7, 8, 4
    for batch in [(), (2,), (2, 2)]:
        q, k, v = t(*batch, heads, length, e), t(*batch, heads, source, e), t(*batch, heads, source, ev)
        scores = int(torch.tensor(batch, dtype=torch.int64).prod()) * heads * length * source
        out = t(*batch, heads, length, ev)
        plain = rules.attention(call(aten.scaled_dot_product_attention.default, out, query=q, key=k, value=v))
        assert plain == OpCost(
            macs=scores * (e + ev),
            flops={Category.DENSE: 2 * scores * (e + ev), Category.ELEMENTWISE: scores,
                   Category.ACTIVATION: 5 * scores},
        )  # fmt: skip
        efficient = aten._scaled_dot_product_efficient_attention.default
        biased = rules.attention(call(efficient, out, query=q, key=k, value=v, attn_bias=t(length, source)))
        assert biased.flops[Category.ELEMENTWISE] == (1 + 1) * scores
        unbiased = rules.attention(call(efficient, out, query=q, key=k, value=v, compute_log_sumexp=False))
        assert unbiased.flops[Category.ELEMENTWISE] == scores
        everything = call(efficient, out, query=q, key=k, value=v, is_causal=True, dropout_p=0.1)
        assert rules.attention(everything).flops[Category.ELEMENTWISE] == (1 + 1 + 2) * scores


def test_attention_with_dropout_and_no_batch_dims_through_the_counter() -> None:
    """F.scaled_dot_product_attention on (H, L, E) inputs with dropout_p = 0.5: H*L*S scores = 3*5*7 = 105;
    elementwise (1 + 2) per score, softmax 5, MACs 105 * (8 + 4)."""
    q, k, v = torch.randn(3, 5, 8), torch.randn(3, 7, 8), torch.randn(3, 7, 4)

    class Attention(torch.nn.Module):
        def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            return F.scaled_dot_product_attention(q, k, v, dropout_p=0.5)

    for meta in (True, False):
        report = count_cost(Attention(), (q, k, v), prefer_meta=meta)
        assert report.macs == 105 * (8 + 4)
        assert report.flops_by_category["elementwise"] == 3 * 105 and report.flops_by_category["activation"] == 525


def test_backend_convolutions() -> None:
    """Backend kernels: MACs = output elements * (C_in/groups * k * k) = (2*8*4*4) * (4*3*3); mkldnn's bias 1 FLOP
    per output element; cudnn_convolution has no bias argument (its bias runs as a separate add); the transposed
    kernel counts per *input* position: input elements * (C_out/groups * k * k) = (2*4*6*6) * (8*3*3)."""
    x, weight, out = t(2, 4, 6, 6), t(8, 4, 3, 3), t(2, 8, 4, 4)
    macs = (2 * 8 * 4 * 4) * (4 * 3 * 3)
    plain = {"self": x, "weight": weight, "padding": [0, 0], "stride": [1, 1], "dilation": [1, 1], "groups": 1}
    with_bias = rules.backend_convolution(call(aten.mkldnn_convolution.default, out, **plain, bias=t(8)))
    assert with_bias == OpCost(macs=macs, flops={Category.DENSE: 2 * macs, Category.BIAS: 2 * 8 * 4 * 4})
    no_bias = rules.backend_convolution(call(aten.mkldnn_convolution.default, out, **plain))
    assert no_bias == OpCost(macs=macs, flops={Category.DENSE: 2 * macs})
    cudnn = rules.backend_convolution(call(aten.cudnn_convolution.default, out, **plain, benchmark=False))
    assert cudnn == no_bias
    transposed = call(
        aten.cudnn_convolution_transpose.default, t(2, 8, 8, 8), **plain | {"weight": t(4, 8, 3, 3)},
        output_padding=[0, 0], benchmark=False,
    )  # fmt: skip
    t_macs = (2 * 4 * 6 * 6) * (8 * 3 * 3)
    assert rules.backend_convolution_transpose(transposed) == OpCost(macs=t_macs, flops={Category.DENSE: 2 * t_macs})


def test_batch_norm_overloads() -> None:
    """Per element: statistics 4 (training), normalise 2, weight 1, bias 1. The no-training kernel never computes
    statistics; native_batch_norm reads ``training``."""
    x = t(2, 4, 3, 3)  # 72 elements
    c = {"weight": t(4), "bias": t(4), "running_mean": t(4), "running_var": t(4), "momentum": 0.1, "eps": 1e-5}
    no_training = rules.batch_norm_legit_no_training(call(aten._native_batch_norm_legit_no_training.default, x,
                                                          input=x, **c))  # fmt: skip
    assert no_training == OpCost(flops={Category.NORM: (2 + 1 + 1) * 72})
    native = aten.native_batch_norm.default
    assert rules.batch_norm(call(native, x, input=x, training=True, **c)).flops == {Category.NORM: (4 + 2 + 2) * 72}
    assert rules.batch_norm(call(native, x, input=x, training=False, **c)).flops == {Category.NORM: (2 + 2) * 72}
    bare = {**c, "weight": None, "bias": None}
    assert rules.batch_norm(call(native, x, input=x, training=True, **bare)).flops == {Category.NORM: (4 + 2) * 72}
    assert (rules.NORM_STATS_FLOPS, rules.NORM_APPLY_FLOPS) == (4, 2)


def test_binary_max_counts_output_elements_and_reductions_input_elements() -> None:
    """torch.max(a, b) of (4,) and (2, 3, 4): 1 per *output* element (broadcast, 24), not per element of a (4);
    a reduction: 1 per *input* element."""
    small, big = torch.randn(4), torch.randn(2, 3, 4)

    class Max(torch.nn.Module):
        def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return torch.max(a, b)

    assert count_cost(Max(), (small, big)).flops_by_category["elementwise"] == 24
    assert rules.reduction(call(aten.max.other, t(2, 3, 4), self=t(4), other=t(2, 3, 4))).flops == {
        Category.ELEMENTWISE: 24
    }
    assert rules.reduction(call(aten.sum.dim_IntList, t(2), self=t(2, 3, 4), dim=[1, 2])).flops == {
        Category.ELEMENTWISE: 24
    }


def test_window_pool_with_one_kernel_size_for_every_dim() -> None:
    """A one-element kernel list means that size in every spatial dim: [2] on a 2-D pool is a 2x2 window, 4 FLOPs per
    output element; [3] on a 1-D pool, 3."""
    pool2d = rules.window_pool(call(aten.max_pool2d.default, t(2, 4, 4, 4), self=t(2, 4, 8, 8), kernel_size=[2]))
    assert pool2d.flops == {Category.POOLING: 2 * 2 * (2 * 4 * 4 * 4)}
    pool1d = rules.window_pool(call(aten.avg_pool1d.default, t(2, 4, 6), self=t(2, 4, 18), kernel_size=[3]))
    assert pool1d.flops == {Category.POOLING: 3 * (2 * 4 * 6)}
    window = rules.window_pool(call(aten.max_pool2d.default, t(2, 4, 4, 4), self=t(2, 4, 8, 8), kernel_size=[2, 3]))
    assert window.flops == {Category.POOLING: 2 * 3 * (2 * 4 * 4 * 4)}


# --- backward rules -------------------------------------------------------------------------------------------------


def test_gradient_mask_defaults_to_every_gradient() -> None:
    """``output_mask`` says which gradients an op computes; missing (or short), the rest count as asked for."""
    assert rules._mask(OpCall("op", {}, None), "output_mask", 3) == [True, True, True]
    assert rules._mask(OpCall("op", {"output_mask": [False]}, None), "output_mask", 3) == [False, True, True]
    assert rules._mask(OpCall("op", {"m": [1, 0, 1, 0]}, None), "m", 3) == [True, False, True]


def test_convolution_backward_of_a_transposed_convolution() -> None:
    """A transposed convolution's gradients cost what its forward does: per *input* position, input elements *
    (C_out/groups * k * k) MACs per gradient; grad_bias 1 per grad_output element."""
    x, weight, grad_out = t(2, 4, 6, 6), t(4, 8, 3, 3), t(2, 8, 8, 8)
    m = (2 * 4 * 6 * 6) * (8 * 3 * 3)
    args = {"grad_output": grad_out, "input": x, "weight": weight, "transposed": True, "output_mask": [True] * 3}
    cost = rules.convolution_backward(OpCall("aten.convolution_backward", args, None))
    assert cost == OpCost(macs=2 * m, flops={Category.DENSE: 4 * m, Category.BIAS: 2 * 8 * 8 * 8})


def norm_backward_call(op: Any, mask: list[bool], weight: bool, **extra: Any) -> OpCall:
    x = t(2, 4, 3, 3)  # 72 elements
    values = {"grad_out": x, "input": x, "weight": t(4) if weight else None, "output_mask": mask, **extra}
    return call(op, None, **values)


@pytest.mark.parametrize(
    ("mask", "weight", "train", "per"),
    [
        ([True, True, True], True, True, 9 + 4 + 1),  # grad_input 9 (the weight folds into k), weight 4, bias 1
        ([True, True, True], True, False, 1 + 4 + 1),  # running statistics: grad_input = dy * k, 1
        ([True, False, False], True, True, 9),
        ([False, True, False], True, True, 4),
        ([False, False, True], True, True, 1),
        ([True, True, True], False, True, 9),  # no weight, no bias: no grad_weight, no grad_bias
    ],
)
def test_batch_norm_backward(mask: list[bool], weight: bool, train: bool, per: int) -> None:
    op = aten.native_batch_norm_backward.default
    cost = rules.batch_norm_backward(norm_backward_call(op, mask, weight, train=train, eps=1e-5))
    assert cost == OpCost(flops={Category.NORM: per * 72})
    assert (rules.NORM_GRAD_INPUT_FLOPS, rules.NORM_GRAD_WEIGHT_FLOPS, rules.NORM_GRAD_BIAS_FLOPS) == (9, 4, 1)


@pytest.mark.parametrize(
    ("mask", "weight", "per"),
    [
        ([True, True, True], True, 9 + 1 + 4 + 1),  # grad_input 9 + dy*weight 1 (not foldable), weight 4, bias 1
        ([True, False, False], True, 9 + 1),
        ([False, True, True], True, 4 + 1),
        ([True, True, True], False, 9),  # no weight: no dy*weight, no grad_weight, no grad_bias
    ],
)
def test_group_and_layer_norm_backward(mask: list[bool], weight: bool, per: int) -> None:
    group = norm_backward_call(aten.native_group_norm_backward.default, mask, weight, N=2, C=4, HxW=9, group=2)
    assert rules.stats_norm_backward(group) == OpCost(flops={Category.NORM: per * 72})
    layer = norm_backward_call(aten.native_layer_norm_backward.default, mask, weight, normalized_shape=[3, 3])
    assert rules.stats_norm_backward(layer) == OpCost(flops={Category.NORM: per * 72})


def test_gelu_backward_exact_and_tanh() -> None:
    """Per grad element: exact 11 (cdf 4, pdf 4, x*pdf + cdf 2, times grad 1); tanh form 16."""
    grad = t(4, 5)
    exact = rules.gelu_backward(call(aten.gelu_backward.default, grad, grad_output=grad, self=grad))
    tanh = rules.gelu_backward(call(aten.gelu_backward.default, grad, grad_output=grad, self=grad, approximate="tanh"))
    assert exact == OpCost(flops={Category.ACTIVATION: 11 * 20})
    assert tanh == OpCost(flops={Category.ACTIVATION: 16 * 20})
    forward = rules.gelu(call(aten.gelu.default, grad, self=grad, approximate="tanh"))
    assert forward == OpCost(flops={Category.ACTIVATION: 9 * 20})
    assert rules.gelu(call(aten.gelu.default, grad, self=grad)).flops == {Category.ACTIVATION: 5 * 20}


def test_attention_backward_any_batch_dims() -> None:
    """Four products per score: dV and dP over Ev, dQ and dK over E: MACs = 2 * scores * (E + Ev); softmax
    backward 4 per score (activation), the scale 1 (elementwise). With (H, L, E) inputs too."""
    heads, length, source, e, ev = 3, 5, 7, 8, 4
    for batch in [(), (2,)]:
        scores = (2 if batch else 1) * heads * length * source
        args = {"query": t(*batch, heads, length, e), "key": t(*batch, heads, source, e),
                "value": t(*batch, heads, source, ev)}  # fmt: skip
        cost = rules.attention_backward(OpCall("aten._scaled_dot_product_flash_attention_for_cpu_backward", args, None))
        macs = 2 * scores * (e + ev)
        assert cost == OpCost(
            macs=macs,
            flops={Category.DENSE: 2 * macs, Category.ACTIVATION: 4 * scores, Category.ELEMENTWISE: scores},
        )


def test_nll_loss_forward_and_backward() -> None:
    """Forward: pick -x[target] and sum, 2 per target element; backward: -grad/N at each target, 1."""
    logits, target = t(6, 10), torch.empty(6, dtype=torch.long, device="meta")
    values = {"self": logits, "target": target, "reduction": 1, "ignore_index": -100}
    forward = rules.nll_loss_forward(call(aten.nll_loss_forward.default, t(), **values))
    assert forward == OpCost(flops={Category.ELEMENTWISE: 2 * 6})
    backward = call(aten.nll_loss_backward.default, logits, grad_output=t(), total_weight=t(), **values)
    assert rules.nll_loss_backward(backward) == OpCost(flops={Category.ELEMENTWISE: 6})


def test_a_call_without_alpha_or_beta_is_priced_at_the_schema_defaults() -> None:
    """A hand-built call that names only its tensors (an extra rule may build one) is priced as the schema's defaults
    alpha = beta = 1: (M, K) @ (K, N) = (5, 8) @ (8, 3) is M*K*N = 120 MACs and M*N = 15 bias FLOPs, the bias added
    and neither term scaled; baddbmm on B = 2 batches: 240 MACs and 30 bias FLOPs."""
    a, b = t(5, 8), t(8, 3)
    bare = OpCall("aten.addmm.default", {"self": t(3), "mat1": a, "mat2": b}, t(5, 3))
    assert rules.addmm(bare) == OpCost(macs=120, flops={Category.DENSE: 240, Category.BIAS: 15})
    assert rules.addmm(bare) == rules.addmm(call(aten.addmm.default, t(5, 3), self=t(3), mat1=a, mat2=b))
    batched = OpCall("aten.baddbmm.default", {"self": t(2, 5, 3), "batch1": t(2, 5, 8), "batch2": t(2, 8, 3)}, None)
    assert rules.baddbmm(batched) == OpCost(macs=240, flops={Category.DENSE: 480, Category.BIAS: 30})
