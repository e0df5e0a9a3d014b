"""The seed ResidualBlock: params, MACs and FLOPs per category against formulas, thop beside it, module untouched."""

from __future__ import annotations

import pytest
import torch

from gflops_track import profile
from gflops_track.counting.op_counter import count_cost
from gflops_track.counting.thop_compare import thop_count
from gflops_track.models import ResidualBlock
from gflops_track.timing import TimingOptions

N, C, H, W = 2, 384, 32, 32
E = N * C * H * W  # elements of one activation map: 786,432
CONV_MACS = N * C * H * W * C * 3 * 3  # one 3x3 conv, 384 -> 384 channels, stride 1, padding 1
CONV_PARAMS = 2 * (C * C * 3 * 3 + C)  # two convs with bias
NORM_FLOPS_PER_ELEMENT = {  # two norms each: stats 4 (if computed) + normalise 2 + affine 2 (if affine)
    "group": 4 + 2 + 2,  # GroupNorm: statistics from the input, affine
    "batch": 2 + 2,  # BatchNorm2d in eval: running statistics, affine
    "instance": 4 + 2,  # InstanceNorm2d: statistics from the input, no affine by default
    "none": 0,
}
NORM_PARAMS = {"group": 2 * 2 * C, "batch": 2 * 2 * C, "instance": 0, "none": 0}


def expected_seed_flops(norm: str) -> dict[str, int]:
    return {
        "conv_matmul": 2 * 2 * CONV_MACS,
        "bias": 2 * E,  # one bias add per output element, two convs
        "norm": 2 * NORM_FLOPS_PER_ELEMENT[norm] * E,
        "activation": 3 * E,  # three ReLUs
        "elementwise": 1 * E,  # residual add
        "pool_resample": 0,
    }


def test_seed_figures_stated_in_the_issue() -> None:
    assert 2 * CONV_MACS == 5_435_817_984
    assert 2 * 2 * CONV_MACS == 10_871_635_968


@pytest.mark.parametrize("norm", ["group", "batch", "instance", "none"])
def test_seed_block_counts(norm: str) -> None:
    block = ResidualBlock(C, C, norm)
    report = count_cost(block, (torch.randn(N, C, H, W),))
    assert report.params == CONV_PARAMS + NORM_PARAMS[norm] == sum(p.numel() for p in block.parameters())
    assert report.macs == 2 * CONV_MACS
    assert report.flops_by_category == expected_seed_flops(norm)
    assert report.flops == sum(expected_seed_flops(norm).values())
    assert report.uncounted_ops == {}
    assert sum(layer.flops for layer in report.layers) == report.flops  # self costs add up to the total
    assert sum(layer.params for layer in report.layers) == report.params


def test_stride_two_block_matches_issue_formula() -> None:
    """ResidualBlock(64, 128, 'batch', stride=2) on (2, 64, 56, 56): output 28x28."""
    n, c_in, c_out, size = 2, 64, 128, 28
    block = ResidualBlock(c_in, c_out, "batch", stride=2)
    report = count_cost(block, (torch.randn(n, c_in, 56, 56),))
    conv1 = n * c_out * size * size * c_in * 9
    conv2 = n * c_out * size * size * c_out * 9
    downsample = n * c_out * size * size * c_in
    assert (conv1, conv2, downsample) == (115_605_504, 231_211_008, 12_845_056)
    assert report.macs == conv1 + conv2 + downsample == 359_661_568
    e_out = n * c_out * size * size
    assert report.flops_by_category["norm"] == 3 * (2 + 2) * e_out  # norm3 shared by two names: counted once
    assert report.flops_by_category["bias"] == 3 * e_out
    params = (c_out * c_in * 9 + c_out) + (c_out * c_out * 9 + c_out) + (c_out * c_in + c_out) + 3 * 2 * c_out
    assert report.params == params == 230_528


def test_meta_and_real_forward_count_the_same() -> None:
    block = ResidualBlock(16, 32, "group", stride=2)
    x = torch.randn(2, 16, 12, 12)
    on_meta, real = count_cost(block, (x,), prefer_meta=True), count_cost(block, (x,), prefer_meta=False)
    assert (on_meta.backend, real.backend) == ("meta", "real")
    assert on_meta.flops_by_category == real.flops_by_category and on_meta.macs == real.macs


def test_thop_raw_and_patched_figures_on_seed_group_block() -> None:
    block = ResidualBlock(C, C, "group")
    x = torch.randn(N, C, H, W)
    thop = thop_count(block, (x,), count_cost(block, (x,)))
    assert thop.error == ""
    assert thop.raw_macs == 2 * CONV_MACS  # raw thop: conv MACs, GroupNorm priced 0
    assert thop.raw_params == CONV_PARAMS == 2_654_976  # ... and its parameters dropped
    # with our custom_ops GroupNorm is priced by thop's own norm rule: 2 per element, x2 affine, two norms
    assert thop.macs == 2 * CONV_MACS + 2 * (2 * 2 * E)
    assert thop.params == CONV_PARAMS + NORM_PARAMS["group"] == 2_656_512
    assert thop.unruled_types == ["GroupNorm"]
    assert any("GroupNorm (norm1, norm2)" in reason and "+6,291,456" in reason for reason in thop.reasons)


def test_profiling_leaves_module_untouched_and_usable() -> None:
    """thop would leave a hook on the shared norm3 of a stride-2 block; we run it on copies only."""
    block = ResidualBlock(16, 32, "group", stride=2).train()
    block.norm1.eval()  # a mixed train/eval state must come back exactly
    keys = list(block.state_dict())
    modes = {name: module.training for name, module in block.named_modules()}
    hooks = {name: (dict(m._forward_hooks), dict(m._forward_pre_hooks)) for name, m in block.named_modules()}
    tensors = {name: (id(t), t.device) for name, t in block.state_dict(keep_vars=True).items()}
    x = torch.randn(2, 16, 12, 12)
    result = profile(block, x, timing=TimingOptions(warmup=1, min_repeats=2, max_time_s=1))
    assert list(block.state_dict()) == keys
    assert {name: (id(t), t.device) for name, t in block.state_dict(keep_vars=True).items()} == tensors
    assert {name: module.training for name, module in block.named_modules()} == modes
    assert {name: (dict(m._forward_hooks), dict(m._forward_pre_hooks)) for name, m in block.named_modules()} == hooks
    assert block(x).shape == (2, 32, 6, 6)  # no leftover hook raising AttributeError: 'total_ops'
    assert result.thop is not None and result.thop.params > result.params  # thop counted shared norm3 twice
    assert any("shared under several names (norm3, downsample.1)" in note for note in result.notes)
