"""``gflops-track reap``: end the runs left RUNNING by a process that is gone (SIGKILL, power loss, a dead node).

Nothing can react to SIGKILL, so every run carries where it runs (``liveness_tags``, added when the run starts) and
refreshes a heartbeat while it works (``heartbeat`` / ``Heartbeat``). A RUNNING run is judged dead when:

- it was started on this host (same host name and PID namespace) and its process is gone: the PID is not alive,
  is a zombie, or belongs to a newer process (its start time differs from the one recorded: the PID was reused);
- otherwise (another host, a container, no PID), its last sign of life, the heartbeat or else the run's start, is
  older than ``--stale-after`` (default 10 min; the heartbeat is refreshed every minute).

Runs without ``gflops_track.host`` (other tools', or older runs) are never touched. A dead run is marked KILLED with
the reason in the tags ``gflops_track.reaped`` and ``error``. Dry run by default: it lists what it would end;
``--yes`` ends them. Exit 0 (also when there is nothing to reap); 2 when the store cannot be read.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import psutil
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

HOST_TAG = "gflops_track.host"
PID_TAG = "gflops_track.pid"
PID_START_TAG = "gflops_track.pid_start"  # the process's start time (s since the epoch): a reused PID is not it
PID_NAMESPACE_TAG = "gflops_track.pid_namespace"  # containers on one host name see different PIDs
HEARTBEAT_TAG = "gflops_track.heartbeat"  # s since the epoch, refreshed while the run works
REAPED_TAG = "gflops_track.reaped"
DEFAULT_STALE_AFTER_S = 600.0
HEARTBEAT_EVERY_S = 60.0
START_TIME_TOLERANCE_S = 1.0


def _pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:  # not Linux, or /proc hidden
        return ""


def liveness_tags() -> dict[str, str]:
    """Where this process runs, for ``reap`` to judge later whether it is gone: add these tags when a run starts."""
    tags = {
        HOST_TAG: socket.gethostname(),
        PID_TAG: str(os.getpid()),
        PID_START_TAG: f"{psutil.Process().create_time():.3f}",
        HEARTBEAT_TAG: f"{time.time():.0f}",
    }
    namespace = _pid_namespace()
    if namespace:
        tags[PID_NAMESPACE_TAG] = namespace
    return tags


def heartbeat(client: MlflowClient, run_id: str, now: float | None = None) -> None:
    """Refresh the run's heartbeat (a tag: one value, no history to grow)."""
    client.set_tag(run_id, HEARTBEAT_TAG, f"{time.time() if now is None else now:.0f}")


class Heartbeat:
    """Refreshes a run's heartbeat every ``every_s`` seconds from a daemon thread while the run works; a failing
    store is ignored here (the run's own writes notice it and spool). Use as a context manager."""

    def __init__(self, client: MlflowClient, run_id: str, every_s: float = HEARTBEAT_EVERY_S) -> None:
        self.client, self.run_id, self.every_s = client, run_id, every_s
        self._stop = threading.Event()
        self._thread = self._new_thread()

    def _new_thread(self) -> threading.Thread:
        self._stop = threading.Event()
        return threading.Thread(target=self._beat, args=(self._stop,), name="gflops-track-heartbeat", daemon=True)

    def _beat(self, stop: threading.Event) -> None:
        while not stop.wait(self.every_s):
            with contextlib.suppress(Exception):
                heartbeat(self.client, self.run_id)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """No heartbeat thread inside this block (a write in flight is waited for): nothing competes with a timed
        forward. The beating starts again after it (the next beat ``every_s`` later)."""
        self._stop.set()
        self._thread.join(timeout=5)
        try:
            yield
        finally:
            self._thread = self._new_thread()
            self._thread.start()


def process_alive(pid: int, started: float | None) -> bool:
    """Whether process ``pid`` runs and is the one that started at ``started`` (when known)."""
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
        return started is None or abs(process.create_time() - started) <= START_TIME_TOLERANCE_S
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True  # it exists; we may not look closer: never reap what we cannot judge


