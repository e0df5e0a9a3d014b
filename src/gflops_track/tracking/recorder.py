"""One MLflow run, a job's or a sweep's: records go to the tracking store while it answers, and to the local spool
from the moment it does not, so nothing measured is lost. The user is told, with the command that uploads the spool.

Where the run comes from: a job in a sweep is nested under the sweep's run (its reference is passed in); a job
or sweep launched by ``mlflow run`` logs into the run MLflow made (``MLFLOW_RUN_ID``), which MLflow itself ends;
otherwise a new run is created in the experiment.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient

from gflops_track.common import names
from gflops_track.tracking import spool
from gflops_track.tracking.interrupts import interrupts_held
from gflops_track.tracking.reap import Heartbeat, liveness_tags
from gflops_track.tracking.records import RunRecord, write_files, write_values
from gflops_track.tracking.store import (
    TRACKING_ERRORS,
    artifact_write_failure,
    connect,
    ensure_experiment,
    first_line,
    launched_by_mlflow,
    redact_uri,
    sync_command,
)

MAX_ERROR_TAG = 5000


class ArtifactWriteError(Exception):
    """The store took the run's values but its local artifact location refused the files: the job fails (spooling
    would not help: ``sync`` would meet the same location)."""


@dataclass(frozen=True)
class RunTarget:
    """Which run a recorder writes: nested under ``parent`` (a run id, or ``spool:<id>`` of a spooled sweep), the
    existing run ``reuse`` (made by ``mlflow run``), or a new one; ``ends_run``: whether ``finish`` sets its final
    status (not for a run MLflow made and ends itself)."""

    uri: str
    experiment: str
    run_name: str
    parent: str = ""
    reuse: str = ""
    ends_run: bool = True

    @classmethod
    def for_job(cls, uri: str, experiment: str, run_name: str, in_sweep: bool, sweep_run: str = "") -> RunTarget:
        """A job's run: in a sweep nested under ``sweep_run`` (the sweep's reference), else under the run
        ``mlflow run`` made; outside a sweep, that run itself or a new one."""
        launched = launched_by_mlflow()
        if in_sweep:
            return cls(uri, experiment, run_name, parent=sweep_run or launched)
        return cls(uri, experiment, run_name, reuse=launched)

    @classmethod
    def for_sweep(cls, uri: str, experiment: str, run_name: str) -> RunTarget:
        launched = launched_by_mlflow()
        return cls(uri, experiment, run_name, reuse=launched, ends_run=not launched)


class Recorder:
    """Opens the target run and logs records into it; switches to the spool in ``spool_dir`` when the store fails."""

    def __init__(self, target: RunTarget, spool_dir: Path, announce: Callable[[str], None]) -> None:
        self.target = target
        self.spool_dir = spool_dir
        self.announce = announce
        self.client: MlflowClient | None = None
        self.run_id: str | None = None
        self.spooled: spool.SpooledRun | None = None
        self.history: list[RunRecord] = []
        self._heartbeat: Heartbeat | None = None
        self.held: RunRecord | None = None

    @property
    def reference(self) -> str:
        """How children find this run: its run id, or ``spool:<id>`` while it lives in the spool."""
        if self.spooled is not None:
            return spool.SPOOL_PARENT_PREFIX + self.spooled.spool_id
        return self.run_id or ""

    def open(self, record: RunRecord | None = None, on_created: Callable[[dict[str, Any]], None] | None = None) -> None:
        """Create (or find) the run, then log ``record`` into it. Interrupts are held from the store's create request
        until the run's id is known, and with ``on_created`` (e.g. the command's ledger) until it has the run's state
        after ``record`` (spooled or not): an interrupt inside ``create_run`` would leave a run that exists but that
        nothing knows how to end."""
        failure: BaseException | None = None
        if not self.target.parent.startswith(spool.SPOOL_PARENT_PREFIX):  # else the sweep itself is spooled
            try:
                self.client = connect(self.target.uri)  # may wait on a SQLite store's lock: interruptible
            except TRACKING_ERRORS as error:
                failure = error
        with interrupts_held():
            if self.client is not None:
                try:
                    self.run_id = self._open_run(self.client)
                except TRACKING_ERRORS as error:
                    failure = error
            if self.run_id is None:
                self._to_spool(failure)
            if on_created is not None:
                if record is not None:
                    self.log(record)
                    record = None
                on_created(self.state())
        if record is not None:
            self.log(record)

    def _open_run(self, client: MlflowClient) -> str:
        target = self.target
        if target.parent:
            experiment_id = client.get_run(target.parent).info.experiment_id
            tags = {names.PARENT_TAG: target.parent, **liveness_tags()}
            return client.create_run(experiment_id, run_name=target.run_name, tags=tags).info.run_id
        if target.reuse:
            for key, value in {"mlflow.runName": target.run_name, **liveness_tags()}.items():
                client.set_tag(target.reuse, key, value)
            return target.reuse
        experiment_id = ensure_experiment(client, target.experiment)
        return client.create_run(experiment_id, run_name=target.run_name, tags=liveness_tags()).info.run_id

    def heartbeat(self) -> contextlib.AbstractContextManager[object]:
        """While in this block, the run's heartbeat tag is refreshed (``gflops-track reap`` judges runs by it)."""
        if self.client is None or self.run_id is None or self.spooled is not None:
            return contextlib.nullcontext()
        self._heartbeat = Heartbeat(self.client, self.run_id)
        return self._heartbeat

    @contextlib.contextmanager
    def quiet(self) -> Iterator[None]:
        """Inside this block no thread of this run writes to the store (the heartbeat is paused): for timing."""
        beat = self._heartbeat
        if beat is None or not beat.running:
            yield
            return
        with beat.paused():
            yield

    def hold(self, record: RunRecord) -> None:
        """Keep ``record`` to be written with the next one, in the same batch (each batch is several SQLite
        commits): for a record a quick step follows. ``log`` and ``finish`` write what is held, so a job that
        fails after it still has it."""
        self.held = record if self.held is None else self.held.merge(record)

    def log(self, record: RunRecord) -> None:
        """Write ``record`` (after what is held) to the run, or to the spool once the store has failed. Raises
        ``ArtifactWriteError`` when the store takes the values but the run's local artifact location refuses its
        files."""
        if self.held is not None:
            record, self.held = self.held.merge(record), None
        self.history.append(record)
        if self.spooled is not None:
            spool.write(self.spool_dir, self.spooled, record)
            return
        assert self.client is not None and self.run_id is not None
        try:
            write_values(self.client, self.run_id, record)
        except TRACKING_ERRORS as error:
            self._to_spool(error)
            return
        try:
            write_files(self.client, self.run_id, record.files)
        except TRACKING_ERRORS as error:
            location = artifact_write_failure(self.client, self.run_id, error)
            if location is None:
                self._to_spool(error)
                return
            raise ArtifactWriteError(
                f"the run's files could not be written to its artifact location {location}: {first_line(error)}"
            ) from error

    def finish(self, status: str, error: str = "") -> None:
        """End the run FINISHED, FAILED or KILLED (with the reason as the ``error`` tag). A run never created (its
        creation failed, outside the spool's reach) has nothing to end: the caller's own error is not masked."""
        if self.spooled is None and self.run_id is None:
            return
        if error or self.held is not None:
            self.log(RunRecord(tags={names.ERROR_TAG: error[:MAX_ERROR_TAG]} if error else {}))
        if self.spooled is not None:
            self.spooled.status = status
            spool.write(self.spool_dir, self.spooled, RunRecord())
            return
        if not self.target.ends_run:
            return
        assert self.client is not None and self.run_id is not None
        try:
            self.client.set_terminated(self.run_id, status)
        except TRACKING_ERRORS as failure:
            self._to_spool(failure)
            self.finish(status)

    def still_running(self) -> bool:
        """Whether the run is still open, as far as the store (or the spool) says: another process may have ended it
        since this recorder's state was written. When the store cannot say, it is taken as open (ending it again
        with the same status is harmless; leaving it RUNNING is not)."""
        if self.spooled is not None:
            return self.spooled.status == "RUNNING"
        if self.client is None or self.run_id is None:
            return False
        try:
            return self.client.get_run(self.run_id).info.status == "RUNNING"
        except TRACKING_ERRORS:
            return True

    def _to_spool(self, error: BaseException | None) -> None:
        target = self.target
        self.spooled = spool.SpooledRun.new(target.experiment, target.run_name, target.parent, self.run_id or "")
        merged = RunRecord()
        for record in self.history:
            merged = merged.merge(record)
        directory = spool.write(self.spool_dir, self.spooled, merged)
        reason = f"{type(error).__name__}: {first_line(error)}" if error else "the sweep is spooled"
        self.announce(
            f"tracking store {redact_uri(target.uri)} failed ({reason}); run {target.run_name} is kept in "
            f"{directory} — upload it later with: {sync_command(target.uri, self.spool_dir.parent)}"
        )

    def state(self) -> dict[str, Any]:
        """What another place in this process needs to end the run (see ``resume``): plain JSON values."""
        return {
            "target": vars(self.target),
            "spool_dir": str(self.spool_dir),
            "run_id": self.run_id,
            "spool_id": self.spooled.spool_id if self.spooled else None,
        }

    @classmethod
    def resume(cls, state: Mapping[str, Any], announce: Callable[[str], None]) -> Recorder:
        """A recorder for a run another recorder opened (e.g. to end a sweep's run after Ctrl-C)."""
        recorder = cls(RunTarget(**state["target"]), Path(state["spool_dir"]), announce)
        recorder.run_id = state["run_id"]
        if state["spool_id"]:
            recorder.spooled = spool.load(recorder.spool_dir / state["spool_id"])
        else:
            try:
                recorder.client = connect(recorder.target.uri)
            except TRACKING_ERRORS as error:
                recorder._to_spool(error)
        return recorder
