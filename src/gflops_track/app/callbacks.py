"""Hydra callback that makes a multirun sweep one MLflow parent run with its jobs nested under it.

The parent (and the store, with its schema migration) is created once in the launching process before any job
starts: a fresh SQLite store hit by several writers at once breaks in MLflow's migration. Jobs find the parent
through an environment variable, so launchers that run jobs in other processes see it too.
"""

from __future__ import annotations

import csv
import io
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from mlflow.entities import Run
from omegaconf import DictConfig

from gflops_track.app import console, job
from gflops_track.plots import throughput_curve_png
from gflops_track.tracking.store import (
    ERROR_TAG,
    PARENT_RUN_ENV,
    child_runs,
    connect,
    ensure_experiment,
    resolve_tracking_uri,
)

COMPARISON_METRICS = (
    "params", "gmacs", "gflops", "thop_macs", "latency_median_ms", "latency_cv",
    "throughput_samples_per_s", "achieved_gflop_per_s", "peak_memory_mib",
)  # fmt: skip


def comparison_csv(runs: list[Run]) -> str:
    """One row per job: name, status, hardware, error and the headline metrics (with units in their names)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["run_name", "run_id", "status", "hardware", *COMPARISON_METRICS, ERROR_TAG])
    for run in runs:
        metrics = run.data.metrics
        writer.writerow(
            [
                run.info.run_name,
                run.info.run_id,
                run.info.status,
                run.data.tags.get("hardware", ""),
                *(metrics.get(key, "") for key in COMPARISON_METRICS),
                run.data.tags.get(ERROR_TAG, ""),
            ]
        )
    return buffer.getvalue()


def throughput_series(runs: list[Run]) -> dict[str, list[tuple[int, float]]]:
    """Throughput (samples/s) by batch size, one series per variant (run name without its batch part, plus the
    hardware), when the finished runs differ in ``batch.size``; empty otherwise."""
    series: dict[str, list[tuple[int, float]]] = {}
    for run in runs:
        throughput = run.data.metrics.get("throughput_samples_per_s")
        batch = run.data.params.get("batch.size")
        if run.info.status != "FINISHED" or throughput is None or batch is None:
            continue
        label = f"{re.sub(r'-b[0-9]+', '', run.info.run_name)} ({run.data.tags.get('hardware', '?')})"
        series.setdefault(label, []).append((int(batch), throughput))
    batch_sizes = {batch for points in series.values() for batch, _ in points}
    return series if len(batch_sizes) > 1 else {}


class MlflowSweepCallback(Callback):
    """on_multirun_start: create the parent run; on_multirun_end: compare the children, close the parent."""

    def __init__(self) -> None:
        self.parent_run_id: str | None = None
        self.owns_parent = False
        self.uri = ""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        tracking = config.tracking
        if not tracking.enabled:
            return
        self.uri = resolve_tracking_uri(tracking.uri, Path.cwd())
        client = connect(self.uri)
        overrides = " ".join(config.hydra.overrides.task)
        launched_by_mlflow = os.environ.get("MLFLOW_RUN_ID")
        if launched_by_mlflow:
            self.parent_run_id, self.owns_parent = launched_by_mlflow, False
        else:
            experiment_id = ensure_experiment(client, tracking.experiment)
            run = client.create_run(experiment_id, run_name=f"sweep {overrides}".strip())
            self.parent_run_id, self.owns_parent = run.info.run_id, True
        client.set_tag(self.parent_run_id, "sweep_overrides", overrides)
        os.environ[PARENT_RUN_ENV] = self.parent_run_id

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self.parent_run_id is None:
            return
        client = connect(self.uri)
        runs = child_runs(client, self.parent_run_id)
        failed = [run for run in runs if run.info.status != "FINISHED"]
        console.print_sweep_table(runs, self.parent_run_id)
        client.log_text(self.parent_run_id, comparison_csv(runs), "comparison.csv")
        curve = throughput_series(runs)
        if curve:
            with tempfile.TemporaryDirectory() as folder:
                path = throughput_curve_png(Path(folder) / "throughput_vs_batch_size.png", curve, "throughput")
                client.log_artifact(self.parent_run_id, str(path))
            console.console.print(f"throughput-vs-batch-size curve logged to the sweep's run {self.parent_run_id}")
        client.log_metric(self.parent_run_id, "jobs", len(runs))
        client.log_metric(self.parent_run_id, "failed_jobs", len(failed))
        if self.owns_parent:
            client.set_terminated(self.parent_run_id, "FAILED" if failed else "FINISHED")
        job.failed_jobs.extend(run.info.run_name for run in failed if run.info.run_name not in job.failed_jobs)
        os.environ.pop(PARENT_RUN_ENV, None)
