"""Hydra callback that makes a multirun sweep one MLflow run with its jobs nested under it.

The sweep's run (and the store, with its schema migration) is created once in the launching process before any job
starts: a fresh SQLite store hit by several writers at once breaks in MLflow's migration. Jobs find it through a
channel (``channels.py``: an environment variable), so launchers that run jobs in other processes see it too. The
sweep's run is a ``Recorder`` like a job's: it spools when the store is out of reach, and the ledger (``channels.py``)
knows how to end it if the command is interrupted.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig
from rich.text import Text

from gflops_track.app import console
from gflops_track.app.channels import (
    JobOutcome,
    OutcomeLedger,
    publish_parent_run,
    publish_swept_keys,
    run_key,
    withdraw_parent_run,
    withdraw_swept_keys,
)
from gflops_track.app.job import source_tags
from gflops_track.common import names
from gflops_track.common.names import FAILED, FINISHED, KILLED
from gflops_track.compare.render import rich_table
from gflops_track.compare.report import finish_sweep
from gflops_track.compare.rows import build_rows
from gflops_track.machine.hardware import git_commit
from gflops_track.tracking.interrupts import interrupts_held
from gflops_track.tracking.reap import PID_TAG, Dead, process_alive, process_of, reap, seen_from_here
from gflops_track.tracking.recorder import TRACKING_ERRORS, Recorder, RunTarget
from gflops_track.tracking.records import RunRecord
from gflops_track.tracking.spool import SPOOL_FOLDER, spooled_children
from gflops_track.tracking.store import (
    artifact_write_failure,
    child_runs,
    first_line,
    redact_uri,
    resolve_tracking_uri,
    sync_command,
)

PARALLEL_LAUNCHERS = ("JoblibLauncher", "LocalLauncher")  # hydra-joblib-launcher; hydra-submitit-launcher (local)
JOB_GRACE_S = 10.0  # after an interrupt, how long a job's live process gets to end its own run before we do


KILLED_REASON = "interrupted: the job's process was stopped before it could end this run"


def end_interrupted_runs(ledger: OutcomeLedger, grace_s: float = JOB_GRACE_S) -> None:
    """After Ctrl-C or SIGTERM (Hydra then never calls on_multirun_end): mark KILLED every job run still RUNNING
    whose process could not end it (joblib kills its workers when the command is interrupted), then the sweep's run.
    The ledger names the job runs; a run created just before the interrupt, whose process was killed before it could
    write its ledger entry, is found among the sweep's RUNNING children by its liveness tags. Job processes still
    alive get ``grace_s`` in all (one deadline, not one each) to end their own runs; one alive after it (a SLURM job
    on this host, still ending its run) keeps its run. A second interrupt cuts the wait short: the sweep's run is
    ended all the same."""
    withdraw_parent_run()
    deadline = time.monotonic() + grace_s
    judged: set[str] = set()
    try:
        for state in ledger.open_job_runs():
            process = state.get("process", {})
            if not seen_from_here(process):
                continue  # a job on another node (SLURM) ends its own run; gflops-track reap covers the rest
            key = run_key(state)
            judged.add(key)
            recorder = Recorder.resume(state, console.print_warning)
            if _left_to_us(process, lambda key=key: key in {run_key(s) for s in ledger.open_job_runs()}, deadline):
                if recorder.still_running():
                    recorder.finish(KILLED, KILLED_REASON)
                ledger.close_job_run(key)
            elif recorder.still_running():
                _warn_still_working(process, key)
        for state in ledger.open_sweeps():
            _end_unlisted_children(Recorder.resume(state, console.print_warning), deadline, judged)
    finally:
        with interrupts_held():  # the sweep's run is ended even if the user presses Ctrl-C again
            for state in ledger.open_sweeps():
                Recorder.resume(state, console.print_warning).finish(KILLED)
                ledger.close_sweep(run_key(state))


def _left_to_us(process: Mapping[str, str], still_open: Callable[[], bool], deadline: float) -> bool:
    """Whether a job's open run is ours to end: wait, until ``deadline``, while its process lives and the run is
    open (it may be ending the run). Ours when the process is gone, or is this very process (past its own
    handling); not ours when the process ended the run, or still lives at the deadline."""
    pid_and_start = process_of(process)
    if pid_and_start is None or pid_and_start[0] == os.getpid():
        return True
    while still_open():
        if not process_alive(*pid_and_start):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    return True  # the run was ended meanwhile: nothing left to end


def _warn_still_working(process: Mapping[str, str], run_id: str) -> None:
    console.print_warning(
        f"run {run_id} is left RUNNING: its job's process {process.get(PID_TAG, '?')} still lives and ends its own "
        "run; if it never does, `gflops-track reap --yes` marks it KILLED once the process is gone"
    )


def _end_unlisted_children(sweep: Recorder, deadline: float, judged: set[str]) -> None:
    """The sweep's children still RUNNING that a process on this host opened and the ledger did not name (``judged``
    were dealt with from it): KILLED once that process is gone, with the reason. Children of jobs on other hosts,
    or whose process still lives at ``deadline``, are left to them."""
    if sweep.client is None or sweep.run_id is None or sweep.spooled is not None:
        return
    client = sweep.client

    def running(run_id: str) -> bool:
        return client.get_run(run_id).info.status == "RUNNING"

    try:
        for run in child_runs(client, sweep.run_id):
            run_id = run.info.run_id
            if run.info.status != "RUNNING" or run_id in judged or not seen_from_here(run.data.tags):
                continue
            if not _left_to_us(run.data.tags, lambda run_id=run_id: running(run_id), deadline):
                _warn_still_working(run.data.tags, run_id)
            elif running(run_id):
                reap(client, [Dead(run_id, run.info.run_name or "", run.info.experiment_id, KILLED_REASON)])
    except TRACKING_ERRORS as error:
        console.print_warning(f"could not check the sweep's job runs after the interrupt: {first_line(error)}")


def ui_address(uri: str, experiment_id: str) -> str:
    """Where the sweep's runs open in the MLflow UI, on the runs table (MLflow 3.17 opens an experiment on its GenAI
    overview unless the link asks for the model-training view)."""
    page = f"#/experiments/{experiment_id}?workflowType=machine_learning"
    if uri.startswith(("http://", "https://")):
        return f"{redact_uri(uri).rstrip('/')}/{page}"
    return f"mlflow ui --backend-store-uri {redact_uri(uri)}, then http://127.0.0.1:5000/{page}"


def swept_keys(overrides: list[str]) -> list[str]:
    """The keys a sweep gives several values (``norm_fn=group,batch``, ``range(...)``, ``choice(...)``)."""
    parsed = OverridesParser.create().parse_overrides(overrides)
    return [override.key_or_group for override in parsed if override.is_sweep_override()]


class MlflowSweepCallback(Callback):
    """on_multirun_start: open the sweep's run; on_multirun_end: compare the children, close the sweep's run."""

    def __init__(self) -> None:
        self.recorder: Recorder | None = None

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
        overrides = " ".join(config.hydra.overrides.task)
        publish_swept_keys(swept_keys(list(config.hydra.overrides.task)))
        uri = resolve_tracking_uri(tracking.uri, Path.cwd())
        started = datetime.now().strftime("%m-%d %H:%M:%S")  # sweeps of the same overrides get distinct names
        target = RunTarget.for_sweep(uri, tracking.experiment, f"sweep {started} {overrides}".strip())
        self.recorder = Recorder(target, Path(config.hydra.sweep.dir) / SPOOL_FOLDER, console.print_warning)
        ledger = OutcomeLedger.current()
        record = RunRecord(tags={names.SWEEP_OVERRIDES_TAG: overrides, **source_tags(git_commit())})
        self.recorder.open(record, on_created=ledger.open_sweep if ledger is not None else None)  # Ctrl-C ends it
        publish_parent_run(self.recorder.reference)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        withdraw_parent_run()
        withdraw_swept_keys()
        recorder = self.recorder
        if recorder is None:
            return
        ledger = OutcomeLedger.current()
        failed_here = ledger is not None and ledger.exit_code() != 0
        reason = ""
        if recorder.spooled is None and recorder.client is not None and recorder.run_id is not None:
            try:
                failed_here = self._report(recorder.client, recorder.run_id, recorder.target.uri) or failed_here
            except TRACKING_ERRORS as error:
                location = artifact_write_failure(recorder.client, recorder.run_id, error)
                if location is not None:  # the store answers; the sweep's report cannot be written: FAILED
                    failed_here = True
                    reason = f"the sweep's report could not be written to {location}: {first_line(error)}"
                    console.print_warning(reason)
                    if ledger is not None:  # the command's exit code says so too
                        ledger.record(JobOutcome(recorder.target.run_name, recorder.run_id, FAILED, reason))
                else:
                    console.print_warning(
                        f"tracking store {redact_uri(recorder.target.uri)} failed at the end of the sweep "
                        f"({type(error).__name__}); the sweep's ending is kept for gflops-track sync"
                    )
        else:
            self._spooled_report(recorder)
        recorder.finish(FAILED if failed_here else FINISHED, reason)
        if ledger is not None:
            ledger.close_sweep(run_key(recorder.state()))

    @staticmethod
    def _spooled_report(recorder: Recorder) -> None:
        """The comparison of the sweep's jobs when the sweep is in the spool (the store was out of reach): read from
        the jobs' spooled runs, which hold every measurement, so the closing table is printed all the same."""
        sweep_folder = recorder.spool_dir.parent
        jobs = spooled_children(sweep_folder, {recorder.reference, recorder.run_id or ""})
        if jobs:
            title = f"sweep (spooled, not yet in the store): {len(jobs)} job(s)"
            console.console.print(rich_table(build_rows([job.as_run() for job in jobs]), title))

    def _report(self, client: MlflowClient, parent_run_id: str, uri: str) -> bool:
        """Print the comparison of the sweep's jobs and end the sweep's run the way ``gflops-track sync`` would
        (report, metrics, description); True when a job failed or was killed. A job still RUNNING in the store was
        spooled (the store failed during it): spooled is not failed."""
        runs = child_runs(client, parent_run_id)
        console.console.print(rich_table(build_rows(runs), f"sweep {parent_run_id}: {len(runs)} job(s)"))
        spooled = [run for run in runs if run.info.status == "RUNNING"]
        if spooled:
            console.print_warning(
                f"{len(spooled)} job(s) of this sweep are not complete in the store (spooled while it was out of "
                f"reach): upload them with {sync_command(uri)}"
            )
        status = finish_sweep(client, parent_run_id, redact_uri(uri), terminate=False)
        console.console.print(f"comparison report.html logged to the sweep's run {parent_run_id}")
        experiment_id = client.get_run(parent_run_id).info.experiment_id
        # soft-wrapped: the terminal folds a long line, rich would insert newlines that break the copied command
        console.console.print(Text(f"open the runs in the MLflow UI: {ui_address(uri, experiment_id)}"), soft_wrap=True)
        return status == FAILED
