"""Every command that takes a store URI (`run`, `sync`, `compare`, `reap`), end to end: a password planted in the URI
reaches no console line, a database that does not answer is one line at once, and the spool's hint, run as printed,
uploads into the store the runs were meant for without a second sweep run. Real `mlflow server`s on 127.0.0.1
(basic auth), real SQLite stores in temp dirs, the real commands as subprocesses."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conftest import QUICK_NO_THOP as QUICK
from conftest import SMALL_BLOCK as SMALL
from conftest import cli_env, run_cli
from gflops_track.tracking import spool
from gflops_track.tracking.records import RunRecord
from gflops_track.tracking.spool import SPOOL_FOLDER, SpooledRun
from servers import PASSWORD, Server, free_port

pytestmark = pytest.mark.slow
EXPERIMENT = "gflops-track"
ADMIN = {"MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": PASSWORD}  # what the warning asks for


def command(cwd: Path, *args: str, timeout: int = 300, **env: str) -> subprocess.CompletedProcess[str]:
    """``gflops-track ARGS`` in ``cwd``, as a user types it."""
    return subprocess.run(
        [sys.executable, "-m", "gflops_track.cli", *args],
        cwd=cwd, env=cli_env(**env), capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def runs_as_admin(uri: str) -> list:
    """Every run of EXPERIMENT on the basic-auth server at ``uri``, read with the admin's credentials."""
    with pytest.MonkeyPatch.context() as env:
        for key, value in ADMIN.items():
            env.setenv(key, value)
        client = MlflowClient(uri)
        return client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id])


def spool_a_sweep(folder: Path) -> None:
    """A sweep of two finished jobs, spooled (the spool API the recorder uses)."""
    parent = SpooledRun.new(EXPERIMENT, "sweep norm_fn=a,b")
    spool.write(folder, parent, RunRecord(tags={"sweep_overrides": "norm_fn=a,b"}))
    for index in range(2):
        child = SpooledRun.new(EXPERIMENT, f"job-{index}", parent=spool.SPOOL_PARENT_PREFIX + parent.spool_id)
        child.status = "FINISHED"
        record = RunRecord(params={"batch.size": str(index + 1)}, metrics={"latency/median_ms": 2.0 + index})
        spool.write(folder, child, record)
    parent.status = "FINISHED"
    spool.write(folder, parent, RunRecord())


