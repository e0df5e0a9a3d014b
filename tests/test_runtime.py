"""The byte model, utilization and runtime options (peak table: test_peaks.py; probes: test_probes.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from gflops_track import CountOptions, PeakOptions, profile
from gflops_track.counting.op_counter import count_cost
from gflops_track.options.runtime import RuntimeOptions
from gflops_track.options.timing import TimingOptions
from gflops_track.pipeline.runtime import effective_settings, runtime_context
from gflops_track.render.plots import roofline_png, throughput_curve_png
from gflops_track.results.peaks import Roof, RooflinePoint

QUICK = TimingOptions(warmup=1, min_repeats=3, max_time_s=0.5)


def test_byte_model_of_a_matmul() -> None:
    """Linear without bias on (rows, d_in): t() moves nothing; mm reads x and W and writes out, once each."""
    rows, d_in, d_out = 64, 32, 16
    report = count_cost(nn.Linear(d_in, d_out, bias=False), (torch.randn(rows, d_in),))
    expected = 4 * (rows * d_in + d_in * d_out + rows * d_out)  # fp32 bytes
    assert report.bytes_moved == expected
    assert report.min_bytes == expected  # params + input + output: the same three tensors


def test_utilization_and_intensity_metrics(tmp_path: Path) -> None:
    result = profile(
        nn.Linear(512, 512), torch.randn(64, 512), timing=QUICK, peak=PeakOptions(measure=True, cache_dir=tmp_path)
    )
    metrics = result.metrics()
    assert metrics["cost/arithmetic_intensity_flop_per_byte"] == pytest.approx(result.flops / result.bytes_moved)
    assert metrics["speed/utilization_vs_measured_peak"] == pytest.approx(
        metrics["speed/achieved_gflop_per_s"] / metrics["peak/measured_gflop_per_s"]
    )
    assert [roof.label for roof in result.roofs()][-1] == "measured"


def test_roofline_and_throughput_pngs(tmp_path: Path) -> None:
    roof = Roof("measured", gflop_per_s=200.0, bandwidth_gb_s=20.0)
    assert roof.ridge == 10.0  # FLOP/byte where the roofs meet
    path = roofline_png(tmp_path / "r.png", [roof], [RooflinePoint("run", 50.0, 150.0)], "seed")
    assert path.read_bytes()[:4] == b"\x89PNG"
    curve = throughput_curve_png(tmp_path / "t.png", {"a": [(1, 10.0), (2, 18.0)]}, "t")
    assert curve.stat().st_size > 5_000


def test_runtime_context_sets_and_restores_flags() -> None:
    before = effective_settings()
    with runtime_context(RuntimeOptions(dtype="tf32", threads=1, cudnn_benchmark=True)):
        inside = effective_settings()
        assert inside["float32_matmul_precision"] == "high" and inside["cudnn_allow_tf32"] == "true"
        assert inside["torch_num_threads"] == "1" and inside["cudnn_benchmark"] == "true"
    with runtime_context(RuntimeOptions(dtype="fp32")):
        assert effective_settings()["float32_matmul_precision"] == "highest"
    assert effective_settings() == before


@pytest.mark.parametrize("mode", ["autocast", "convert"])
def test_bf16_profiles_with_same_counts(mode: str) -> None:
    block = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
    x = torch.randn(2, 8, 16, 16)
    fp32 = profile(block, x, timing=False, counting=CountOptions(thop=False))
    bf16 = profile(
        block, x, timing=QUICK, runtime=RuntimeOptions(dtype="bf16", dtype_mode=mode), counting=CountOptions(thop=False)
    )
    assert bf16.macs == fp32.macs and bf16.flops == fp32.flops
    assert bf16.timing is not None and bf16.timing.latency.median_ms > 0
    if mode == "convert":
        assert next(block.parameters()).dtype == torch.bfloat16
        assert bf16.bytes_moved < fp32.bytes_moved  # 2-byte elements


def test_channels_last_and_bad_options() -> None:
    conv = nn.Conv2d(4, 4, 1)
    result = profile(conv, torch.randn(1, 4, 8, 8), timing=QUICK, runtime=RuntimeOptions(memory_format="channels_last"))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) and result.macs == 8 * 8 * 4 * 4
    with pytest.raises(ValueError, match="dtype='fp8' is not allowed"):
        profile(conv, torch.randn(1, 4, 8, 8), runtime=RuntimeOptions(dtype="fp8"))


@pytest.mark.slow
def test_torch_compile_is_timed_and_counted_on_the_eager_module() -> None:
    """torch.compile (inductor, needs a C++ compiler on CPU): its compile time lands in the cold start."""
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU())
    options = TimingOptions(warmup=2, min_repeats=5, max_time_s=1)
    result = profile(model, torch.randn(8, 64), timing=options, runtime=RuntimeOptions(compile="default"))
    assert result.macs == 8 * 64 * 64 and result.runtime.compile == "default"
    assert result.timing is not None and result.timing.cold_start_ms > 10 * result.timing.latency.median_ms


def test_convert_mode_inputs_are_made_once_in_the_runs_dtype_and_format() -> None:
    """convert + channels_last: the app makes its inputs in bf16 channels_last, so preparing the timed forward
    returns the very same tensors: no second, unconverted copy stays alive while timing."""
    from hydra import compose, initialize_config_dir

    from gflops_track.app.building import build_inputs, build_model
    from gflops_track.app.schema import register_schema, to_app_config
    from gflops_track.cli.run import CONFIG_DIR
    from gflops_track.pipeline.runtime import prepare

    register_schema()
    overrides = ["precision=bf16", "precision.mode=convert", "runtime.memory_format=channels_last", "model.planes=8",
                 "model.in_planes=8", "batch.height=4", "batch.width=4"]  # fmt: skip
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        config = to_app_config(compose("config", overrides=overrides))
    args, kwargs = build_inputs(config, torch.device("cpu"))
    (image,) = args
    assert image.dtype == torch.bfloat16 and image.is_contiguous(memory_format=torch.channels_last)
    _forward, prepared_args, _kwargs = prepare(
        build_model(config.model), args, kwargs, config.runtime_options(), torch.device("cpu")
    )
    assert prepared_args[0] is image


def test_a_model_already_in_bf16_is_profiled_as_bf16() -> None:
    """``profile`` without runtime options on ``model.to(torch.bfloat16)``: the run is labelled, priced (2 bytes an
    element) and set against peaks as bf16 (it said fp32, and a GPU's utilization would have used the fp32 peak).
    Linear(64, 64) then ReLU on (4, 64), unfused bytes: addmm reads bias 64, x 256, W 4,096 and writes 256 elements;
    ReLU reads and writes 256: 5,184 elements, 2 bytes each."""
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU()).to(torch.bfloat16)
    result = profile(model, torch.randn(4, 64, dtype=torch.bfloat16), timing=False, peak=PeakOptions(measure=False))
    assert result.runtime == RuntimeOptions(dtype="bf16", dtype_mode="convert") == RuntimeOptions.of_model(model)
    assert result.bytes_moved == 2 * (64 + 256 + 4096 + 256 + 256 + 256)
    assert RuntimeOptions(dtype=torch.bfloat16).dtype == "bf16"  # a torch dtype names itself
    assert RuntimeOptions.of_model(nn.Linear(2, 2)) == RuntimeOptions()  # fp32: the defaults
