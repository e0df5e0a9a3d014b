"""`gflops-track compare` on bad input: one line on stderr and exit 2 (exit 1 means "regression" to a CI job), no
stall against a dead server, and reading never creates a store. Real temp stores, the real command."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conftest import cli_env


def compare(cwd: Path, *args: str, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "gflops_track.cli", "compare", *args],
        cwd=cwd, env=cli_env(**env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


@pytest.fixture
def small_store(tmp_path: Path) -> tuple[Path, str, str]:
    """A store with one finished timed run; returns (folder, uri, run id)."""
    uri = f"sqlite:///{tmp_path / 'store.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("gflops-track")
    run_id = client.create_run(experiment, run_name="job").info.run_id
    client.log_metric(run_id, "latency/median_ms", 2.0)
    client.set_terminated(run_id)
    return tmp_path, uri, run_id


def test_bad_input_is_one_line_and_exit_2(small_store: tuple[Path, str, str]) -> None:
    folder, uri, run_id = small_store
    cases = {
        "unknown run id": (["--run-id", "0123456789abcdef"], "Run with id=0123456789abcdef not found"),
        "unknown sweep": (["--sweep", "nope"], "Run with id=nope not found"),
        "bad filter": (["--filter", "params.x ~~ 'y'"], "Invalid comparator '~~'"),
        "html into a missing directory": (["--html", str(folder / "no" / "r.html")], "does not exist"),
        "output into a missing directory": (
            ["--format", "csv", "--output", str(folder / "no" / "t.csv")],
            "does not exist",
        ),
        "unknown gate run": (["--baseline", run_id, "--candidate", "nope"], "Run with id=nope not found"),
        # options that would be silently ignored together
        "two selections": (["--sweep", run_id, "--run-id", run_id], "--sweep and --run-id do not go together"),
        "a selection beside the gate": (
            ["--experiment", "gflops-track", "--baseline", run_id, "--candidate", run_id],
            "--experiment and --baseline/--candidate do not go together",
        ),
        "filter with run ids": (["--run-id", run_id, "--filter", "params.x = 'y'"], "--filter is not allowed with"),
        "log-report without a sweep": (["--log-report"], "--log-report is not allowed without --sweep"),
        "columns of a csv": (["--columns", "variant", "--format", "csv"], "--columns is not allowed with --format csv"),
    }
    started = {name: compare(folder, "--tracking-uri", uri, *args) for name, (args, _) in cases.items()}
    for name, process in started.items():
        out, err = process.communicate(timeout=300)
        lines = err.strip().splitlines()
        assert process.returncode == 2, (name, out, err)
        assert len(lines) == 1 and "Traceback" not in err, (name, err)
        assert lines[0].startswith("gflops-track compare: ") and cases[name][1] in lines[0], (name, err)
    assert sorted(path.name for path in folder.iterdir()) == ["store.db"]  # nothing written on the way
    good = compare(folder, "--tracking-uri", uri, "--run-id", run_id, "--format", "csv")
    out, err = good.communicate(timeout=300)
    assert good.returncode == 0 and run_id in out, err


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_dead_server_fails_fast_with_exit_2(tmp_path: Path) -> None:
    """Nothing listens on the port: MLflow's default retries would take about 4 minutes; the probe answers at
    once. Bounded by the subprocess timeout, not by a speed claim."""
    port = free_port()
    started = time.monotonic()
    process = compare(
        tmp_path, "--tracking-uri", f"http://bob:Zq-secret@127.0.0.1:{port}", "--experiment", "gflops-track"
    )
    out, err = process.communicate(timeout=120)  # far below the ~250 s of uncapped retries
    assert process.returncode == 2, out + err
    assert "is not reachable (ConnectionError: [Errno 111] Connection refused)" in err
    assert "Zq-secret" not in out + err and f"tracking server http://127.0.0.1:{port} is not" in err  # moved out
    assert time.monotonic() - started < 120


def test_reading_never_creates_a_store(tmp_path: Path) -> None:
    typo = compare(tmp_path, "--tracking-uri", f"sqlite:///{Path('typo') / 'x.db'}")
    empty = compare(tmp_path)  # no --tracking-uri, no MLFLOW_TRACKING_URI: ./mlflow.db, which does not exist
    missing_file_store = compare(tmp_path, "--tracking-uri", str(tmp_path / "mlruns"))
    for process, where in ((typo, "typo/x.db"), (empty, f"{tmp_path}/mlflow.db"), (missing_file_store, "mlruns")):
        out, err = process.communicate(timeout=300)
        assert process.returncode == 2, out + err
        assert "no tracking store at" in err and where in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []  # no mlflow.db, no typo/, no mlruns/


def test_capped_http_retries_keep_user_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from gflops_track.tracking.store import cap_http_retries

    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "3")
    cap_http_retries()
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "2"
    assert os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"] == "3"  # the user's choice stands


def test_output_filter_and_baseline_prefix_are_applied(tmp_path: Path) -> None:
    """A sweep of three timed jobs: ``--output`` without ``--format`` writes the Markdown table to the file (it was
    printed to stdout and no file written), ``--filter`` narrows ``--sweep`` (it was ignored), ``--columns`` picks
    Markdown's columns, and ``--baseline-row`` takes the 8-character id the tables print."""
    uri = f"sqlite:///{tmp_path / 'store.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("gflops-track")
    sweep = client.create_run(experiment, run_name="sweep").info.run_id
    jobs = {}
    for norm, median in (("group", 4.0), ("batch", 2.0), ("instance", 8.0)):
        run = client.create_run(experiment, run_name=f"{norm}-job", tags={"mlflow.parentRunId": sweep})
        client.log_param(run.info.run_id, "model.norm_fn", norm)
        client.log_metric(run.info.run_id, "latency/median_ms", median)
        client.set_terminated(run.info.run_id)
        jobs[norm] = run.info.run_id
    client.set_terminated(sweep)
    table = tmp_path / "table.md"
    process = compare(
        tmp_path, "--tracking-uri", uri, "--sweep", sweep[:8], "--filter", "params.`model.norm_fn` != 'instance'",
        "--columns", "variant,latency,speed", "--baseline-row", jobs["batch"][:8], "--output", str(table),
    )  # fmt: skip
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0 and out == "", (out, err)
    lines = table.read_text().splitlines()
    assert len(lines) == 2 + 2 and lines[0].count("|") == 3 + 1  # header, rule, two rows (instance filtered out)
    rows = {line.split("|")[1].strip(): line for line in lines[2:]}
    assert set(rows) == {"group-job", "batch-job"}  # labelled by run name: these runs have no overrides tag
    assert "0.50" in rows["group-job"] and "1.00" in rows["batch-job"]  # 2 ms / 4 ms against batch's 2 ms
