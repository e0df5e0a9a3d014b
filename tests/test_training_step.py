"""Counting a training step (forward, loss, backward, optimizer) against formulas written out, and FlopCounterMode.

Convention (docs/training-steps.md, "Counting a training step"): the backward of a convolution costs M MACs per
gradient it computes (grad-input, grad-weight), M being the forward's MACs; an input that needs no grad gets no
grad-input.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from gflops_track.counting.rules import Category, OpCall, convolution_backward, fused_adam, fused_sgd
from gflops_track.counting.torch_crosscheck import counter_agreement
from gflops_track.counting.training import count_training_cost
from gflops_track.models import ResidualBlock
from gflops_track.options.timing import TimingOptions
from gflops_track.pipeline.training_step import count_training_step, measure_training_step, profile_training_step
from gflops_track.render.summary import summary_text
from gflops_track.results.counting import TorchCount, TrainingCost
from gflops_track.results.peaks import GpuSpec, MeasuredPeak, PeakReport

aten = torch.ops.aten


def counted_with_torch(model: nn.Module, args: tuple, **options: Any) -> tuple[TrainingCost, TorchCount]:
    """The step counted with FlopCounterMode in the same pass, and the two compared op by op."""
    torch_counter = FlopCounterMode(display=False)
    cost = count_training_cost(model, args, torch_counter=torch_counter, **options)
    return cost, counter_agreement(torch_counter, cost.dense_flops_by_op)


def _column_sums_match(cost) -> None:
    """The per-layer forward/backward columns add up to the phase totals."""
    assert sum(layer.forward_flops for layer in cost.layers) == cost.flops_by_phase["forward"]
    assert sum(layer.backward_flops for layer in cost.layers) == cost.flops_by_phase["backward"]
    assert sum(layer.forward_macs for layer in cost.layers) == cost.macs_by_phase["forward"]
    assert sum(layer.backward_macs for layer in cost.layers) == cost.macs_by_phase["backward"]


def test_seed_block_training_step_counts() -> None:
    """ResidualBlock(384, 384, 'group', stride=1) on (2, 384, 32, 32), input not requiring grad, SGD."""
    n, c, h, w = 2, 384, 32, 32
    block = ResidualBlock(c, c, "group", stride=1)
    cost, check = counted_with_torch(block, (torch.randn(n, c, h, w),), optimizer="sgd")

    m = n * c * h * w * c * 3 * 3  # each 3x3 conv, forward: N*C_out*H*W * C_in*9 MACs
    assert m == 2_717_908_992
    # conv2's backward: grad-input and grad-weight (2M); conv1's: grad-weight only (M), its input needs no grad
    assert cost.macs_by_phase == {"forward": 2 * m, "backward": 3 * m, "optimizer": 0}
    assert cost.macs == 5 * m == 13_589_544_960
    layers = {layer.name: layer for layer in cost.layers}
    assert (layers["conv1"].forward_macs, layers["conv1"].backward_macs) == (m, m)
    assert (layers["conv2"].forward_macs, layers["conv2"].backward_macs) == (m, 2 * m)

    e = n * c * h * w  # elements of every activation (786,432)
    # forward: dense 2*2M; conv bias 1/elem x2; group norm (stats 4 + normalise 2 + weight 1 + bias 1) x2;
    # ReLU x3; residual add 1; loss 'sum' 1 per output element
    forward = 2 * 2 * m + 2 * e + 8 * e * 2 + 3 * e + e + e
    # backward: dense 2*3M; conv grad-bias (sum of grad_output) 1/elem x2; group norm backward per element:
    # grad-input 9 + 1 (weight along another axis), grad-weight 4, grad-bias 1 = 15, x2; threshold_backward x3;
    # the add's and the sum's backward move gradients only (no arithmetic)
    backward = 2 * 3 * m + 2 * e + 15 * e * 2 + 3 * e
    params = 2 * (c * c * 9 + c) + 2 * (2 * c)  # two convs (weight + bias), two group norms (weight + bias)
    assert cost.trainable_params == params == 2_656_512
    # SGD without momentum: p.add_(grad, alpha=-lr): 2 FLOPs per parameter element
    assert cost.flops_by_phase == {"forward": forward, "backward": backward, "optimizer": 2 * params}
    assert cost.flops_by_phase_category["backward"][Category.DENSE] == 2 * 3 * m
    assert cost.uncounted_ops == {}
    _column_sums_match(cost)

    assert check.agrees and check.flops == 2 * 5 * m, check.notes


def test_stride2_block_with_downsample() -> None:
    """ResidualBlock(64, 128, 'batch', stride=2) on (2, 64, 56, 56): out 28x28.

    conv1 3x3 stride 2:      A = N*128*28*28 * 64*9   MACs; its input x needs no grad: backward A (grad-weight)
    conv2 3x3 stride 1:      B = N*128*28*28 * 128*9  MACs; its input (ReLU of norm1) needs grad: backward 2B
    downsample 1x1 stride 2: D = N*128*28*28 * 64     MACs; its input x needs no grad: backward D (grad-weight)
    """
    n, c_in, c_out, size, out = 2, 64, 128, 56, 28
    a = n * c_out * out * out * c_in * 9
    b = n * c_out * out * out * c_out * 9
    d = n * c_out * out * out * c_in
    block = ResidualBlock(c_in, c_out, "batch", stride=2)
    x = torch.randn(n, c_in, size, size)
    cost, check = counted_with_torch(block, (x,), optimizer="none")
    assert cost.macs_by_phase == {"forward": a + b + d, "backward": a + 2 * b + d, "optimizer": 0}
    assert cost.macs == 2 * a + 3 * b + 2 * d == 950_534_144
    layers = {layer.name: layer for layer in cost.layers}
    assert layers["conv1"].backward_macs == a
    assert layers["conv2"].backward_macs == 2 * b
    assert layers["downsample.0"].backward_macs == d
    assert cost.flops_by_phase["optimizer"] == 0
    assert cost.uncounted_ops == {}
    _column_sums_match(cost)
    assert check.agrees and check.flops == 2 * cost.macs, check.notes


def test_adamw_step_and_cross_entropy() -> None:
    """A linear classifier, cross_entropy with made labels, AdamW.

    Linear(16, 32) -> GELU -> Linear(32, 10) on (4, 16): forward addmm 4*16*32 + 4*32*10 MACs; backward: the second
    Linear grad-input (4x10 @ 10x32) and grad-weight (10x4 @ 4x32), the first grad-weight only (32x4 @ 4x16).
    AdamW per parameter element: decay 1, lerp 3, v*b2 1, addcmul 2, sqrt 1, /sqrt(bc2) 1, +eps 1, addcdiv 2 = 12;
    plus 1 FLOP per parameter tensor for ``step += 1``.
    """
    batch, d_in, hidden, classes = 4, 16, 32, 10
    model = nn.Sequential(nn.Linear(d_in, hidden), nn.GELU(), nn.Linear(hidden, classes))
    cost, check = counted_with_torch(model, (torch.randn(batch, d_in),), loss="cross_entropy", optimizer="adamw")
    forward_macs = batch * d_in * hidden + batch * hidden * classes
    backward_macs = batch * classes * hidden + classes * batch * hidden + hidden * batch * d_in
    assert cost.macs_by_phase == {"forward": forward_macs, "backward": backward_macs, "optimizer": 0}
    params = d_in * hidden + hidden + hidden * classes + classes
    assert cost.flops_by_phase["optimizer"] == 12 * params + 4
    assert cost.uncounted_ops == {}
    _column_sums_match(cost)
    loss_row = next(layer for layer in cost.layers if layer.name == "(loss)")
    assert "nll_loss_forward" in loss_row.forward_ops and "nll_loss_backward" in loss_row.backward_ops
    assert check.agrees and check.flops == 2 * cost.macs, check.notes


def test_grouped_conv_backward_differs_from_flop_counter_by_groups() -> None:
    """Depthwise 3x3 conv, 8 channels (groups=8) on (2, 8, 10, 10), input needs no grad: grad-weight only.

    Ours: N*C*H*W * (C/groups)*9 = 2*8*100*1*9 = 14,400 MACs. FlopCounterMode's grad-weight formula does not divide
    by groups, so it reports groups x as many FLOPs for ``convolution_backward``; the dense forward agrees.
    """
    groups = 8
    conv = nn.Conv2d(groups, groups, 3, padding=1, groups=groups)
    x = torch.randn(2, groups, 10, 10)
    cost, check = counted_with_torch(conv, (x,), optimizer="none")
    macs = 2 * groups * 10 * 10 * 1 * 9
    assert cost.macs_by_phase == {"forward": macs, "backward": macs, "optimizer": 0}
    assert check.notes == [
        f"aten.convolution_backward: torch FlopCounterMode {groups * 2 * macs:,} FLOPs, gflops-track {2 * macs:,} FLOPs"
    ]


def test_convolution_backward_output_mask() -> None:
    """Each gradient is counted only when the mask asks: M per grad-input / grad-weight, 1 per output for bias."""
    x, weight = torch.empty(2, 4, 8, 8, device="meta"), torch.empty(6, 4, 3, 3, device="meta")
    grad_out = torch.empty(2, 6, 8, 8, device="meta")
    m = grad_out.numel() * 4 * 3 * 3
    for mask, macs, bias in [
        ([True, True, True], 2 * m, grad_out.numel()),
        ([False, True, True], m, grad_out.numel()),
        ([True, False, False], m, 0),
    ]:
        args = {"grad_output": grad_out, "input": x, "weight": weight, "transposed": False, "output_mask": mask}
        cost = convolution_backward(OpCall("aten.convolution_backward", args, None))
        assert cost.macs == macs
        assert cost.flops.get(Category.BIAS, 0) == bias


def test_fused_optimizer_rules_match_the_single_tensor_path() -> None:
    """_fused_adamw_: 12 FLOPs per element; _fused_sgd_ (no momentum, no decay): 2, as the unfused ops count."""
    tensors = [torch.empty(10, device="meta"), torch.empty(3, 5, device="meta")]
    elements = 10 + 15
    adamw = fused_adam(decoupled_decay=True)(OpCall("aten._fused_adamw_", {"self": tensors, "amsgrad": False}, None))
    assert adamw.flops == {Category.ELEMENTWISE: 12 * elements}
    sgd = fused_sgd(OpCall("aten._fused_sgd_", {"self": tensors, "momentum": 0.0, "weight_decay": 0.0}, None))
    assert sgd.flops == {Category.ELEMENTWISE: 2 * elements}


def test_model_is_left_as_it_was() -> None:
    """Weights, requires_grad flags, train/eval flags and .grad are untouched by the counted step."""
    block = ResidualBlock(16, 16, "batch", stride=1).eval()
    block.conv1.weight.requires_grad_(False)  # frozen: its grad-weight is not counted
    before = {key: value.clone() for key, value in block.state_dict().items()}
    cost = count_training_step(block, torch.randn(2, 16, 8, 8), optimizer="adamw").cost
    assert all(torch.equal(before[key], value) for key, value in block.state_dict().items())
    assert not any(module.training for module in block.modules())
    assert not block.conv1.weight.requires_grad and block.conv2.weight.requires_grad
    assert all(parameter.grad is None for parameter in block.parameters())
    m = 2 * 16 * 8 * 8 * 16 * 9
    layers = {layer.name: layer for layer in cost.layers}
    assert layers["conv1"].backward_macs == 0  # input needs no grad, weight frozen: only its bias gradient
    assert layers["conv2"].backward_macs == 2 * m


@pytest.mark.parametrize(
    ("model", "shape", "kwargs", "message"),
    [
        (nn.Linear(4, 1), (3, 4), {"loss": "cross_entropy"}, "loss='cross_entropy' is not allowed for a model output"),
        (nn.Linear(4, 2).requires_grad_(False), (3, 4), {}, "has no trainable parameters"),
        (nn.Linear(4, 2), (3, 4), {"optimizer": "lion"}, "optimizer='lion' is not allowed: choose one of sgd, adamw"),
        (nn.Linear(4, 2), (3, 4), {"loss": "mse"}, "loss='mse' is not allowed: choose one of sum, cross_entropy"),
    ],
)
def test_bad_input_is_one_line(model: nn.Module, shape: tuple[int, ...], kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")) as raised:
        count_training_step(model, torch.randn(*shape), **kwargs)
    assert "\n" not in str(raised.value)


BACKWARD_CALLS: list[int] = []


class _CountBackward(torch.autograd.Function):
    """Identity that records each backward pass (so the test sees that every timed step ran one)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return x.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        BACKWARD_CALLS.append(1)
        return grad


