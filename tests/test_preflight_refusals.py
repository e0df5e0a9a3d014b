"""Faults of issue 20 that preflight now refuses, and the ones a job now survives: a stale MLFLOW_RUN_ID, an output
directory or artifact location that cannot be written, an artifact location that breaks mid-job, a job that never
ends (``timeout_s``), and small config gaps (``device.index`` on the CPU, absurd thread counts, unknown keys).

Each is reproduced against a real MLflow SQLite store; "cannot be written" is real for root too: a regular file in
the way of the directory, or a directory made immutable with ``chattr +i`` where the machine allows it."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

import fixture_models
from conftest import QUICK_NO_THOP, SMALL_BLOCK, run_cli
from gflops_track.app.preflight import preflight
from gflops_track.app.signals import JobTimeout, job_deadline
from gflops_track.cli.run import CONFIG_DIR
from gflops_track.options.runtime import MAX_THREADS
from gflops_track.tracking.recorder import ArtifactWriteError, Recorder, RunTarget
from gflops_track.tracking.records import RunRecord

TINY_MODEL = ["model=custom", "+model.in_channels=3", "batch.height=4", "batch.width=4", "input.shape=[3,4,4]"]


def all_runs(uri: str) -> list:
    client = MlflowClient(uri)
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


def experiment_with_artifacts_at(uri: str, location: Path, name: str = "gflops-track") -> str:
    return MlflowClient(uri).create_experiment(name, artifact_location=str(location))


@contextlib.contextmanager
def immutable(directory: Path) -> Iterator[None]:
    """``directory`` made immutable (``chattr +i``: nothing can be created in it, not even by root); skipped where
    the machine does not allow it."""
    done = subprocess.run(["chattr", "+i", str(directory)], capture_output=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"chattr +i is not allowed here: {done.stderr.decode().strip()}")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(directory)], check=True)


@contextlib.contextmanager
def unwritable_cwd(tmp_path: Path, how: str) -> Iterator[Path]:
    """A working directory where Hydra cannot make ``multirun/`` or ``outputs/``: both are regular files, or the
    directory itself is immutable."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    if how == "file in the way":
        for name in ("multirun", "outputs"):
            (cwd / name).write_text("not a directory")
        yield cwd
    else:
        with immutable(cwd):
            yield cwd


# --- item 5: a stale MLFLOW_RUN_ID -----------------------------------------------------------------------------------


def ended_run(uri: str) -> str:
    client = MlflowClient(uri)
    experiment_id = client.create_experiment("gflops-track")
    run_id = client.create_run(experiment_id, run_name="b1-linear-cpu-fp32").info.run_id
    client.log_param(run_id, "batch.size", "1")
    client.set_terminated(run_id, "FINISHED")
    return run_id


@pytest.mark.parametrize("which", ["a FINISHED run", "a bogus id"])
def test_stale_mlflow_run_id_is_refused_and_nothing_is_written(
    which: str, tmp_path: Path, store_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    finished = ended_run(store_uri)
    run_id = finished if which == "a FINISHED run" else "0123456789abcdef0123456789abcdef"
    before = MlflowClient(store_uri).get_run(finished)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store_uri)
    monkeypatch.setenv("MLFLOW_RUN_ID", run_id)
    checked = preflight(["batch.size=5"], CONFIG_DIR)
    assert len(checked.errors) == 1, checked.errors
    assert checked.errors[0].startswith(f"MLFLOW_RUN_ID={run_id!r} is not allowed: ")
    assert ("already FINISHED" if which == "a FINISHED run" else "has no such run") in checked.errors[0]
    after = MlflowClient(store_uri).get_run(finished)
    assert (after.info.run_name, after.data.tags, after.data.params) == (
        before.info.run_name, before.data.tags, before.data.params)  # fmt: skip
    experiment = MlflowClient(store_uri).get_experiment_by_name("gflops-track")
    assert "gflops_track.write_check" not in experiment.tags  # refused before the store's write check


def test_an_open_mlflow_run_id_is_accepted(tmp_path: Path, store_uri: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """What `mlflow run` does: the run it made is RUNNING, and the job logs into it."""
    monkeypatch.chdir(tmp_path)
    client = MlflowClient(store_uri)
    run_id = client.create_run(client.create_experiment("outer")).info.run_id
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store_uri)
    monkeypatch.setenv("MLFLOW_RUN_ID", run_id)
    assert preflight(["batch.size=5"], CONFIG_DIR).errors == []


