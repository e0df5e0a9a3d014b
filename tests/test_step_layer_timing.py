"""The training step's per-layer pass (timing/step_layers.py): each module's forward and backward time, on real
modules and real clocks. A module whose forward and backward wait a known time (a custom autograd Function) shows
those times where they ran; every module, the loss, the optimizer's step and zero_grad have a row; the rows add up
to the step; no hook is left behind, even when the step raises; a mode=train run logs it all; ``profile`` and
``profile_training_step`` run the layer passes the job runs."""

from __future__ import annotations

import csv
import io
import time
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import pytest
import torch
from mlflow.tracking import MlflowClient
from torch import nn

from conftest import QUICK_NO_THOP, SMALL_BLOCK, requires_cuda, run_cli
from gflops_track import PeakOptions, TimingOptions, profile, profile_training_step
from gflops_track.common import names
from gflops_track.models import ResidualBlock
from gflops_track.pipeline.training_step import count_training_step, measure_step_layers, step_layer_table
from gflops_track.results.layers import StepLayerRow

BLOCK_ROWS = ["(root)", "conv1", "conv2", "relu", "norm1", "norm2", "(loss)", "(optimizer)", "(zero_grad)"]
GAP_LIMIT = 0.10  # the issue's truth check: the rows' self times add up to the step's median within 10%
ATTEMPTS = 3  # on a machine shared with other work, a check that fails three times in a row is a real failure
FORWARD_WAIT_MS = 20.0
BACKWARD_WAIT_MS = 40.0


def _wait(milliseconds: float) -> None:
    """Busy-wait on the wall clock: the time passes whatever else the machine runs."""
    end = time.perf_counter() + milliseconds / 1e3
    while time.perf_counter() < end:
        pass


