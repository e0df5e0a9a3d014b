"""`mlflow run . --env-manager uv` from the repo checkout builds the environment python_env.yaml and requirements.lock
describe (every locked pin, nothing unlocked besides torch, pip and the project) and its run lands in `gflops-track`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient
from packaging.version import Version

from conftest import SMALL_BLOCK, cli_env
from gflops_track.machine.environment import canonical_name, environment_hash, parse_environment_txt

REPO = Path(__file__).resolve().parents[1]
LOCK = REPO / "requirements.lock"
BIN = Path(sys.executable).parent


def test_python_env_installs_torch_then_the_lock_then_the_project() -> None:
    python_env = yaml.safe_load((REPO / "python_env.yaml").read_text())
    assert python_env["dependencies"] == ["torch==2.13.0", "-r requirements.lock", "-e ."]
    # a minor version: uv takes any installed 3.11.x; "3.11.7" would make uv download that exact patch release
    assert python_env["python"] == "3.11"
    locked = parse_environment_txt(LOCK.read_text())
    assert {"mlflow", "hydra-core", "thop", "numpy"} <= locked.keys()
    assert "torch" not in locked  # each user picks the torch build (CPU or CUDA): docs/reproducible-runs.md
    assert not [name for name in locked if name.startswith(("nvidia-cu", "nvidia-cudnn", "triton", "cuda-"))]
    lines = [line for line in LOCK.read_text().splitlines() if line and not line.startswith("#")]
    assert all("==" in line for line in lines)  # every line a pin


def uv_settings() -> dict[str, str]:
    """uv does not read pip's configuration: where pip finds extra wheels (on this project's CI machines, the local
    torch CPU wheel in pip's `find-links`), uv is told the same through UV_FIND_LINKS. The uv cache stays the user's
    (not the test's temp XDG_CACHE_HOME), so a warm cache makes the env in seconds."""
    settings = {"UV_CACHE_DIR": os.environ.get("UV_CACHE_DIR", str(Path.home() / ".cache" / "uv"))}
    if "UV_FIND_LINKS" not in os.environ:
        pip_config = subprocess.run(
            [sys.executable, "-m", "pip", "config", "get", "global.find-links"], capture_output=True, text=True
        )
        links = os.environ.get("PIP_FIND_LINKS") or (pip_config.stdout.strip() if pip_config.returncode == 0 else "")
        if links:
            settings["UV_FIND_LINKS"] = ",".join(links.split())
    return settings


@pytest.mark.slow
def test_mlflow_run_with_uv_builds_the_locked_environment(tmp_path: Path) -> None:
    if shutil.which("uv", path=f"{BIN}{os.pathsep}{os.environ['PATH']}") is None:
        pytest.skip("needs uv (pip install -e '.[dev]' installs it)")
    store = f"sqlite:///{tmp_path / 'store.db'}"
    env = cli_env(MLFLOW_TRACKING_URI=store, MLFLOW_ENV_ROOT=str(tmp_path / "envs"), **uv_settings())
    env.pop("PYTHONPATH")  # the run imports the project from the env it built, not from this test's path
    env["PATH"] = f"{BIN}{os.pathsep}{env['PATH']}"  # `mlflow` runs `uv` from PATH
    env["XDG_CACHE_HOME"] = str(tmp_path / ".cache")  # the peak-probe cache (the uv cache has UV_CACHE_DIR)
    overrides = " ".join(["norm_fn=batch", *SMALL_BLOCK, "timing.enabled=false", "peak.measure=false",
                          "counting.thop=false", f"hydra.run.dir={tmp_path / 'out'}"])  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "mlflow", "run", str(REPO), "--env-manager", "uv",
         "--experiment-name", "gflops-track", "-P", f"overrides={overrides}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]

    client = MlflowClient(store)
    experiment = client.get_experiment_by_name("gflops-track")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["mlflow.project.env"] == "uv"
    assert run.data.metrics["cost/macs"] == 2 * (2 * 16 * 8 * 8 * 16 * 9)  # two 3x3 convs, batch 2, 16->16, 8x8

    (built,) = (tmp_path / "envs").iterdir()  # the env mlflow built for this project
    code = "import json; from gflops_track.machine.environment import installed_packages as p; print(json.dumps(p()))"
    listing = subprocess.run([str(built / "bin" / "python"), "-c", code], env=env, capture_output=True, text=True)
    assert listing.returncode == 0, listing.stderr
    installed = json.loads(listing.stdout)
    locked = parse_environment_txt(LOCK.read_text())
    wrong = {name: (pin, installed.get(name)) for name, pin in locked.items()
             if name not in installed or Version(installed[name]) != Version(pin)}  # fmt: skip
    assert not wrong, f"locked pin -> installed: {wrong}"
    assert set(installed) - set(locked) <= {"torch", "pip", canonical_name("gflops-track")}
    assert Version(installed["torch"]).base_version == "2.13.0"
    assert run.data.tags["env_hash"] == environment_hash(installed)
