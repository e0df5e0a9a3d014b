"""The spool's rules, in process: what a spooled run is and how it is read, the order runs are uploaded in, which
files are uploaded, the locks, and how an upload finds, completes or recreates a run so that nothing is created
twice. Real spool directories written with the spool API, real SQLite stores (test_sync.py runs `gflops-track sync`
itself, also as concurrent processes)."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
from pathlib import Path

import filelock
import pytest
from mlflow.tracking import MlflowClient

from gflops_track.common.names import PARENT_TAG
from gflops_track.tracking import spool
from gflops_track.tracking.records import RunRecord
from gflops_track.tracking.spool import RECREATED_TAG, SPOOL_FOLDER, SPOOL_TAG, BrokenSpool, SpooledRun, Uploader

EXPERIMENT = "gflops-track"


def spooled(folder: Path, name: str, status: str = "FINISHED", **fields: str) -> SpooledRun:
    run = SpooledRun.new(EXPERIMENT, name, **fields)
    run.status = status
    spool.write(folder, run, RunRecord(params={"n": name}, metrics={"m": 1.0}, tags={"t": name}))
    return run


def test_a_spooled_run_on_disk() -> None:
    """A sweep's own run: tagged sweep_overrides when spooled from its start, or known only by the run id it had
    (no parent, no params) when only its ending was spooled."""
    assert SpooledRun("s", EXPERIMENT, "sweep", tags={"sweep_overrides": "a=1,2"}).is_sweep
    assert SpooledRun("s", EXPERIMENT, "sweep", run_id="r1").is_sweep
    assert not SpooledRun("s", EXPERIMENT, "job", run_id="r1", parent="p").is_sweep
    assert not SpooledRun("s", EXPERIMENT, "job", run_id="r1", params={"a": "1"}).is_sweep
    assert not SpooledRun("s", EXPERIMENT, "job").is_sweep
    fresh = SpooledRun.new(EXPERIMENT, "job", parent="spool:x", run_id="r2")
    assert (fresh.status, fresh.parent, fresh.run_id, len(fresh.spool_id)) == ("RUNNING", "spool:x", "r2", 32)


def test_write_merges_and_load_reads_back(tmp_path: Path) -> None:
    run = SpooledRun.new(EXPERIMENT, "job")
    directory = spool.write(tmp_path, run, RunRecord(params={"a": "1"}, metrics={"x": 1.0}, files={"d/f.txt": b"1"}))
    spool.write(tmp_path, run, RunRecord(params={"b": "2"}, metrics={"x": 2.0}, tags={"t": "v"}))
    assert directory == tmp_path / run.spool_id and (directory / "artifacts" / "d" / "f.txt").read_bytes() == b"1"
    back = spool.load(directory)
    assert (back.params, back.metrics, back.tags) == ({"a": "1", "b": "2"}, {"x": 2.0}, {"t": "v"})
    data = json.loads((directory / spool.RUN_FILE).read_text())
    (directory / spool.RUN_FILE).write_text(json.dumps({**data, "added_later": 1}))
    assert spool.load(directory) == back  # a field this version does not know is left out
    assert not (directory / f"{spool.RUN_FILE}.tmp").exists()


def test_unreadable_spools_are_named_with_the_reason(tmp_path: Path) -> None:
    """A link (the directory or its run.json) is never followed; a run.json that cannot be read is named with the
    error's type and its first 200 characters."""
    real = spool.write(tmp_path / "real", SpooledRun.new(EXPERIMENT, "job"), RunRecord())
    linked_file = tmp_path / "linked-file"
    linked_file.mkdir()
    (linked_file / spool.RUN_FILE).symlink_to(real / spool.RUN_FILE)
    with pytest.raises(BrokenSpool) as broken:
        spool.load(linked_file)
    assert str(broken.value) == f"{linked_file / spool.RUN_FILE}: a symbolic link (not followed)"
    linked_dir = tmp_path / "linked-dir"
    linked_dir.symlink_to(real, target_is_directory=True)
    with pytest.raises(BrokenSpool, match="a symbolic link"):
        spool.load(linked_dir)
    deep = tmp_path / ("d" * 120) / ("e" * 120)
    (deep / spool.RUN_FILE).mkdir(parents=True)  # run.json is a directory: IsADirectoryError naming the long path
    with pytest.raises(BrokenSpool) as long_error:
        spool.load(deep)
    error = f"[Errno 21] Is a directory: '{deep / spool.RUN_FILE}'"
    assert len(error) > 200 and str(long_error.value) == f"{deep / spool.RUN_FILE}: IsADirectoryError: {error[:200]}"
    missing = tmp_path / "missing-field"
    missing.mkdir()
    (missing / spool.RUN_FILE).write_text(json.dumps({"spool_id": "x"}))
    with pytest.raises(BrokenSpool, match=r"run.json: TypeError: .*missing 2 required positional arguments"):
        spool.load(missing)


def test_parents_are_uploaded_before_children_and_unreadable_spools_last(tmp_path: Path) -> None:
    root = tmp_path / "multirun"
    broken = spool.write(root / "b" / SPOOL_FOLDER, SpooledRun.new(EXPERIMENT, "broken"), RunRecord())
    (broken / spool.RUN_FILE).write_text("{")
    os.utime(broken / spool.RUN_FILE, (1, 1))
    os.utime(broken, (1, 1))  # the oldest of all
    parent = spooled(root / "a" / SPOOL_FOLDER, "sweep")
    children = [spooled(root / "a" / SPOOL_FOLDER, f"job-{i}", parent=f"spool:{parent.spool_id}") for i in range(2)]
    for index, child in enumerate(children):  # the children before the parent, in time
        os.utime(root / "a" / SPOOL_FOLDER / child.spool_id, (10 + index, 10 + index))
    os.utime(root / "a" / SPOOL_FOLDER / parent.spool_id, (20, 20))
    found = spool.find([root, tmp_path / "no-such-folder"])
    assert [path.name for path in found] == [parent.spool_id, children[0].spool_id, children[1].spool_id, broken.name]


