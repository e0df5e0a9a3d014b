"""Profiling any model from the command line: token ids and masks, a module of one's own, models built without weights,
errors that name what happened, and a missing extra. No model library needed (the hf and vision tests are apart).

Every test logs to a real MLflow SQLite store and reads the runs back; MACs are checked against their formula.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conftest import cli_env, run_cli
from fixture_models import tiny_lm_macs, tiny_lm_params

pytestmark = pytest.mark.slow
QUICK = ["timing.warmup=1", "timing.min_repeats=3", "timing.max_time_s=0.3", "peak.measure=false"]
TINY_LM = ["model=custom", "model._target_=fixture_models.TinyLM", "input.shape=[64]", "input.dtype=int64",
           "input.high=1000"]  # fmt: skip
MISSING_PACKAGE = "no_such_package_for_gflops_track"
MY_MODELS = f"""
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, width: int = 16) -> None:
        super().__init__()
        if width % 2:
            raise ValueError(f"width must be even, not {{width}}")
        self.linear = nn.Linear(width, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


class Broken(nn.Module):
    def __init__(self) -> None:
        import {MISSING_PACKAGE}  # a dependency the user forgot to install


class Denoiser(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(1000, 16)
        self.net = nn.Linear(16, 16)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.net(x + self.embed(t))


class KeywordOnly(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(16, 8)

    def forward(self, *, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
"""


def all_runs(uri: str) -> list:
    client = MlflowClient(uri)
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


def test_a_token_id_model_with_a_mask_is_profiled_from_the_cli(tmp_path: Path, store_uri: str) -> None:
    """Ids in [0, 1000) and a bool mask; before input.dtype existed the forward got floats: 'Expected tensor for
    argument #1 'indices' ... got torch.FloatTensor'."""
    mask = "+input.kwargs.mask={shape:[64],dtype:bool}"
    done = run_cli([*TINY_LM, mask, *QUICK], cwd=tmp_path, MLFLOW_TRACKING_URI=store_uri)
    assert done.returncode == 0, done.stderr[-3000:]
    (run,) = all_runs(store_uri)
    assert run.info.status == "FINISHED" and run.info.run_name == "tinylm-b2-cpu-fp32"  # not tiny_l_m
    assert run.data.metrics["cost/macs"] == tiny_lm_macs(2, 64) == 22_872_064
    assert run.data.metrics["cost/params"] == tiny_lm_params() == 228_968
    assert run.data.metrics["latency/median_ms"] > 0
    assert run.data.params["input.dtype"] == "int64" and run.data.params["input.high"] == "1000"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["model=custom", "model._target_=fixture_models.TinyLM", "input.shape=[64]", "input.dtype=int64"],
            "input.high=None is not allowed for input.dtype='int64': give the exclusive upper bound of the values",
        ),
        (
            [*TINY_LM[:-1], "input.high=5000"],
            "input.high=5000 is not allowed: TinyLM's only nn.Embedding (embed) has 1,000 rows, so token ids must be "
            "below 1,000 (input.high <= 1000)",
        ),
        (
            ["model=custom", "model._target_=torch.nn.Linear", "+model.in_features=4", "input.dtype=int64"],
            "input.dtype='int64' is not allowed without input.shape",
        ),
        (
            [*TINY_LM, "+input.kwargs.mask={shape:[64],dtype:int16}"],
            "input.kwargs.mask.dtype='int16' is not allowed: choose one of float, int64, int32, bool",
        ),
        ([*TINY_LM, "model.init=lazy"], "model.init='lazy' is not allowed: choose one of auto, meta, real"),
    ],
)
def test_bad_inputs_are_one_line_before_any_run(tmp_path: Path, args: list[str], message: str) -> None:
    done = run_cli(args, cwd=tmp_path)
    assert done.returncode == 2 and message in done.stderr, done.stderr[-2000:]
    assert "Traceback" not in done.stderr and not (tmp_path / "mlflow.db").exists()


def console_script(folder: Path) -> Path:
    """What pip writes for the ``gflops-track`` entry point (pyproject's [project.scripts]), in a bin folder of its
    own: run as a file, its folder (not the launch directory) starts sys.path, as for the installed script."""
    (folder / "bin").mkdir()
    script = folder / "bin" / "gflops-track"
    script.write_text("import sys\nfrom gflops_track.cli.main import main\nsys.exit(main())\n")
    return script


def test_a_module_of_ones_own_imports_from_the_launch_directory(tmp_path: Path, store_uri: str) -> None:
    """model._target_=mymodels.Net next to mymodels.py, with `python -m gflops_track` and with the `gflops-track`
    console script (whose path used to start with its bin folder, not the launch directory: No module named
    'mymodels'). MACs: 2 samples x 8 rows x 16 x 4."""
    (tmp_path / "mymodels.py").write_text(MY_MODELS)
    args = ["model=custom", "model._target_=mymodels.Net", "input.shape=[8,16]", *QUICK]
    by_module = run_cli(args, cwd=tmp_path, MLFLOW_TRACKING_URI=store_uri)
    assert by_module.returncode == 0, by_module.stderr[-3000:]
    by_script = subprocess.run(
        [sys.executable, str(console_script(tmp_path)), "run", *args], cwd=tmp_path, capture_output=True, text=True,
        timeout=600, env=cli_env(MLFLOW_TRACKING_URI=store_uri, XDG_CACHE_HOME=str(tmp_path / ".cache")),
    )  # fmt: skip
    assert by_script.returncode == 0, by_script.stderr[-3000:]
    runs = all_runs(store_uri)
    assert [run.info.status for run in runs] == ["FINISHED", "FINISHED"]
    assert {run.data.metrics["cost/macs"] for run in runs} == {2 * 8 * 16 * 4}
    assert {run.info.run_name for run in runs} == {"net-b2-cpu-fp32"}


def test_a_timestep_per_sample_and_keyword_only_inputs(tmp_path: Path, store_uri: str) -> None:
    """A denoiser fed (x, t) with one timestep per sample (``shape: []``: a (batch,) tensor), and a forward that
    takes only a keyword input (no input.shape): both were refused from the command line. MACs: the denoiser's
    Linear 2 x 16 x 16 (the embedding is a lookup), the keyword-only one's 2 x 16 x 8."""
    (tmp_path / "mymodels.py").write_text(MY_MODELS)
    timestep = "+input.args=[{shape:[],dtype:int64,high:1000}]"
    denoiser = run_cli(["model=custom", "model._target_=mymodels.Denoiser", "input.shape=[16]", timestep, *QUICK],
                       cwd=tmp_path, MLFLOW_TRACKING_URI=store_uri)  # fmt: skip
    assert denoiser.returncode == 0, denoiser.stderr[-3000:]
    keyword = run_cli(["model=custom", "model._target_=mymodels.KeywordOnly", "+input.kwargs.x=[16]", *QUICK],
                      cwd=tmp_path, MLFLOW_TRACKING_URI=store_uri)  # fmt: skip
    assert keyword.returncode == 0, keyword.stderr[-3000:]
    macs = {run.info.run_name: run.data.metrics["cost/macs"] for run in all_runs(store_uri)}
    assert macs == {"denoiser-b2-cpu-fp32": 2 * 16 * 16, "keyword_only-b2-cpu-fp32": 2 * 16 * 8}


def job_log(folder: Path) -> str:
    (log,) = folder.glob("outputs/*/*/gflops_track.log")  # Hydra's job log
    return log.read_text()


@pytest.mark.parametrize(
    ("target", "error"),
    [
        ("mymodels.Broken", f"ModuleNotFoundError: No module named '{MISSING_PACKAGE}'"),
        ("mymodels.Net", "ValueError: width must be even, not 5"),
        ("mymodelz.Net", "ModuleNotFoundError: No module named 'mymodelz'"),
    ],
)
def test_a_model_that_does_not_build_names_the_innermost_error(
    tmp_path: Path, store_uri: str, target: str, error: str
) -> None:
    """In the console, the run's error tag and the job log: the innermost exception, never Hydra's wrapper ('Error
    locating target ..., set env var HYDRA_FULL_ERROR=1 to see chained exception')."""
    (tmp_path / "mymodels.py").write_text(MY_MODELS)
    width = ["+model.width=5"] if target == "mymodels.Net" else []
    done = run_cli(
        ["model=custom", f"model._target_={target}", *width, "input.shape=[16]", *QUICK], cwd=tmp_path,
        MLFLOW_TRACKING_URI=store_uri,
    )  # fmt: skip
    assert done.returncode == 1
    (run,) = all_runs(store_uri)
    assert run.info.status == "FAILED" and run.data.tags["error"] == error
    assert f"marked FAILED): {error}" in done.stderr and error in job_log(tmp_path)
    for said in (done.stderr, run.data.tags["error"], job_log(tmp_path)):
        assert "HYDRA_FULL_ERROR" not in said and "InstantiationException" not in said


def test_a_model_built_without_weights_is_counted_and_not_timed(tmp_path: Path, store_uri: str) -> None:
    """model.init=meta: inference and the training step counted by formula, nothing timed, no peak; FINISHED."""
    done = run_cli(
        ["-m", "mode=inference,train", *TINY_LM, "model.init=meta", "peak.measure=true"], cwd=tmp_path,
        MLFLOW_TRACKING_URI=store_uri,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    jobs = {r.data.tags["mode"]: r for r in all_runs(store_uri) if "mlflow.parentRunId" in r.data.tags}
    for run in jobs.values():
        metrics = run.data.metrics
        assert run.info.status == "FINISHED" and metrics["cost/macs"] == tiny_lm_macs(2, 64)
        assert not any(key.startswith(("latency/", "peak/", "speed/", "step/latency")) for key in metrics)
        note = "timing skipped: model.init=meta built it without weights; the counts above need no weights"
        assert note in run.data.tags["mlflow.note.content"]
    # the step: forward M, backward 2M (every product's two operands need a gradient: the embedding's weight is
    # trained, so even the first layer's input does; the embedding itself is a gather, no MACs), SGD no MACs
    assert jobs["train"].data.metrics["step/macs"] == 3 * tiny_lm_macs(2, 64) == 68_616_192
    assert "timing skipped" in done.stdout


def test_a_lazy_module_is_profiled_with_and_without_weights(tmp_path: Path, store_uri: str) -> None:
    """nn.LazyLinear(8) on (2, 16): its first forward sizes it (both runs FAILED with 'uninitialized parameter'
    before); MACs = 2 * 16 * 8 = 256, params 16 * 8 + 8 = 136; built for real it is timed, on meta not."""
    lazy = ["model=custom", "model._target_=torch.nn.LazyLinear", "+model.out_features=8", "input.shape=[16]"]
    done = run_cli(["-m", *lazy, "model.init=auto,meta", *QUICK], cwd=tmp_path, MLFLOW_TRACKING_URI=store_uri)
    assert done.returncode == 0, done.stderr[-3000:]
    jobs = {r.data.params["model.init"]: r for r in all_runs(store_uri) if "mlflow.parentRunId" in r.data.tags}
    assert sorted(jobs) == ["auto", "meta"]
    for run in jobs.values():
        assert run.info.status == "FINISHED"
        assert (run.data.metrics["cost/macs"], run.data.metrics["cost/params"]) == (2 * 16 * 8, 16 * 8 + 8)
    assert "latency/median_ms" in jobs["auto"].data.metrics and "latency/median_ms" not in jobs["meta"].data.metrics


@pytest.mark.parametrize(("group", "module", "extra"), [("hf", "transformers", "hf"), ("timm", "timm", "vision")])
def test_a_missing_extra_is_one_line_naming_the_install(tmp_path: Path, group: str, module: str, extra: str) -> None:
    if importlib.util.find_spec(module) is not None:
        pytest.skip(f"{module} is installed in this environment")
    done = run_cli([f"model={group}", "model.name=x"], cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert f"model={group} needs {module}, which is not installed: pip install 'gflops-track[{extra}]'" in done.stderr
    assert not (tmp_path / "mlflow.db").exists()
