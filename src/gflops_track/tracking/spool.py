"""The local spool: runs that could not reach the tracking store, kept on disk until ``gflops-track sync``.

Layout: ``<folder>/<spool id>/run.json`` (experiment, run name, status, parent reference, params, metrics, tags) and
``<folder>/<spool id>/artifacts/...``. Uploading is safe to repeat and to run concurrently:

- each spool directory is uploaded under a file lock (``.sync.lock``), and its run is created with the tag
  ``gflops_track.spool_id``: an upload first looks for a run carrying it, so three ``sync`` processes at once, or a
  crash between upload and bookkeeping, create no duplicate;
- ``synced.json`` records the run id per target store (URI, credentials masked), and is checked against the store:
  a sync to store B after a sync to store A uploads to B, and a store that lost the run gets it again;
- an unreadable ``run.json`` is skipped and named, the rest is uploaded;
- a run the store no longer has (its database was deleted mid-sweep) is recreated from what the spool holds, tagged
  ``gflops_track.recreated_from``, and the children that name it are nested under the recreated run;
- symbolic links inside a spool are never followed: they are skipped and reported.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
import uuid
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from filelock import FileLock
from mlflow.entities import Metric, Param, Run, RunData, RunInfo, RunTag
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME

from gflops_track.common.names import ERROR_TAG, PARENT_TAG
from gflops_track.tracking.reap import REAPED_TAG
from gflops_track.tracking.records import RunRecord, write_to_mlflow
from gflops_track.tracking.store import ensure_experiment, redact_uri

SPOOL_FOLDER = "mlflow_spool"
SPOOL_TAG = "gflops_track.spool_id"
RECREATED_TAG = "gflops_track.recreated_from"  # the run id (or spool reference) a recreated run stands in for
RECOVERED_TAG = "gflops_track.recovered_by_sync"  # on a run the store had ended otherwise (e.g. reaped): what it was
SPOOL_PARENT_PREFIX = "spool:"  # a parent that is itself still in a spool
RUN_FILE = "run.json"
SYNCED_FILE = "synced.json"
LOCK_FILE = ".sync.lock"
SYNC_LOCK_TIMEOUT_S = 600.0  # another sync holding a spool directory this long is stuck


class BrokenSpool(Exception):
    """A spool directory whose run.json cannot be read: named and skipped, never fatal for the others."""


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
    started_ms: int = 0  # when it was spooled (ms since the epoch; 0 in spools written before this field)

    @classmethod
    def new(cls, experiment: str, run_name: str, parent: str = "", run_id: str = "") -> SpooledRun:
        return cls(uuid.uuid4().hex, experiment, run_name, parent=parent, run_id=run_id, started_ms=now_ms())

    def as_run(self) -> Run:
        """The spooled run as an MLflow ``Run`` (what the comparison tables read), before it is in any store: its
        MLflow run id if it had one, else ``spool:<id>``."""
        info = RunInfo(
            run_id=self.run_id or f"{SPOOL_PARENT_PREFIX}{self.spool_id}", experiment_id="", user_id="",
            status=self.status, start_time=self.started_ms, end_time=None, lifecycle_stage="active",
            run_name=self.run_name,
        )  # fmt: skip
        data = RunData(
            metrics=[Metric(key, value, 0, 0) for key, value in self.metrics.items()],
            params=[Param(key, value) for key, value in self.params.items()],
            tags=[RunTag(key, value) for key, value in self.tags.items()],
        )
        return Run(info, data)

    @property
    def is_sweep(self) -> bool:
        """A sweep's own run: spooled at the start (tag ``sweep_overrides``) or only its ending (no content)."""
        return "sweep_overrides" in self.tags or bool(self.run_id and not self.parent and not self.params)


def now_ms() -> int:
    return int(time.time() * 1000)


def _inside(base: Path, name: str) -> Path:
    """``base / name``, refusing a name that climbs out of ``base`` (``../``, absolute paths)."""
    target = (base / name).resolve()
    if not target.is_relative_to(base.resolve()):
        raise ValueError(f"artifact name {name!r} points outside the spool")
    return base / name


def write(folder: Path, run: SpooledRun, record: RunRecord) -> Path:
    """Merge ``record`` into the spooled run on disk (atomic rewrite of run.json); return the run's directory."""
    directory = folder / run.spool_id
    (directory / "artifacts").mkdir(parents=True, exist_ok=True)
    run.params.update(record.params)
    run.metrics.update(record.metrics)
    run.tags.update(record.tags)
    for name, content in record.files.items():
        target = _inside(directory / "artifacts", name)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.unlink(missing_ok=True)  # never write through a link planted there
        target.write_bytes(content)
    temporary = directory / f"{RUN_FILE}.tmp"
    temporary.write_text(json.dumps(asdict(run), indent=1))
    temporary.replace(directory / RUN_FILE)
    return directory


