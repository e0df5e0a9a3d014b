"""tracking/store.py: paging through searches, opening a store only to read it, the reachability probe through
MLflow's own REST client. Real SQLite stores in temp dirs; a real port with nothing listening."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from gflops_track.common.names import PARENT_TAG
from gflops_track.tracking import store
from gflops_track.tracking.store import StoreError, child_runs, open_store, reachability, search_all_runs


def test_search_all_runs_pages_past_one_page(store_uri: str, monkeypatch: pytest.MonkeyPatch) -> None:
    client = MlflowClient(store_uri)
    experiment = client.create_experiment("paging")
    parent = client.create_run(experiment, run_name="sweep").info.run_id
    for index in range(23):
        client.create_run(experiment, run_name=f"job-{index:02d}", tags={PARENT_TAG: parent})
    found = search_all_runs(client, [experiment], order_by=["attributes.run_name ASC"], page_size=5)
    assert len(found) == 24 and len({run.info.run_id for run in found}) == 24  # 5 pages, no run twice
    assert [run.info.run_name for run in found][:3] == ["job-00", "job-01", "job-02"]
    filtered = search_all_runs(client, [experiment], filter_string="attributes.run_name LIKE 'job-1%'", page_size=3)
    assert sorted(run.info.run_name for run in filtered) == [f"job-{index}" for index in range(10, 20)]
    monkeypatch.setattr(store, "SEARCH_PAGE", 4)  # a sweep bigger than a page: every child, in start order
    children = child_runs(client, parent)
    assert [run.info.run_name for run in children] == [f"job-{index:02d}" for index in range(23)]


def test_open_store_reads_and_never_creates(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match=r"no tracking store at .*missing\.db"):
        open_store(f"sqlite:///{tmp_path / 'missing.db'}")
    with pytest.raises(StoreError, match="no tracking store at"):
        open_store(f"sqlite:///{tmp_path / 'typo' / 'x.db'}")
    with pytest.raises(StoreError, match="no tracking store at"):
        open_store(str(tmp_path / "mlruns"))
    assert list(tmp_path.iterdir()) == []
    existing = f"sqlite:///{tmp_path / 'there.db'}"
    MlflowClient(existing).create_experiment("e")
    assert open_store(existing).get_experiment_by_name("e") is not None


def test_probe_of_a_dead_server_is_a_warning_with_the_password_masked() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    uri = f"http://alice:Zq-pw@127.0.0.1:{port}"
    errors, warnings = reachability(uri, timeout_s=5)
    assert errors == [] and len(warnings) == 1
    assert "http://alice:***@127.0.0.1" in warnings[0] and "Connection refused" in warnings[0]
    assert "Zq-pw" not in warnings[0]
    with pytest.raises(StoreError, match="is not reachable") as raised:
        open_store(uri)
    assert "Zq-pw" not in str(raised.value)


def test_connect_makes_one_client_per_uri_and_retries_a_failed_open(tmp_path: Path, migrated_store: Path) -> None:
    """One client per URI per process (preflight, the sweep and every job share it); a store that could not be
    opened is not remembered, so the next call tries again. Copies of a migrated store: creating three takes long."""
    for name in ("a.db", "b.db"):
        shutil.copyfile(migrated_store, tmp_path / name)
    first, second = f"sqlite:///{tmp_path / 'a.db'}", f"sqlite:///{tmp_path / 'b.db'}"
    client = store.connect(first)
    assert store.connect(first) is client and store.connect(second) is not client
    (tmp_path / "later").write_text("a file where the store's folder should be")
    missing = f"sqlite:///{tmp_path / 'later' / 'c.db'}"
    with pytest.raises(Exception):  # noqa: B017 - MLflow raises its own wrapper of SQLAlchemy's error
        store.connect(missing)
    (tmp_path / "later").unlink()
    (tmp_path / "later").mkdir()
    shutil.copyfile(migrated_store, tmp_path / "later" / "c.db")
    assert store.connect(missing).search_experiments(max_results=1)  # the Default experiment: opened this time


def test_command_store_moves_a_password_out_of_the_flag_and_the_environment(tmp_path: Path) -> None:
    """The path `sync`, `compare` and `reap` share with `run`: the URI they use holds no password; the password is
    where MLflow (or libpq) reads it; a value the user set there wins; a scheme with no such variable is refused."""
    from gflops_track.tracking.credentials import command_store

    environ = {"MLFLOW_TRACKING_URI": "postgresql://bob:Zq-db@db:5432/mlflow"}
    uri, warnings = command_store("http://alice:Zq-http@host:5000", tmp_path, environ)
    assert uri == "http://host:5000" and environ["MLFLOW_TRACKING_URI"] == "postgresql://bob@db:5432/mlflow"
    assert environ["MLFLOW_TRACKING_PASSWORD"] == "Zq-http" and environ["PGPASSWORD"] == "Zq-db"
    assert len(warnings) == 2 and not any("Zq-" in warning for warning in warnings)
    environ = {"MLFLOW_TRACKING_URI": "http://alice:Zq-http@host:5000", "MLFLOW_TRACKING_PASSWORD": "mine"}
    assert command_store(None, tmp_path, environ)[0] == "http://host:5000"
    assert environ["MLFLOW_TRACKING_PASSWORD"] == "mine"
    assert command_store(None, tmp_path, {}) == (f"sqlite:///{(tmp_path / 'mlflow.db').resolve()}", [])
    with pytest.raises(StoreError, match=r"--tracking-uri holds a password for a mysql:// store") as refused:
        command_store("mysql://bob:Zq-my@db/mlflow", tmp_path, {})
    assert "Zq-my" not in str(refused.value)


def test_a_database_that_does_not_answer_is_one_line_at_once() -> None:
    """One connection attempt (MLflow itself retries for about 100 s); the password never shows."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    problem = store.unreachable(f"postgresql://bob:Zq-pw@127.0.0.1:{port}/mlflow")
    assert problem is not None and "\n" not in problem and "Zq-pw" not in problem
    assert problem.startswith(f"tracking store postgresql://bob:***@127.0.0.1:{port}/mlflow cannot be reached")
    assert "Connection refused" in problem
    with pytest.raises(StoreError, match="Connection refused"):
        open_store(f"postgresql://bob@127.0.0.1:{port}/mlflow")
    assert store.unreachable("sqlite:////nowhere/mlflow.db") is None  # files are judged by opening them