class _Probe(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _CountBackward.apply(self.linear(x))


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_training_step_timing_runs_a_backward_per_call_and_leaves_the_model(optimizer: str) -> None:
    """Every timed call (cold start, warm-up, timed samples) is a whole step; the forward-alone timing runs none;
    the caller's weights, .grad and flags are unchanged; the derived figures follow from the medians."""
    model = _Probe().eval()
    before = {key: value.clone() for key, value in model.state_dict().items()}
    BACKWARD_CALLS.clear()
    options = TimingOptions(warmup=2, min_repeats=5, max_repeats=5, max_time_s=5.0)
    timed = measure_training_step(model, torch.randn(3, 8), optimizer=optimizer, options=options)
    step_calls = 1 + timed.step.warmup_iterations + len(timed.step.latency.samples_ms)
    assert len(BACKWARD_CALLS) == step_calls
    assert all(torch.equal(before[key], value) for key, value in model.state_dict().items())
    assert all(parameter.grad is None for parameter in model.parameters()) and not model.training
    assert timed.backward_and_optimizer_ms == max(timed.step_ms - timed.forward_ms, 0.0)
    assert timed.samples_per_s == 3 / (timed.step_ms / 1e3)
    flops = count_training_step(model, torch.randn(3, 8), optimizer=optimizer).flops
    assert timed.achieved_gflop_per_s(flops) == flops / (timed.step_ms / 1e3) / 1e9


def test_training_step_timing_refuses_bad_input() -> None:
    with pytest.raises(ValueError, match="optimizer='lion' is not allowed"):
        measure_training_step(nn.Linear(4, 2), torch.randn(3, 4), optimizer="lion")


def test_meta_and_real_steps_agree() -> None:
    """The real fallback (a step on a deep copy of the module) gives the same phases and per-layer table as meta."""
    block = ResidualBlock(16, 32, "batch", stride=2)
    x = torch.randn(2, 16, 12, 12)
    meta = count_training_cost(block, (x,), optimizer="adamw")
    real = count_training_cost(block, (x,), optimizer="adamw", prefer_meta=False)
    assert (meta.backend, real.backend) == ("meta", "real")
    assert meta.flops_by_phase == real.flops_by_phase and meta.macs_by_phase == real.macs_by_phase
    assert meta.layers == real.layers


@pytest.mark.parametrize("sdpa", [True, False], ids=["sdpa", "math"])
def test_transformer_and_convnext_blocks_have_every_backward_op_counted(sdpa: bool) -> None:
    """The blocks of test_op_counter (depthwise conv, LayerNorm, GELU, Linear, shifted-window attention with
    SDPA or the math path): nothing uncounted in any phase, and the per-layer columns add up."""
    from test_op_counter import ConvNeXtBlock, SwinBlock

    for model, x in [
        (ConvNeXtBlock(16, 10), torch.randn(2, 16, 8, 8)),
        (SwinBlock(32, 2, 8, 4, 2, sdpa), torch.randn(2, 64, 32)),
    ]:
        cost = count_training_cost(model, (x,), loss="cross_entropy", optimizer="adamw")
        assert cost.uncounted_ops == {}
        assert cost.flops_by_phase["backward"] > cost.flops_by_phase["forward"] > 0
        _column_sums_match(cost)


def test_mfu_is_step_flops_over_step_time_over_the_named_peak() -> None:
    """MFU = step FLOPs / median step time / peak. With no peak known there is none (and the summary says so); a
    datasheet figure (GPU) is preferred to the measured roof, and the mfu_peak text names the one divided by."""
    model = ResidualBlock(16, 16, "batch", 1)
    quick = TimingOptions(warmup=1, min_repeats=5, max_time_s=0.5)
    result = profile_training_step(model, torch.randn(2, 16, 8, 8), "cpu", optimizer="sgd", timing=quick)
    assert result.measured_peak is None and result.spec_gflop_per_s is None  # PeakOptions() measures nothing
    assert result.mfu is None and result.timing is None and result.mode == "train"
    assert "n/a: no datasheet peak for this device and dtype, and no measured peak" in summary_text(result)
    assert result.training is not None and result.training.timing is not None
    step_flops, step_ms = result.training.count.flops, result.training.timing.step_ms
    achieved = step_flops / (step_ms / 1e3) / 1e9  # GFLOP/s
    assert result.training.achieved_gflop_per_s == pytest.approx(achieved)
    measured = MeasuredPeak(gemm_gflop_per_s=50.0, gemm_size=512, bandwidth_gb_s=None, bandwidth_buffer_mib=None,
                            dtype="fp32", compute_gflop_per_s=80.0)  # fmt: skip
    on_cpu = replace(result, peaks=PeakReport(measured=measured))
    assert on_cpu.mfu is not None and on_cpu.mfu[0] == pytest.approx(achieved / 80.0)  # the roof: max(GEMM, conv)
    assert on_cpu.mfu[1].startswith("measured peak 80.0 GFLOP/s (fp32")
    assert on_cpu.metrics()["step/mfu"] == on_cpu.metrics()["step/mfu_vs_measured_peak"]
    spec = GpuSpec("NVIDIA H200", {"fp32": 67.0}, 4800.0, "datasheet")
    on_gpu = replace(result, peaks=PeakReport(gpu_spec=spec, spec_gflop_per_s=67_000.0, measured=measured))
    assert on_gpu.mfu is not None and on_gpu.mfu[0] == pytest.approx(achieved / 67_000.0)
    assert on_gpu.mfu[1] == "datasheet peak 67,000 GFLOP/s (NVIDIA H200, fp32 dense)"
    metrics = on_gpu.metrics()
    assert metrics["step/mfu"] == metrics["step/mfu_vs_spec_peak"]
    assert metrics["step/mfu_vs_measured_peak"] == pytest.approx(achieved / 80.0)
    assert [point.label for point in on_gpu.roofline_points("run")] == ["run train step (at forward intensity)"]


def test_profile_training_step_refuses_bad_input_before_measuring() -> None:
    with pytest.raises(ValueError, match=r"loss='cross_entropy' is not allowed for a model output of shape \[2, 1\]"):
        profile_training_step(nn.Linear(4, 1), torch.randn(2, 4), loss="cross_entropy", timing=False)
    with pytest.raises(ValueError, match="optimizer='lion' is not allowed: choose one of sgd, adamw, none"):
        profile_training_step(nn.Linear(4, 3), torch.randn(2, 4), optimizer="lion", timing=False)
