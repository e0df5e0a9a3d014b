"""Params flattening, tracking-URI precedence and redaction, the per-job run logging into a real store."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient
from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

from gflops_track import PeakOptions, profile
from gflops_track.models import ResidualBlock
from gflops_track.options.timing import TimingOptions
from gflops_track.tracking.records import (
    TRUNCATION_MARK,
    cost_record,
    flatten_params,
    peak_record,
    timing_record,
    write_to_mlflow,
)
from gflops_track.tracking.store import child_runs, connect, ensure_experiment, redact_uri, resolve_tracking_uri


def test_flatten_params_dot_keys_json_lists_and_limit() -> None:
    flat = flatten_params({"batch": {"size": 2}, "input": {"shape": [128, 256]}, "uri": None, "long": "x" * 7000})
    assert flat["batch.size"] == "2" and flat["input.shape"] == "[128, 256]" and flat["uri"] == "null"
    assert len(flat["long"]) == MAX_PARAM_VAL_LENGTH and flat["long"].endswith(TRUNCATION_MARK)


def test_tracking_uri_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri(None, tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert resolve_tracking_uri(None, tmp_path) == "http://127.0.0.1:5000"
    assert resolve_tracking_uri("sqlite:////data/x.db", tmp_path) == "sqlite:////data/x.db"


def test_redact_uri_hides_password_only() -> None:
    assert redact_uri("http://alice:s3cret@host:5000/path") == "http://alice:***@host:5000/path"
    assert redact_uri("sqlite:////tmp/a.db") == "sqlite:////tmp/a.db"


def test_log_result_into_real_store(store_uri: str, tmp_path: Path) -> None:
    client = connect(store_uri)
    experiment_id = ensure_experiment(client, "unit")
    assert ensure_experiment(client, "unit") == experiment_id  # idempotent
    parent = client.create_run(experiment_id, run_name="parent").info.run_id
    child = client.create_run(experiment_id, run_name="child", tags={"mlflow.parentRunId": parent}).info.run_id
    quick = TimingOptions(warmup=1, min_repeats=4, max_time_s=1)
    result = profile(
        ResidualBlock(16, 16, "batch"),
        torch.randn(2, 16, 8, 8),
        timing=quick,
        peak=PeakOptions(measure=True, cache_dir=tmp_path),
    )
    write_to_mlflow(client, child, cost_record(result))
    write_to_mlflow(client, child, timing_record(result))
    write_to_mlflow(client, child, peak_record(result, "child"))
    run = client.get_run(child)
    assert run.data.metrics["cost/macs"] == result.macs == 2 * (2 * 16 * 8 * 8 * 16 * 9)
    assert run.data.metrics["latency/median_ms"] == pytest.approx(result.median_latency_ms)
    assert run.data.tags["torch_flop_counter_agrees"] == "true"
    assert run.data.params["effective.float32_matmul_precision"] == "highest"
    artifacts = {a.path for a in client.list_artifacts(child)}
    assert {"roofline.png", "latency_samples.json", "summary.txt", "layers.csv"} <= artifacts
    png = Path(client.download_artifacts(child, "roofline.png", str(tmp_path)))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert [r.info.run_id for r in child_runs(client, parent)] == [child]
    MlflowClient(store_uri).set_terminated(parent)