def spooled_children(root: Path, parents: Iterable[str]) -> list[SpooledRun]:
    """The runs spooled under ``root`` whose parent is one of ``parents`` (a sweep's run id or ``spool:<id>``); a
    directory that cannot be read is left to ``sync``, which names it."""
    wanted = set(parents) - {""}
    children = []
    for directory in find([root]):
        try:
            run = load(directory)
        except BrokenSpool:
            continue
        if run.parent in wanted:
            children.append(run)
    return children


def load(directory: Path) -> SpooledRun:
    """The spooled run in ``directory``; ``BrokenSpool`` naming the file and the reason when it cannot be read."""
    path = directory / RUN_FILE
    if directory.is_symlink() or path.is_symlink():
        raise BrokenSpool(f"{path}: a symbolic link (not followed)")
    try:
        data = json.loads(path.read_text())
        known = {f.name for f in fields(SpooledRun)}
        return SpooledRun(**{key: value for key, value in data.items() if key in known})
    except (OSError, ValueError, TypeError) as error:
        raise BrokenSpool(f"{path}: {type(error).__name__}: {str(error)[:200]}") from error


def find(roots: Iterable[Path]) -> list[Path]:
    """Every spooled run directory under the given folders: parents before children, oldest first; unreadable ones
    last (``sync`` names them)."""
    found = {path.parent for root in roots if root.exists() for path in root.rglob(f"{SPOOL_FOLDER}/*/{RUN_FILE}")}

    def order(directory: Path) -> tuple[int, float]:
        try:
            rank = 1 if load(directory).parent else 0
        except BrokenSpool:
            rank = 2
        try:
            return rank, directory.stat().st_mtime
        except OSError:
            return rank, 0.0

    return sorted(found, key=order)


def artifact_files(directory: Path) -> tuple[dict[str, bytes], list[Path]]:
    """The spooled artifacts as {relative path: bytes}, and the symbolic links skipped (never followed: a link
    planted in a spool must not upload a file from outside it)."""
    root = directory / "artifacts"
    files: dict[str, bytes] = {}
    links: list[Path] = []
    if root.is_symlink():
        return files, [root]
    for folder, subfolders, names in os.walk(root, followlinks=False):
        base = Path(folder)
        links += [base / name for name in subfolders if (base / name).is_symlink()]
        for name in names:
            path = base / name
            if path.is_symlink():
                links.append(path)
            elif path.is_file():
                files[str(path.relative_to(root))] = path.read_bytes()
    return files, links


DERIVE = "derive"  # the sweep ended (or its run had to be recreated): its status follows from its children
IF_ENDED = "if-ended"  # known only through an uploaded child: re-derive only if the store shows it ended


@dataclass
class SyncReport:
    """What one ``sync`` did. ``sweeps`` maps each sweep run touched (its id in the store) to what to do with its
    ending: ``DERIVE``, ``IF_ENDED``, or a status to keep (``KILLED``; ``RUNNING``: the sweep never ended)."""

    uploaded: list[tuple[Path, str, bool]] = field(default_factory=list)  # (directory, run id, created now)
    broken: list[str] = field(default_factory=list)  # "path: why", for unreadable or failed spool directories
    links: list[Path] = field(default_factory=list)  # symbolic links skipped
    sweeps: dict[str, str] = field(default_factory=dict)
    recreated: dict[str, str] = field(default_factory=dict)  # original run id or spool reference -> new run id


