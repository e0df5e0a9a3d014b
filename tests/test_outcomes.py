"""The command's exit code comes from the outcome ledger its jobs write (``gflops_track.app.channels``): 0 when every
job finished, 1 when any job failed or was killed, 2 when a job's config was invalid. A real ledger file in a temp
dir; Hydra's ``on_job_end`` called with real ``JobReturn`` objects, as Hydra calls it in whichever process ran the
job (the CLI runs of these rules are in the slow tests)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf

from gflops_track.app.channels import (
    EXIT_CONFIG_ERROR,
    EXIT_JOB_FAILED,
    EXIT_OK,
    INVALID_CONFIG,
    LEDGER_ENV,
    JobOutcome,
    OutcomeCallback,
    OutcomeLedger,
    run_key,
)
from gflops_track.common.names import FAILED, FINISHED, KILLED


def ledger_of(tmp_path: Path, *statuses: str) -> OutcomeLedger:
    ledger = OutcomeLedger(tmp_path / "ledger.jsonl")
    for index, status in enumerate(statuses):
        ledger.record(JobOutcome(f"job-{index}", f"run-{index}", status, "" if status == FINISHED else "why"))
    return ledger


@pytest.mark.parametrize(
    ("statuses", "code"),
    [
        ((), EXIT_OK),  # nothing ran (or nothing recorded): nothing failed
        ((FINISHED, FINISHED, FINISHED), EXIT_OK),
        ((FINISHED, FAILED, FINISHED), EXIT_JOB_FAILED),  # one failed job of three: the sweep went on, exit 1
        ((FINISHED, KILLED), EXIT_JOB_FAILED),
        ((FAILED, INVALID_CONFIG, FINISHED), EXIT_CONFIG_ERROR),  # a bad config wins: nothing of it ran
        ((INVALID_CONFIG,), EXIT_CONFIG_ERROR),
    ],
)
def test_exit_code_is_the_worst_job_outcome(tmp_path: Path, statuses: tuple[str, ...], code: int) -> None:
    assert (EXIT_OK, EXIT_JOB_FAILED, EXIT_CONFIG_ERROR) == (0, 1, 2)
    assert ledger_of(tmp_path, *statuses).exit_code() == code


def test_outcomes_round_trip_one_json_line_each(tmp_path: Path) -> None:
    ledger = ledger_of(tmp_path, FINISHED, FAILED)
    lines = ledger.path.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == [
        {"job": {"run_name": "job-0", "run_id": "run-0", "status": FINISHED, "error": ""}},
        {"job": {"run_name": "job-1", "run_id": "run-1", "status": FAILED, "error": "why"}},
    ]
    assert ledger.outcomes() == [JobOutcome("job-0", "run-0", FINISHED), JobOutcome("job-1", "run-1", FAILED, "why")]
    assert OutcomeLedger(tmp_path / "missing.jsonl").outcomes() == []  # no file yet: no outcomes, no error


def test_open_runs_are_those_not_ended(tmp_path: Path) -> None:
    """A sweep's or a job's run is open from its entry until an ``*_ended`` line names its run id (or, while it is
    spooled, its spool id); blank lines are skipped."""
    ledger = OutcomeLedger(tmp_path / "ledger.jsonl")
    ledger.open_sweep({"run_id": "s1"})
    ledger.open_sweep({"spool_id": "sp2", "run_id": ""})
    ledger.open_job_run({"run_id": "j1"})
    ledger.open_job_run({"run_id": "j2"})
    ledger.record(JobOutcome("job", "j1", FINISHED))
    with ledger.path.open("a", encoding="utf-8") as stream:
        stream.write("\n")
    assert ledger.open_sweeps() == [{"run_id": "s1"}, {"spool_id": "sp2", "run_id": ""}]
    assert ledger.open_job_runs() == [{"run_id": "j1"}, {"run_id": "j2"}]
    ledger.close_sweep("sp2")
    ledger.close_job_run("j1")
    assert ledger.open_sweeps() == [{"run_id": "s1"}] and ledger.open_job_runs() == [{"run_id": "j2"}]
    ledger.close_sweep("j2")  # a sweep's end never ends a job's run
    assert ledger.open_job_runs() == [{"run_id": "j2"}]
    assert run_key({"run_id": "r", "spool_id": "s"}) == "r" and run_key({"run_id": "", "spool_id": "s"}) == "s"
    assert ledger.exit_code() == EXIT_OK  # only job outcomes decide the exit code


def test_create_names_the_ledger_in_the_environment_and_remove_clears_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(LEDGER_ENV, raising=False)
    assert OutcomeLedger.current() is None
    ledger = OutcomeLedger.create()
    try:
        assert os.environ[LEDGER_ENV] == str(ledger.path) and ledger.path.is_file()
        assert ledger.path.read_text() == ""
        current = OutcomeLedger.current()
        assert current is not None and current.path == ledger.path
    finally:
        ledger.remove()
    assert not ledger.path.exists() and LEDGER_ENV not in os.environ
    ledger.remove()  # twice is harmless


def test_on_job_end_records_a_job_that_raised(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A job whose task raised is recorded FAILED with the exception, named by its overrides (so the command exits
    1); a job that returned is recorded by the entry point itself, not here; without a ledger nothing is written."""
    config = OmegaConf.create({"hydra": {"job": {"override_dirname": "norm_fn=group"}}})
    callback = OutcomeCallback()
    monkeypatch.delenv(LEDGER_ENV, raising=False)
    callback.on_job_end(config, JobReturn(status=JobStatus.FAILED, _return_value=RuntimeError("lost")))  # no ledger
    ledger = OutcomeLedger(tmp_path / "ledger.jsonl")
    monkeypatch.setenv(LEDGER_ENV, str(ledger.path))
    callback.on_job_end(config, JobReturn(status=JobStatus.COMPLETED, _return_value=JobOutcome("x", "r", FINISHED)))
    assert ledger.outcomes() == [] and ledger.exit_code() == EXIT_OK
    callback.on_job_end(config, JobReturn(status=JobStatus.FAILED, _return_value=RuntimeError("boom")))
    assert ledger.outcomes() == [JobOutcome("norm_fn=group", None, FAILED, "RuntimeError('boom')")]
    assert ledger.exit_code() == EXIT_JOB_FAILED
    unnamed = OmegaConf.create({"hydra": {"job": {}}})
    callback.on_job_end(unnamed, JobReturn(status=JobStatus.FAILED, _return_value=ValueError("x")))
    assert ledger.outcomes()[-1] == JobOutcome("", None, FAILED, "ValueError('x')")
