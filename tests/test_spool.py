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


def test_an_upload_writes_artifacts_status_and_synced_json_and_names_every_link(tmp_path: Path, store_uri: str) -> None:
    """What an upload writes: the spooled artifact files (a.txt, with its bytes), the report's list of links it did
    not follow, of every run (two here, one each), the spool's status (FAILED stays FAILED; a run spooled while
    RUNNING stays RUNNING, with no end time), and synced.json naming the run it became in this store."""
    client = MlflowClient(store_uri)
    client.create_experiment(EXPERIMENT, artifact_location=(tmp_path / "artifacts").as_uri())
    folder = tmp_path / "multirun" / SPOOL_FOLDER
    done = spool.write(folder, SpooledRun.new(EXPERIMENT, "done"), RunRecord(files={"a.txt": b"a"}))
    live_run = SpooledRun.new(EXPERIMENT, "live")
    live_run.status = "RUNNING"
    live = spool.write(folder, live_run, RunRecord())
    for directory in (done, live):
        (directory / "artifacts" / "link.txt").symlink_to(tmp_path / "outside")
    failed = spooled(folder, "failed", status="FAILED")
    report = spool.sync(client, [tmp_path / "multirun"], store_uri)
    assert sorted(report.links) == sorted([done / "artifacts" / "link.txt", live / "artifacts" / "link.txt"])
    assert client.get_run({d.name: r for d, r, _ in report.uploaded}[failed.spool_id]).info.status == "FAILED"
    run_ids = {directory.name: run_id for directory, run_id, _ in report.uploaded}
    done_id, live_id = run_ids[done.name], run_ids[live.name]
    assert [artifact.path for artifact in client.list_artifacts(done_id)] == ["a.txt"]
    assert Path(client.download_artifacts(done_id, "a.txt", str(tmp_path))).read_bytes() == b"a"
    assert client.get_run(live_id).info.status == "RUNNING" and client.get_run(live_id).info.end_time is None
    assert json.loads((done / spool.SYNCED_FILE).read_text()) == {"targets": {store_uri: done_id}}


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


def test_a_run_the_store_has_is_completed_or_left_and_a_lost_job_is_recreated_under_its_parent(
    tmp_path: Path, store_uri: str
) -> None:
    """An upload finds the store's run of a spool by its spool id (no synced.json yet): one that an earlier upload
    left before its end (still RUNNING, no params) is completed (created True: the spool's params and status); the
    store's run of a spool that is itself still RUNNING is left as it is (here KILLED, as reap leaves it). Either
    way synced.json then names that run for this store. A job whose run the store lost is recreated under its
    parent; a run without one, under none."""
    client = MlflowClient(store_uri)
    experiment_id = client.create_experiment(EXPERIMENT)
    folder = tmp_path / "multirun" / SPOOL_FOLDER
    half = spooled(folder, "half")  # FINISHED in the spool, RUNNING in the store
    partial = client.create_run(experiment_id, run_name="half", tags={SPOOL_TAG: half.spool_id}).info.run_id
    live = spooled(folder, "live", status="RUNNING")
    reaped = client.create_run(experiment_id, run_name="live", tags={SPOOL_TAG: live.spool_id}).info.run_id
    client.set_terminated(reaped, "KILLED")
    parent = client.create_run(experiment_id, run_name="sweep").info.run_id
    lost = spooled(folder, "job-0", run_id="c" * 32, parent=parent)
    lost_alone = spooled(folder, "alone", run_id="b" * 32)  # no parent
    report = spool.sync(client, [tmp_path / "multirun"], store_uri)
    by_spool = {directory.name: (run_id, created) for directory, run_id, created in report.uploaded}
    assert by_spool[half.spool_id] == (partial, True) and client.get_run(partial).data.params == {"n": "half"}
    assert client.get_run(partial).info.status == "FINISHED"
    assert by_spool[live.spool_id] == (reaped, False) and client.get_run(reaped).info.status == "KILLED"
    for spooled_run, run_id in ((half, partial), (live, reaped)):
        marker = folder / spooled_run.spool_id / spool.SYNCED_FILE
        assert json.loads(marker.read_text())["targets"][store_uri] == run_id
    recreated, created = by_spool[lost.spool_id]
    assert created and client.get_run(recreated).data.tags[PARENT_TAG] == parent
    assert PARENT_TAG not in client.get_run(by_spool[lost_alone.spool_id][0]).data.tags


