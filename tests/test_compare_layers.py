"""``gflops-track compare`` on runs with and without per-layer times, logged as the app logs them into a real MLflow
store: report.html draws each timed run's per-layer roofline under the roof its bounds used; ``--layers`` names the
runs with no per-layer times in one line by short id, and says a FAILED run failed (with its error) instead of
MLflow's 'Failed to download artifacts', piped and at 80 columns in a pseudo-terminal."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from conftest import cli_env
from gflops_track.cli.compare import main
from gflops_track.common import names
from gflops_track.compare.layers import read_run_layers
from gflops_track.compare.rows import build_rows
from gflops_track.models import ResidualBlock
from gflops_track.options.runtime import RuntimeOptions
from gflops_track.peaks.table import cpu_peak_estimate
from gflops_track.pipeline.placement import where_it_runs
from gflops_track.pipeline.steps import count, layer_table, measure_layers
from gflops_track.results.peaks import PeakReport
from gflops_track.results.profile import ProfileResult
from gflops_track.tracking.records import cost_record, layers_record, write_to_mlflow

CPU = torch.device("cpu")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")
ERROR = "RuntimeError: CUDA out of memory"


def log_runs(uri: str) -> dict[str, str]:
    """Four runs of a 16-channel block: one with the layer pass, two from before it (the count's layers.csv, no
    times), one FAILED with an error tag and no artifact. Returns run name -> id."""
    model, inputs = ResidualBlock(16, 16).eval(), (torch.randn(2, 16, 8, 8),)
    runtime = RuntimeOptions()
    facts, settings = where_it_runs(CPU, runtime)
    cost = count(model, inputs, CPU)
    peaks = PeakReport(cpu_peak=cpu_peak_estimate())
    timing = measure_layers(model, inputs, CPU, iterations=3, max_time_s=1.0)
    rows, roof = layer_table(cost, timing, peaks, CPU, "fp32", "this CPU")
    timed = ProfileResult(
        cost, facts, runtime, settings, peaks=peaks, layer_timing=timing, layer_roof=roof, layer_rows=rows
    )
    untimed = ProfileResult(cost, facts, runtime, settings)
    client = MlflowClient(uri)
    experiment = client.create_experiment("layers")
    ids = {}
    for name, record in (
        ("timed", cost_record(timed).merge(layers_record(timed))),
        ("old-1", cost_record(untimed)),
        ("old-2", cost_record(untimed)),
        ("failed", None),
    ):
        run = client.create_run(experiment, run_name=name, tags={"hardware": facts.hardware, "mode": "inference"})
        ids[name] = run.info.run_id
        if record is not None:
            write_to_mlflow(client, run.info.run_id, record)
            client.set_terminated(run.info.run_id)
        else:
            client.set_tag(run.info.run_id, names.ERROR_TAG, ERROR)
            client.set_terminated(run.info.run_id, "FAILED")
    return ids


def assert_layer_lines(text: str, ids: dict[str, str]) -> None:
    """One line for the runs with no per-layer times (both named by short id), the FAILED run said as such."""
    flat = " ".join(text.split())  # a terminal may break a long line: read it as words
    assert "Failed to download" not in flat
    assert flat.count("no per-layer times") == 1
    assert f"no per-layer times in 2 run(s): {ids['old-1'][:8]}, {ids['old-2'][:8]}" in flat
    assert f"run {ids['failed'][:8]} FAILED: {ERROR}; no layers" in flat


def test_report_draws_each_timed_runs_per_layer_roofline(store_uri: str, tmp_path: Path) -> None:
    """report.html holds one per-layer roofline per run with layer rows (the timed run's, under the roof its bounds
    used: the logged layers/roof_gflop_per_s), none for the runs without."""
    ids = log_runs(store_uri)
    client = MlflowClient(store_uri)
    rows = build_rows(client.search_runs([client.get_experiment_by_name("layers").experiment_id]))
    timed, _missing = read_run_layers(client, rows)
    assert [run.run_name for run in timed] == ["timed"]
    metrics = client.get_run(ids["timed"]).data.metrics
    assert timed[0].roof is not None
    assert timed[0].roof.gflop_per_s == pytest.approx(metrics[names.LAYERS_ROOF_GFLOP_PER_S])
    report = tmp_path / "report.html"
    assert main(["--tracking-uri", store_uri, "--experiment", "layers", "--html", str(report)]) == 0
    html = report.read_text()
    assert html.count('alt="layers_roofline_') == 1 and 'alt="layers_roofline_1"' in html
    assert 'alt="layers_time_vs_flops_1"' in html


def test_compare_layers_piped_names_untimed_runs_once_and_failed_runs_as_failed(
    store_uri: str, capsys: pytest.CaptureFixture[str]
) -> None:
    ids = log_runs(store_uri)
    assert main(["--tracking-uri", store_uri, "--experiment", "layers", "--layers", "2"]) == 0
    captured = capsys.readouterr()
    assert "### timed (" in captured.out  # the timed run's table, as Markdown
    assert_layer_lines(captured.err, ids)
    assert len([line for line in captured.err.splitlines() if line.strip()]) == 2


@pytest.mark.slow  # the compare command under a pseudo-terminal 80 columns wide: one CLI process (MLflow's import)
@pytest.mark.skipif(shutil.which("script") is None, reason="needs util-linux script")
def test_compare_layers_at_80_columns_in_a_pseudo_terminal(store_uri: str, tmp_path: Path) -> None:
    ids = log_runs(store_uri)
    command = [sys.executable, "-m", "gflops_track.cli", "compare", "--tracking-uri", store_uri,
               "--experiment", "layers", "--layers", "2"]  # fmt: skip
    done = subprocess.run(
        ["script", "-qec", f"stty cols 80 rows 50; {shlex.join(command)}", "/dev/null"],
        cwd=tmp_path, env=cli_env(COLUMNS="80"), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    text = ANSI.sub("", done.stdout).replace("\r", "")
    assert "timed (" in text  # the timed run's table
    assert_layer_lines(text, ids)
