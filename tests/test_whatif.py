"""``gflops-track whatif``: a run's layers bounded on other hardware. The pure part against formulas; the command on
a real run in a real MLflow store, whose own roof must bound every layer it measured."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from mlflow.tracking import MlflowClient

from gflops_track.cli.compare import main as compare_main
from gflops_track.cli.whatif import main as whatif_main
from gflops_track.common import names
from gflops_track.compare.layers import RunLayers, layer_charts, layer_time_by_run_figure, share_change
from gflops_track.compare.layers import markdown as layers_markdown
from gflops_track.models import ResidualBlock
from gflops_track.options.peaks import PeakOptions
from gflops_track.options.runtime import RuntimeOptions
from gflops_track.options.timing import TimingOptions
from gflops_track.peaks.probes import ProbePlan, measured_peak
from gflops_track.peaks.report import compare_with_peaks
from gflops_track.peaks.whatif import byte_scale, datasheet_what_if, find_spec, hardware_slug, what_if
from gflops_track.pipeline.placement import where_it_runs
from gflops_track.pipeline.steps import count, layer_table, measure, measure_layers
from gflops_track.results.layers import BoundRoof, LayerRow
from gflops_track.results.profile import ProfileResult
from gflops_track.tracking.records import cost_record, layers_record, timing_record, write_to_mlflow

CPU = torch.device("cpu")
MIB = names.MIB


def _row(name: str, flops: int, self_ms: float, bound: str, bound_ms: float) -> LayerRow:
    return LayerRow(
        name, "T", 1, "", 0, 1, flops // 2, flops, 0.0, "", 0, self_ms=self_ms, bound=bound, bound_ms=bound_ms
    )


def test_bounds_there_flips_and_the_most_gflops() -> None:
    """Roof there: 1,000 GFLOP/s, 100 GB/s, 1 MiB on chip. 'a': 1e9 FLOPs -> 1 ms compute, no traffic beyond 1 MiB.
    'b': 1e6 FLOPs, one op of 2 MiB in and 2 MiB out -> 2 x 1 MiB off chip / 100 GB/s = 0.02097 ms: memory there,
    compute here (flips). Forward bound = the sum; the most GFLOP/s = FLOPs / that."""
    there = BoundRoof("X", 1000.0, 100.0, MIB, "rule")
    rows = [_row("a", 10**9, 5.0, "compute", 0.5), _row("b", 10**6, 1.0, "compute", 0.001)]
    result = what_if(rows, {"b": [(2 * MIB, 2 * MIB)]}, there, "fp32", 6.0)
    by_name = {layer.name: layer for layer in result.layers}
    assert by_name["a"].bound_there_ms == pytest.approx(1.0) and by_name["a"].limit_there == "compute"
    assert by_name["b"].bound_there_ms == pytest.approx(2 * MIB / 100e9 * 1e3) and by_name["b"].limit_there == "memory"
    assert [layer.name for layer in result.flips()] == ["b"]
    assert result.forward_bound_ms == pytest.approx(1.0 + 2 * MIB / 100e9 * 1e3)
    assert result.max_gflop_per_s == pytest.approx((10**9 + 10**6) / result.forward_bound_ms / 1e6)
    assert result.forward_bound_here_ms == pytest.approx(0.501)
    assert result.metrics()["bound_over_measured_here"] == pytest.approx(result.forward_bound_ms / 6.0)


def test_dtype_scales_bytes_down_only() -> None:
    """bf16 from an fp32 run halves the bytes; fp32 from a bf16 run keeps them (ints would not grow: a bound errs
    low). The rule says so."""
    assert byte_scale("fp32", "bf16") == 0.5 and byte_scale("bf16", "fp32") == 1.0 and byte_scale("fp32", "x") == 1.0
    rows = [_row("b", 0, 1.0, "memory", 0.1)]
    big = 400 * MIB  # halved: 200 MiB, beyond the H100's 116 MiB on chip
    result = datasheet_what_if(rows, {"b": [(big, big)]}, "h100  sxm", "bf16", "fp32")
    assert result.hardware == "H100 SXM" and "x 0.5 for bf16" in result.rule
    on_chip = int(116 * MIB)
    assert result.layers[0].bound_there_ms == pytest.approx(2 * (big // 2 - on_chip) / 3350e9 * 1e3)


def test_unknown_card_is_refused_with_the_names() -> None:
    with pytest.raises(ValueError, match=r"--hardware 'H900' is not allowed: use one of .*H100 SXM.*, or here"):
        find_spec("H900")
    assert hardware_slug("H100 SXM") == "h100_sxm"


def test_whatif_on_a_real_run(store_uri: str, tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    """A 64-channel block profiled here (count, time, peaks with a quick probe, the layer pass) and logged; then
    ``whatif --hardware here`` bounds the forward and every layer at or below what was measured, ``whatif
    --hardware 'H100 SXM' --log`` prints bounds, each labelled one, and writes whatif/h100_sxm/* to the run."""
    model = ResidualBlock(64, 64).eval()
    inputs = (torch.randn(2, 64, 32, 32),)
    runtime = RuntimeOptions()
    facts, settings = where_it_runs(CPU, runtime)
    cost = count(model, inputs, CPU)
    timing = measure(model, inputs, CPU, options=TimingOptions(warmup=2, min_repeats=10, max_time_s=1.0))
    plan = ProbePlan(gemm_sizes=(256,), conv_shapes=(), bandwidth_bytes=64 * MIB, window_s=0.05, repeats=1)
    measured = measured_peak(CPU, "fp32", "whatif-test", tmp_path, plan)
    peaks = compare_with_peaks(CPU, "fp32", "whatif-test", "", None, PeakOptions(measure=False))
    peaks = replace(peaks, measured=measured)
    layers = measure_layers(model, inputs, CPU, iterations=5, max_time_s=1.0)
    rows, roof = layer_table(cost, layers, peaks, CPU, "fp32", "this CPU")
    result = ProfileResult(cost, facts, runtime, settings, timing, peaks, layer_timing=layers, layer_roof=roof,
                           layer_rows=rows)  # fmt: skip
    client = MlflowClient(store_uri)
    run = client.create_run(client.create_experiment("whatif"), tags={names.DTYPE_TAG: "fp32"})
    record = cost_record(result).merge(timing_record(result)).merge(layers_record(result))
    write_to_mlflow(client, run.info.run_id, record)

    short = run.info.run_id[:8]  # the run id as every table prints it: a unique prefix names the run, as in compare
    assert whatif_main(["--run", short, "--hardware", "here", "--tracking-uri", store_uri]) == 0
    here = capsys.readouterr().out
    assert "forward there: bound" in here and "| layer | measured here ms | bound here ms |" in here
    assert result.median_latency_ms is not None
    assert sum(row.bound_ms or 0.0 for row in rows) <= result.median_latency_ms  # the forward
    for row in rows:  # every layer: its bound here is at most its time here
        if row.self_ms is not None and row.bound_ms:
            assert row.bound_ms <= row.self_ms, row

    # the same config measured on an H100 (a run record as a GPU job would leave it): shown beside the bound
    client.set_tag(run.info.run_id, names.OVERRIDES_TAG, "model.planes=64")
    on_h100 = {names.OVERRIDES_TAG: "model.planes=64", names.DTYPE_TAG: "fp32", "gpu_name": "NVIDIA H100 80GB HBM3"}
    gpu = client.create_run(run.info.experiment_id, tags=on_h100)
    client.log_metric(gpu.info.run_id, names.LATENCY_MEDIAN_MS, 0.5)
    code = whatif_main(["--run", run.info.run_id, "--hardware", "H100 SXM", "--tracking-uri", store_uri, "--log"])
    assert code == 0
    there = capsys.readouterr().out
    assert "on H100 SXM (fp32)" in there and "not a measurement" in there and "layers whose bound flips" in there
    assert f"forward there, measured: 0.500 ms (run {gpu.info.run_id}); bound/measured" in there
    metrics = client.get_run(run.info.run_id).data.metrics
    flops = cost.flops
    bound_ms = metrics["whatif/h100_sxm/forward_bound_ms"]
    assert bound_ms >= flops / 67_000e9 * 1e3 * (1 - 1e-9)  # never below the FLOPs at the datasheet's fp32 rate
    assert metrics["whatif/h100_sxm/max_gflop_per_s_bound"] == pytest.approx(flops / bound_ms / 1e6)
    artifacts = {item.path for item in client.list_artifacts(run.info.run_id, "whatif/h100_sxm")}
    assert artifacts == {"whatif/h100_sxm/layers.json"}

    assert compare_main(["--tracking-uri", store_uri, "--run-id", run.info.run_id, "--layers", "2"]) == 0
    table = capsys.readouterr().out  # piped (captured): Markdown, the two layers that take the most time
    top = sorted((row for row in rows if row.self_ms is not None), key=lambda row: row.self_ms or 0.0)[-2:]
    assert "| # | layer | type | self ms | time share |" in table
    assert f"| 1 | {top[1].name} |" in table and f"| 2 | {top[0].name} |" in table


def test_bad_input_is_one_line_and_exit_2(store_uri: str, capsys: pytest.CaptureFixture[str]) -> None:
    """A run without per-layer times, and an unknown card: exit 2, one line naming the flag and what is allowed."""
    client = MlflowClient(store_uri)
    run = client.create_run(client.create_experiment("bare"))
    assert whatif_main(["--run", run.info.run_id, "--hardware", "H100 SXM", "--tracking-uri", store_uri]) == 2
    assert f"--run {run.info.run_id} is not allowed" in capsys.readouterr().err
    assert whatif_main(["--run", run.info.run_id, "--hardware", "Z1", "--tracking-uri", store_uri]) == 2
    assert "--hardware 'Z1' is not allowed" in capsys.readouterr().err


def test_compare_layers_names_the_share_that_changes_most() -> None:
    """Two runs of one model: conv takes 60% of the time on one and 20% on the other (40 points), relu 10% and 15%:
    conv is named, with both shares."""
    fast = RunLayers("gpu-run", "gpu", [replace(_row("conv", 100, 1.0, "compute", 0.5), time_share=0.2),
                                        replace(_row("relu", 1, 1.0, "memory", 0.5), time_share=0.1)])  # fmt: skip
    slow = RunLayers("cpu-run", "cpu", [replace(_row("conv", 100, 9.0, "compute", 0.5), time_share=0.6),
                                        replace(_row("relu", 1, 1.0, "memory", 0.5), time_share=0.15)])  # fmt: skip
    name, delta, by_run = share_change([fast, slow]) or ("", 0.0, {})
    assert name == "conv" and delta == pytest.approx(0.4) and by_run == {"gpu-run": 0.2, "cpu-run": 0.6}
    text = layers_markdown([fast, slow], 1)
    assert "### cpu-run (cpu)" in text and "| 1 | conv | T | 9.000 | 60.0% |" in text
    assert "conv (40.0 percentage points: gpu-run 20.0%, cpu-run 60.0%)" in text


def test_layers_of_different_models_are_never_set_against_each_other() -> None:
    """A Linear's (root) takes 100% of its time, a residual block's (root) 6%: the same name in two models is not
    one layer, so no line names a change (it named (root), 94 points); a third run of the block is compared."""
    linear = RunLayers("linear", "cpu", [replace(_row("(root)", 1, 1.0, "memory", 0.5), time_share=1.0)], None,
                       ("inference", "torch.nn.Linear"))  # fmt: skip
    block = ("inference", "gflops_track.models.ResidualBlock")
    group = RunLayers("group", "cpu", [replace(_row("(root)", 1, 1.0, "memory", 0.5), time_share=0.06)], None, block)
    assert share_change([linear, group]) is None
    batch = RunLayers("batch", "cpu", [replace(_row("(root)", 1, 1.0, "memory", 0.5), time_share=0.1)], None, block)
    name, delta, by_run = share_change([linear, group, batch]) or ("", 0.0, {})
    assert name == "(root)" and delta == pytest.approx(0.04) and by_run == {"group": 0.06, "batch": 0.1}


def test_side_by_side_chart_names_the_layer_whose_share_changes_most(tmp_path) -> None:
    """The report's cross-run chart: one bar per run for each layer, titled with the layer that moves most; with
    each run's own time-vs-FLOP chart, one PNG each."""
    fast = RunLayers("gpu-run", "gpu", [replace(_row("conv", 100, 1.0, "compute", 0.5), time_share=0.2),
                                        replace(_row("relu", 1, 1.0, "memory", 0.5), time_share=0.1)])  # fmt: skip
    slow = RunLayers("cpu-run", "cpu", [replace(_row("conv", 100, 9.0, "compute", 0.5), time_share=0.6),
                                        replace(_row("relu", 1, 1.0, "memory", 0.5), time_share=0.15)])  # fmt: skip
    axes = layer_time_by_run_figure([fast, slow]).axes[0]
    assert "changes most: conv (40.0 points)" in axes.get_title()
    assert sorted(round(patch.get_width(), 6) for patch in axes.patches) == [10.0, 15.0, 20.0, 60.0]
    charts = layer_charts([fast, slow], tmp_path)
    assert [chart.name for chart in charts] == [
        "layers_time_by_run.png", "layers_time_vs_flops_1.png", "layers_time_vs_flops_2.png",
    ]  # fmt: skip
