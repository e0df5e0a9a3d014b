"""The local spool: runs that could not reach the tracking store, kept on disk until ``gflops-track sync``.

Layout: ``<folder>/<spool id>/run.json`` (experiment, run name, status, parent reference, params, metrics, tags) and
``<folder>/<spool id>/artifacts/...``. A run is uploaded once: its spool id becomes the tag ``gflops_track.spool_id``,
an upload first looks for a run carrying it (so a crash between upload and bookkeeping creates no duplicate), and a
finished upload writes ``synced.json`` beside ``run.json``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mlflow.tracking import MlflowClient

from gflops_track.tracking.records import RunRecord, write_to_mlflow
from gflops_track.tracking.store import PARENT_TAG, ensure_experiment

SPOOL_FOLDER = "mlflow_spool"
SPOOL_TAG = "gflops_track.spool_id"
SPOOL_PARENT_PREFIX = "spool:"  # a parent that is itself still in a spool


@dataclass
class SpooledRun:
    spool_id: str
    experiment: str
    run_name: str
    status: str = "RUNNING"
    parent: str = ""  # an MLflow run id, or "spool:<spool id>" of a spooled parent
    run_id: str = ""  # the MLflow run this one was opened as before the store failed, if any
    params: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)

    @classmethod
    def new(cls, experiment: str, run_name: str, parent: str = "", run_id: str = "") -> SpooledRun:
        return cls(uuid.uuid4().hex, experiment, run_name, parent=parent, run_id=run_id)


def write(folder: Path, run: SpooledRun, record: RunRecord) -> Path:
    """Merge ``record`` into the spooled run on disk (atomic rewrite of run.json); return the run's directory."""
    directory = folder / run.spool_id
    (directory / "artifacts").mkdir(parents=True, exist_ok=True)
    run.params.update(record.params)
    run.metrics.update(record.metrics)
    run.tags.update(record.tags)
    for name, content in record.files.items():
        target = directory / "artifacts" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
    temporary = directory / "run.json.tmp"
    temporary.write_text(json.dumps(asdict(run), indent=1))
    temporary.replace(directory / "run.json")
    return directory


def find(roots: Iterable[Path]) -> list[Path]:
    """Every spooled run directory under the given folders (parents before children, oldest first)."""
    found = {path.parent for root in roots if root.exists() for path in root.rglob(f"{SPOOL_FOLDER}/*/run.json")}
    return sorted(found, key=lambda d: (bool(json.loads((d / "run.json").read_text())["parent"]), d.stat().st_mtime))


def _existing(client: MlflowClient, experiment_id: str, spool_id: str) -> str | None:
    runs = client.search_runs([experiment_id], filter_string=f"tags.`{SPOOL_TAG}` = '{spool_id}'", max_results=1)
    return runs[0].info.run_id if runs else None


def upload(client: MlflowClient, directory: Path, uploaded: dict[str, str]) -> tuple[str, bool]:
    """Upload one spooled run; return (MLflow run id, whether this call created or completed it)."""
    marker = directory / "synced.json"
    data = json.loads((directory / "run.json").read_text())
    run = SpooledRun(**data)
    if marker.exists():
        run_id = json.loads(marker.read_text())["run_id"]
        uploaded[run.spool_id] = run_id
        return run_id, False
    experiment_id = ensure_experiment(client, run.experiment)
    existing = _existing(client, experiment_id, run.spool_id)
    if existing:
        run_id, created = existing, False
    else:
        parent = run.parent
        if parent.startswith(SPOOL_PARENT_PREFIX):
            parent = uploaded.get(parent.removeprefix(SPOOL_PARENT_PREFIX), "")
        if run.run_id and _run_exists(client, run.run_id):
            run_id = run.run_id  # the store failed after the run was opened: complete that run
        else:
            tags = {PARENT_TAG: parent} if parent else {}
            run_id = client.create_run(experiment_id, run_name=run.run_name, tags=tags).info.run_id
        files = {
            str(path.relative_to(directory / "artifacts")): path.read_bytes()
            for path in (directory / "artifacts").rglob("*")
            if path.is_file()
        }
        record = RunRecord(run.params, run.metrics, {**run.tags, SPOOL_TAG: run.spool_id}, files)
        write_to_mlflow(client, run_id, record)
        if run.status != "RUNNING":
            client.set_terminated(run_id, run.status)
        created = True
    marker.write_text(json.dumps({"run_id": run_id}))
    uploaded[run.spool_id] = run_id
    return run_id, created


def _run_exists(client: MlflowClient, run_id: str) -> bool:
    try:
        client.get_run(run_id)
    except Exception:
        return False
    return True


def sync(client: MlflowClient, roots: Iterable[Path]) -> list[tuple[Path, str, bool]]:
    """Upload every spooled run under ``roots``; (directory, run id, created) per run. Running it twice creates
    nothing the second time."""
    uploaded: dict[str, str] = {}
    return [(directory, *upload(client, directory, uploaded)) for directory in find(roots)]


def load(directory: Path) -> SpooledRun:
    """The spooled run kept in ``directory`` (its run.json)."""
    return SpooledRun(**json.loads((directory / "run.json").read_text()))
