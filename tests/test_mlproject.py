"""`mlflow run .` with parameters that are not overrides: one clean line per problem and exit 2 from the entry
point, never a Hydra or shlex traceback. The real `mlflow run` on a real
SQLite store, and the entry point as `mlflow run` starts it (MLFLOW_RUN_ID, MLFLOW_TRACKING_URI set)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conftest import cli_env

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
DEFAULT_EXPERIMENT_ID = "0"  # where `mlflow run` puts its run when no experiment is named


def test_mlflow_run_with_a_shell_substitution_as_overrides_is_one_clean_line(tmp_path: Path, store_uri: str) -> None:
    if shutil.which("mlflow", path=str(Path(sys.executable).parent)) is None:
        pytest.skip("mlflow CLI not installed beside this interpreter")
    env = cli_env(MLFLOW_TRACKING_URI=store_uri, XDG_CACHE_HOME=str(tmp_path / ".cache"))
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    done = subprocess.run(
        [sys.executable, "-m", "mlflow", "run", str(REPO), "--env-manager", "local", "-P", "overrides=$(id)"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    output = done.stdout + done.stderr
    assert done.returncode != 0 and "Traceback" not in output, output
    ours = [line for line in output.splitlines() if line.startswith("gflops-track:")]
    assert ours == [
        "gflops-track: invalid config: '$(id)' is not a valid override (token recognition error at: "
        "'('); write key=value, and quote values that hold braces, brackets or commas, e.g. key='{a}-{b}'"
    ], output
    client = MlflowClient(store_uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert [run.info.status for run in runs] == ["FAILED"]  # only the run `mlflow run` made, which it ended


@pytest.mark.parametrize(
    ("parameter", "message"),
    [
        ("$(id)", "'$(id)' is not a valid override"),
        ("norm_fn='batch", '"norm_fn=\'batch" cannot be split into words (No closing quotation)'),
    ],
)
def test_the_entry_point_exits_2_with_one_line(tmp_path: Path, store_uri: str, parameter: str, message: str) -> None:
    """As `mlflow run` starts it: MLFLOW_RUN_ID names its run in Default, where the entry point would redirect the
    results by reading `tracking.experiment` from the overrides."""
    client = MlflowClient(store_uri)
    run_id = client.create_run(DEFAULT_EXPERIMENT_ID).info.run_id
    done = subprocess.run(
        [sys.executable, "-m", "gflops_track.cli.mlproject", "main", parameter],
        cwd=tmp_path, env=cli_env(MLFLOW_TRACKING_URI=store_uri, MLFLOW_RUN_ID=run_id), capture_output=True,
        text=True, timeout=300,
    )  # fmt: skip
    output = done.stdout + done.stderr
    assert done.returncode == 2, output
    lines = [line for line in output.splitlines() if line.strip() and line != "No MLflow run was created."]
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in output, output