@pytest.mark.slow
def test_stale_mlflow_run_id_exits_2_and_leaves_the_finished_run_alone(tmp_path: Path, store_uri: str) -> None:
    """Before: the FINISHED run was renamed, the job hit "Changing param values is not allowed", spooled, exit 0."""
    finished = ended_run(store_uri)
    model = ["model=custom", "model._target_=torch.nn.Linear", "+model.in_features=8", "+model.out_features=4"]
    done = run_cli(
        [*model, "input.shape=[8]", "batch.size=5", *QUICK_NO_THOP],
        cwd=tmp_path, MLFLOW_TRACKING_URI=store_uri, MLFLOW_RUN_ID=finished,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if "invalid config" in line]
    assert len(errors) == 1 and f"MLFLOW_RUN_ID={finished!r}" in errors[0] and "Traceback" not in done.stderr
    (run,) = all_runs(store_uri)
    assert run.info.run_name == "b1-linear-cpu-fp32" and run.info.status == "FINISHED"
    assert run.data.params == {"batch.size": "1"}
    assert not list(tmp_path.rglob("mlflow_spool")) and not (tmp_path / "outputs").exists()


# --- item 6: an output directory that cannot be written --------------------------------------------------------------


@pytest.mark.parametrize("how", ["file in the way", "immutable directory"])
@pytest.mark.parametrize("argv", [["-m", "batch.size=1,2"], ["batch.size=1"]], ids=["sweep", "single run"])
def test_unwritable_output_directory_is_refused(
    how: str, argv: list[str], tmp_path: Path, store_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store_uri)
    experiment_with_artifacts_at(store_uri, tmp_path / "artifacts")  # else they would go to ./mlruns: unwritable
    key = "hydra.sweep.dir" if "-m" in argv else "hydra.run.dir"
    with unwritable_cwd(tmp_path, how) as cwd:
        monkeypatch.chdir(cwd)
        checked = preflight(argv, CONFIG_DIR)
        assert len(checked.errors) == 1 and checked.errors[0].startswith(f"{key}="), checked.errors
        assert "cannot be written" in checked.errors[0]
        elsewhere = tmp_path / "elsewhere"  # set to a writable place, it is accepted
        assert preflight([*argv, f"{key}={elsewhere}"], CONFIG_DIR).errors == []
    assert all_runs(store_uri) == []


@pytest.mark.slow
@pytest.mark.parametrize("how", ["file in the way", "immutable directory"])
def test_unwritable_working_directory_exits_2_and_creates_no_run(how: str, tmp_path: Path, store_uri: str) -> None:
    """Before: Hydra failed making multirun/ after the sweep's run existed: a traceback, exit 1, the run RUNNING."""
    experiment_with_artifacts_at(store_uri, tmp_path / "artifacts")
    with unwritable_cwd(tmp_path, how) as cwd:
        done = run_cli(
            ["-m", "norm_fn=group,none", *SMALL_BLOCK, *QUICK_NO_THOP],
            cwd=cwd, MLFLOW_TRACKING_URI=store_uri, XDG_CACHE_HOME=str(tmp_path / "cache"),
        )  # fmt: skip
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert "hydra.sweep.dir=" in done.stderr and "cannot be written" in done.stderr
    assert all_runs(store_uri) == []


# --- item 9: an artifact location that cannot be written -------------------------------------------------------------


def test_unwritable_artifact_location_is_refused(
    tmp_path: Path, store_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "blocked").write_text("a file where the artifact root's parent should be")
    experiment_with_artifacts_at(store_uri, tmp_path / "blocked" / "artifacts")
    experiment_with_artifacts_at(store_uri, tmp_path / "fine" / "artifacts", name="fine")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store_uri)
    checked = preflight(["batch.size=1"], CONFIG_DIR)
    assert len(checked.errors) == 1 and checked.errors[0].startswith("tracking.experiment='gflops-track' cannot be")
    assert f"{tmp_path / 'blocked'} is not a directory" in checked.errors[0]
    assert preflight(["batch.size=1", "tracking.experiment=fine"], CONFIG_DIR).errors == []
    assert all_runs(store_uri) == []


