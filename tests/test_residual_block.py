"""The seed ResidualBlock: params, MACs and FLOPs per category against formulas, thop beside it, module untouched."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from gflops_track import CountOptions, count, profile
from gflops_track.counting.op_counter import count_cost
from gflops_track.counting.thop_compare import (
    thop_count,
    thop_distribution,
    thop_has_rule,
    thop_notes,
    thop_version_label,
)
from gflops_track.models import ResidualBlock
from gflops_track.options.timing import TimingOptions
from gflops_track.results.counting import ORIGINAL_THOP, ULTRALYTICS_THOP, ThopCount

SRC = Path(__file__).resolve().parents[1] / "src"
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


class CountsItsCalls(nn.Module):
    """A forward that updates a buffer in place (a call counter), and, unless ``keep_all``, selects rows by value (a
    data-dependent shape, which meta cannot run: counting falls back to a real forward)."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 4)
        self.register_buffer("calls", torch.zeros(()))

    def forward(self, x: torch.Tensor, keep_all: bool = False) -> torch.Tensor:
        self.calls += 1
        y = self.linear(x)
        return y if keep_all else y[y.sum(1) > -1e9]


@pytest.mark.parametrize(
    ("options", "kwargs"),
    [(CountOptions(), {}), (CountOptions(meta=False), {"keep_all": True})],
    ids=["fallback", "real"],
)
def test_counting_with_a_real_forward_restores_the_buffers_it_changed(options: CountOptions, kwargs: dict) -> None:
    """count() leaves the state_dict as it was also when it runs the user's module for real."""
    model = CountsItsCalls()
    result = count(model, torch.randn(3, 4), kwargs=kwargs, options=options)
    assert result.count_backend == "real" and result.macs == 3 * 4 * 4
    assert model.calls.item() == 0


def test_a_model_built_under_inference_mode_is_counted_for_real() -> None:
    """Its buffers are inference tensors, which keep no version counter: a real count leaves them alone (it raised
    'Inference tensors do not track version counter'). Linear(4, 4) on 2 rows: 32 MACs, 8 bias FLOPs; BatchNorm1d in
    eval: 4 per element (normalise 2, affine 2)."""
    with torch.inference_mode():
        model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    report = count_cost(model, (torch.randn(2, 4),), prefer_meta=False)
    assert (report.backend, report.macs, report.flops) == ("real", 32, 2 * 32 + 8 + 4 * 8)


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


def test_thop_notes_on_stride_two_group_block() -> None:
    """Every figure of the notes by formula (original thop 0.1.1: the distribution the dev extra pins)."""
    if thop_distribution()[0] != ORIGINAL_THOP:
        pytest.skip("figures are thop 0.1.1's; ultralytics-thop counts this block differently")
    n, c_in, c_out, size = 2, 16, 32, 6  # (2, 16, 12, 12) -> 6x6 after the stride-2 conv
    block = ResidualBlock(c_in, c_out, "group", stride=2)
    x = torch.randn(n, c_in, 12, 12)
    ours = count_cost(block, (x,))
    thop = thop_count(block, (x,), ours)
    macs = n * c_out * size * size * (c_in * 9 + c_out * 9 + c_in)  # conv1, conv2, 1x1 downsample conv
    thop_norm = 2 * 2 * n * c_out * size * size  # thop's norm rule: 2 per element, x2 affine
    # norm1, norm2 once each; norm3 (also named downsample.1) has two hooks and is summed under both names
    patched = macs + 2 * thop_norm + 2 * (2 * thop_norm)
    params = (c_out * c_in * 9 + c_out) + (c_out * c_out * 9 + c_out) + (c_out * c_in + c_out) + 3 * 2 * c_out
    assert (ours.macs, ours.params, thop.distribution) == (macs, params, ORIGINAL_THOP) == (1_032_192, 14_624, "thop")
    assert thop_notes(thop, ours.macs, ours.params) == [
        f"thop counts {macs:,} MACs as the blog post runs it and {patched:,} with our custom_ops; "
        f"gflops-track counts {macs:,} MACs. Why:",
        f"  - GroupNorm (norm1, norm2, norm3): thop {2 * thop_norm + 2 * thop_norm:+,} MACs vs ours; thop counts this "
        "work as MACs; we count it as FLOPs in its category (no multiply-accumulate)",
        f"  - module shared under several names (norm3, downsample.1): thop hooks and counts it once per name "
        f"({2 * thop_norm:+,} MACs)",
        "  - thop has no rule for GroupNorm (raw thop counts 0 MACs and drops their parameters)",
        f"thop reports {params - 3 * 2 * c_out:,} params as the blog post runs it and {params + 2 * c_out:,} with our "
        f"custom_ops; the true count (shared tensors once) is {params:,}. Why:",
        # raw: the three norms' affine weight and bias (2 * c_out each) are dropped; with custom_ops they are added,
        # norm3's twice (it is also downsample.1)
        f"  - as the blog post runs it: GroupNorm (norm1, norm2, norm3): {-3 * 2 * c_out:+,} params; thop has no rule "
        "for GroupNorm and never adds the parameters it holds itself",
        f"  - with our custom_ops: {2 * c_out:+,} params: thop adds a tensor again for each other module holding it, "
        "and a module again under each further parent (tied weights, shared modules)",
    ]


