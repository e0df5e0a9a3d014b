"""The sweep's cross-process channels: what a command's processes tell each other through the environment.

A sweep's jobs may run in other processes (joblib, submitit, SLURM), which inherit the environment of the command that
launched them. Three channels, each defined, written and read here only:

- ``PARENT_RUN_ENV``: the sweep's run (its id, or ``spool:<id>`` while it is spooled). The sweep callback publishes it
  once the run exists; each job nests its run under it.
- ``SWEPT_KEYS_ENV``: the keys whose values differ between the sweep's jobs. The sweep callback publishes them; each
  job leads its run name and its ``variant`` tag with them.
- ``LEDGER_ENV``: the path of the command's ledger, a file of JSON lines. The entry point creates it; each job (in
  whichever process runs it) appends its ``JobOutcome`` and its open run; the sweep callback appends the sweep's run.
  The entry point reads it back for the exit code (``OutcomeLedger.exit_code``: a failed job makes it 1) and to end
  what an interrupt left open, then deletes it.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from gflops_track.common.names import FAILED, KILLED

PARENT_RUN_ENV = "GFLOPS_TRACK_PARENT_RUN_ID"
SWEPT_KEYS_ENV = "GFLOPS_TRACK_SWEPT_KEYS"
LEDGER_ENV = "GFLOPS_TRACK_LEDGER"
INVALID_CONFIG = "INVALID_CONFIG"  # a job refused by its config: no run was made
EXIT_OK, EXIT_JOB_FAILED, EXIT_CONFIG_ERROR = 0, 1, 2


def publish_parent_run(reference: str) -> None:
    """The sweep's run exists: its jobs, in any process started from now on, nest their runs under ``reference``."""
    os.environ[PARENT_RUN_ENV] = reference


def published_parent_run() -> str:
    """The run this process's jobs nest under ('' outside a sweep, or before its run exists)."""
    return os.environ.get(PARENT_RUN_ENV, "")


def withdraw_parent_run() -> None:
    os.environ.pop(PARENT_RUN_ENV, None)


def publish_swept_keys(keys: Sequence[str]) -> None:
    """The keys the sweep gives several values, for its jobs to name themselves by."""
    os.environ[SWEPT_KEYS_ENV] = ",".join(keys)


def published_swept_keys() -> set[str]:
    """The keys of this process's sweep that take several values (empty outside a sweep)."""
    return set(filter(None, os.environ.get(SWEPT_KEYS_ENV, "").split(",")))


def withdraw_swept_keys() -> None:
    os.environ.pop(SWEPT_KEYS_ENV, None)


@dataclass(frozen=True)
class JobOutcome:
    """How one job ended: FINISHED, FAILED (``error`` says why), KILLED, or INVALID_CONFIG (no run was made)."""

    run_name: str
    run_id: str | None
    status: str
    error: str = ""


class OutcomeLedger:
    """An append-only file of JSON lines: ``{"job": JobOutcome}``, ``{"sweep": state}`` / ``{"sweep_ended": id}`` and
    ``{"job_run": state}`` / ``{"job_run_ended": id}``.
    Each line is written with one ``write`` on a file opened for appending, so lines from several processes never
    interleave."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def create(cls) -> OutcomeLedger:
        """A new empty ledger, named in the environment so every job of this command (any process) finds it."""
        handle, name = tempfile.mkstemp(prefix="gflops-track-ledger-", suffix=".jsonl")
        os.close(handle)
        os.environ[LEDGER_ENV] = name
        return cls(Path(name))

    @classmethod
    def current(cls) -> OutcomeLedger | None:
        """The ledger of the command this process belongs to, if any."""
        name = os.environ.get(LEDGER_ENV)
        return cls(Path(name)) if name else None

    def _append(self, entry: dict[str, Any]) -> None:
        with self.path.open("a", encoding="utf-8") as stream:
            stream.write(json.dumps(entry) + "\n")

    def _entries(self) -> list[dict[str, Any]]:
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except OSError:
            return []
        return [json.loads(line) for line in lines if line.strip()]

    def record(self, outcome: JobOutcome) -> None:
        self._append({"job": asdict(outcome)})

    def outcomes(self) -> list[JobOutcome]:
        return [JobOutcome(**entry["job"]) for entry in self._entries() if "job" in entry]

    def open_sweep(self, state: dict[str, Any]) -> None:
        """The sweep's run is open: ``state`` is what ``Recorder.resume`` needs to end it after an interrupt."""
        self._append({"sweep": state})

    def close_sweep(self, key: str) -> None:
        self._append({"sweep_ended": key})

    def open_sweeps(self) -> list[dict[str, Any]]:
        """Sweep runs opened and not ended (the one an interrupt left behind)."""
        return self._still_open("sweep")

    def open_job_run(self, state: dict[str, Any]) -> None:
        """A job's run is open (in whichever process runs the job): if that process is killed before it ends the run
        (joblib kills its workers on Ctrl-C), the command's own process ends it from this entry."""
        self._append({"job_run": state})

    def close_job_run(self, key: str) -> None:
        self._append({"job_run_ended": key})

    def open_job_runs(self) -> list[dict[str, Any]]:
        """Job runs opened and not known to be ended."""
        return self._still_open("job_run")

    def _still_open(self, kind: str) -> list[dict[str, Any]]:
        entries = self._entries()
        ended = {entry[f"{kind}_ended"] for entry in entries if f"{kind}_ended" in entry}
        return [entry[kind] for entry in entries if kind in entry and run_key(entry[kind]) not in ended]

    def exit_code(self) -> int:
        """2 when a job's config was invalid, 1 when a job failed (or was killed), else 0."""
        statuses = {outcome.status for outcome in self.outcomes()}
        if INVALID_CONFIG in statuses:
            return EXIT_CONFIG_ERROR
        return EXIT_JOB_FAILED if statuses & {FAILED, KILLED} else EXIT_OK

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
        os.environ.pop(LEDGER_ENV, None)


def run_key(state: dict[str, Any]) -> str:
    """A run's identity in the ledger (a sweep's or a job's): its run id, or its spool id while spooled."""
    return str(state.get("run_id") or state.get("spool_id"))


class OutcomeCallback(Callback):
    """Hydra's ``on_job_end``, in the process that ran the job: a job whose task function raised instead of returning
    its outcome (which the entry point records itself) is written to the ledger as FAILED."""

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        ledger = OutcomeLedger.current()
        if ledger is None:
            return
        if job_return.status == JobStatus.FAILED:
            error = job_return._return_value  # the exception the task function raised
            ledger.record(JobOutcome(str(config.hydra.job.get("override_dirname", "")), None, FAILED, repr(error)))