def test_unwritable_default_artifact_root_is_refused(
    tmp_path: Path, store_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new experiment's artifacts go to the store's default root (./mlruns from where it is created)."""
    (tmp_path / "mlruns").write_text("a file in the way of the default artifact root")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store_uri)
    checked = preflight(["batch.size=1"], CONFIG_DIR)
    assert len(checked.errors) == 1 and "artifact location" in checked.errors[0], checked.errors


def test_artifact_write_failure_mid_job_fails_the_job_not_spooled(tmp_path: Path, store_uri: str) -> None:
    """The store takes the values, the artifact directory refuses the files: ArtifactWriteError (the job's run is
    then FAILED by the job), never the spool (an outage it is not: sync would meet the same directory)."""
    location = tmp_path / "artifacts"
    experiment_with_artifacts_at(store_uri, location)
    recorder = Recorder(RunTarget(store_uri, "gflops-track", "job"), tmp_path / "spool", lambda message: None)
    recorder.open(RunRecord(files={"config.yaml": b"a: 1\n"}))
    location.rename(tmp_path / "moved")
    location.write_text("a file in the way")
    with pytest.raises(ArtifactWriteError, match=f"artifact location .*{location}"):
        recorder.log(RunRecord(metrics={"cost/macs": 12.0}, files={"layers.csv": b"name\n"}))
    assert recorder.spooled is None and not (tmp_path / "spool").exists()
    recorder.finish("FAILED", "ArtifactWriteError: ...")
    run = MlflowClient(store_uri).get_run(recorder.run_id)
    assert run.info.status == "FAILED" and run.data.metrics["cost/macs"] == 12.0  # the values were kept
    assert run.data.tags["error"] == "ArtifactWriteError: ..."


@pytest.mark.slow
def test_artifact_location_broken_mid_sweep_fails_the_jobs_and_exits_1(tmp_path: Path, store_uri: str) -> None:
    """Before: the job runs stayed RUNNING with no metrics (spooled, as if the store were down), the sweep's run
    FINISHED, exit 0. Now: each job's run FAILED with the reason, the sweep's run FAILED, exit 1, nothing spooled."""
    location = tmp_path / "artifacts"
    experiment_with_artifacts_at(store_uri, location)
    done = run_cli(
        ["-m", *TINY_MODEL, "model._target_=fixture_models.BreaksArtifactLocation", f"+model.location={location}",
         "batch.size=1,2", *QUICK_NO_THOP],
        cwd=tmp_path, MLFLOW_TRACKING_URI=store_uri,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr[-3000:]
    runs = all_runs(store_uri)
    jobs = [run for run in runs if "mlflow.parentRunId" in run.data.tags]
    (sweep,) = [run for run in runs if "mlflow.parentRunId" not in run.data.tags]
    assert len(jobs) == 2 and [run.info.status for run in jobs] == ["FAILED", "FAILED"]
    for run in jobs:
        assert run.data.tags["error"].startswith("ArtifactWriteError: the run's files could not be written")
    assert sweep.info.status == "FAILED" and "report could not be written" in sweep.data.tags["error"]
    assert not list(tmp_path.rglob("mlflow_spool"))


@pytest.mark.slow
def test_unwritable_artifact_location_exits_2_and_creates_no_run(tmp_path: Path, store_uri: str) -> None:
    (tmp_path / "blocked").write_text("a file in the way")
    experiment_with_artifacts_at(store_uri, tmp_path / "blocked" / "artifacts")
    done = run_cli(["-m", "norm_fn=group,none", *SMALL_BLOCK, *QUICK_NO_THOP], cwd=tmp_path,
                   MLFLOW_TRACKING_URI=store_uri)  # fmt: skip
    assert done.returncode == 2 and "artifact location" in done.stderr, done.stderr[-2000:]
    assert all_runs(store_uri) == [] and not list(tmp_path.rglob("mlflow_spool"))


# --- item 12: a job that never ends ----------------------------------------------------------------------------------


def test_deadline_stops_a_sleep_and_restores_the_handler_and_timer_exactly() -> None:
    def mine(_signum: int, _frame: object) -> None:
        raise AssertionError("the earlier timer fired inside the block")

    previous = signal.signal(signal.SIGALRM, mine)
    try:
        signal.setitimer(signal.ITIMER_REAL, 60.0)  # someone else's timer, due in 60 s
        started = time.monotonic()
        with pytest.raises(JobTimeout, match=r"timed out after 0\.2 s"), job_deadline(0.2) as bounded:
            assert bounded
            time.sleep(10**6)
        assert time.monotonic() - started < 30  # ended by the deadline, not by a 10**6 s sleep
        assert signal.getsignal(signal.SIGALRM) is mine
        remaining, _ = signal.getitimer(signal.ITIMER_REAL)
        assert 0 < remaining <= 60.0  # the earlier timer is set again for what was left of it
        with job_deadline(None) as bounded:  # no bound
            assert not bounded and signal.getsignal(signal.SIGALRM) is mine
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_deadline_is_not_in_force_outside_the_main_thread() -> None:
    seen: list[bool] = []

    def job() -> None:
        with job_deadline(0.01) as bounded:
            seen.append(bounded)
            time.sleep(0.1)  # would be cut short if an alarm could reach this thread

    worker = threading.Thread(target=job)
    worker.start()
    worker.join()
    assert seen == [False] and signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def test_deadline_is_not_swallowed_by_except_exception() -> None:
    """A cross-check or a user's forward that catches Exception must not let a job run on past its bound."""
    with pytest.raises(JobTimeout), job_deadline(0.1):
        try:
            time.sleep(10**6)
        except Exception:  # what the test is about: a broad catch on the way
            pytest.fail("JobTimeout was caught as an Exception")


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf"])
def test_timeout_out_of_range_is_refused(value: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'p.db'}")
    (error,) = preflight([f"timeout_s={value}"], CONFIG_DIR).errors
    assert error.startswith("timeout_s=") and "seconds > 0, or null for no bound" in error
    assert not (tmp_path / "p.db").exists()


@pytest.mark.slow
def test_job_past_timeout_fails_and_the_sweep_goes_on(tmp_path: Path, store_uri: str) -> None:
    """Before: a forward in time.sleep(10**6) ran forever. Now: that job FAILED "timed out after 2 s", the next
    job FINISHED, exit 1."""
    done = run_cli(
        ["-m", *TINY_MODEL, "model._target_=fixture_models.Hangs", "+model.hang_on=1", "batch.size=1,2",
         "timeout_s=2", "timing.layers=false", *QUICK_NO_THOP],  # job 2 ends well inside 2 s on a loaded machine
        cwd=tmp_path, MLFLOW_TRACKING_URI=store_uri, timeout=300,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr[-3000:]
    jobs = {r.data.params["batch.size"]: r for r in all_runs(store_uri) if "mlflow.parentRunId" in r.data.tags}
    assert {size: run.info.status for size, run in jobs.items()} == {"1": "FAILED", "2": "FINISHED"}
    assert jobs["1"].data.tags["error"] == "JobTimeout: timed out after 2 s (timeout_s=2)"
    assert jobs["2"].data.params["timeout_s"] == "2.0" and jobs["2"].data.metrics["cost/macs"] == 2 * 4 * 4 * 3 * 4
    assert "timed out after 2 s" in done.stderr


# --- item 13: small gaps ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["device=cpu", "device.index=1"], "device.index=1 is not allowed with device=cpu"),
        (["runtime.threads=100000"], f"runtime.threads=100000 is not allowed: it must be null (torch's default) "
                                     f"or an integer from 1 to {MAX_THREADS}"),
        (["foo=bar"], "foo is not a known key (known keys: batch, counting, device, input, mode, model, norm_fn, "
                      "peak, precision, runtime, timeout_s, timing, tracking, train)"),
        (["-m", "foo=bar,baz"], "foo is not a known key (known keys: batch,"),
        (["timing.max_tim_s=1"], "timing.max_tim_s is not a known key (did you mean timing.max_time_s?)"),
        (["timng.max_time_s=1"], "timng is not a known key (did you mean timing?)"),  # was OmegaConf's raw line
        (["tracking.bogus=1"], "tracking.bogus is not a known key (known keys: enabled, experiment, run_name, uri)"),
        # an argument the model's constructor does not take: adding it with + would only move the refusal
        (["model.foo=1"], "model.foo is not allowed: gflops_track.models.ResidualBlock takes in_planes, norm_fn, "
                          "planes, stride"),
        (["-m", "model.plane=64,32"], "model.plane is not allowed (did you mean model.planes?): "
                                      "gflops_track.models.ResidualBlock takes"),
        (["model.config.n_layer=2"], "model.config is not allowed: gflops_track.models.ResidualBlock takes"),
        (["-m", "model=hf", "model.confg.n_layer=1,2"],
         "model.confg is not allowed (did you mean model.config?): gflops_track.models.huggingface.build takes config, "
         "name, task"),
        # one it takes: the override given back whole with its +, a sweep's in one line (not one per job), a key
        # inside a missing node named whole (Hydra names the node)
        ([*TINY_MODEL, "model._target_=torch.nn.Linear", "model.in_features=4"],
         "model.in_features is not in the config: a new key is added with +model.in_features=4"),
        (["-m", "model=hf", "model.config.n_layer=1,2"], "model.config is not in the config: a new key is added with "
                                                         "+model.config.n_layer=1,2"),
        (["input.kwargs.mask=1"],
         "input.kwargs.mask is not in the config: a new key is added with +input.kwargs.mask=1"),
        # where the command sweeps the key's group, + is refused by the options that have the key: ++
        (["-m", "model=custom,residual_block", "model._target_=gflops_track.models.ResidualBlock", "model.stride=1"],
         "model.stride is not in the config: a new key is added with ++model.stride=1"),
        # a sweep that makes no job launched none under a sweep run of its own, and exited 0
        (["-m", "batch.size=range(5,1)"], "batch.size=range(5,1) sweeps no value, so the sweep has no job"),
        (["-m", "model=glob(zz*)", "timing.enabled=false"], "model=glob(zz*) sweeps no value"),
        (["-m", "model.foo=glob(*)"], "model.foo=glob(*) sweeps no value"),
        # a sweep of values without -m: Hydra refused it with a traceback after the store existed
        (["batch.size=range(1,3)", "timing.enabled=false"], "batch.size=range(1,3) sweeps several values, which needs "
                                                            "-m: python -m gflops_track -m batch.size=range(1,3) "
                                                            "timing.enabled=false"),
        # *args and positional-only parameters cannot be set by keyword: never named as what the model takes
        ([*TINY_MODEL, "model._target_=fixture_models.StarredBlocks", "model.block=1"],
         "model.block is not allowed: fixture_models.StarredBlocks takes width"),
        # a _target_ that does not resolve: the line without the constructor's arguments (it crashed preflight)
        (["model=custom", "model._target_=${oops}", "model.foo=1"],
         "model.foo is not in the config: a new key is added with +model.foo=1"),
        # inside a null value (an assertion in OmegaConf crashed preflight) and a typed one (OmegaConf's raw line)
        (["input.shape.x=1"], "input.shape.x is not allowed: input.shape is a value (None), which holds no keys; "
                              "set input.shape itself"),
        (["batch.size.x=1"], "batch.size.x is not allowed: batch.size is a value (2), which holds no keys; set "
                             "batch.size itself"),
        # a key inside a plain value (Hydra would make the value a node)
        (["model.planes.foo=1"], "model.planes.foo is not allowed: model.planes is a value (384), which holds no keys; "
                                 "set model.planes itself"),
        (["-m", "model=hf", "model.nme=gpt2"], "model.nme is not allowed (did you mean model.name?)"),
        # input.shape is the whole per-sample shape: a size it does not hold was ignored, the run named by it
        (
            [*TINY_MODEL, "model._target_=torch.nn.Identity", "-m", "batch.height=4,8"],
            "batch.height=8 is not allowed with input.shape=[3, 4, 4]: input.shape is the whole per-sample shape (its "
            "height is 4); give the size there, e.g. input.shape=[3,8,4]",
        ),
    ],
)  # fmt: skip
def test_small_gaps_are_refused_by_name(
    argv: list[str], expected: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'p.db'}")
    errors = preflight(argv, CONFIG_DIR).errors  # the first line is the case's; others may follow (every bad key)
    assert errors[0].startswith(expected) and len(set(errors)) == len(errors), errors
    assert not (tmp_path / "p.db").exists()


