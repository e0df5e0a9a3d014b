"""Where runs go: the tracking URI, the experiment, and the parent run of a sweep."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import mlflow
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


def connect(uri: str) -> MlflowClient:
    """Point the fluent API and a client at ``uri`` (always explicitly: MLflow's default follows the cwd)."""
    mlflow.set_tracking_uri(uri)
    return MlflowClient(tracking_uri=uri)


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
