"""How a ProfileResult becomes an MLflow run: params, metrics, tags and artifacts (into the active run)."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlflow
from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

from gflops_track.counting.layer_info import layers_to_columns, layers_to_csv
from gflops_track.formatting import summary_text
from gflops_track.hardware import Fingerprint
from gflops_track.plots import roofline_png
from gflops_track.result import ProfileResult

TRUNCATION_MARK = "...[truncated]"


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


def log_fingerprint(fingerprint: Fingerprint) -> None:
    """Hardware and software facts as tags (empty facts are left out)."""
    mlflow.set_tags({key: value for key, value in fingerprint.as_tags().items() if value})


def log_cost(result: ProfileResult) -> None:
    """Counts, cross-checks and the per-layer table: logged as soon as counting is done."""
    mlflow.log_metrics(result.metrics())
    tags = {"model": result.model_name, "count_backend": result.count_backend}
    if result.torch_count is not None:
        tags["torch_flop_counter_agrees"] = str(result.torch_count.agrees).lower()
    if result.thop is not None and not result.thop.error:
        tags["thop_agrees"] = str(result.thop.macs == result.macs).lower()
    mlflow.set_tags(tags)
    mlflow.log_params({f"effective.{key}": value for key, value in result.settings.items()})
    mlflow.log_text(layers_to_csv(result.layers), "layers.csv")
    mlflow.log_table(layers_to_columns(result.layers), "layers.json")
    mlflow.log_text(summary_text(result), "summary.txt")


def log_timing(result: ProfileResult, run_name: str) -> None:
    """Latency, conditions and peak metrics, the raw samples, the roofline plot and the final summary."""
    mlflow.log_metrics(result.metrics())
    timing = result.timing
    if timing is not None:
        samples = {"latency_ms": list(timing.latency.samples_ms)}
        if timing.graph_latency is not None:
            samples["graph_latency_ms"] = list(timing.graph_latency.samples_ms)
        mlflow.log_dict(samples, "latency_samples.json")
        if timing.conditions.throttle_reasons:
            mlflow.set_tag("gpu_throttle_reasons", ",".join(timing.conditions.throttle_reasons))
        mlflow.set_tag("timing_suspect", str(bool(timing.conditions.warnings)).lower())
    point = result.roofline_point(run_name)
    roofs = result.roofs()
    if point is not None and roofs:
        with tempfile.TemporaryDirectory() as folder:
            mlflow.log_artifact(str(roofline_png(Path(folder) / "roofline.png", roofs, [point], run_name)))
    mlflow.log_text(summary_text(result), "summary.txt")
