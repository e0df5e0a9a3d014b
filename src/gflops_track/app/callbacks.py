"""Hydra callback that makes a multirun sweep one MLflow parent run with its jobs nested under it.

The parent (and the store, with its schema migration) is created once in the launching process before any job
starts: a fresh SQLite store hit by several writers at once breaks in MLflow's migration. Jobs find the parent
through an environment variable, so launchers that run jobs in other processes see it too.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig

from gflops_track.app import console, job
from gflops_track.compare.cli import log_report
from gflops_track.compare.render import rich_table
from gflops_track.compare.rows import build_rows
from gflops_track.tracking import spool
from gflops_track.tracking.recorder import TRACKING_ERRORS
from gflops_track.tracking.run_logger import RunRecord
from gflops_track.tracking.spool import SPOOL_FOLDER
from gflops_track.tracking.store import (
    PARENT_RUN_ENV,
    child_runs,
    connect,
    ensure_experiment,
    redact_uri,
    resolve_tracking_uri,
)

_active: list[MlflowSweepCallback] = []  # the sweep in progress in this process, for end_interrupted_sweep


def end_interrupted_sweep() -> None:
    """After Ctrl-C or SIGTERM (Hydra then never calls on_multirun_end): mark the sweep's own run KILLED."""
    while _active:
        _active.pop().end_killed()


PARALLEL_LAUNCHERS = ("JoblibLauncher", "LocalLauncher")  # hydra-joblib-launcher; hydra-submitit-launcher (local)


class MlflowSweepCallback(Callback):
    """on_multirun_start: create the parent run; on_multirun_end: compare the children, close the parent."""

    def __init__(self) -> None:
        self.parent_run_id: str | None = None
        self.owns_parent = False
        self.uri = ""
        self.spool_dir = Path(SPOOL_FOLDER)
        self.spooled_parent: spool.SpooledRun | None = None
        self.experiment = ""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        launcher = str(config.hydra.launcher.get("_target_", ""))
        if config.timing.enabled and launcher.endswith(PARALLEL_LAUNCHERS):
            console.print_warning(
                f"{launcher.rsplit('.', 1)[-1]} runs this sweep's jobs in parallel on this machine: their timings "
                "share the device and corrupt each other. Use timing.enabled=false for counting-only sweeps, the "
                "default launcher for timing, or one node per job (hydra/launcher=slurm_gpu)."
            )
        tracking = config.tracking
        if not tracking.enabled:
            return
        _active.append(self)
        self.experiment = tracking.experiment
        self.uri = resolve_tracking_uri(tracking.uri, Path.cwd())
        overrides = " ".join(config.hydra.overrides.task)
        self.spool_dir = Path(config.hydra.sweep.dir) / SPOOL_FOLDER
        launched_by_mlflow = os.environ.get("MLFLOW_RUN_ID")
        try:
            client = connect(self.uri)
            if launched_by_mlflow:
                self.parent_run_id, self.owns_parent = launched_by_mlflow, False
            else:
                experiment_id = ensure_experiment(client, tracking.experiment)
                run = client.create_run(experiment_id, run_name=f"sweep {overrides}".strip())
                self.parent_run_id, self.owns_parent = run.info.run_id, True
            client.set_tag(self.parent_run_id, "sweep_overrides", overrides)
            os.environ[PARENT_RUN_ENV] = self.parent_run_id
        except TRACKING_ERRORS as error:
            self.spooled_parent = spool.SpooledRun.new(tracking.experiment, f"sweep {overrides}".strip())
            spool.write(self.spool_dir, self.spooled_parent, RunRecord(tags={"sweep_overrides": overrides}))
            os.environ[PARENT_RUN_ENV] = spool.SPOOL_PARENT_PREFIX + self.spooled_parent.spool_id
            console.print_warning(
                f"tracking store {redact_uri(self.uri)} not reachable ({type(error).__name__}): the sweep is kept in "
                f"{self.spool_dir.parent} — upload it later with: gflops-track sync {self.spool_dir.parent}"
            )

    def _spool_ending(self, status: str) -> Path:
        """Keep the parent run's final status for `gflops-track sync` when the store fails at the end."""
        assert self.parent_run_id is not None
        ending = spool.SpooledRun.new(self.experiment, "sweep", run_id=self.parent_run_id)
        ending.status = status
        return spool.write(self.spool_dir, ending, RunRecord())

    def end_killed(self) -> None:
        os.environ.pop(PARENT_RUN_ENV, None)
        if self.spooled_parent is not None:
            self.spooled_parent.status = "KILLED"
            spool.write(self.spool_dir, self.spooled_parent, RunRecord())
        elif self.parent_run_id is not None and self.owns_parent:
            try:
                connect(self.uri).set_terminated(self.parent_run_id, "KILLED")
            except TRACKING_ERRORS:
                self._spool_ending("KILLED")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self in _active:
            _active.remove(self)
        os.environ.pop(PARENT_RUN_ENV, None)
        if self.spooled_parent is not None:
            self.spooled_parent.status = "FAILED" if job.failed_jobs else "FINISHED"
            spool.write(self.spool_dir, self.spooled_parent, RunRecord())
            return
        if self.parent_run_id is None:
            return
        try:
            self._report(connect(self.uri), self.parent_run_id)
        except TRACKING_ERRORS as error:  # keep the parent's ending for `gflops-track sync` to apply
            directory = self._spool_ending("FAILED" if job.failed_jobs else "FINISHED")
            console.print_warning(
                f"tracking store {redact_uri(self.uri)} failed at the end of the sweep ({type(error).__name__}); "
                f"the sweep's ending is kept in {directory} — gflops-track sync {self.spool_dir.parent}"
            )

    def _report(self, client: MlflowClient, parent_run_id: str) -> None:
        runs = child_runs(client, parent_run_id)
        failed = [run for run in runs if run.info.status != "FINISHED"]
        rows = build_rows(runs)
        title = f"sweep {parent_run_id}: {len(runs)} job(s)"
        console.console.print(rich_table(rows, title))
        try:
            log_report(client, parent_run_id, rows, title, redact_uri(self.uri))
            console.console.print(f"comparison report.html logged to the sweep's run {parent_run_id}")
        except Exception as error:  # the report is a view of runs already safe in the store
            console.print_warning(f"sweep report not written: {type(error).__name__}: {error}")
        client.log_metric(parent_run_id, "jobs", len(runs))
        client.log_metric(parent_run_id, "failed_jobs", len(failed))
        if self.owns_parent:
            client.set_terminated(parent_run_id, "FAILED" if failed or job.failed_jobs else "FINISHED")
        job.failed_jobs.extend(run.info.run_name for run in failed if run.info.run_name not in job.failed_jobs)
