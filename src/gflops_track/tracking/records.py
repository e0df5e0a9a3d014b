"""Records: how a ProfileResult becomes the content of an MLflow run: params, metrics, tags and artifact files.

Records are plain data, so the same record can go to the tracking store or, when the store is out of reach, to the
local spool (``spool.py``) and later be uploaded unchanged.
"""

from __future__ import annotations

import io
import json
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_LOGGED_ARTIFACTS
from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH, MAX_TAG_VAL_LENGTH

from gflops_track.common import names
from gflops_track.counting.layer_info import layers_to_columns, layers_to_csv, rows_to_columns
from gflops_track.counting.thop_compare import thop_notes
from gflops_track.machine.environment import ENV_HASH_TAG, environment_files, environment_hash, installed_packages
from gflops_track.render.plots import layer_roofline_figure, layer_share_figure, roofline_png
from gflops_track.render.summary import summary_text
from gflops_track.results.fingerprint import Fingerprint
from gflops_track.results.profile import ProfileResult
from gflops_track.tracking.store import NOTE_TAG

TRUNCATION_MARK = "...[truncated]"
NOTE_CUT_MARK = "\n... (cut to MLflow's tag limit: the whole text is in summary.txt)\n"


def summary_note(text: str) -> str:
    """A run's summary as its MLflow note: a fenced block, so the UI's Markdown keeps the aligned columns; cut to
    MLflow's tag limit (8,000 characters) with a line that says so."""
    fence = len("```\n\n```")
    if len(text) + fence > MAX_TAG_VAL_LENGTH:
        text = text[: MAX_TAG_VAL_LENGTH - fence - len(NOTE_CUT_MARK)] + NOTE_CUT_MARK
    return f"```\n{text.rstrip()}\n```"


def table_json(columns: Mapping[str, list[Any]]) -> bytes:
    """A table as ``MlflowClient.log_table`` writes it (pandas' ``split`` orientation, no index), so the UI's
    artifact view shows it as a table and ``MlflowClient.load_table`` reads it back."""
    import pandas as pd

    return pd.DataFrame(dict(columns)).to_json(orient="split", index=False, date_format="iso").encode()


def logged_tables_tag(*paths: str) -> dict[str, str]:
    """The run tag ``log_table`` sets: which artifacts are tables (the UI lists them as such)."""
    return {MLFLOW_LOGGED_ARTIFACTS: json.dumps([{"path": path, "type": "table"} for path in paths])}


def _param_value(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, (list, tuple, dict)) else ("null" if value is None else str(value))
    if len(text) > MAX_PARAM_VAL_LENGTH:
        text = text[: MAX_PARAM_VAL_LENGTH - len(TRUNCATION_MARK)] + TRUNCATION_MARK
    return text


def flatten_params(tree: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config -> {'batch.size': '2', 'input.shape': '[128, 256]', ...}: dot keys, lists as JSON, values cut
    to MLflow's param length limit."""
    flat: dict[str, str] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten_params(value, f"{dotted}."))
        else:
            flat[dotted] = _param_value(value)
    return flat


@dataclass
class RunRecord:
    """Part of a run's content. ``files`` maps artifact paths to their bytes."""

    params: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)

    def merge(self, other: RunRecord) -> RunRecord:
        return RunRecord(
            {**self.params, **other.params},
            {**self.metrics, **other.metrics},
            {**self.tags, **other.tags},
            {**self.files, **other.files},
        )


def start_record(params: Mapping[str, str], config_yaml: str, tags: Mapping[str, str], facts: Fingerprint) -> RunRecord:
    """What a run holds before anything is measured: the resolved config, where it runs, and the installed packages
    (``environment.txt``, with their short hash as the ``env_hash`` tag)."""
    fingerprint_tags = {key: value for key, value in facts.as_tags().items() if value}
    packages = installed_packages()
    return RunRecord(
        params=dict(params),
        tags={**fingerprint_tags, ENV_HASH_TAG: environment_hash(packages), **tags},
        files={names.CONFIG_ARTIFACT: config_yaml.encode(), **environment_files(packages)},
    )