def test_synced_json_is_trusted_when_it_is_a_file_naming_a_run_the_store_has(tmp_path: Path, store_uri: str) -> None:
    """synced.json records the run each store's copy of a spool became. A later sync trusts it: nothing is uploaded
    again (created False), even when the store has since ended that run otherwise (here KILLED), in the per-store
    format sync writes and in the older one-store format {"run_id": ...}. A synced.json that is a symbolic link is
    not read, nor one naming a run the store does not have: the run is found by its spool id instead."""
    client = MlflowClient(store_uri)
    spooled(tmp_path / "multirun" / SPOOL_FOLDER, "job-0")
    ((directory, run_id, _),) = spool.sync(client, [tmp_path / "multirun"], store_uri).uploaded
    marker = directory / spool.SYNCED_FILE
    other = client.create_run(client.get_run(run_id).info.experiment_id, run_name="other").info.run_id
    decoy = tmp_path / "decoy.json"
    decoy.write_text(json.dumps({"targets": {store_uri: other}}))
    written = marker.read_text()
    marker.unlink()
    marker.symlink_to(decoy)
    report = spool.sync(client, [tmp_path / "multirun"], store_uri)
    assert [(found, created) for _, found, created in report.uploaded] == [(run_id, False)]
    marker.unlink()
    marker.write_text(json.dumps({"targets": {store_uri: "0" * 32}}))  # a run this store does not have
    report = spool.sync(client, [tmp_path / "multirun"], store_uri)
    assert [(found, created) for _, found, created in report.uploaded] == [(run_id, False)]
    client.set_terminated(run_id, "KILLED")  # ended otherwise after the upload: the marker still says done
    for text in (written, json.dumps({"run_id": run_id})):
        marker.unlink()
        marker.write_text(text)
        report = spool.sync(client, [tmp_path / "multirun"], store_uri)
        assert [(found, created) for _, found, created in report.uploaded] == [(run_id, False)]
        assert client.get_run(run_id).info.status == "KILLED"


def test_a_job_synced_after_its_sweep_finds_it_by_its_spool_id(tmp_path: Path, store_uri: str) -> None:
    """A sweep's spool synced on its own, then one of its jobs (a sync per folder): the sweep's run has no parent;
    the job finds it by the sweep's spool id (SPOOL_TAG) and nests under it, nothing is recreated, and the report
    re-derives the sweep's status only if the store shows it ended (IF_ENDED), not from this job alone (DERIVE, for
    a stand-in). So does a job whose own run the store lost, when it is recreated; a parent named by a run id the
    store has is taken as it is."""
    client = MlflowClient(store_uri)
    sweep = spooled(tmp_path / "sweep" / SPOOL_FOLDER, "sweep a=1,2")
    ((_, sweep_id, _),) = spool.sync(client, [tmp_path / "sweep"], store_uri).uploaded
    assert PARENT_TAG not in client.get_run(sweep_id).data.tags
    spooled(tmp_path / "job" / SPOOL_FOLDER, "job-0", parent=f"{spool.SPOOL_PARENT_PREFIX}{sweep.spool_id}")
    report = spool.sync(client, [tmp_path / "job"], store_uri)
    ((_, job_id, created),) = report.uploaded
    assert created and client.get_run(job_id).data.tags[PARENT_TAG] == sweep_id
    assert report.sweeps == {sweep_id: spool.IF_ENDED} and report.recreated == {}
    spooled(tmp_path / "kept" / SPOOL_FOLDER, "job-1", parent=sweep_id)  # a parent named by a run id the store has
    ((_, job_id, _),) = spool.sync(client, [tmp_path / "kept"], store_uri).uploaded
    assert client.get_run(job_id).data.tags[PARENT_TAG] == sweep_id
    assert len(client.search_runs([client.get_run(sweep_id).info.experiment_id])) == 3  # no stand-in
    reference = f"{spool.SPOOL_PARENT_PREFIX}{sweep.spool_id}"  # a job whose own run the store lost, recreated
    spooled(tmp_path / "lost" / SPOOL_FOLDER, "job-2", run_id="c" * 32, parent=reference)
    ((_, job_id, _),) = spool.sync(client, [tmp_path / "lost"], store_uri).uploaded
    assert client.get_run(job_id).data.tags[PARENT_TAG] == sweep_id


