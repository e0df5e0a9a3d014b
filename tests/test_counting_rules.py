"""Every counting rule against its analytic formula, module and functional forms, and against FlopCounterMode."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from gflops_track.counting.op_counter import count_cost
from gflops_track.counting.rules import FLOP_RULES, ZERO_COST_OPS


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
    model = Functional(lambda t: torch.cumsum(t, dim=0))
    report = count_cost(model, (x,))
    assert report.uncounted_ops == {"aten.cumsum (in Functional)": 1}
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
