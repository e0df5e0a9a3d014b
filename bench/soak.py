"""Soak test: many jobs into one store, then check every run is complete and the store still opens quickly in the UI.

    python bench/soak.py                 # 200 jobs (a few minutes), prints a table
    python bench/soak.py --jobs 20       # the short form CI runs (tests/test_app_hardening.py)

Bounded: one sweep of ``--jobs`` counting-only jobs of a small ResidualBlock (batch sizes 1..N), into a fresh SQLite
store in a temp dir; then a real ``mlflow server`` (what ``mlflow ui`` runs) is started on that store, on 127.0.0.1,
and the run search the UI's experiment page makes is timed; the server is stopped by its PID. Exits 1 when any run is
missing or incomplete.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests
from mlflow.tracking import MlflowClient
from rich.console import Console
from rich.table import Table

from gflops_track.common import names

SMALL = ["model.in_planes=16", "model.planes=16", "batch.height=8", "batch.width=8"]
ARTIFACTS = {"config.yaml", "layers.csv", "layers.json", "summary.txt"}


def conv_macs(batch: int) -> int:
    """Two 3x3 convs 16 -> 16 channels on 8x8: 2 * N*16*8*8*16*9."""
    return 2 * batch * 16 * 8 * 8 * 16 * 9


def run_sweep(jobs: int, folder: Path, uri: str) -> float:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env |= {"MLFLOW_TRACKING_URI": uri, "XDG_CACHE_HOME": str(folder / ".cache")}
    command = [
        sys.executable, "-m", "gflops_track", "-m", f"batch.size=range(1,{jobs + 1})", *SMALL,
        "timing.enabled=false", "counting.thop=false", "peak.measure=false",
    ]  # fmt: skip
    start = time.perf_counter()
    done = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"sweep failed ({done.returncode}): {done.stderr[-2000:]}")
    return time.perf_counter() - start


def verify(uri: str, jobs: int) -> list[str]:
    """Every expected run is there, FINISHED, with the right MACs and all its artifacts."""
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("gflops-track")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id], max_results=10_000)
    problems = []
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = {int(r.data.params["batch.size"]): r for r in runs if "mlflow.parentRunId" in r.data.tags}
    if len(parents) != 1 or parents[0].info.status != "FINISHED":
        problems.append(f"expected one FINISHED sweep run, found {[p.info.status for p in parents]}")
    for batch in range(1, jobs + 1):
        run = children.get(batch)
        if run is None:
            problems.append(f"job batch.size={batch} has no run")
            continue
        if run.info.status != "FINISHED" or run.data.metrics.get(names.MACS) != conv_macs(batch):
            problems.append(f"job batch.size={batch}: {run.info.status}, macs {run.data.metrics.get(names.MACS)}")
        missing = ARTIFACTS - {a.path for a in client.list_artifacts(run.info.run_id)}
        if missing:
            problems.append(f"job batch.size={batch} lacks {sorted(missing)}")
    return problems


def time_ui_search(folder: Path, uri: str) -> float:
    """Start `mlflow server` on the store (127.0.0.1, free port), time the UI's run search, stop it by PID."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
               "--backend-store-uri", uri, "--workers", "1"]  # fmt: skip
    log = (folder / "ui.log").open("wb")
    server = subprocess.Popen(command, stdout=log, stderr=log, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{base}/health", timeout=1).ok:
                    break
            except requests.RequestException:
                time.sleep(0.3)
        experiment = requests.get(
            f"{base}/api/2.0/mlflow/experiments/get-by-name", params={"experiment_name": "gflops-track"}, timeout=30
        ).json()["experiment"]["experiment_id"]
        start = time.perf_counter()
        response = requests.post(
            f"{base}/api/2.0/mlflow/runs/search",
            json={"experiment_ids": [experiment], "max_results": 100, "order_by": ["attributes.start_time DESC"]},
            timeout=60,
        )
        response.raise_for_status()
        return time.perf_counter() - start
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=200)
    jobs = parser.parse_args().jobs
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        uri = f"sqlite:///{folder / 'soak.db'}"
        sweep_s = run_sweep(jobs, folder, uri)
        problems = verify(uri, jobs)
        search_s = time_ui_search(folder, uri)
    table = Table(title=f"soak: {jobs} jobs into one SQLite store")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("sweep wall time (s)", f"{sweep_s:.1f}")
    table.add_row("per job (s)", f"{sweep_s / jobs:.2f}")
    table.add_row("complete runs", f"{jobs - len(problems)}/{jobs}")
    table.add_row("UI run search, first 100 runs (s)", f"{search_s:.2f}")
    Console().print(table)
    for problem in problems:
        print(f"INCOMPLETE: {problem}")
    raise SystemExit(1 if problems else 0)


if __name__ == "__main__":
    main()