def test_every_bad_key_of_a_job_is_named_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Hydra stops at the first key it cannot set: the others were found one command at a time."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'p.db'}")
    takes = "gflops_track.models.ResidualBlock takes in_planes, norm_fn, planes, stride"
    assert preflight(["model.plane=3", "+model.foo=1", "batch.size.x=3", "model.bar=2"], CONFIG_DIR).errors == [
        "batch.size.x is not allowed: batch.size is a value (2), which holds no keys; set batch.size itself",
        f"model.plane is not allowed (did you mean model.planes?): {takes}",
        f"model.bar is not allowed: {takes}",
        f"model.foo is not allowed: {takes}",
    ]
    # a sweep's bad key is one line for all its jobs; a key left unset after a typo is named too
    assert preflight(["-m", "model=hf", "model.nme=gpt2,bert"], CONFIG_DIR).errors == [
        "model.nme is not allowed (did you mean model.name?): gflops_track.models.huggingface.build takes config, "
        "name, task",
        "model.name=??? is not allowed: this key must be set",
    ]
    assert not (tmp_path / "p.db").exists()


def test_thread_counts_within_the_bound_are_accepted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'p.db'}")
    assert preflight(["-m", f"runtime.threads=1,{MAX_THREADS}"], CONFIG_DIR).errors == []
    assert preflight(["device=cpu"], CONFIG_DIR).errors == []