class _Waits(torch.autograd.Function):
    """x * w, whose forward waits FORWARD_WAIT_MS and whose backward waits BACKWARD_WAIT_MS."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        _wait(FORWARD_WAIT_MS)
        ctx.save_for_backward(x)
        return x * weight

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _wait(BACKWARD_WAIT_MS)
        (x,) = ctx.saved_tensors
        return grad * 0, (grad * x).sum().reshape(1)


class _Waiting(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _Waits.apply(x, self.weight)


class _Net(nn.Module):
    """A waiting module inside a container (so the container's inclusive backward holds its child's), then a linear
    layer: the first layer's input needs no grad, as data."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(_Waiting())
        self.head = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class _Failing(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return x * 2

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("backward refused")


class _FailsBackward(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _Failing.apply(self.head(x))


def _global_hooks() -> list[int]:
    module = nn.modules.module
    return [
        len(module._global_forward_pre_hooks),
        len(module._global_forward_hooks),
        len(module._global_backward_pre_hooks),
        len(module._global_backward_hooks),
    ]


def test_known_waits_land_in_their_module_forward_and_backward() -> None:
    """The waiting module's forward self time is its 20 ms wait, its backward self time its 40 ms wait (load only
    adds time: each median at least its wait, the quickest step's two within 3 ms or 15% of 60 ms); its
    container's self times are near 0 and its inclusive times hold the child's; every module and the loss, optimizer
    and zero_grad have rows;
    the rows add up to the hooked step exactly and to the unhooked steps beside within 10%; no hook is left and the
    caller's module keeps its weights and no gradient."""
    model = _Net()
    before = {name: value.clone() for name, value in model.state_dict().items()}
    for _ in range(ATTEMPTS):
        timing = measure_step_layers(model, (torch.randn(4, 8),), optimizer="sgd", iterations=5, max_time_s=5.0)
        rows = {row.name: row for row in timing.modules}
        waiting = rows["body.0"]
        # Load only adds time: each median is at least its wait (the wait is on the wall clock, less 1 ms of clock
        # and hook slack), and the quickest step's forward + backward is the two waits within 3 ms or 15%.
        both = FORWARD_WAIT_MS + BACKWARD_WAIT_MS
        close = (
            waiting.forward_self_ms >= FORWARD_WAIT_MS - 1.0
            and waiting.backward_self_ms >= BACKWARD_WAIT_MS - 1.0
            and abs(waiting.self_min_ms - both) <= max(3.0, 0.15 * both)
        )
        if close and abs(timing.gap(timing.plain_ms)) <= GAP_LIMIT:
            break
    assert list(rows) == ["(root)", "body", "body.0", "head", "(loss)", "(optimizer)", "(zero_grad)"]
    assert close, (waiting.forward_self_ms, waiting.backward_self_ms, waiting.self_min_ms)
    assert rows["body"].forward_self_ms < 3.0 and rows["body"].backward_self_ms < 3.0
    assert rows["body"].backward_inclusive_ms >= waiting.backward_self_ms
    assert rows["(root)"].forward_inclusive_ms >= rows["body"].forward_inclusive_ms
    assert rows["(optimizer)"].optimizer_ms > 0 and rows["(zero_grad)"].optimizer_ms >= 0
    assert abs(timing.gap(timing.plain_ms)) <= GAP_LIMIT, (timing.self_sum_ms, timing.plain_ms)
    assert timing.iterations == 5 and timing.method.startswith("perf_counter")
    assert "step layers: self times add up to" in timing.check_note(timing.plain_ms)
    assert _global_hooks() == [0, 0, 0, 0]
    assert all(parameter.grad is None for parameter in model.parameters())
    assert all(torch.equal(before[name], value) for name, value in model.state_dict().items())


def test_hooks_are_removed_when_the_step_raises() -> None:
    """A backward that raises ends the pass with its error, and leaves no global module hook registered."""
    with pytest.raises(RuntimeError, match="backward refused"):
        measure_step_layers(_FailsBackward(), (torch.randn(4, 8),), iterations=3)
    assert _global_hooks() == [0, 0, 0, 0]


def test_the_table_joins_times_to_the_step_count() -> None:
    """step_layers.csv's rows: the count's columns then the pass's, one per module and the loss, then the
    optimizer's step with its FLOPs (the count's optimizer phase) and zero_grad; GFLOP/s = FLOPs / ms / 10^6 per
    direction; time shares add up to 1."""
    block, inputs = ResidualBlock(16, 16, "group", stride=1), (torch.randn(2, 16, 8, 8),)
    step = count_training_step(block, inputs, optimizer="adamw")
    timing = measure_step_layers(block, inputs, optimizer="adamw", iterations=3)
    rows = step_layer_table(step.cost, timing)
    by_name = {row.name: row for row in rows}
    assert list(by_name) == BLOCK_ROWS
    conv = by_name["conv1"]
    assert conv.forward_self_ms and conv.backward_self_ms and conv.forward_flops and conv.backward_flops
    assert conv.forward_gflop_per_s == pytest.approx(conv.forward_flops / conv.forward_self_ms / 1e6)
    assert conv.backward_gflop_per_s == pytest.approx(conv.backward_flops / conv.backward_self_ms / 1e6)
    optimizer = by_name["(optimizer)"]
    assert optimizer.optimizer_flops == step.cost.flops_by_phase["optimizer"] > 0 and optimizer.optimizer_ms
    assert optimizer.forward_self_ms is None and by_name["(zero_grad)"].optimizer_flops == 0
    assert sum(row.time_share or 0.0 for row in rows) == pytest.approx(1.0)


@pytest.mark.cuda
@requires_cuda
def test_cuda_step_layers_are_timed_with_events() -> None:
    """On CUDA the pass records events (method says so), every row is there and the rows add up to the unhooked
    steps within 10% where the GPU's work outlasts the CPU's launches: 32 x 256 x 56 x 56, each 3x3 convolution
    2·32·256·56·56·256·9 = 118 GFLOPs a pass (on an H200, ResidualBlock(64, 64) on 8 x 64 x 56 x 56 was
    launch-bound: its rows added up to 26-51% more than the step; where such a block is NOT within 10%, the pass
    finds it launch-bound and the note says so)."""
    block, inputs = ResidualBlock(256, 256, "group", stride=1), (torch.randn(32, 256, 56, 56),)
    gaps = []
    for _ in range(ATTEMPTS):
        timing = measure_step_layers(block, inputs, "cuda", iterations=10)
        gaps.append(timing.gap(timing.plain_ms))
        if abs(gaps[-1]) <= GAP_LIMIT:
            break
    assert timing.method.startswith("CUDA events")
    assert {row.name for row in timing.modules} >= {"(root)", "conv1", "conv2", "(loss)", "(optimizer)"}
    assert all(row.self_ms >= 0 for row in timing.modules)
    assert abs(gaps[-1]) <= GAP_LIMIT, gaps
    assert timing.plain_dispatch_ms > 0  # the CPU's time to issue an unhooked step, measured on CUDA
    small = measure_step_layers(ResidualBlock(64, 64, "group", stride=1), (torch.randn(8, 64, 56, 56),), "cuda")
    if abs(small.gap(small.plain_ms)) > GAP_LIMIT:  # on an H200: +48% to +51%, the CPU issuing for 1.01x the GPU time
        assert small.launch_bound and "the step is launch-bound" in small.check_note(small.plain_ms)
    assert _global_hooks() == [0, 0, 0, 0]


@pytest.mark.slow
def test_a_train_run_logs_the_step_layers_table(tmp_path: Path) -> None:
    """mode=train: step_layers.csv (and the UI table) gain the pass's columns in ms and GFLOP/s, with the
    optimizer's and zero_grad's rows; step_layers/* metrics and the method tag are on the run; the step's headline
    timing is there as before."""
    store = tmp_path / "mlflow.db"
    done = run_cli(["mode=train", *SMALL_BLOCK, *QUICK_NO_THOP, f"tracking.uri=sqlite:///{store}"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{store}")
    (run,) = client.search_runs([client.get_experiment_by_name("gflops-track").experiment_id])
    metrics = run.data.metrics
    for name in (
        names.STEP_LAYERS_STEP_MS, names.STEP_LAYERS_SELF_SUM_MS, names.STEP_LAYERS_FORWARD_SELF_SUM_MS,
        names.STEP_LAYERS_BACKWARD_SELF_SUM_MS, names.STEP_LAYERS_OPTIMIZER_MS, names.STEP_LAYERS_SELF_GAP,
        names.STEP_LAYERS_SELF_GAP_SIDE, names.STEP_LAYERS_ITERATIONS, names.STEP_LATENCY_MEDIAN_MS,
    ):  # fmt: skip
        assert name in metrics, name
    assert metrics[names.STEP_LAYERS_ITERATIONS] >= 3 and metrics[names.STEP_LAYERS_BACKWARD_SELF_SUM_MS] > 0
    assert run.data.tags[names.STEP_LAYER_TIMING_TAG].startswith("perf_counter")
    text = Path(client.download_artifacts(run.info.run_id, names.STEP_LAYERS_CSV_ARTIFACT)).read_text()
    table = list(csv.DictReader(io.StringIO(text)))
    assert list(table[0]) == [field.name for field in fields(StepLayerRow)]
    by_name = {row["name"]: row for row in table}
    assert list(by_name) == BLOCK_ROWS
    assert float(by_name["conv1"]["backward_self_ms"]) > 0 and float(by_name["conv1"]["backward_gflop_per_s"]) > 0
    assert float(by_name["(optimizer)"]["optimizer_ms"]) > 0
    assert sum(float(row["time_share"]) for row in table) == pytest.approx(1.0)
    artifacts = {item.path for item in client.list_artifacts(run.info.run_id)}
    assert names.STEP_LAYERS_JSON_ARTIFACT in artifacts
    summary = Path(client.download_artifacts(run.info.run_id, "summary.txt")).read_text()
    assert "step layers: self times add up to" in summary


def test_profile_times_each_layer_as_the_job_does_unless_told_not_to() -> None:
    """``profile(model, x)`` with timing returns the layer pass and the layers table with time and bound, as the
    job builds them (``measure_layers`` + ``layer_table``), the truth check among its notes;
    ``TimingOptions(layers=False)`` and ``timing=False`` skip it. ``profile_training_step`` does the same for the
    step's layers."""
    block, x = ResidualBlock(16, 16).eval(), torch.randn(2, 16, 8, 8)
    quick = TimingOptions(warmup=1, min_repeats=3, max_time_s=0.5, layer_iterations=3)
    result = profile(block, x, timing=quick, peak=PeakOptions(measure=False))
    assert result.layer_timing is not None and result.layer_timing.iterations == 3
    by_name = {row.name: row for row in result.layer_rows}
    assert set(by_name) == {"(root)", "conv1", "conv2", "relu", "norm1", "norm2"}
    assert by_name["conv1"].self_ms and by_name["conv1"].bound_ms and result.layer_roof is not None
    assert any("layers: self times add up to" in note for note in result.notes)
    assert names.LAYERS_SELF_GAP in result.metrics()
    skipped = profile(block, x, timing=replace(quick, layers=False), peak=PeakOptions(measure=False))
    assert skipped.layer_timing is None and skipped.layer_rows == []
    assert profile(block, x, timing=False).layer_rows == []
    step = profile_training_step(block, x, timing=quick, peak=PeakOptions(measure=False))
    assert step.training is not None and step.training.layer_timing is not None
    assert [row.name for row in step.training.layer_rows] == BLOCK_ROWS
    assert names.STEP_LAYERS_SELF_GAP in step.metrics()
    assert _global_hooks() == [0, 0, 0, 0]
