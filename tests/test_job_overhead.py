"""What a job does besides measuring, in process, into real MLflow stores: a single run keeps its own roofline.png
and per-layer charts, a sweep's jobs leave them to the sweep's report (one roofline with every run, each run's
layers); nothing draws or writes from another thread while a forward is timed."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from gflops_track.app.channels import publish_parent_run, withdraw_parent_run
from gflops_track.app.job import run_job
from gflops_track.app.schema import AppConfig
from gflops_track.common import names
from gflops_track.compare.report import finish_sweep
from gflops_track.tracking.store import connect, ensure_experiment

# A 16 -> 16 linear layer on a batch of 2: MACs = 2 * 16 * 16 (the bias adds FLOPs, not MACs); quick timing.
TINY = ["model=custom", "model._target_=fixture_models.ThreadSpy", "+model.features=16", "input.shape=[16]",
        "device=cpu", "timing.warmup=1", "timing.min_repeats=3", "timing.max_time_s=0.3", "peak.measure=false",
        "counting.thop=false", "counting.torch_check=false"]  # fmt: skip


def app_config(overrides: list[str]) -> AppConfig:
    from hydra import compose, initialize_config_dir

    from gflops_track.app.schema import register_schema, to_app_config
    from gflops_track.cli.run import CONFIG_DIR

    register_schema()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return to_app_config(compose("config", overrides=overrides))


def job(config: AppConfig, tmp_path: Path, in_sweep: bool) -> str:
    outcome = run_job(config, {}, "{}", tmp_path, tmp_path / "out", in_sweep=in_sweep, overrides=[])
    assert outcome.status == "FINISHED" and outcome.run_id is not None, outcome
    return outcome.run_id


@pytest.fixture(scope="module")
def peak_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The measured peaks (the roofline's bandwidth), probed once for this file's jobs."""
    return tmp_path_factory.mktemp("peaks")


@pytest.mark.slow  # the peak probes (~10 s): a roofline needs the measured bandwidth
def test_single_run_keeps_its_roofline_sweep_jobs_share_the_reports(
    store_uri: str, tmp_path: Path, peak_cache: Path
) -> None:
    config = app_config([*TINY, f"tracking.uri={store_uri}", "peak.measure=true", f"peak.cache_dir={peak_cache}"])
    client = connect(store_uri)
    single = job(config, tmp_path, in_sweep=False)
    per_job_charts = {names.ROOFLINE_ARTIFACT, names.LAYER_SHARES_ARTIFACT, names.LAYER_ROOFLINE_ARTIFACT}
    assert per_job_charts <= {a.path for a in client.list_artifacts(single)}

    parent = client.create_run(ensure_experiment(client, config.tracking.experiment), run_name="sweep").info.run_id
    publish_parent_run(parent)
    try:
        children = [job(config, tmp_path, in_sweep=True)]
    finally:
        withdraw_parent_run()
    for child in children:
        run = client.get_run(child)
        assert run.data.tags[names.PARENT_TAG] == parent
        files = {a.path for a in client.list_artifacts(child)}
        assert not per_job_charts & files  # drawn once, in the sweep's report
        assert {names.LAYERS_JSON_ARTIFACT, names.LAYERS_CSV_ARTIFACT, names.SUMMARY_ARTIFACT} <= files
        metrics = run.data.metrics  # what the per-job plot showed is still in the run
        assert metrics["cost/macs"] == 2 * 16 * 16  # batch x in x out
        assert metrics[names.INTENSITY] > 0 and metrics[names.ACHIEVED] > 0
    assert finish_sweep(client, parent, store_uri) == "FINISHED"
    charts = {a.path for a in client.list_artifacts(parent, names.REPORT_CHARTS_FOLDER)}
    assert f"{names.REPORT_CHARTS_FOLDER}/roofline.png" in charts  # every run on one roofline
    assert f"{names.REPORT_CHARTS_FOLDER}/layers_time_vs_flops_1.png" in charts  # each run's layers, in the report


def test_nothing_runs_beside_the_timed_forward(store_uri: str, tmp_path: Path) -> None:
    """Every real forward of the job (cold start, warm-up, timed iterations: counting is on meta, thop is off) sees
    no other Python thread: no progress refresh thread, no heartbeat; the heartbeat beats again afterwards."""
    from fixture_models import ThreadSpy

    ThreadSpy.seen.clear()
    # threads other tests of this worker left (an in-process server's accept loop, MLflow's idle artifact pool):
    # not the job's; the job must start none that is alive while its forwards run
    before = {thread.name for thread in threading.enumerate()}
    run_id = job(app_config([*TINY, f"tracking.uri={store_uri}"]), tmp_path, in_sweep=False)
    assert len(ThreadSpy.seen) >= 1 + 1 + 3  # cold start, >= 1 warm-up, >= min_repeats timed
    started = [sorted(set(others) - before) for others in ThreadSpy.seen]
    assert all(names == [] for names in started), {tuple(names) for names in started}
    metrics = connect(store_uri).get_run(run_id).data.metrics
    assert metrics[names.TIMING_TOTAL_S] > 0


def test_heartbeat_pauses_and_beats_again(store_uri: str) -> None:
    """Heartbeat.paused(): no heartbeat thread and no beat inside the block; beats again after it (every 0.05 s)."""
    import threading
    import time

    from gflops_track.tracking.reap import HEARTBEAT_TAG, Heartbeat

    client = connect(store_uri)
    run_id = client.create_run(ensure_experiment(client, "beats")).info.run_id
    with Heartbeat(client, run_id, every_s=0.05) as beat:
        with beat.paused():
            assert not beat.running
            assert "gflops-track-heartbeat" not in {t.name for t in threading.enumerate()}
            time.sleep(0.2)  # four beats' time
            assert HEARTBEAT_TAG not in client.get_run(run_id).data.tags
        assert beat.running
        deadline = time.monotonic() + 10
        while HEARTBEAT_TAG not in client.get_run(run_id).data.tags and time.monotonic() < deadline:
            time.sleep(0.05)
    assert not beat.running
    assert float(client.get_run(run_id).data.tags[HEARTBEAT_TAG]) == pytest.approx(time.time(), abs=15)


def test_the_sweeper_leaves_the_jobs_check_to_preflight_under_the_entry_point(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hydra's batch check (a second composition of every job) runs unless the command's ledger exists, i.e. unless
    ``python -m gflops_track``'s preflight composed and checked every job first. Here no Hydra context is set up, so
    Hydra's own check fails at once where it runs."""
    from gflops_track.app.channels import LEDGER_ENV, OutcomeLedger
    from hydra_plugins.gflops_track_launchers.sweeper import CheckedSweeper

    sweeper = CheckedSweeper(max_batch_size=None)
    monkeypatch.delenv(LEDGER_ENV, raising=False)
    with pytest.raises((AssertionError, AttributeError)):  # Hydra's check, reaching for a config loader
        sweeper.validate_batch_is_legal([["norm_fn=group"]])
    ledger = OutcomeLedger.create()
    try:
        sweeper.validate_batch_is_legal([["norm_fn=group"]])  # preflight vouches for it: not composed again
    finally:
        ledger.remove()
