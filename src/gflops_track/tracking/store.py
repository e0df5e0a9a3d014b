"""Where runs go: the tracking URI, the experiment, and the parent run of a sweep."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import mlflow
import requests
from filelock import FileLock
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

DEFAULT_STORE_FILE = "mlflow.db"
PARENT_RUN_ENV = "GFLOPS_TRACK_PARENT_RUN_ID"  # set by the sweep callback, read by each job
ERROR_TAG = "error"
PARENT_TAG = "mlflow.parentRunId"


def resolve_tracking_uri(configured: str | None, launch_dir: Path) -> str:
    """tracking.uri if set, else $MLFLOW_TRACKING_URI, else a SQLite store ``mlflow.db`` in the launch directory
    (absolute, so Hydra's per-job output directories never scatter stores)."""
    uri = configured or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return f"sqlite:///{(launch_dir / DEFAULT_STORE_FILE).resolve()}"


def redact_uri(uri: str) -> str:
    """The URI without any password, fit to be logged or printed."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (also in its ``sqlite:///file:...?mode=ro&uri=true`` form)."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri.removeprefix("sqlite:///").removeprefix("file:").split("?", 1)[0])


def connect(uri: str) -> MlflowClient:
    """Point the fluent API and a client at ``uri`` (always explicitly: MLflow's default follows the cwd).

    A SQLite store is opened under a file lock: the first opening creates its schema, and MLflow's migration breaks
    when several processes (parallel sweeps, joblib workers) run it at once on a fresh file.
    """
    mlflow.set_tracking_uri(uri)
    database = sqlite_path(uri)
    if database is None:
        return MlflowClient(tracking_uri=uri)
    with FileLock(f"{database}.lock"):
        client = MlflowClient(tracking_uri=uri)
        client.search_experiments(max_results=1)  # opens the store: creates and migrates it if needed
    return client


def ensure_experiment(client: MlflowClient, name: str) -> str:
    """The id of experiment ``name``, created if missing (tolerating a concurrent creator)."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return client.create_experiment(name)
    except Exception:
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def child_runs(client: MlflowClient, parent_run_id: str) -> list[Run]:
    """The runs nested under ``parent_run_id``, oldest first."""
    parent = client.get_run(parent_run_id)
    return client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.`{PARENT_TAG}` = '{parent_run_id}'",
        order_by=["attributes.start_time ASC"],
        max_results=10_000,
    )


def reachability(uri: str, timeout_s: float = 5.0) -> tuple[list[str], list[str]]:
    """(errors, warnings) about a tracking server, before anything is measured: refused credentials are an error
    (fix them first), an unreachable server a warning (results go to the local spool)."""
    if urlsplit(uri).scheme not in ("http", "https"):
        return [], []
    username, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        response = requests.get(
            f"{uri.rstrip('/')}/api/2.0/mlflow/experiments/search",
            params={"max_results": 1},
            auth=(username, password or "") if username else None,
            headers=headers,
            timeout=timeout_s,
        )
    except requests.RequestException as error:
        return [], [
            f"tracking server {redact_uri(uri)} is not reachable ({type(error).__name__}): runs will be kept in a "
            "local spool in the job's output directory; upload them later with: gflops-track sync"
        ]
    if response.status_code in (401, 403):
        who = f"user {username!r}" if username else "no credentials"
        return [
            f"tracking server {redact_uri(uri)} refused {who} (HTTP {response.status_code}): set "
            "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) to valid credentials"
        ], []
    return [], []


def store_problems(uri: str, experiment: str) -> list[str]:
    """Open a database or file store and make one harmless write (create the experiment, or tag it), so a typo in the
    URI, a read-only or corrupt store fails with one clear line before anything is measured. Servers: see
    ``reachability``."""
    if urlsplit(uri).scheme in ("http", "https"):
        return []
    mlflow_logger = logging.getLogger("mlflow")
    level = mlflow_logger.level
    mlflow_logger.setLevel(logging.CRITICAL)  # MLflow logs the failing SQL with a traceback; we say it in one line
    try:
        client = connect(uri)
        existing = client.get_experiment_by_name(experiment)
        experiment_id = ensure_experiment(client, experiment)
        if existing is not None:
            client.set_experiment_tag(experiment_id, "gflops_track.write_check", str(int(time.time())))
    except Exception as error:
        first = next((line for line in str(error).splitlines() if line.strip()), type(error).__name__)
        return [
            f"tracking.uri={redact_uri(uri)!r} cannot be used: {first[:300]} (a store URI looks like "
            "sqlite:///path/to/mlflow.db, postgresql://user@host/db or http://host:5000, and must be writable)"
        ]
    finally:
        mlflow_logger.setLevel(level)
    return []


def launched_by_mlflow() -> str:
    """The run ``mlflow run`` created for this process (``MLFLOW_RUN_ID``), or ''."""
    return os.environ.get("MLFLOW_RUN_ID", "")