class Uploader:
    """Uploads spooled runs to one store; remembers the run id each spool id and parent reference maps to."""

    def __init__(self, client: MlflowClient, target: str) -> None:
        self.client = client
        self.target = redact_uri(target)  # the key in synced.json: never a password on disk
        self.uploaded: dict[str, str] = {}  # spool id -> run id
        self.parents: dict[str, str] = {}  # parent reference -> run id in this store
        self.report = SyncReport()

    def _existing(self, experiment_id: str, tag: str, value: str) -> str | None:
        runs = self.client.search_runs([experiment_id], filter_string=f"tags.`{tag}` = '{value}'", max_results=1)
        return runs[0].info.run_id if runs else None

    def _exists(self, run_id: str) -> bool:
        try:
            self.client.get_run(run_id)
        except Exception:
            return False
        return True

    def _recreate(self, experiment_id: str, original: str, name: str, tags: dict[str, str]) -> str:
        """The run standing in for ``original`` (a run id the store lost, or a spooled parent that cannot be read
        or was not synced yet): found by its tag, else created (under a lock, so concurrent syncs make one)."""
        with self._recreate_lock(original):
            found = self._stand_in(experiment_id, original)
            if found:
                return found
            tags = {**tags, RECREATED_TAG: original}
            run_id = self.client.create_run(experiment_id, run_name=name, tags=tags).info.run_id
        self.report.recreated[original] = run_id
        return run_id

    def _recreate_lock(self, original: str) -> FileLock:
        """One lock per (store, original) for every sync on this machine: the jobs of one sweep spool into different
        folders, and concurrent syncs of them must recreate the lost parent once."""
        key = hashlib.sha256(f"{self.target}|{original}".encode()).hexdigest()[:24]
        return FileLock(Path(tempfile.gettempdir()) / f"gflops-track-recreate-{key}.lock", timeout=SYNC_LOCK_TIMEOUT_S)

    def _stand_in(self, experiment_id: str, original: str) -> str | None:
        """The run already standing in for ``original``: recreated for it, or (a spooled parent) uploaded."""
        found = self._existing(experiment_id, RECREATED_TAG, original)
        if not found and original.startswith(SPOOL_PARENT_PREFIX):
            found = self._existing(experiment_id, SPOOL_TAG, original.removeprefix(SPOOL_PARENT_PREFIX))
        return found

    def parent_id(self, run: SpooledRun, experiment_id: str) -> str:
        """The id, in this store, of the run ``run`` nests under: uploaded, found by tag, or recreated."""
        reference = run.parent
        if not reference:
            return ""
        if reference in self.parents:
            return self.parents[reference]
        if reference.startswith(SPOOL_PARENT_PREFIX):
            spool_id = reference.removeprefix(SPOOL_PARENT_PREFIX)
            parent = self.uploaded.get(spool_id) or self._existing(experiment_id, SPOOL_TAG, spool_id)
        else:
            parent = reference if self._exists(reference) else None
        if not parent:  # the parent's spool is unreadable, or the store lost it: children still get one parent
            parent = self._recreate(experiment_id, reference, "sweep", {})
            self.report.sweeps[parent] = DERIVE
        self.parents[reference] = parent
        return parent

    def upload(self, directory: Path) -> tuple[str, bool]:
        """Upload one spooled run under its lock; (run id in this store, whether this call created or completed
        it)."""
        run = load(directory)
        with FileLock(directory / LOCK_FILE, timeout=SYNC_LOCK_TIMEOUT_S):
            run_id, created = self._upload_locked(directory, run)
        self.uploaded[run.spool_id] = run_id
        if run.run_id:
            self.parents[run.run_id] = run_id  # children naming the original id nest under this run
        self.parents[SPOOL_PARENT_PREFIX + run.spool_id] = run_id
        if created and run.is_sweep:
            self.report.sweeps[run_id] = run.status if run.status in ("KILLED", "RUNNING") else DERIVE
        elif created and run.parent:
            experiment_id = self.client.get_run(run_id).info.experiment_id
            self.report.sweeps.setdefault(self.parent_id(run, experiment_id), IF_ENDED)
        return run_id, created

    def _synced(self, directory: Path) -> str | None:
        """The run id synced.json records for this store, if the store still has it."""
        marker = directory / SYNCED_FILE
        if not marker.is_file() or marker.is_symlink():
            return None
        try:
            data = json.loads(marker.read_text())
        except (OSError, ValueError):
            return None
        run_id = data.get("targets", {}).get(self.target) or data.get("run_id")  # "run_id": the one-store format
        return run_id if run_id and self._exists(run_id) else None

    def _mark(self, directory: Path, run_id: str) -> None:
        marker = directory / SYNCED_FILE
        try:
            targets = json.loads(marker.read_text()).get("targets", {}) if marker.is_file() else {}
        except (OSError, ValueError):
            targets = {}
        targets[self.target] = run_id
        temporary = directory / f"{SYNCED_FILE}.tmp"
        temporary.write_text(json.dumps({"targets": targets}, indent=1))
        temporary.replace(marker)

    def _recovered(self, run_id: str, run: SpooledRun) -> dict[str, str]:
        """Tags that make the store's run say what the spool says: its name (a stand-in is called "sweep"), and, for
        a run the store had ended otherwise (``reap`` marks a run whose process is gone KILLED, while its results
        were safe in the spool), ``RECOVERED_TAG`` saying so; the earlier fate's ``reaped`` and ``error`` tags go."""
        stored = self.client.get_run(run_id)
        tags = {MLFLOW_RUN_NAME: run.run_name} if stored.info.run_name != run.run_name else {}
        before = stored.info.status
        stand_in = RECREATED_TAG in stored.data.tags  # its status was derived by an earlier sync, not a fate
        if stand_in or (before in ("RUNNING", run.status) and REAPED_TAG not in stored.data.tags):
            return tags
        reason = stored.data.tags.get(REAPED_TAG) or stored.data.tags.get(ERROR_TAG, "")
        tags[RECOVERED_TAG] = f"was {before}{f' ({reason})' if reason else ''}; uploaded from the spool by sync"
        for stale in (REAPED_TAG, ERROR_TAG):
            if stale in stored.data.tags and stale not in run.tags:
                self.client.delete_tag(run_id, stale)
        return tags

    def _upload_locked(self, directory: Path, run: SpooledRun) -> tuple[str, bool]:
        synced = self._synced(directory)
        if synced:
            return synced, False
        experiment_id = ensure_experiment(self.client, run.experiment)
        existing = self._existing(experiment_id, SPOOL_TAG, run.spool_id)
        if existing:
            status = self.client.get_run(existing).info.status
            if status == run.status or run.status == "RUNNING":
                self._mark(directory, existing)
                return existing, False
            run_id = existing  # created by an upload that stopped before its end: complete it
        elif run.run_id and self._exists(run.run_id):
            run_id = run.run_id  # the store failed after the run was opened: complete that run
        elif run.run_id:  # the store lost the run (e.g. its database was deleted mid-sweep): recreate it
            parent = self.parent_id(run, experiment_id)
            tags = {SPOOL_TAG: run.spool_id, **({PARENT_TAG: parent} if parent else {})}
            run_id = self._recreate(experiment_id, run.run_id, run.run_name, tags)
        else:
            parent = self.parent_id(run, experiment_id)
            tags = {SPOOL_TAG: run.spool_id, **({PARENT_TAG: parent} if parent else {})}
            with self._recreate_lock(SPOOL_PARENT_PREFIX + run.spool_id):  # a child's sync may be making a stand-in
                # a sync of only a job's folder made a stand-in for this spooled sweep: it becomes the sweep's run
                run_id = self._existing(experiment_id, RECREATED_TAG, SPOOL_PARENT_PREFIX + run.spool_id) or ""
                if not run_id:
                    run_id = self.client.create_run(
                        experiment_id, start_time=run.started_ms or None, run_name=run.run_name, tags=tags
                    ).info.run_id  # its real start: compare orders a sweep's jobs by it
        files, links = artifact_files(directory)
        self.report.links += links
        tags = {**run.tags, SPOOL_TAG: run.spool_id, **self._recovered(run_id, run)}
        write_to_mlflow(self.client, run_id, RunRecord(run.params, run.metrics, tags, files))
        if run.status != "RUNNING":
            self.client.set_terminated(run_id, run.status)
        self._mark(directory, run_id)
        return run_id, True


