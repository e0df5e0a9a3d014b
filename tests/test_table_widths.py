"""The tables as users see them: the real sweep and ``gflops-track compare`` under a pseudo-terminal 80 columns wide,
and piped into a file. Every variant name and every number (params, GFLOPs, median latency, as the tool formats
them) must appear whole, and nothing is cut with "…"."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conftest import QUICK_NO_THOP, SMALL_BLOCK, cli_env
from gflops_track.common.numbers import three_places

pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("script") is None, reason="needs util-linux script")]
NORMS = ["group", "batch", "instance"]
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")


def terminal(command: list[str], cwd: Path, columns: int = 80, **extra: str) -> str:
    """``command`` under a pseudo-terminal ``columns`` wide (util-linux ``script``); its output without escapes."""
    env = cli_env(COLUMNS=str(columns), XDG_CACHE_HOME=str(cwd / ".cache"), **extra)
    line = f"stty cols {columns} rows 50; {shlex.join(command)}"
    done = subprocess.run(
        ["script", "-qec", line, "/dev/null"], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return ANSI.sub("", done.stdout).replace("\r", "")


def piped(command: list[str], cwd: Path, **extra: str) -> str:
    """``command`` with stdout into a file and no COLUMNS: what a CI log holds."""
    env = cli_env(XDG_CACHE_HOME=str(cwd / ".cache"), **extra)
    env.pop("COLUMNS")
    log = cwd / "stdout.log"
    with log.open("w") as stdout:
        done = subprocess.run(command, cwd=cwd, env=env, stdout=stdout, stderr=subprocess.PIPE, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return log.read_text()


def sweep_command() -> list[str]:
    return [sys.executable, "-m", "gflops_track", "-m", f"norm_fn={','.join(NORMS)}", *SMALL_BLOCK, *QUICK_NO_THOP]


def compare_command(uri: str, parent: str) -> list[str]:
    return [sys.executable, "-m", "gflops_track.cli", "compare", "--tracking-uri", uri, "--sweep", parent]


def children(uri: str) -> tuple[str, list[dict[str, str]]]:
    """The sweep's parent id and, per job, its variant tag and its numbers formatted as the tool prints them:
    params with thousands separators, GFLOPs and median latency (ms) with three decimals."""
    client = MlflowClient(uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    parent = next(run for run in runs if "sweep_overrides" in run.data.tags)
    jobs = [run for run in runs if run.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(jobs) == len(NORMS)
    return parent.info.run_id, [
        {
            "variant": run.data.tags["variant"],
            "run id": run.info.run_id[:8],
            "params": f"{int(run.data.metrics['cost/params']):,}",
            "GFLOPs": three_places(run.data.metrics["cost/gflops"]),
            "median": three_places(run.data.metrics["latency/median_ms"]),
        }
        for run in jobs
    ]


def assert_whole(output: str, jobs: list[dict[str, str]], fields: tuple[str, ...]) -> None:
    assert "…" not in output
    for job in jobs:
        for field in fields:
            assert re.search(rf"(?<![\w.,]){re.escape(job[field])}(?![\w,]|\.\d)", output), (field, job, output)


@pytest.mark.parametrize("where", ["terminal", "piped"])
def test_sweep_and_compare_print_every_variant_and_number_whole(where: str, tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'store.db'}"
    run = terminal if where == "terminal" else piped
    printed = run(sweep_command(), tmp_path, MLFLOW_TRACKING_URI=uri)
    parent, jobs = children(uri)
    assert {job["variant"] for job in jobs} == {f"norm_fn={norm}" for norm in NORMS}
    assert_whole(printed, jobs, ("variant", "params", "GFLOPs", "median"))
    table = printed[printed.index(f"sweep {parent}") :]  # the sweep's closing table
    assert_whole(table, jobs, ("variant", "GFLOPs", "median"))
    compared = run(compare_command(uri, parent), tmp_path)
    assert_whole(compared, jobs, ("variant", "GFLOPs", "median", "run id"))
    if where == "terminal":
        assert max(len(line) for line in compared.splitlines()) <= 80
        assert "achieved" in compared and "speed-up" in compared  # key columns chosen first
    else:
        assert not set(printed) & set("━┃┏┓┗┛┡┩│"), printed  # each job's summary too is a Markdown table
        assert_whole(compared, jobs, ("params",))
        assert "| variant " in compared and "start (UTC)" in compared  # every column, as Markdown