def cost_record(result: ProfileResult) -> RunRecord:
    """Counts, cross-checks and the per-layer table: recorded as soon as counting is done."""
    summary = summary_text(result)
    tags = {
        names.MODEL_TAG: result.model_name,
        names.COUNT_BACKEND_TAG: result.count_backend,
        NOTE_TAG: summary_note(summary),
        **logged_tables_tag(names.LAYERS_JSON_ARTIFACT),
    }
    if result.torch_count is not None:
        tags[names.TORCH_AGREES_TAG] = str(result.torch_count.agrees).lower()
    if result.thop is not None and not result.thop.error:
        tags[names.THOP_AGREES_TAG] = str(result.thop.macs == result.macs).lower()
    files = {
        names.LAYERS_CSV_ARTIFACT: layers_to_csv(result.layers).encode(),
        names.LAYERS_JSON_ARTIFACT: table_json(layers_to_columns(result.layers)),
        names.SUMMARY_ARTIFACT: summary.encode(),
    }
    if result.thop is not None:
        thop = thop_notes(result.thop, result.macs, result.params, every_module=True)
        if thop:
            files[names.THOP_ARTIFACT] = ("\n".join(thop) + "\n").encode()
    return RunRecord(
        params={f"effective.{key}": value for key, value in result.settings.items()},
        metrics=result.metrics(),
        tags=tags,
        files=files,
    )


def summary_record(result: ProfileResult) -> RunRecord:
    """The metrics so far and the summary, as summary.txt and as the run's note (its Overview in the MLflow UI)."""
    summary = summary_text(result)
    files = {names.SUMMARY_ARTIFACT: summary.encode()}
    return RunRecord(metrics=result.metrics(), tags={NOTE_TAG: summary_note(summary)}, files=files)


def timing_record(result: ProfileResult) -> RunRecord:
    """Latency and conditions metrics, the raw samples and the summary: recorded as soon as timing is done."""
    record = summary_record(result)
    timing = result.timing
    if timing is not None:
        samples = {"latency_ms": list(timing.latency.samples_ms)}
        if timing.graph_latency is not None:
            samples["graph_latency_ms"] = list(timing.graph_latency.samples_ms)
        record.files[names.SAMPLES_ARTIFACT] = json.dumps(samples).encode()
        if timing.conditions.throttle_reasons:
            record.tags[names.THROTTLE_TAG] = ",".join(timing.conditions.throttle_reasons)
        record.tags[names.TIMING_SUSPECT_TAG] = str(timing.suspect).lower()
    return record


def peak_record(result: ProfileResult, run_name: str, plot: bool = True) -> RunRecord:
    """Peak and utilization metrics, the final summary and (``plot``) the run's own roofline plot. A job of a sweep
    leaves the plot out: the sweep's report draws one roofline with every run on it, and the numbers the plot showed
    (intensity, achieved GFLOP/s, the roofs) are the run's metrics."""
    record = summary_record(result)
    mfu = result.mfu
    if mfu is not None:
        record.tags[names.MFU_PEAK_TAG] = mfu[1]
    points = result.roofline_points(run_name) if plot else []
    roofs = result.roofs() if plot else []
    if points and roofs:
        with tempfile.TemporaryDirectory() as folder:
            path = roofline_png(Path(folder) / names.ROOFLINE_ARTIFACT, roofs, points, run_name)
            record.files[names.ROOFLINE_ARTIFACT] = path.read_bytes()
    return record