def seen_from_here(tags: Mapping[str, str], here: Mapping[str, str] | None = None) -> bool:
    """Whether the process named by liveness ``tags`` runs on this host, in this PID namespace (its PID means here
    what it meant there)."""
    here = here if here is not None else liveness_tags()
    return tags.get(HOST_TAG) == here[HOST_TAG] and tags.get(PID_NAMESPACE_TAG, "") == here.get(PID_NAMESPACE_TAG, "")


def process_of(tags: Mapping[str, str]) -> tuple[int, float | None] | None:
    """The (pid, start time) that liveness ``tags`` name, when they name one."""
    pid = tags.get(PID_TAG, "")
    return (int(pid), _number(tags.get(PID_START_TAG))) if pid.isdigit() else None


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text else None
    except ValueError:
        return None


def judge(
    run: Run,
    now: float,
    stale_after_s: float = DEFAULT_STALE_AFTER_S,
    here: dict[str, str] | None = None,
    alive: Callable[[int, float | None], bool] = process_alive,
) -> str | None:
    """Why a RUNNING run's process is gone, or None when it may still be working (or is not ours to judge)."""
    tags = run.data.tags
    host = tags.get(HOST_TAG)
    if run.info.status != "RUNNING" or not host:
        return None
    process = process_of(tags)
    if process is not None and seen_from_here(tags, here):
        if alive(*process):
            return None
        return f"process {process[0]} on {host} is gone (checked by gflops-track reap)"
    last = _number(tags.get(HEARTBEAT_TAG)) or run.info.start_time / 1000
    silent = now - last
    if silent <= stale_after_s:
        return None
    return (
        f"no heartbeat from {host} for {silent / 60:.0f} min (stale after {stale_after_s / 60:g} min; "
        "checked by gflops-track reap)"
    )


@dataclass(frozen=True)
class Dead:
    run_id: str
    run_name: str
    experiment_id: str
    reason: str


def find_dead(
    client: MlflowClient, experiment_ids: Sequence[str], now: float, stale_after_s: float = DEFAULT_STALE_AFTER_S
) -> list[Dead]:
    """Every RUNNING run in the experiments whose process is gone, with the reason."""
    from gflops_track.tracking.store import search_all_runs

    if not experiment_ids:
        return []
    here = liveness_tags()
    running = search_all_runs(client, list(experiment_ids), filter_string="attributes.status = 'RUNNING'")
    found = []
    for run in running:
        reason = judge(run, now, stale_after_s, here)
        if reason:
            found.append(Dead(run.info.run_id, run.info.run_name or "", run.info.experiment_id, reason))
    return found


def reap(client: MlflowClient, dead: Sequence[Dead]) -> None:
    """Mark each run KILLED, the reason in ``gflops_track.reaped`` and (if the run has none yet) ``error``."""
    from gflops_track.common.names import ERROR_TAG

    for run in dead:
        client.set_tag(run.run_id, REAPED_TAG, run.reason)
        if ERROR_TAG not in client.get_run(run.run_id).data.tags:
            client.set_tag(run.run_id, ERROR_TAG, run.reason)
        client.set_terminated(run.run_id, "KILLED")


def parse_duration(text: str) -> float:
    """'600', '600s', '10m', '1.5h' -> seconds, more than ``HEARTBEAT_EVERY_S``: a shorter wait would judge live
    runs dead between two heartbeats. ``ValueError`` naming the flag, the value and what is allowed."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", text)
    seconds = float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[match.group(2)] if match else None
    if seconds is None or seconds <= HEARTBEAT_EVERY_S:
        raise ValueError(
            f"--stale-after={text!r} is not allowed: a duration like 600s, 10m or 1h, more than "
            f"{HEARTBEAT_EVERY_S:.0f}s (the time between two heartbeats of a live run)"
        )
    return seconds