def test_store_commands_keep_a_planted_password_out_of_every_console_line(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """`sync`, `compare` and `reap` against a basic-auth server, the password written in `--tracking-uri` and then
    in `MLFLOW_TRACKING_URI`: each command authenticates (the password moved to MLFLOW_TRACKING_PASSWORD), says so,
    and prints it nowhere: not in MLflow's own "View run ... at: <uri>" lines either."""
    server = Server(tmp_path_factory.mktemp("auth"), free_port(), auth=True).start()
    planted = f"http://admin:{PASSWORD}@127.0.0.1:{server.port}"
    try:
        spool_a_sweep(tmp_path / "multirun" / SPOOL_FOLDER)
        results = {}
        for form, flag, env in (
            ("flag", ["--tracking-uri", planted], {}),
            ("env", [], {"MLFLOW_TRACKING_URI": planted}),
        ):
            results[f"sync ({form})"] = command(tmp_path, "sync", *flag, "multirun", **env)
            results[f"compare ({form})"] = command(tmp_path, "compare", *flag, "--experiment", EXPERIMENT, **env)
            results[f"reap ({form})"] = command(tmp_path, "reap", *flag, **env)
        runs = runs_as_admin(server.uri)
    finally:
        server.stop()
    for name, done in results.items():
        output = done.stdout + done.stderr
        assert done.returncode == 0, f"{name}: {output}"
        assert PASSWORD not in output, f"{name} printed the password: {output}"
        assert "it was moved to MLFLOW_TRACKING_PASSWORD" in done.stderr, f"{name}: {output}"
    assert "3 run(s) uploaded" in results["sync (flag)"].stdout
    assert "View run" in results["sync (flag)"].stdout  # MLflow's own line was printed, without the password
    assert "0 run(s) uploaded, 3 already in" in results["sync (env)"].stdout
    assert all(f"job-{index}" in results[f"compare ({form})"].stdout for index in (0, 1) for form in ("flag", "env"))
    assert len(runs) == 3 and all(run.info.status == "FINISHED" for run in runs)


@pytest.mark.parametrize("name", ["compare", "reap", "sync", "run"])
def test_a_database_store_that_does_not_answer_is_one_line_at_once(tmp_path: Path, name: str) -> None:
    """Nothing listens on the port: one line naming the store and the refused connection, exit 2, no traceback;
    bounded generously (MLflow on its own retries for about 105 s before a traceback)."""
    uri = f"postgresql://bob:pw-Zq7@127.0.0.1:{free_port()}/mlflow"
    spool_a_sweep(tmp_path / "multirun" / SPOOL_FOLDER)  # so that `sync` has something to upload
    args = {
        "compare": ["compare", "--tracking-uri", uri, "--experiment", EXPERIMENT],
        "reap": ["reap", "--tracking-uri", uri],
        "sync": ["sync", "--tracking-uri", uri, "multirun"],
        "run": ["run", f"tracking.uri={uri}", *SMALL, *QUICK],
    }[name]
    started = time.monotonic()
    done = command(tmp_path, *args)
    elapsed = time.monotonic() - started
    output = done.stdout + done.stderr
    assert done.returncode == 2, output
    lines = [line for line in output.splitlines() if line.strip() and line != "No MLflow run was created."]
    assert len(lines) == 1, output
    assert "Connection refused" in lines[0] and "bob@127.0.0.1" in lines[0] and "Traceback" not in output
    assert "pw-Zq7" not in output
    assert elapsed < 30, f"{name} took {elapsed:.0f} s"  # a refused connection is known at once


def test_the_spool_hints_run_as_printed_upload_into_the_right_store_with_one_sweep_run(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A sweep against a server that is down (the password planted in the URI): every hint names the store, never
    the password. The server comes up; the job's own hint, then the plain one, run as printed (credentials in the
    environment, as the warning says): one sweep run with both jobs, no second "Sweep of 0 job(s)"."""
    port = free_port()
    done = run_cli(
        ["-m", "norm_fn=group,none", *SMALL, *QUICK], cwd=tmp_path,
        MLFLOW_TRACKING_URI=f"http://admin:{PASSWORD}@127.0.0.1:{port}",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert PASSWORD not in done.stdout + done.stderr
    assert "Retrying (" not in done.stdout + done.stderr  # urllib3's line per attempt: our warning says it once
    hints = re.findall(r"upload (?:it|them) later with: (gflops-track sync .*)$", done.stderr, re.MULTILINE)
    store = f"--tracking-uri http://127.0.0.1:{port}"
    assert len(hints) == 1 + 1 + 2 and all(hint.endswith(store) for hint in hints), done.stderr  # start, sweep, jobs
    (job_hint,) = [hint for hint in hints if shlex.split(hint)[2].endswith("/0")]
    (plain_hint,) = [hint for hint in hints if len(shlex.split(hint)) == 4]  # gflops-track sync --tracking-uri URI
    server = Server(tmp_path_factory.mktemp("later"), port, auth=True).start()
    try:
        first = command(tmp_path, *shlex.split(job_hint)[1:], **ADMIN)
        assert first.returncode == 0, first.stdout + first.stderr
        second = command(tmp_path, *shlex.split(plain_hint)[1:], **ADMIN)
        assert second.returncode == 0, second.stdout + second.stderr
        runs = runs_as_admin(server.uri)
    finally:
        server.stop()
    assert not (tmp_path / "mlflow.db").exists()  # nothing went to a store of its own
    (sweep,) = [run for run in runs if "mlflow.parentRunId" not in run.data.tags]  # one sweep run, not two
    jobs = [run for run in runs if run.data.tags.get("mlflow.parentRunId") == sweep.info.run_id]
    assert len(runs) == 3 and len(jobs) == 2 and all(job.info.status == "FINISHED" for job in jobs)
    assert sweep.info.run_name.startswith("sweep ") and sweep.data.tags["sweep_overrides"].startswith("norm_fn=")
    assert sweep.info.status == "FINISHED" and sweep.data.metrics["sweep/jobs"] == 2
