"""One job's run: records go to the tracking store while it answers, and to the local spool from the moment it does
not, so nothing measured is lost. The user is told, with the command that uploads the spool later."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import requests
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from gflops_track.tracking import spool
from gflops_track.tracking.run_logger import RunRecord, write_to_mlflow
from gflops_track.tracking.store import (
    ERROR_TAG,
    PARENT_RUN_ENV,
    PARENT_TAG,
    connect,
    ensure_experiment,
    redact_uri,
)

TRACKING_ERRORS: tuple[type[BaseException], ...] = (MlflowException, requests.RequestException, OSError)
MAX_ERROR_TAG = 5000


class Recorder:
    """Opens the job's run (nested under the sweep's parent, or the one ``mlflow run`` made, or a new one) and logs
    records into it; switches to the spool in ``spool_dir`` when the store fails."""

    def __init__(
        self,
        uri: str,
        experiment: str,
        run_name: str,
        in_sweep: bool,
        spool_dir: Path,
        announce: Callable[[str], None],
    ) -> None:
        self.uri = uri
        self.experiment = experiment
        self.run_name = run_name
        self.spool_dir = spool_dir
        self.announce = announce
        self.client: MlflowClient | None = None
        self.run_id: str | None = None
        self.spooled: spool.SpooledRun | None = None
        self.history: list[RunRecord] = []
        launched_by_mlflow = os.environ.get("MLFLOW_RUN_ID", "")
        parent = os.environ.get(PARENT_RUN_ENV, "") if in_sweep else ""
        self.parent = parent or (launched_by_mlflow if in_sweep else "")
        self.reuse = "" if in_sweep else launched_by_mlflow

    def open(self) -> None:
        if self.parent.startswith(spool.SPOOL_PARENT_PREFIX):
            self._to_spool(None)  # the sweep itself could not reach the store
            return
        try:
            self.client = connect(self.uri)
            self.run_id = self._open_run(self.client)
        except TRACKING_ERRORS as error:
            self._to_spool(error)

    def _open_run(self, client: MlflowClient) -> str:
        if self.parent:
            experiment_id = client.get_run(self.parent).info.experiment_id
            return client.create_run(experiment_id, run_name=self.run_name, tags={PARENT_TAG: self.parent}).info.run_id
        if self.reuse:
            client.set_tag(self.reuse, "mlflow.runName", self.run_name)
            return self.reuse
        experiment_id = ensure_experiment(client, self.experiment)
        return client.create_run(experiment_id, run_name=self.run_name).info.run_id

    def log(self, record: RunRecord) -> None:
        self.history.append(record)
        if self.spooled is not None:
            spool.write(self.spool_dir, self.spooled, record)
            return
        assert self.client is not None and self.run_id is not None
        try:
            write_to_mlflow(self.client, self.run_id, record)
        except TRACKING_ERRORS as error:
            self._to_spool(error)

    def finish(self, status: str, error: str = "") -> None:
        """End the run FINISHED, FAILED or KILLED (with the reason as the ``error`` tag)."""
        if error:
            self.log(RunRecord(tags={ERROR_TAG: error[:MAX_ERROR_TAG]}))
        if self.spooled is not None:
            self.spooled.status = status
            spool.write(self.spool_dir, self.spooled, RunRecord())
            return
        assert self.client is not None and self.run_id is not None
        try:
            self.client.set_terminated(self.run_id, status)
        except TRACKING_ERRORS as failure:
            self._to_spool(failure)
            self.finish(status)

    def _to_spool(self, error: BaseException | None) -> None:
        self.spooled = spool.SpooledRun.new(self.experiment, self.run_name, self.parent, self.run_id or "")
        merged = RunRecord()
        for record in self.history:
            merged = merged.merge(record)
        directory = spool.write(self.spool_dir, self.spooled, merged)
        reason = f"{type(error).__name__}: {str(error).splitlines()[0][:300]}" if error else "the sweep is spooled"
        self.announce(
            f"tracking store {redact_uri(self.uri)} failed ({reason}); run {self.run_name} is kept in "
            f"{directory} — upload it later with: gflops-track sync {self.spool_dir.parent}"
        )
