"""Where runs go: the tracking URI, the experiment, and the parent run of a sweep."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import shlex
import shutil
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import mlflow
import requests
from filelock import FileLock
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from gflops_track.common import names
from gflops_track.common.names import PARENT_TAG, user_cache_dir
from gflops_track.common.redact import mask_credentials

DEFAULT_STORE_FILE = "mlflow.db"
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}
SEARCH_PAGE = 1000  # runs per search request (MLflow's default page size)
DATABASE_DIALECTS = ("postgresql", "mysql", "mssql")  # SQLAlchemy stores reached over the network
# What a tracking call raises when the store or server fails: caught wherever a failure must not cost a measurement
TRACKING_ERRORS: tuple[type[BaseException], ...] = (MlflowException, requests.RequestException, OSError)
NO_ROOM = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)  # a full disk, a quota, a file size limit: spooled, not failed


def resolve_tracking_uri(configured: str | None, launch_dir: Path) -> str:
    """tracking.uri if set, else $MLFLOW_TRACKING_URI, else a SQLite store ``mlflow.db`` in the launch directory
    (absolute, so Hydra's per-job output directories never scatter stores)."""
    return configured or os.environ.get("MLFLOW_TRACKING_URI") or default_store_uri(launch_dir)


def default_store_uri(launch_dir: Path) -> str:
    """The SQLite store ``mlflow.db`` in the launch directory, absolute."""
    return f"sqlite:///{(launch_dir / DEFAULT_STORE_FILE).resolve()}"


def redact_uri(uri: str) -> str:
    """The URI without any password or token, fit to be logged or printed (see ``gflops_track.common.redact``)."""
    return mask_credentials(uri)


def sync_command(uri: str, folder: Path | None = None) -> str:
    """The command that uploads a spool (under ``folder``, else the default folders) to the store at ``uri``, ready
    to paste: without ``--tracking-uri``, ``sync`` uploads to $MLFLOW_TRACKING_URI or ./mlflow.db instead. A
    password never shows (it belongs in the environment)."""
    return shlex.join(["gflops-track", "sync", *([str(folder)] if folder else []), "--tracking-uri", redact_uri(uri)])


def cap_http_retries() -> None:
    """Cap MLflow's HTTP retries (default: 7 retries with a growing backoff, minutes against a dead server) unless
    the user set them: 2 retries, backoff factor 1 s. Call at start-up, before the first MLflow request."""
    for name, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(name, value)


class StoreError(Exception):
    """A tracking store that cannot be read: one line, fit for the console."""


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (also in its ``sqlite:///file:...?mode=ro&uri=true`` form)."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri.removeprefix("sqlite:///").removeprefix("file:").split("?", 1)[0])


_CLIENTS: dict[str, MlflowClient] = {}  # one client per URI per process: preflight, the sweep and each job share it
_CLIENTS_LOCK = threading.Lock()


def connect(uri: str) -> MlflowClient:
    """Point the fluent API and a client at ``uri`` (always explicitly: MLflow's default follows the cwd).

    One client per URI per process, made on the first call (preflight, the sweep's run and every job reuse it). A
    SQLite store is opened under a file lock: the first opening creates its schema, and MLflow's migration breaks
    when several processes (parallel sweeps, joblib workers) run it at once on a fresh file.
    """
    mlflow.set_tracking_uri(uri)
    with _CLIENTS_LOCK:
        client = _CLIENTS.get(uri)
        if client is None:
            client = _CLIENTS[uri] = _open(uri)  # not cached when opening fails: the next call tries again
    return client


def _open(uri: str) -> MlflowClient:
    """A new client on ``uri``; a SQLite store is opened (created from the schema's template if new, see
    ``create_sqlite_store``) under its file lock."""
    database = sqlite_path(uri)
    if database is None:
        return MlflowClient(tracking_uri=uri)
    with FileLock(f"{database}.lock"):
        if not database.exists() or database.stat().st_size == 0:
            create_sqlite_store(database)
        client = MlflowClient(tracking_uri=uri)
        client.search_experiments(max_results=1)  # opens the store (creates and migrates it if still needed)
    return client


def _fast_pragmas(connection: Any, _record: Any) -> None:
    """A file nobody else opens yet: no fsync per statement, the rollback journal in memory."""
    connection.execute("PRAGMA synchronous=OFF")
    connection.execute("PRAGMA journal_mode=MEMORY")


def schema_template() -> Path | None:
    """An empty SQLite file with MLflow's whole schema (its own migrations, run once per MLflow version and machine,
    kept in the user cache), or None when it cannot be made or kept (a read-only cache, an MLflow without
    ``_initialize_tables``): the store is then created the usual way.

    Why: MLflow creates a store by running its ~100 migrations one statement at a time, each synced to disk: 5-8 s
    on this project's VM (2 s of CPU, the rest fsync), a first run's largest fixed cost. Made with no fsync per
    statement and copied afterwards, a new store costs about what opening an existing one does."""
    import sqlite3

    import mlflow.version
    import sqlalchemy
    from sqlalchemy.exc import SQLAlchemyError
    from sqlalchemy.pool import NullPool

    try:
        from mlflow.store.db.utils import _initialize_tables
    except ImportError:
        return None
    folder = user_cache_dir()
    template = folder / f"mlflow-{mlflow.version.VERSION}-sqlite-{sqlite3.sqlite_version}-empty.db"
    if template.is_file():
        return template
    building = folder / f".{template.name}.{os.getpid()}.{threading.get_ident()}.tmp"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        building.unlink(missing_ok=True)
        engine = sqlalchemy.create_engine(f"sqlite:///{building}", poolclass=NullPool)
        sqlalchemy.event.listen(engine, "connect", _fast_pragmas)
        try:
            _initialize_tables(engine)
        finally:
            engine.dispose()
        os.replace(building, template)  # whole or absent, whoever else builds it at the same time
    except (OSError, SQLAlchemyError):
        with contextlib.suppress(OSError):
            building.unlink(missing_ok=True)
        return None
    return template


def create_sqlite_store(database: Path) -> None:
    """A new SQLite store at ``database`` (caller holds its file lock): a copy of ``schema_template()`` written
    beside it, synced once and renamed into place, so the file appears whole or not at all; MLflow's client then
    adds its default experiment as it does on any new store. Without a template, MLflow creates it itself."""
    template = schema_template()
    if template is None:
        return
    database.parent.mkdir(parents=True, exist_ok=True)
    copy = database.with_name(f".{database.name}.{os.getpid()}.creating")
    try:
        shutil.copyfile(template, copy)
        with open(copy, "rb+") as written:
            os.fsync(written.fileno())
        os.replace(copy, database)
    finally:
        copy.unlink(missing_ok=True)


EXPERIMENT_KIND_TAG = "mlflow.experimentKind"  # MLflow 3: which UI an experiment opens on
MODEL_DEVELOPMENT = "custom_model_development"  # the runs table, not the GenAI overview
NOTE_TAG = "mlflow.note.content"  # an experiment's (or run's) description in the MLflow UI


def experiment_description() -> str:
    """How to compare runs in the MLflow UI (Markdown): the experiment's description."""
    metrics = ", ".join(
        f"`{key}`" for key in (names.GFLOPS, names.LATENCY_MEDIAN_MS, names.ACHIEVED, names.THROUGHPUT,
                               names.UTILIZATION_MEASURED)
    )  # fmt: skip
    return (
        "Runs of **gflops-track**: what a network costs (params, MACs, FLOPs) and how fast it runs, per machine.\n\n"
        "- A sweep is one parent run with one nested run per job; the parent's Overview holds the comparison table "
        "and its artifacts `report.html` (tables and plots) and `comparison.csv`.\n"
        f"- To compare in the runs table: **Group by** the tag `{names.HARDWARE_TAG}`, then add as columns the "
        f"metrics {metrics} and the tags `{names.VARIANT_TAG}`, `{names.DTYPE_TAG}`, `{names.BATCH_SIZE_TAG}`.\n"
        "- The **Charts** view draws one section per metric prefix, in this order: `cost/` (params, MACs, FLOPs), "
        "`latency/`, `memory/`, `peak/`, `speed/` (throughput, achieved GFLOP/s, utilization), `step/` (training "
        "step, MFU), `sweep/`, `timing/` (how the timing went, conditions), `xcheck/` (thop, FlopCounterMode).\n"
        "- Units are in the metric names: `_ms` milliseconds, `gflops` GFLOPs per forward pass of the whole batch, "
        "`gflop_per_s` GFLOP/s.\n"
        "- From a shell: `gflops-track compare --sweep <parent run id>` prints the same table.\n"
    )


def mark_experiment(client: MlflowClient, experiment_id: str, tags: dict[str, str] | None = None) -> None:
    """Mark an experiment as one for model development (MLflow 3's ``mlflow.experimentKind``) and describe how to
    compare its runs, unless it already says otherwise: a kind or description the user set is kept. ``tags``: the
    experiment's tags when the caller has them (saves a request)."""
    if tags is None:
        tags = client.get_experiment(experiment_id).tags
    wanted = {EXPERIMENT_KIND_TAG: MODEL_DEVELOPMENT, NOTE_TAG: experiment_description()}
    for key, value in wanted.items():
        if not tags.get(key):
            client.set_experiment_tag(experiment_id, key, value)


def ensure_experiment(client: MlflowClient, name: str) -> str:
    """The id of experiment ``name``, created if missing (tolerating a concurrent creator), marked for model
    development and described (``mark_experiment``)."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        mark_experiment(client, experiment.experiment_id, experiment.tags)
        return experiment.experiment_id
    try:
        experiment_id = client.create_experiment(
            name, tags={EXPERIMENT_KIND_TAG: MODEL_DEVELOPMENT, NOTE_TAG: experiment_description()}
        )
    except Exception:
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        experiment_id = experiment.experiment_id
        mark_experiment(client, experiment_id, experiment.tags)
    return experiment_id


def search_all_runs(
    client: MlflowClient,
    experiment_ids: list[str],
    filter_string: str = "",
    order_by: list[str] | None = None,
    page_size: int | None = None,
) -> list[Run]:
    """Every run matching the search, page after page (a single ``search_runs`` call stops at ``max_results``
    without saying so); ``page_size`` defaults to ``SEARCH_PAGE``."""
    runs: list[Run] = []
    token: str | None = None
    while True:
        page = client.search_runs(
            experiment_ids,
            filter_string=filter_string,
            order_by=order_by,
            max_results=page_size or SEARCH_PAGE,
            page_token=token,
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def child_runs(client: MlflowClient, parent_run_id: str, filter_string: str = "") -> list[Run]:
    """The runs nested under ``parent_run_id`` (those of them an MLflow ``filter_string`` selects), oldest first."""
    parent = client.get_run(parent_run_id)
    nested = f"tags.`{PARENT_TAG}` = '{parent_run_id}'"
    return search_all_runs(
        client,
        [parent.info.experiment_id],
        filter_string=f"{nested} and {filter_string}" if filter_string.strip() else nested,
        order_by=["attributes.start_time ASC"],
    )


def reachability(uri: str, timeout_s: float = 5.0) -> tuple[list[str], list[str]]:
    """(errors, warnings) about a tracking server, before anything is measured: refused credentials are an error
    (fix them first), an unreachable server a warning (results go to the local spool)."""
    if urlsplit(uri).scheme not in ("http", "https"):
        return [], []
    status, reason = probe_server(uri, timeout_s)
    if status is None:
        return [], [
            f"tracking server {redact_uri(uri)} is not reachable ({reason}): runs will be kept in a "
            f"local spool in the job's output directory; upload them later with: {sync_command(uri)}"
        ]
    if status in (401, 403):
        username = urlsplit(uri).username or os.environ.get("MLFLOW_TRACKING_USERNAME")
        who = f"user {username!r}" if username else "no credentials"
        return [
            f"tracking server {redact_uri(uri)} refused {who} (HTTP {status}): set "
            "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) to valid credentials"
        ], []
    return [], []


def probe_server(uri: str, timeout_s: float = 5.0) -> tuple[int | None, str]:
    """(HTTP status, "") of one experiment search on the server, or (None, why) when it does not answer. Goes
    through MLflow's own REST client, so MLFLOW_TRACKING_INSECURE_TLS, MLFLOW_TRACKING_SERVER_CERT_PATH,
    MLFLOW_TRACKING_CLIENT_CERT_PATH, MLFLOW_TRACKING_AUTH and the credential variables apply as in every later call;
    no retry: a dead server answers within ``timeout_s``."""
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    try:
        response = http_request(
            get_default_host_creds(uri.rstrip("/")),
            "/api/2.0/mlflow/experiments/search",
            "GET",
            max_retries=0,
            backoff_factor=0,
            timeout=timeout_s,
            raise_on_status=False,
            params={"max_results": 1},
        )
    except Exception as error:  # connection refused, DNS, TLS, timeout: MLflow wraps them in MlflowException
        cause = error.__cause__ or error.__context__ or error
        errno = re.search(r"\[Errno -?\d+\][^'\")]*", str(cause))  # "[Errno 111] Connection refused"
        return None, f"{type(cause).__name__}: {errno.group(0) if errno else first_line(cause, 160)}"
    return response.status_code, ""


def first_line(error: BaseException, limit: int = 300) -> str:
    """The first non-empty line of an error's text, credentials masked: what a console line shows."""
    line = next((line for line in str(error).splitlines() if line.strip()), type(error).__name__)
    return mask_credentials(line.strip())[:limit]


def probe_database(uri: str, timeout_s: float = 5.0) -> str | None:
    """Why the database behind a ``postgresql://``, ``mysql://`` or ``mssql://`` store cannot be used (refused
    connection, unknown host, wrong password, no such database), or None when a connection opens; any other URI:
    None. One attempt, bounded by ``timeout_s``: MLflow retries a failed connection 10 times, about 100 s, then
    raises with a traceback."""
    dialect = urlsplit(uri).scheme.split("+", 1)[0]
    if dialect not in DATABASE_DIALECTS:
        return None
    import sqlalchemy
    from sqlalchemy.pool import NullPool

    timeout = {"connect_timeout": max(2, round(timeout_s))} if dialect in ("postgresql", "mysql") else {}
    try:
        engine = sqlalchemy.create_engine(uri, poolclass=NullPool, connect_args=timeout)
        try:
            with engine.connect():
                pass
        finally:
            engine.dispose()
    except Exception as error:  # the driver's error (or a missing driver), wrapped by SQLAlchemy
        cause = getattr(error, "orig", None) or error
        return f"{type(cause).__name__}: {first_line(cause, 200)}"
    return None


def unreachable(uri: str, timeout_s: float = 5.0) -> str | None:
    """One line saying why the server or database behind ``uri`` cannot be used (it does not answer, or refuses
    the credentials), or None; file and SQLite stores: None. No retries: a dead store is reported at once."""
    if urlsplit(uri).scheme in ("http", "https"):
        status, reason = probe_server(uri, timeout_s)
        if status is None:
            return f"tracking server {redact_uri(uri)} is not reachable ({reason})"
        if status in (401, 403):
            return (
                f"tracking server {redact_uri(uri)} refused the credentials (HTTP {status}): set "
                "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN)"
            )
        return None
    reason = probe_database(uri, timeout_s)
    return None if reason is None else f"tracking store {redact_uri(uri)} cannot be reached ({reason})"


def open_store(uri: str) -> MlflowClient:
    """A client for *reading* an existing store: never creates a store, a database file or a directory.

    A ``sqlite:///`` or file store must exist; a server or database must answer (one probe, no retries) and accept
    the credentials. Raises ``StoreError`` with one line otherwise.
    """
    scheme = urlsplit(uri).scheme
    database = sqlite_path(uri)
    if database is not None:
        if not database.is_file():
            raise StoreError(f"no tracking store at {database} (from {redact_uri(uri)}): nothing to read")
    elif scheme in ("", "file"):
        folder = Path(urlsplit(uri).path if scheme == "file" else uri)
        if not folder.is_dir():
            raise StoreError(f"no tracking store at {folder} (from {redact_uri(uri)}): nothing to read")
    else:
        problem = unreachable(uri)
        if problem is not None:
            raise StoreError(problem)
    return MlflowClient(tracking_uri=uri)


def store_problems(uri: str, experiment: str) -> list[str]:
    """Open a database or file store and make one harmless write (create the experiment, or tag it), so a typo in the
    URI, a read-only or corrupt store fails with one clear line before anything is measured. Servers: see
    ``reachability``."""
    if urlsplit(uri).scheme in ("http", "https"):
        return []
    mlflow_logger = logging.getLogger("mlflow")
    level = mlflow_logger.level
    mlflow_logger.setLevel(logging.CRITICAL)  # MLflow logs the failing SQL with a traceback; we say it in one line
    database = sqlite_path(uri)
    if database is not None and not database.parent.is_dir():  # a mistyped path would start a new, empty store
        return [
            f"tracking.uri={redact_uri(uri)!r} cannot be used: directory {str(database.parent)!r} does not exist "
            "(create it first: a SQLite store is made in an existing directory)"
        ]
    try:
        reason = probe_database(uri)  # a dead database: at once, not after MLflow's 100 s of retries
        if reason is not None:
            raise StoreError(reason)
        client = connect(uri)
        existing = client.get_experiment_by_name(experiment)
        experiment_id = ensure_experiment(client, experiment)
        if existing is not None:
            client.set_experiment_tag(experiment_id, "gflops_track.write_check", str(int(time.time())))
    except Exception as error:
        first = first_line(error)
        return [
            f"tracking.uri={redact_uri(uri)!r} cannot be used: {first[:300]} (a store URI looks like "
            "sqlite:///path/to/mlflow.db, postgresql://user@host/db or http://host:5000, and must be writable)"
        ]
    finally:
        mlflow_logger.setLevel(level)
    return []


def local_artifact_path(location: str) -> Path | None:
    """The directory of a local artifact location (``/path`` or ``file:///path``); None for a server's or a cloud
    bucket's (those are checked by writing through them)."""
    from mlflow.utils.file_utils import local_file_uri_to_path
    from mlflow.utils.uri import is_local_uri

    try:
        local = is_local_uri(location, is_tracking_or_registry_uri=False)
    except MlflowException:  # file://remote-host/...
        return None
    return Path(local_file_uri_to_path(location)) if local else None


def artifact_write_failure(client: MlflowClient, run_id: str, error: BaseException) -> str | None:
    """The run's artifact location when ``error`` (raised writing the run's files) is a local location refusing
    them while the store itself answers: a permission, a read-only or immutable directory, a file in the way. No
    outage, so a spool would not help (``sync`` would meet the same refusal): the job fails. None otherwise: a
    server or network failure, or a full disk (room can be made, then ``sync`` completes the run): spooled."""
    if not isinstance(error, OSError) or isinstance(error, requests.RequestException) or error.errno in NO_ROOM:
        return None
    try:
        location = client.get_run(run_id).info.artifact_uri
    except TRACKING_ERRORS:
        return None
    return location if local_artifact_path(location) is not None else None


def launched_by_mlflow() -> str:
    """The run ``mlflow run`` created for this process (``MLFLOW_RUN_ID``), or ''."""
    return os.environ.get("MLFLOW_RUN_ID", "")


def launched_run_problems(uri: str) -> list[str]:
    """``MLFLOW_RUN_ID`` must name a run that is open in the store: ``mlflow run`` sets it for the run it made and
    keeps it RUNNING. One left over in a shell (a run that ended, or that is not in this store) would have its name,
    tags and params overwritten, or be taken for an outage; one line, before anything is written."""
    run_id = launched_by_mlflow()
    if not run_id:
        return []
    database = sqlite_path(uri)
    fix = "it is set by `mlflow run` for the run it makes: unset it (unset MLFLOW_RUN_ID) to log new runs"
    try:
        run = None if database is not None and not database.is_file() else connect(uri).get_run(run_id)
    except MlflowException as error:
        if error.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return []  # the store itself fails: its own check says so
        run = None
    except Exception:
        return []
    if run is None:
        return [f"MLFLOW_RUN_ID={run_id!r} is not allowed: {redact_uri(uri)} has no such run; {fix}"]
    if run.info.lifecycle_stage == "deleted" or run.info.status != "RUNNING":
        state = "deleted" if run.info.lifecycle_stage == "deleted" else f"already {run.info.status}"
        return [
            f"MLFLOW_RUN_ID={run_id!r} is not allowed: that run ({run.info.run_name}) is {state}, and a run that "
            f"ended is never written again; {fix}"
        ]
    return []