def test_thop_notes_say_only_the_error_when_thop_failed() -> None:
    failed = ThopCount(0, 0, 0, 0, error="thop failed: RuntimeError: boom")
    assert thop_notes(failed, 10, 10) == ["thop failed: RuntimeError: boom"]


def test_thop_distribution_is_the_installed_thop() -> None:
    name, version = thop_distribution()
    assert (name, version) == (ORIGINAL_THOP, importlib.metadata.version("thop"))
    assert thop_version_label() == f"thop {version}"


def test_thop_distribution_follows_the_module_python_imports(tmp_path: Path) -> None:
    """A site directory holding ultralytics-thop's layout (a ``thop`` package and its dist-info), put first on the
    path: the installed original thop is still found by name, but the module Python imports is ultralytics-thop's."""
    (tmp_path / "thop").mkdir()
    (tmp_path / "thop" / "__init__.py").write_text('__version__ = "2.2.3"\n')
    info = tmp_path / "ultralytics_thop-2.2.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: ultralytics-thop\nVersion: 2.2.3\n")
    (info / "top_level.txt").write_text("thop\n")
    (info / "RECORD").write_text(
        "thop/__init__.py,,\nultralytics_thop-2.2.3.dist-info/METADATA,,\nultralytics_thop-2.2.3.dist-info/RECORD,,\n"
    )
    code = "from gflops_track.counting.thop_compare import thop_distribution as d; print(*d())"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(SRC)])}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [ULTRALYTICS_THOP, "2.2.3"]


def test_thop_rule_lookup_per_distribution() -> None:
    """ultralytics-thop registers norms through their base classes; the original thop looks the exact type up."""
    hooks = {nn.modules.batchnorm._NormBase: object(), nn.Conv2d: object()}
    assert thop_has_rule(nn.BatchNorm2d, hooks, ULTRALYTICS_THOP)
    assert not thop_has_rule(nn.BatchNorm2d, hooks, ORIGINAL_THOP)
    assert thop_has_rule(nn.Conv2d, hooks, ORIGINAL_THOP) and thop_has_rule(nn.Conv2d, hooks, ULTRALYTICS_THOP)
    assert not thop_has_rule(nn.GroupNorm, hooks, ULTRALYTICS_THOP)


def test_thop_reasons_are_found_from_the_figures() -> None:
    """thop 0.1.1 counts no bias, so a difference is not blamed on bias adds unless it equals them: a transposed conv
    (ConvTranspose2d(8, 8, 3, stride=2), no bias, on (1, 8, 5, 5) -> 11x11) is priced by thop per output position,
    1*8*11*11 * 8 * 9 = 69,696, by us per input position, 1*8*5*5 * 8*9 = 14,400; a model that is one module thop
    has a rule for (nn.LSTM(10, 8) on 6 steps of 3) is that rule's figure, not 'ops thop cannot see'."""
    if thop_distribution()[0] != ORIGINAL_THOP:
        pytest.skip("figures are thop 0.1.1's")

    class Wrapped(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.up = nn.ConvTranspose2d(8, 8, 3, stride=2, bias=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.up(x)

    x = torch.randn(1, 8, 5, 5)
    ours = count_cost(Wrapped(), (x,))
    thop = thop_count(Wrapped(), (x,), ours)
    assert (ours.macs, thop.macs) == (1 * 8 * 25 * 8 * 9, 1 * 8 * 11 * 11 * 8 * 9) == (14_400, 69_696)
    assert thop.reasons == [
        "ConvTranspose2d (up): thop +55,296 MACs vs ours; thop prices a transposed conv per output position (output "
        "elements x C_in/groups x kernel); we price the products it does, per input position (input elements x "
        "C_out/groups x kernel)"
    ]
    lstm, steps = nn.LSTM(10, 8), torch.randn(6, 3, 10)
    ours = count_cost(lstm, (steps,))
    assert ours.macs == 6 * 3 * 4 * (10 + 8) * 8  # steps x batch x 4 gates x (input + hidden) x hidden
    (reason,) = thop_count(lstm, (steps,), ours).reasons
    assert reason.startswith("LSTM ((root)): thop +") and reason.endswith(
        "thop's formula for this module type differs from ours"
    )