@pytest.mark.parametrize("parent_is", ["a lost run", "a spooled sweep not synced"])
def test_jobs_synced_one_by_one_share_one_stand_in_parent(tmp_path: Path, store_uri: str, parent_is: str) -> None:
    """Three jobs of one sweep, synced by two syncs (two jobs, then one), whose parent the store does not have: a run
    id it lost, or a sweep still in a spool these syncs do not see. The first sync makes one stand-in run, named
    "sweep", for both its jobs, and asks for its status to be derived from its children (DERIVE); the second finds it
    by the tag naming what it stands for (RECREATED_TAG) and nests its job under it: one stand-in, not one per sync.
    The sweep's own spool, synced last, becomes that same run."""
    client = MlflowClient(store_uri)
    experiment_id = client.create_experiment(EXPERIMENT)
    sweep = SpooledRun.new(EXPERIMENT, "sweep a=1,2", run_id="d" * 32 if parent_is == "a lost run" else "")
    reference = sweep.run_id or f"{spool.SPOOL_PARENT_PREFIX}{sweep.spool_id}"
    for name in ("job-0", "job-1"):
        spooled(tmp_path / "first" / SPOOL_FOLDER, name, parent=reference)
    spooled(tmp_path / "second" / SPOOL_FOLDER, "job-2", parent=reference)
    first = spool.sync(client, [tmp_path / "first"], store_uri)
    second = spool.sync(client, [tmp_path / "second"], store_uri)
    uploaded = [*first.uploaded, *second.uploaded]
    assert [created for _, _, created in uploaded] == [True, True, True]
    parents = {client.get_run(run_id).data.tags[PARENT_TAG] for _, run_id, _ in uploaded}
    stand_ins = client.search_runs([experiment_id], filter_string=f"tags.`{RECREATED_TAG}` = '{reference}'")
    assert [run.info.run_id for run in stand_ins] == list(parents) and stand_ins[0].info.run_name == "sweep"
    assert first.sweeps == {stand_ins[0].info.run_id: spool.DERIVE}
    spool.write(tmp_path / "sweep" / SPOOL_FOLDER, sweep, RunRecord(params={"n": "sweep"}))
    ((_, sweep_id, _),) = spool.sync(client, [tmp_path / "sweep"], store_uri).uploaded
    assert [sweep_id] == list(parents) and len(client.search_runs([experiment_id])) == 4


def test_a_sweep_uploaded_while_its_job_waits_to_stand_in_for_it_is_found(tmp_path: Path, store_uri: str) -> None:
    """A job synced alone does not find its spooled sweep and goes to make a stand-in under the recreate lock of
    (store, sweep), which the sweep's own upload holds while it creates its run. Once the lock is free the job looks
    again, by the sweep's spool id, and nests under the sweep's run: no stand-in, two runs. Here the holder creates
    the sweep's run (tagged with its spool id, as the upload does) after the job has waited 2 s for the lock."""
    client = MlflowClient(store_uri)
    experiment_id = client.create_experiment(EXPERIMENT)
    sweep_spool_id = "a" * 32
    reference = f"{spool.SPOOL_PARENT_PREFIX}{sweep_spool_id}"
    spooled(tmp_path / "job" / SPOOL_FOLDER, "job-0", parent=reference)
    key = hashlib.sha256(f"{store_uri}|{reference}".encode()).hexdigest()[:24]
    held = filelock.FileLock(Path(tempfile.gettempdir()) / f"gflops-track-recreate-{key}.lock")
    reports: list[spool.SyncReport] = []
    with held:
        job = threading.Thread(target=lambda: reports.append(spool.sync(client, [tmp_path / "job"], store_uri)))
        job.start()
        job.join(2.0)  # its look-ups take milliseconds: it waits for the lock
        sweep_id = client.create_run(experiment_id, run_name="sweep", tags={SPOOL_TAG: sweep_spool_id}).info.run_id
    job.join(60)
    ((_, job_id, created),) = reports[0].uploaded
    assert created and client.get_run(job_id).data.tags[PARENT_TAG] == sweep_id and reports[0].recreated == {}
    assert len(client.search_runs([experiment_id])) == 2


def test_a_sweep_upload_waits_for_the_lock_its_jobs_take_to_stand_in_for_it(tmp_path: Path, store_uri: str) -> None:
    """A sweep's upload creates its run under the recreate lock of (store, "spool:" + its spool id), the one its
    jobs' syncs take to make a stand-in for it, so the two never both make a run: while another sync holds that lock
    (2 s here) the sweep's run is not created; once it is free, it is."""
    client = MlflowClient(store_uri)
    experiment_id = client.create_experiment(EXPERIMENT)
    sweep = spooled(tmp_path / "sweep" / SPOOL_FOLDER, "sweep a=1,2")
    key = hashlib.sha256(f"{store_uri}|{spool.SPOOL_PARENT_PREFIX}{sweep.spool_id}".encode()).hexdigest()[:24]
    held = filelock.FileLock(Path(tempfile.gettempdir()) / f"gflops-track-recreate-{key}.lock")
    reports: list[spool.SyncReport] = []
    with held:
        upload = threading.Thread(target=lambda: reports.append(spool.sync(client, [tmp_path / "sweep"], store_uri)))
        upload.start()
        upload.join(2.0)
        assert client.search_runs([experiment_id]) == [] and reports == []
    upload.join(60)
    ((_, sweep_id, created),) = reports[0].uploaded
    assert created and client.get_run(sweep_id).data.tags[SPOOL_TAG] == sweep.spool_id


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