def sync_lock(target: str) -> FileLock:
    """One ``sync`` per target store at a time on this machine (uploads and the sweeps' endings together, so a sweep
    is never ended from half of its jobs). Per-directory locks and spool-id lookups still guard syncs from other
    machines against duplicates."""
    key = hashlib.sha256(redact_uri(target).encode()).hexdigest()[:24]
    return FileLock(Path(tempfile.gettempdir()) / f"gflops-track-sync-{key}.lock", timeout=SYNC_LOCK_TIMEOUT_S)


def sync(
    client: MlflowClient, roots: Iterable[Path], target: str = "", errors: tuple[type[BaseException], ...] = ()
) -> SyncReport:
    """Upload every spooled run under ``roots`` to the store ``client`` writes to (``target``: its URI, the key in
    synced.json). A spool directory that cannot be read, or whose upload raises one of ``errors``, is named in
    ``report.broken`` and the others go on. Running it twice, or three times at once, creates nothing twice."""
    uploader = Uploader(client, target or client.tracking_uri)
    for directory in find(roots):
        try:
            run_id, created = uploader.upload(directory)
        except BrokenSpool as error:
            uploader.report.broken.append(str(error))
            continue
        except errors as error:
            uploader.report.broken.append(f"{directory}: {type(error).__name__}: {redact_uri(str(error))[:300]}")
            continue
        uploader.report.uploaded.append((directory, run_id, created))
    return uploader.report