def _contents(database: Path) -> tuple[dict[str, object], list[tuple[object, ...]]]:
    """A SQLite store's schema, table by table (columns, indexes with their columns, foreign keys, each sorted:
    MLflow's migrations rebuild some tables from a reflection whose clause order varies between processes), and its
    rows outside the experiments table, then the default experiment."""
    import sqlite3

    with sqlite3.connect(database) as db:
        tables = [t for (t,) in db.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")]
        schema: dict[str, object] = {}
        for table in tables:
            indexes = sorted(
                (name, unique, tuple(sorted(c[2] for c in db.execute(f"PRAGMA index_info('{name}')"))))
                for _, name, unique, *_ in db.execute(f"PRAGMA index_list('{table}')")
            )
            foreign = sorted(tuple(row[2:5]) for row in db.execute(f"PRAGMA foreign_key_list('{table}')"))
            columns = sorted(tuple(row[1:]) for row in db.execute(f"PRAGMA table_info('{table}')"))
            schema[table] = (columns, indexes, foreign)
        rows = [
            (table, *row) for table in tables if table != "experiments" for row in db.execute(f"SELECT * FROM {table}")
        ]
        default = list(db.execute("SELECT experiment_id, name, artifact_location FROM experiments"))
    db.close()
    return schema, [*rows, *default]


def test_a_new_store_is_a_copy_of_mlflows_own_schema(
    tmp_path: Path, migrated_store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """connect() on a new SQLite file: the same schema, rows and default experiment as a store MLflow migrates itself
    (``migrated_store``, made by MlflowClient from the same cwd, which the default experiment's artifact location
    follows); the template is made once and reused, and the store takes runs."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    first = tmp_path / "one" / "mlflow.db"
    client = store.connect(f"sqlite:///{first}")
    (template,) = (tmp_path / "cache" / "gflops-track").glob("mlflow-*-empty.db")
    assert _contents(first) == _contents(migrated_store)
    made = template.stat().st_mtime_ns
    second = tmp_path / "two.db"
    store.connect(f"sqlite:///{second}")
    assert template.stat().st_mtime_ns == made and _contents(second) == _contents(migrated_store)
    assert sorted(p.name for p in first.parent.iterdir()) == ["mlflow.db", "mlflow.db.lock"]  # no copy left over
    run = client.create_run(store.ensure_experiment(client, "new"), run_name="r").info.run_id
    assert client.get_run(run).info.status == "RUNNING"


def test_an_existing_store_is_opened_as_it_is(tmp_path: Path, store_uri: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A store that exists is never replaced by the template (its experiment survives); none is made."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    MlflowClient(store_uri).create_experiment("kept")
    assert store.connect(store_uri).get_experiment_by_name("kept") is not None
    assert not (tmp_path / "cache").exists()
