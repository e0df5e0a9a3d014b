"""Team setups, for real: `mlflow run`, a real `mlflow server` on 127.0.0.1 (plain and basic-auth) on a SQLite and on a
PostgreSQL backend store (every server test runs on both), the offline spool and `gflops-track sync`, parallel writers
on one store, and Hydra's joblib and submitit launchers."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conftest import QUICK_NO_THOP as QUICK
from conftest import SMALL_BLOCK as SMALL
from conftest import cli_env, run_cli
from servers import BACKENDS, PASSWORD, Postgres, Server, free_port, postgres_missing

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


class Backend:
    """Where a test's `mlflow server` keeps its runs: a SQLite file beside it, or a fresh database on the module's
    throwaway PostgreSQL cluster (what docs/team-setup.md runs)."""

    def __init__(self, name: str, postgres: Postgres | None = None) -> None:
        self.name, self.postgres, self.count = name, postgres, 0

    def server(self, folder: Path, port: int | None = None, auth: bool = False, store: str | None = None) -> Server:
        """A server (not started) on a new store, or on `store` (a backend URI from an earlier server: a restart)."""
        if self.postgres is None:
            return Server(folder, port or free_port(), auth=auth, backend_uri=store)
        self.count += 1
        backend = store or self.postgres.database(f"tracking{self.count}")
        auth_uri = self.postgres.database(f"auth{self.count}") if auth else None
        return Server(folder, port or free_port(), auth=auth, backend_uri=backend, auth_uri=auth_uri)

    def contents(self, server: Server) -> bytes:
        """All that the server's backend store holds: the SQLite file's bytes, or a `pg_dump` of its database."""
        if self.postgres is None:
            return (server.folder / "server.db").read_bytes()
        return self.postgres.dump(server.backend_uri)


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    if request.param == "sqlite":
        yield Backend("sqlite")
        return
    missing = postgres_missing()
    if missing:
        pytest.skip(f"PostgreSQL backend: {missing}")
    cluster = Postgres().start()
    try:
        yield Backend("postgresql", cluster)
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, backend: Backend) -> Iterator[Server]:
    running = backend.server(tmp_path_factory.mktemp("server")).start()
    yield running
    running.stop()


def runs_in(uri: str, **auth: str) -> list:
    for key, value in auth.items():
        os.environ[key] = value
    try:
        client = MlflowClient(uri)
        return client.search_runs([e.experiment_id for e in client.search_experiments()])
    finally:
        for key in auth:
            os.environ.pop(key, None)


def test_sweep_against_a_real_server(tmp_path: Path, server: Server) -> None:
    done = run_cli(["-m", "norm_fn=group,none", *SMALL, *QUICK], cwd=tmp_path, MLFLOW_TRACKING_URI=server.uri)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = [r for r in runs_in(server.uri) if "norm_fn=group,none" in r.data.tags.get("sweep_overrides", "x")]
    (parent,) = runs
    children = [r for r in runs_in(server.uri) if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 2 and all(child.info.status == "FINISHED" for child in children)
    client = MlflowClient(server.uri)
    artifacts = {a.path for a in client.list_artifacts(children[0].info.run_id)}  # served by the server
    assert {"config.yaml", "layers.csv", "summary.txt"} <= artifacts
    assert children[0].data.params["tracking.uri"] == server.uri
    assert not (tmp_path / "mlflow.db").exists()


def test_basic_auth_server(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, backend: Backend) -> None:
    secured = backend.server(tmp_path_factory.mktemp("auth"), auth=True).start()
    try:
        wrong = run_cli(
            [*SMALL, *QUICK], cwd=tmp_path, MLFLOW_TRACKING_URI=secured.uri,
            MLFLOW_TRACKING_USERNAME="admin", MLFLOW_TRACKING_PASSWORD="not-it",
        )  # fmt: skip
        assert wrong.returncode == 2
        assert f"tracking server {secured.uri} refused user 'admin' (HTTP 401)" in wrong.stderr
        assert "not-it" not in wrong.stderr + wrong.stdout
        good = run_cli(
            ["-m", "norm_fn=group,none", *SMALL, *QUICK], cwd=tmp_path, MLFLOW_TRACKING_URI=secured.uri,
            MLFLOW_TRACKING_USERNAME="admin", MLFLOW_TRACKING_PASSWORD=PASSWORD,
        )  # fmt: skip
        assert good.returncode == 0, good.stderr[-3000:]
        runs = runs_in(secured.uri, MLFLOW_TRACKING_USERNAME="admin", MLFLOW_TRACKING_PASSWORD=PASSWORD)
        assert len(runs) == 3  # no run from the refused attempt
    finally:
        secured.stop()
    store = backend.contents(secured)
    assert b"sweep_overrides" in store  # the grep below reads the runs' params and tags
    assert PASSWORD.encode() not in store  # no credential in any param or tag
    for path in [*(secured.folder / "artifacts").rglob("*"), *tmp_path.rglob("*")]:
        if path.is_file():
            assert PASSWORD.encode() not in path.read_bytes(), path  # no credential in any param, tag or artifact


def test_unreachable_server_spools_then_sync_uploads_once(tmp_path: Path, server: Server) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    done = run_cli(["-m", "norm_fn=group,none", *SMALL, *QUICK], cwd=tmp_path, MLFLOW_TRACKING_URI=dead)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "is not reachable" in done.stderr and "gflops-track sync" in done.stderr
    # the closing comparison is read from the spooled jobs (it was missing: it read only the store)
    closing = done.stdout[done.stdout.index("sweep (spooled, not yet in the store): 2 job(s)") :]
    assert "| norm_fn=group " in closing and "| norm_fn=none " in closing
    spooled = list((tmp_path / "multirun").rglob("mlflow_spool/*/run.json"))
    assert len(spooled) == 3  # the sweep and its two jobs
    before = {r.info.run_id for r in runs_in(server.uri)}
    sync = [sys.executable, "-m", "gflops_track.cli", "sync", "--tracking-uri", server.uri]
    first = subprocess.run([*sync, "multirun"], cwd=tmp_path, env=cli_env(), capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    assert "3 run(s) uploaded" in first.stdout
    second = subprocess.run([*sync, "multirun"], cwd=tmp_path, env=cli_env(), capture_output=True, text=True)
    assert "0 run(s) uploaded, 3 already" in second.stdout
    new = [r for r in runs_in(server.uri) if r.info.run_id not in before]
    assert len(new) == 3  # idempotent: no duplicates
    parent = next(r for r in new if "mlflow.parentRunId" not in r.data.tags)
    children = [r for r in new if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 2 and all(c.info.status == "FINISHED" and c.data.metrics["cost/macs"] > 0 for c in children)
    assert parent.info.status == "FINISHED"


def test_server_failing_mid_sweep_loses_nothing(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, backend: Backend
) -> None:
    folder = tmp_path_factory.mktemp("dying")
    port = free_port()
    dying = backend.server(folder, port).start()

    def kill_after_first_job() -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                if any(r.info.status == "FINISHED" for r in runs_in(dying.uri) if "mlflow.parentRunId" in r.data.tags):
                    dying.stop()
                    return
            except Exception:
                pass
            time.sleep(0.2)

    killer = threading.Thread(target=kill_after_first_job)
    killer.start()
    sleepers = ["model=custom", "model._target_=fixture_models.Sleeper", "+model.in_channels=3", "batch.height=8"]
    timing = ["timing.warmup=1", "timing.min_repeats=30", "timing.max_time_s=2", "peak.measure=false"]
    done = run_cli(["-m", "+model.ms=40,41,42", *sleepers, *timing], cwd=tmp_path, MLFLOW_TRACKING_URI=dying.uri)
    killer.join()
    assert done.returncode == 0, done.stderr[-3000:]
    assert "failed (" in done.stderr or "failed at the end of the sweep" in done.stderr
    restarted = backend.server(folder, port, store=dying.backend_uri).start()  # the same store, restarted
    try:
        sync = subprocess.run(
            [sys.executable, "-m", "gflops_track.cli", "sync", "--tracking-uri", restarted.uri, "multirun"],
            cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert sync.returncode == 0, sync.stdout + sync.stderr
        runs = runs_in(restarted.uri)
        parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
        children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
        assert sorted(r.data.params["model.ms"] for r in children) == ["40", "41", "42"]
        assert all(r.info.status == "FINISHED" and r.data.metrics["latency/median_ms"] > 40 for r in children)
        assert parent.info.status == "FINISHED"
    finally:
        restarted.stop()


def sweep_in_parallel(tmp_path: Path, uri: str, norm_lists: list[str], *extra: str) -> None:
    """Two sweeps (one per norm list) started at once into one store, each from its own directory; both exit 0."""
    env = cli_env(MLFLOW_TRACKING_URI=uri, XDG_CACHE_HOME=str(tmp_path / ".cache"))
    command = [sys.executable, "-m", "gflops_track", "-m", *SMALL, *QUICK, *extra]
    sweeps = []
    for index, norms in enumerate(norm_lists):
        (tmp_path / str(index)).mkdir()
        sweeps.append(subprocess.Popen([*command, f"norm_fn={norms}"], cwd=tmp_path / str(index), env=env,
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))  # fmt: skip
    for process in sweeps:
        _, err = process.communicate(timeout=600)
        assert process.returncode == 0, err[-3000:]


def test_two_sweeps_in_parallel_against_a_server(tmp_path: Path, server: Server) -> None:
    """Two teammates sweep at once into one server (PostgreSQL or SQLite behind it): no run lost, none left open."""
    experiment = f"parallel-{server.port}"
    sweep_in_parallel(tmp_path, server.uri, ["group,none", "instance,none"], f"tracking.experiment={experiment}")
    client = MlflowClient(server.uri)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    parents = [r for r in runs if "sweep_overrides" in r.data.tags]
    assert len(parents) == 2 and len(runs) == 2 + 4
    for parent in parents:
        children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
        assert len(children) == 2
    assert all(r.info.status == "FINISHED" for r in runs)


def test_two_sweeps_in_parallel_into_one_fresh_sqlite_store(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'shared.db'}"
    sweep_in_parallel(tmp_path, uri, ["group,batch,none", "instance,group,none"])
    runs = runs_in(uri)
    parents = [r for r in runs if "sweep_overrides" in r.data.tags]
    assert len(parents) == 2 and len(runs) == 2 + 6  # no run lost
    assert all(r.info.status == "FINISHED" for r in runs)


def test_mlflow_run_logs_into_its_own_run(tmp_path: Path, store_uri: str) -> None:
    """`mlflow run . --env-manager local -P overrides="..."`: one run, the one `mlflow run` created."""
    if shutil.which("mlflow", path=str(Path(sys.executable).parent)) is None:
        pytest.skip("mlflow CLI not installed beside this interpreter")
    overrides = " ".join(["norm_fn=batch", "batch.size=4", *SMALL, *QUICK, f"hydra.run.dir={tmp_path / 'out'}"])
    env = cli_env(MLFLOW_TRACKING_URI=store_uri, XDG_CACHE_HOME=str(tmp_path / ".cache"))
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    done = subprocess.run(
        [sys.executable, "-m", "mlflow", "run", str(REPO), "--env-manager", "local",
         "--experiment-name", "gflops-track", "-P", f"overrides={overrides}", "-P", "timing.warmup=2"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    (run,) = runs_in(store_uri)
    assert run.info.status == "FINISHED" and run.info.run_name == "residual_block-batch-b4-cpu-fp32"
    assert run.data.params["batch.size"] == "4" and run.data.params["timing.warmup"] == "2"  # undeclared -P works
    assert run.data.metrics["cost/macs"] == 2 * (4 * 16 * 8 * 8 * 16 * 9)
    sweep = subprocess.run(
        [sys.executable, "-m", "mlflow", "run", str(REPO), "-e", "sweep", "--env-manager", "local",
         "--experiment-name", "gflops-track",
         "-P", f"overrides=norm_fn=group,none {' '.join([*SMALL, *QUICK])} hydra.sweep.dir={tmp_path / 'multi'}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    outer = [
        r for r in runs_in(store_uri) if r.info.run_id != run.info.run_id and "mlflow.parentRunId" not in r.data.tags
    ]
    assert len(outer) == 1
    nested = [r for r in runs_in(store_uri) if r.data.tags.get("mlflow.parentRunId") == outer[0].info.run_id]
    assert len(nested) == 2
    compare = subprocess.run(
        [sys.executable, "-m", "mlflow", "run", str(REPO), "-e", "compare", "--env-manager", "local",
         "-P", f"args=--sweep {outer[0].info.run_id} --format markdown"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert compare.returncode == 0, compare.stderr[-3000:]
    assert all(r.info.run_name in compare.stdout for r in nested)  # the comparison table names both jobs


def sweep_runs(uri: str) -> tuple[object, list]:
    runs = runs_in(uri)
    (parent,) = [r for r in runs if "sweep_overrides" in r.data.tags]
    return parent, [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]


def test_joblib_counting_sweep_and_parallel_timing_warning(tmp_path: Path, store_uri: str) -> None:
    counting = run_cli(
        ["-m", "hydra/launcher=joblib_counting", "norm_fn=group,batch,none", *SMALL, "timing.enabled=false"],
        cwd=tmp_path, MLFLOW_TRACKING_URI=store_uri,
    )  # fmt: skip
    assert counting.returncode == 0, counting.stderr[-3000:]
    assert "corrupt each other" not in counting.stderr
    parent, children = sweep_runs(store_uri)
    assert len(children) == 3 and parent.info.status == "FINISHED"
    assert all(r.data.metrics["cost/macs"] == 2 * (2 * 16 * 8 * 8 * 16 * 9) for r in children)
    assert all("latency/median_ms" not in r.data.metrics for r in children)
    timed = run_cli(
        ["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "norm_fn=group,none", *SMALL, *QUICK],
        cwd=tmp_path, MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'timed.db'}",
    )  # fmt: skip
    assert timed.returncode == 0 and "JoblibLauncher runs this sweep's jobs in parallel" in timed.stderr


def test_submitit_launcher_local_executor(tmp_path: Path, store_uri: str) -> None:
    """The SLURM path of hydra-submitit-launcher, run with submitit's local executor: jobs in other processes
    still end up as one parent run with its children."""
    done = run_cli(
        ["-m", "hydra/launcher=submitit_local", "norm_fn=group,none", *SMALL, *QUICK],
        cwd=tmp_path, MLFLOW_TRACKING_URI=store_uri,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    parent, children = sweep_runs(store_uri)
    assert len(children) == 2 and all(r.info.status == "FINISHED" for r in children)
    assert parent.data.metrics["sweep/jobs"] == 2
    assert list((tmp_path / "multirun").rglob("*_submitted.pkl"))  # really went through submitit
