"""The MLflow side as a person meets it: `mlflow run` lands in the gflops-track experiment, and the UI (a real
`mlflow server`, driven by Debian's chromium through Playwright) opens on the runs and shows the comparison."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conftest import QUICK_NO_THOP as QUICK
from conftest import SMALL_BLOCK as SMALL
from conftest import cli_env

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


def mlflow_run(tmp_path: Path, store_uri: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`mlflow run <repo checkout> --env-manager local ARGS` in ``tmp_path``, as a user runs it."""
    if shutil.which("mlflow", path=str(Path(sys.executable).parent)) is None:
        pytest.skip("mlflow CLI not installed beside this interpreter")
    env = cli_env(MLFLOW_TRACKING_URI=store_uri, XDG_CACHE_HOME=str(tmp_path / ".cache"))
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    return subprocess.run(
        [sys.executable, "-m", "mlflow", "run", str(REPO), "--env-manager", "local", *args],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip


def test_mlflow_run_lands_in_gflops_track_unless_the_user_names_an_experiment(tmp_path: Path, store_uri: str) -> None:
    """Batch 4 of the 16-channel 8x8 block: MACs = 2 convs * (4 * 16 * 8 * 8 * 16 * 9)."""
    overrides = " ".join(["norm_fn=batch", "batch.size=4", *SMALL, *QUICK, f"hydra.run.dir={tmp_path / 'out'}"])
    done = mlflow_run(tmp_path, store_uri, "-P", f"overrides={overrides}")
    assert done.returncode == 0, done.stderr[-3000:]
    client = MlflowClient(store_uri)
    ours = client.get_experiment_by_name("gflops-track")
    assert ours is not None and ours.tags["mlflow.experimentKind"] == "custom_model_development"
    (run,) = client.search_runs([ours.experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "residual_block-batch-b4-cpu-fp32"
    assert run.data.metrics["macs"] == 2 * (4 * 16 * 8 * 8 * 16 * 9)
    (outer,) = client.search_runs(["0"])  # the run `mlflow run` made in Default: a pointer, nothing measured
    assert run.data.tags["gflops_track.mlflow_run"] == outer.info.run_id
    assert outer.data.tags["gflops_track.results_runs"] == run.info.run_id
    assert "gflops-track" in outer.data.tags["mlflow.note.content"] and not outer.data.metrics
    assert run.data.tags["mlflow.source.type"] == "PROJECT" and run.data.tags["mlflow.project.entryPoint"] == "main"
    named = mlflow_run(
        tmp_path, store_uri, "--experiment-name", "mine", "-P", f"overrides={overrides}"
    )  # the user said otherwise: MLflow's run is used, in their experiment
    assert named.returncode == 0, named.stderr[-3000:]
    mine = client.get_experiment_by_name("mine")
    (used,) = client.search_runs([mine.experiment_id])
    assert used.info.status == "FINISHED" and used.data.metrics["macs"] == 2 * (4 * 16 * 8 * 8 * 16 * 9)
    assert mine.tags["mlflow.experimentKind"] == "custom_model_development"
    assert len(client.search_runs([ours.experiment_id])) == 1 and len(client.search_runs(["0"])) == 1