def test_a_negative_token_id_is_refused_before_any_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An id indexes a row of the model's embedding: a negative one fails the forward with an IndexError after the run
    exists (found by the adversarial pass). Refused in preflight, like an id beyond the rows."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'p.db'}")
    tiny_lm = ["model=custom", "model._target_=fixture_models.TinyLM", "input.shape=[64]", "input.dtype=int64"]
    errors = preflight([*tiny_lm, "input.low=-3", "input.high=5"], CONFIG_DIR).errors
    assert len(errors) == 1 and errors[0].endswith(
        "input.low=-3 is not allowed: TinyLM's only nn.Embedding (embed) has 1,000 rows, so token ids must be >= 0"
    ), errors
    assert preflight([*tiny_lm, "input.low=0", "input.high=5"], CONFIG_DIR).errors == []


def test_floats_into_an_embedding_are_refused_before_any_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """input.shape without input.dtype feeds floats: a model that looks up its embedding by that input failed its
    forward after the run existed. Preflight runs it on meta, sees the embedding refuse the floats, and names the fix;
    a float input that the model does not index by (a Linear) is left alone."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'p.db'}")
    (error,) = preflight(
        ["model=custom", "model._target_=fixture_models.TinyLM", "input.shape=[64]"], CONFIG_DIR
    ).errors
    assert error == (
        "input.dtype='float' is not allowed: TinyLM's only nn.Embedding (embed) looks up its rows by the input, so it "
        "must hold integer ids (RuntimeError: Expected tensor for argument #1 'indices' to have one of the following "
        "scalar types: Long, Int; but got torch.float32 instead); set input.dtype=int64 input.high=1000"
    )
    embedding = ["model=custom", "model._target_=torch.nn.Embedding", "+model.num_embeddings=50",
                 "+model.embedding_dim=4", "input.shape=[7]"]  # fmt: skip
    (error,) = preflight(embedding, CONFIG_DIR).errors
    assert error.startswith("input.dtype='float' is not allowed: the model (Embedding) looks up its rows by the input")
    assert error.endswith("set input.dtype=int64 input.high=50")
    (error,) = preflight([*embedding, "input.dtype=bool"], CONFIG_DIR).errors  # a mask is no id either
    assert error.startswith("input.dtype='bool' is not allowed: the model (Embedding) looks up its rows by the input")
    assert not (tmp_path / "p.db").exists()
    assert preflight([*embedding, "input.dtype=int64", "input.high=50"], CONFIG_DIR).errors == []
    linear = ["model=custom", "model._target_=torch.nn.Linear", "+model.in_features=7", "+model.out_features=2"]
    assert preflight([*linear, "input.shape=[7]"], CONFIG_DIR).errors == []


def test_a_sweep_builds_its_model_once_for_the_checks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Preflight's checks on a copy without weights build each model config once, not once per job: a sweep of
    three batch sizes over one model builds it once (a constructor that takes a second took three)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'p.db'}")
    before = fixture_models.CountsBuilds.builds
    sweep = ["-m", "model=custom", "model._target_=fixture_models.CountsBuilds", "+model.in_features=7",
             "input.shape=[7]", "batch.size=1,2,3"]  # fmt: skip
    assert preflight(sweep, CONFIG_DIR).errors == []
    assert fixture_models.CountsBuilds.builds - before == 1


def test_a_sqlite_store_in_a_missing_directory_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A mistyped directory in a SQLite URI was created, and a new, empty store started there (as root, even
    /nonexistent): refused, naming the directory, and nothing is made."""
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'typo_dir' / 'sub' / 'x.db'}"
    (error,) = preflight([f"tracking.uri={uri}"], CONFIG_DIR).errors
    assert error == (
        f"tracking.uri={uri!r} cannot be used: directory {str(tmp_path / 'typo_dir' / 'sub')!r} does not exist "
        "(create it first: a SQLite store is made in an existing directory)"
    )
    assert not (tmp_path / "typo_dir").exists()
