"""Shared test helpers: a real MLflow SQLite store in a temp dir (copied from one migrated once per session), and the
CLI run as users run it."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch

TESTS_DIR = Path(__file__).resolve().parent

SMALL_BLOCK = ["model.in_planes=16", "model.planes=16", "batch.height=8", "batch.width=8"]  # a 16-channel 8x8 block
QUICK_NO_THOP = [
    "timing.warmup=1", "timing.min_repeats=3", "timing.max_time_s=0.3", "peak.measure=false", "counting.thop=false",
]  # fmt: skip

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

# The model libraries of the extras hf and vision, each in a folder of its own (.ci/install-extras puts them there):
# the torchvision wheel of this environment breaks `import transformers` wherever it is importable (see
# tests/torchvision_ops.py), so the hf tests run with .extras/hf on their path and the vision tests with .extras/vision.
EXTRAS_DIR = TESTS_DIR.parent / ".extras"
# `python -m gflops_track` for the vision tests: torchvision_ops declares the ops a mismatched torchvision lacks first
WITH_TORCHVISION_OPS = (
    "import torchvision_ops, runpy; runpy.run_module('gflops_track', run_name='__main__', alter_sys=True)"
)


def extra_path(extra: str, module: str) -> str:
    """The folder to put on PYTHONPATH for an extra's library: .extras/<extra>, or '' when this environment has the
    library itself; skips the test (as pytest.importorskip does) when neither has it."""
    folder = EXTRAS_DIR / extra
    if (folder / module).is_dir():
        return str(folder)
    if importlib.util.find_spec(module) is not None:
        return ""
    pytest.skip(f"{module} is not installed: .ci/install-extras puts the {extra} extra in .extras/{extra}")


def cli_env(*, pythonpath: Sequence[str] = (), **extra: str) -> dict[str, str]:
    """The environment of a user's shell: no inherited MLflow run or URI unless a test sets one; ``pythonpath``
    (an extra's folder) comes after tests/ on the path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "GFLOPS_TRACK_"))}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS_DIR), *pythonpath, env.get("PYTHONPATH", "")]))
    env["COLUMNS"] = "200"
    # The servers tests start skip MLflow's GenAI job runner (six huey consumer processes and seconds of CPU at every
    # start), which gflops-track never uses; tracking, artifacts and the UI are the same.
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    env.update(extra)
    return env


def run_cli(
    args: list[str],
    cwd: Path,
    timeout: int = 600,
    *,
    pythonpath: Sequence[str] = (),
    torchvision_ops: bool = False,
    **env: str,
) -> subprocess.CompletedProcess[str]:
    """``python -m gflops_track ARGS`` in ``cwd`` (``pythonpath``: an extra's folder; ``torchvision_ops``: with the
    ops a mismatched torchvision lacks declared first)."""
    env.setdefault("XDG_CACHE_HOME", str(cwd / ".cache"))  # the peak-probe cache stays in the test's temp dir
    command = ["-c", WITH_TORCHVISION_OPS] if torchvision_ops else ["-m", "gflops_track"]
    return subprocess.run(
        [sys.executable, *command, *args],
        cwd=cwd,
        env=cli_env(pythonpath=pythonpath, **env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(autouse=True)
def cpu_unless_a_cuda_test(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests not marked ``cuda`` run on CPU, as they do in CI, also on a machine with a GPU: the processes they start
    see no GPU (``CUDA_VISIBLE_DEVICES=""``), so ``device=auto`` is cpu in them, and the run names, timers and memory
    figures these tests check are the CPU's. In the test's own process CUDA stays visible (the variable is read when
    CUDA starts): tests that time in process name ``device=cpu``. The ``cuda`` tests run the GPU path, the CLI's
    included."""
    if torch.cuda.is_available() and request.node.get_closest_marker("cuda") is None:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")


@pytest.fixture(autouse=True)
def no_inherited_tracking_uri(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts with no MLflow tracking URI and no active run id, and leaves none behind:
    ``mlflow.set_tracking_uri`` (called by ``tracking.store.connect``) also writes $MLFLOW_TRACKING_URI into
    ``os.environ``, so without this a test that logs in-process would point every later test of its worker at its
    store (a preflight test once read another test's broken artifact location that way)."""
    import mlflow.tracking._tracking_service.utils as tracking_utils

    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(tracking_utils, "_tracking_uri", None)


@pytest.fixture(scope="session")
def migrated_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty SQLite store with MLflow's schema, made once per session: creating and migrating a store takes
    seconds (tens on a busy machine), copying this file a few milliseconds. Tests of store creation itself (the
    default ./mlflow.db, parallel sweeps into one fresh file) make their own."""
    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("template") / "store.db"
    MlflowClient(f"sqlite:///{path}").search_experiments(max_results=1)  # creates and migrates the schema
    return path


@pytest.fixture
def store_uri(tmp_path: Path, migrated_store: Path) -> str:
    """A SQLite store of the test's own, in its temp dir: a copy of the session's empty migrated store."""
    shutil.copyfile(migrated_store, tmp_path / "store.db")
    return f"sqlite:///{tmp_path / 'store.db'}"