def test_artifacts_are_read_without_following_links(tmp_path: Path) -> None:
    record = RunRecord(files={"a.txt": b"a", "d/e/b.txt": b"b"})
    directory = spool.write(tmp_path, SpooledRun.new(EXPERIMENT, "job"), record)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("s")
    (directory / "artifacts" / "link.txt").symlink_to(outside / "secret")
    (directory / "artifacts" / "d" / "linked-dir").symlink_to(outside, target_is_directory=True)
    files, links = spool.artifact_files(directory)
    assert files == {"a.txt": b"a", str(Path("d/e/b.txt")): b"b"}
    assert sorted(links) == sorted([directory / "artifacts" / "link.txt", directory / "artifacts" / "d" / "linked-dir"])
    other = spool.write(tmp_path, SpooledRun.new(EXPERIMENT, "job"), RunRecord())
    (other / "artifacts").rmdir()
    (other / "artifacts").symlink_to(outside, target_is_directory=True)
    assert spool.artifact_files(other) == ({}, [other / "artifacts"])


def test_sync_lock_is_one_per_store_password_or_not() -> None:
    """One file lock per store (URI with the password masked) in the temp dir, given up after SYNC_LOCK_TIMEOUT_S."""
    lock = spool.sync_lock("http://alice:secret@host:5000")
    key = hashlib.sha256(b"http://alice:***@host:5000").hexdigest()[:24]
    assert lock.lock_file == str(Path(tempfile.gettempdir()) / f"gflops-track-sync-{key}.lock")
    assert lock.timeout == spool.SYNC_LOCK_TIMEOUT_S == 600.0
    assert spool.sync_lock("http://alice:other@host:5000").lock_file == lock.lock_file


def test_uploads_find_complete_or_recreate_their_run(tmp_path: Path, store_uri: str) -> None:
    """A run spooled after its store lost it (its run id is not there) is recreated, tagged with the id it stands
    for, under its own name, and counted in the report; its children nest under it; a second sync (synced.json
    lost) finds everything by tag: nothing twice. A run whose id the store still has is completed in place."""
    client = MlflowClient(store_uri)
    experiment_id = client.create_experiment(EXPERIMENT)
    kept = client.create_run(experiment_id, run_name="kept").info.run_id
    folder = tmp_path / "multirun" / SPOOL_FOLDER
    lost = "f" * 32
    ending = spooled(folder, "sweep a=1,2", run_id=lost)
    child = spooled(folder, "job-0", parent=lost)
    completed = spooled(folder, "kept", run_id=kept)
    first = spool.sync(client, [tmp_path / "multirun"], store_uri)
    assert not first.broken and [created for _, _, created in first.uploaded] == [True, True, True]
    (recreated,) = first.recreated.values()
    assert list(first.recreated) == [lost]
    run = client.get_run(recreated)
    assert (run.info.run_name, run.data.tags[RECREATED_TAG], run.data.tags[SPOOL_TAG]) == (
        "sweep a=1,2", lost, ending.spool_id
    )  # fmt: skip
    uploaded = {directory.name: run_id for directory, run_id, _ in first.uploaded}
    assert client.get_run(uploaded[child.spool_id]).data.tags[PARENT_TAG] == recreated
    assert uploaded[completed.spool_id] == kept and client.get_run(kept).data.params == {"n": "kept"}
    for marker in (tmp_path / "multirun").rglob(spool.SYNCED_FILE):
        marker.unlink()
    second = spool.sync(client, [tmp_path / "multirun"], store_uri)
    assert [created for _, _, created in second.uploaded] == [False, False, False] and second.recreated == {}
    assert len(client.search_runs([experiment_id])) == 3
    assert not Uploader(client, store_uri)._exists(lost) and Uploader(client, store_uri)._exists(kept)


def test_recreating_a_lost_parent_waits_for_another_sync_then_gives_up(
    tmp_path: Path, store_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lost parent is recreated under a lock per (store, lost id), which another sync may hold; a sync that
    cannot take it in SYNC_LOCK_TIMEOUT_S (shortened here) names the spool as broken and goes on."""
    monkeypatch.setattr(spool, "SYNC_LOCK_TIMEOUT_S", 0.2)
    client = MlflowClient(store_uri)
    client.create_experiment(EXPERIMENT)
    lost = "e" * 32
    spooled(tmp_path / "multirun" / SPOOL_FOLDER, "job-0", parent=lost)
    key = hashlib.sha256(f"{store_uri}|{lost}".encode()).hexdigest()[:24]
    held = filelock.FileLock(Path(tempfile.gettempdir()) / f"gflops-track-recreate-{key}.lock")
    taken = threading.Event()
    release = threading.Event()

    def hold() -> None:
        with held:
            taken.set()
            release.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert taken.wait(30)
        report = spool.sync(client, [tmp_path / "multirun"], store_uri, errors=(filelock.Timeout,))
    finally:
        release.set()
        holder.join()
    (reason,) = report.broken
    assert "Timeout: The file lock" in reason and report.uploaded == []