def layers_record(result: ProfileResult, plot: bool = True) -> RunRecord:
    """The layers table with time, bytes and bound (``layers.csv`` and the UI's table, replacing the count's), the
    per-op traffic the bounds used (so ``whatif`` can bound them on other hardware), the pass's metrics and the
    summary; with ``plot``, the per-layer charts as PNGs (a sweep's job leaves them to the sweep's report, where
    drawing two figures per job cost about 1 s of each job's wall time)."""
    record = summary_record(result)
    rows = result.layer_rows
    record.files[names.LAYERS_CSV_ARTIFACT] = layers_to_csv(rows).encode()
    record.files[names.LAYERS_JSON_ARTIFACT] = table_json(rows_to_columns(rows))
    record.files[names.LAYER_TRAFFIC_ARTIFACT] = json.dumps(result.cost.layer_traffic).encode()
    if result.layer_timing is not None:
        record.tags[names.LAYER_TIMING_TAG] = result.layer_timing.method
    if result.layer_roof is not None:
        record.tags[names.LAYER_BOUND_TAG] = result.layer_roof.rule[:MAX_TAG_VAL_LENGTH]
    if plot and any(row.self_ms is not None for row in rows):
        for artifact, figure in (
            (names.LAYER_SHARES_ARTIFACT, layer_share_figure(rows, "time share vs FLOP share per layer")),
            (names.LAYER_ROOFLINE_ARTIFACT, layer_roofline_figure(rows, result.layer_roof, "per-layer roofline")),
        ):
            buffer = io.BytesIO()
            figure.savefig(buffer, format="png")
            record.files[artifact] = buffer.getvalue()
    return record


def write_to_mlflow(client: MlflowClient, run_id: str, record: RunRecord) -> None:
    """Params, metrics and tags in one batch call (MLflow splits batches over its limits); then the files."""
    write_values(client, run_id, record)
    write_files(client, run_id, record.files)


def write_values(client: MlflowClient, run_id: str, record: RunRecord) -> None:
    """A record's params, metrics and tags, in one batch call (MLflow splits batches over its limits)."""
    now = int(time.time() * 1000)
    client.log_batch(
        run_id,
        metrics=[Metric(key, float(value), now, 0) for key, value in record.metrics.items()],
        params=[Param(key, value) for key, value in record.params.items()],
        tags=[RunTag(key, value) for key, value in record.tags.items()],
    )


def write_files(client: MlflowClient, run_id: str, files: Mapping[str, bytes]) -> None:
    """A record's files, as the run's artifacts (names may hold folders)."""
    if not files:
        return
    with tempfile.TemporaryDirectory() as folder:
        for name, content in files.items():
            path = Path(folder) / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
        client.log_artifacts(run_id, folder)


def training_count_record(result: ProfileResult) -> RunRecord:
    """The training step's counts, its per-layer forward/backward table and the summary so far: recorded as soon
    as the step is counted."""
    assert result.training is not None
    step = result.training.count
    record = summary_record(result)
    record.tags[names.TRAIN_LOSS_TAG] = step.cost.loss
    record.tags[names.TRAIN_OPTIMIZER_TAG] = step.cost.optimizer
    if step.torch_count is not None:
        record.tags[names.STEP_TORCH_AGREES_TAG] = str(step.torch_count.agrees).lower()
    record.files[names.STEP_LAYERS_CSV_ARTIFACT] = layers_to_csv(step.cost.layers).encode()
    return record


def step_layers_record(result: ProfileResult) -> RunRecord:
    """The step's per-layer pass: ``step_layers.csv`` with forward and backward times beside the count's FLOPs
    (replacing the count's), the same as the UI's table, the pass's metrics and the summary."""
    assert result.training is not None
    record = summary_record(result)
    rows = result.training.layer_rows
    record.files[names.STEP_LAYERS_CSV_ARTIFACT] = layers_to_csv(rows).encode()
    record.files[names.STEP_LAYERS_JSON_ARTIFACT] = table_json(rows_to_columns(rows))
    record.tags.update(logged_tables_tag(names.LAYERS_JSON_ARTIFACT, names.STEP_LAYERS_JSON_ARTIFACT))
    if result.training.layer_timing is not None:
        record.tags[names.STEP_LAYER_TIMING_TAG] = result.training.layer_timing.method
    return record
