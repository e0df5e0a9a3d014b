"""`gflops-track sync` under faults: concurrent syncs, an unreadable spool file, a second store, a store that lost the
sweep's run, a transient outage, a planted symbolic link, no arguments. Real spools written with the spool API the
recorder uses, real SQLite stores in temp dirs, real `gflops-track sync` subprocesses where processes matter."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conftest import cli_env
from gflops_track.cli import sync as sync_cli
from gflops_track.common.names import PARENT_TAG
from gflops_track.tracking import spool
from gflops_track.tracking.records import RunRecord
from gflops_track.tracking.spool import RECREATED_TAG, SPOOL_FOLDER, SPOOL_TAG, SpooledRun

EXPERIMENT = "gflops-track"


def job_record(index: int) -> RunRecord:
    """What a job logs: params, metrics, a text artifact and a nested one."""
    return RunRecord(
        params={"batch.size": str(index + 1)},
        metrics={"cost/macs": 1000.0 * (index + 1), "latency/median_ms": 2.0 + index},
        tags={"hardware": "cpu-test"},
        files={"summary.txt": f"job {index}\n".encode(), "nested/layers.csv": b"layer,macs\nconv,1000\n"},
    )


def spooled_sweep(folder: Path, jobs: int, statuses: list[str] | None = None, parent_status: str = "FINISHED") -> str:
    """A sweep spooled from its start (the store was unreachable): its own run and ``jobs`` children."""
    parent = SpooledRun.new(EXPERIMENT, "sweep norm_fn=a,b")
    spool.write(folder, parent, RunRecord(tags={"sweep_overrides": "norm_fn=a,b"}))
    for index in range(jobs):
        child = SpooledRun.new(EXPERIMENT, f"job-{index}", parent=spool.SPOOL_PARENT_PREFIX + parent.spool_id)
        spool.write(folder, child, job_record(index))
        child.status = (statuses or ["FINISHED"] * jobs)[index]
        spool.write(folder, child, RunRecord())
    parent.status = parent_status
    spool.write(folder, parent, RunRecord())
    return parent.spool_id


def runs_of(uri: str) -> list:
    client = MlflowClient(uri)
    return client.search_runs([e.experiment_id for e in client.search_experiments()], max_results=1000)


def sync_process(cwd: Path, *args: str, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "gflops_track.cli", "sync", *args],
        cwd=cwd, env=cli_env(**env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def test_three_concurrent_syncs_upload_each_run_once(tmp_path: Path) -> None:
    folder = tmp_path / "multirun" / "2026-01-01" / SPOOL_FOLDER
    spooled_sweep(folder, 7)  # 8 spooled runs: the sweep and 7 jobs
    uri = f"sqlite:///{tmp_path / 'store.db'}"
    processes = [sync_process(tmp_path, "--tracking-uri", uri, "multirun") for _ in range(3)]
    outputs = [process.communicate(timeout=600) for process in processes]
    assert [process.returncode for process in processes] == [0, 0, 0], outputs
    runs = runs_of(uri)
    assert len(runs) == 8, sorted(r.info.run_name for r in runs)  # not 19: one run per spool id
    assert len({r.data.tags[SPOOL_TAG] for r in runs}) == 8
    (parent,) = [r for r in runs if PARENT_TAG not in r.data.tags]
    children = [r for r in runs if r.data.tags.get(PARENT_TAG) == parent.info.run_id]
    assert len(children) == 7 and all(c.info.status == "FINISHED" for c in children)
    assert sorted(c.data.metrics["cost/macs"] for c in children) == [1000.0 * (i + 1) for i in range(7)]
    assert parent.info.status == "FINISHED" and parent.data.metrics["sweep/jobs"] == 7
    uploaded = [int(re.search(r"(\d+) run\(s\) uploaded", out).group(1)) for out, _ in outputs]  # type: ignore[union-attr]
    assert sum(uploaded) == 8, outputs  # each run uploaded by exactly one of the three


def test_unreadable_run_json_is_named_skipped_and_the_rest_uploaded(
    tmp_path: Path, store_uri: str, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "outputs" / "job" / SPOOL_FOLDER
    runs = [SpooledRun.new(EXPERIMENT, f"run-{index}") for index in range(3)]
    for index, run in enumerate(runs):
        run.status = "FINISHED"
        spool.write(folder, run, job_record(index))
    truncated = folder / runs[1].spool_id / "run.json"
    truncated.write_text(truncated.read_text()[:40])  # cut mid-write (a full disk, a crash)
    uri = store_uri  # tmp_path / 'store.db', a copy of the session's migrated empty store
    code = sync_cli.main(["--tracking-uri", uri, str(tmp_path / "outputs")])
    out, err = capsys.readouterr()
    assert code == 1
    assert str(truncated) in err and "JSONDecodeError" in err
    assert "2 run(s) uploaded" in out
    assert sorted(r.info.run_name for r in runs_of(uri)) == ["run-0", "run-2"]


def test_a_second_store_gets_the_runs_and_a_store_that_lost_them_gets_them_again(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "multirun" / SPOOL_FOLDER
    spooled_sweep(folder, 2)
    store_a, store_b = f"sqlite:///{tmp_path / 'a.db'}", f"sqlite:///{tmp_path / 'b.db'}"
    assert sync_cli.main(["--tracking-uri", store_a, str(tmp_path / "multirun")]) == 0
    assert sync_cli.main(["--tracking-uri", store_a, str(tmp_path / "multirun")]) == 0
    assert "0 run(s) uploaded, 3 already in" in capsys.readouterr().out.splitlines()[-1]
    assert sync_cli.main(["--tracking-uri", store_b, str(tmp_path / "multirun")]) == 0
    assert "3 run(s) uploaded, 0 already" in capsys.readouterr().out
    assert len(runs_of(store_a)) == 3 and len(runs_of(store_b)) == 3
    markers = [json.loads(path.read_text()) for path in folder.rglob("synced.json")]
    assert all(set(marker["targets"]) == {store_a, store_b} for marker in markers)
    (tmp_path / "a.db").unlink()  # store A lost everything: the marker must not claim the runs are there
    process = sync_process(tmp_path, "--tracking-uri", store_a, "multirun")  # a new process: no cached engine
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0 and "3 run(s) uploaded" in out, out + err
    assert len(runs_of(f"sqlite:///{tmp_path}/./a.db")) == 3  # MLflow caches engines per URI: read afresh


def test_store_deleted_mid_sweep_recreates_the_parent_and_nests_the_children(tmp_path: Path) -> None:
    """The sweep's run and job 1 were in mlflow.db; the file was deleted; jobs 2 and 3 spooled with the lost parent
    id (job 3 had opened its run before the loss) and the sweep spooled its ending for the lost id, as the app
    does."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(f"sqlite:///{tmp_path}/./mlflow.db")  # MLflow keeps its engine per URI: read afresh later
    experiment_id = client.create_experiment(EXPERIMENT)
    lost_parent = client.create_run(experiment_id, run_name="sweep norm_fn=a,b,c").info.run_id
    lost_child = client.create_run(experiment_id, run_name="job-2", tags={PARENT_TAG: lost_parent}).info.run_id
    (tmp_path / "mlflow.db").unlink()
    folder = tmp_path / "multirun" / SPOOL_FOLDER
    for index, run_id in ((1, ""), (2, lost_child)):
        child = SpooledRun.new(EXPERIMENT, f"job-{index}", parent=lost_parent, run_id=run_id)
        child.status = "FINISHED"
        spool.write(folder, child, job_record(index))
    ending = SpooledRun.new(EXPERIMENT, "sweep", run_id=lost_parent)
    ending.status = "FINISHED"
    spool.write(folder, ending, RunRecord())
    process = sync_process(tmp_path, "--tracking-uri", uri, "multirun")  # a new process, as a user runs it
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, out + err
    assert f"recreated: run {lost_parent} is not in the store any more" in out
    runs = runs_of(uri)
    parents = [r for r in runs if PARENT_TAG not in r.data.tags]
    (parent,) = parents  # one parent, no second empty "sweep"
    assert parent.data.tags[RECREATED_TAG] == lost_parent
    children = [r for r in runs if r.data.tags.get(PARENT_TAG) == parent.info.run_id]
    assert sorted(r.info.run_name for r in children) == ["job-1", "job-2"] and len(runs) == 3
    assert parent.info.status == "FINISHED" and parent.data.metrics["sweep/jobs"] == 2
    artifacts = {a.path for a in MlflowClient(uri).list_artifacts(parent.info.run_id)}
    assert {"report.html", "comparison.csv"} <= artifacts
    assert "Sweep of 2 job(s): 2 FINISHED" in parent.data.tags["mlflow.note.content"]


def test_children_of_an_unreadable_spooled_parent_still_get_one_parent(
    tmp_path: Path, store_uri: str, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "multirun" / SPOOL_FOLDER
    parent_id = spooled_sweep(folder, 2)
    (folder / parent_id / "run.json").write_text("{")
    uri = store_uri  # tmp_path / 'store.db', a copy of the session's migrated empty store
    assert sync_cli.main(["--tracking-uri", uri, str(tmp_path / "multirun")]) == 1
    assert f"{folder / parent_id / 'run.json'}: JSONDecodeError" in capsys.readouterr().err
    runs = runs_of(uri)
    (parent,) = [r for r in runs if PARENT_TAG not in r.data.tags]
    assert parent.data.tags[RECREATED_TAG] == f"spool:{parent_id}"
    assert sum(r.data.tags.get(PARENT_TAG) == parent.info.run_id for r in runs) == 2


def test_transient_outage_sync_finishes_the_parent_as_the_sweep_would(
    tmp_path: Path, store_uri: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Job 2 opened its run, the store went away, job 2 finished into the spool; the sweep ended with the store back
    and, seeing job 2 RUNNING, marked itself FAILED with failed_jobs=1. Spooled is not failed."""
    uri = store_uri  # tmp_path / 'store.db', a copy of the session's migrated empty store
    client = MlflowClient(uri)
    experiment_id = client.create_experiment(EXPERIMENT)
    parent = client.create_run(experiment_id, run_name="sweep +model.ms=1,2,3").info.run_id
    client.set_tag(parent, "sweep_overrides", "+model.ms=1,2,3")
    children = [client.create_run(experiment_id, run_name=f"job-{i}", tags={PARENT_TAG: parent}) for i in range(3)]
    for index in (0, 2):
        client.log_metric(children[index].info.run_id, "latency/median_ms", 2.0)
        client.set_terminated(children[index].info.run_id, "FINISHED")
    client.log_metric(parent, "sweep/failed_jobs", 1)
    client.set_terminated(parent, "FAILED")
    spooled = SpooledRun.new(EXPERIMENT, "job-1", parent=parent, run_id=children[1].info.run_id)
    spooled.status = "FINISHED"
    spool.write(tmp_path / "multirun" / SPOOL_FOLDER, spooled, job_record(1))
    assert sync_cli.main(["--tracking-uri", uri, str(tmp_path / "multirun")]) == 0
    assert f"sweep run {parent}: FINISHED" in capsys.readouterr().out
    finished = client.get_run(parent)
    assert finished.info.status == "FINISHED"
    assert finished.data.metrics["sweep/failed_jobs"] == 0 and finished.data.metrics["sweep/jobs"] == 3
    assert client.get_run(children[1].info.run_id).info.status == "FINISHED"
    assert "report.html" in {a.path for a in client.list_artifacts(parent)}


def test_spooled_parent_status_comes_from_the_children_not_the_launcher(tmp_path: Path, store_uri: str) -> None:
    """A joblib sweep spools its parent FINISHED (its own list of failed jobs is empty: the jobs ran elsewhere)
    while a child FAILED: after sync the parent is FAILED, as the sweep's rule says."""
    spooled_sweep(tmp_path / "multirun" / SPOOL_FOLDER, 2, statuses=["FINISHED", "FAILED"])
    uri = store_uri  # tmp_path / 'store.db', a copy of the session's migrated empty store
    assert sync_cli.main(["--tracking-uri", uri, str(tmp_path / "multirun")]) == 0
    (parent,) = [r for r in runs_of(uri) if PARENT_TAG not in r.data.tags]
    assert parent.info.status == "FAILED" and parent.data.metrics["sweep/failed_jobs"] == 1


def test_an_interrupted_spooled_sweep_stays_killed(tmp_path: Path, store_uri: str) -> None:
    spooled_sweep(tmp_path / "multirun" / SPOOL_FOLDER, 2, statuses=["FINISHED", "KILLED"], parent_status="KILLED")
    uri = store_uri  # tmp_path / 'store.db', a copy of the session's migrated empty store
    assert sync_cli.main(["--tracking-uri", uri, str(tmp_path / "multirun")]) == 0
    (parent,) = [r for r in runs_of(uri) if PARENT_TAG not in r.data.tags]
    assert parent.info.status == "KILLED"


def test_a_symbolic_link_in_a_spool_is_not_followed(
    tmp_path: Path, store_uri: str, capsys: pytest.CaptureFixture[str]
) -> None:
    secret = tmp_path / "home" / ".netrc"
    secret.parent.mkdir()
    secret.write_text("machine example.com password hunter2-planted\n")
    folder = tmp_path / "outputs" / SPOOL_FOLDER
    run = SpooledRun.new(EXPERIMENT, "job")
    run.status = "FINISHED"
    directory = spool.write(folder, run, job_record(0))
    (directory / "artifacts" / "notes.txt").symlink_to(secret)
    (directory / "artifacts" / "home").symlink_to(secret.parent, target_is_directory=True)
    uri = store_uri  # tmp_path / 'store.db', a copy of the session's migrated empty store
    assert sync_cli.main(["--tracking-uri", uri, str(tmp_path / "outputs")]) == 0
    err = capsys.readouterr().err
    assert "not uploaded, a symbolic link" in err and "notes.txt" in err
    (uploaded,) = runs_of(uri)
    paths = {a.path for a in MlflowClient(uri).list_artifacts(uploaded.info.run_id)}
    assert "summary.txt" in paths and "notes.txt" not in paths and "home" not in paths
    for path in (tmp_path / "mlruns").rglob("*") if (tmp_path / "mlruns").exists() else []:
        assert not path.is_file() or b"hunter2-planted" not in path.read_bytes(), path
    artifact_root = Path(MlflowClient(uri).get_experiment_by_name(EXPERIMENT).artifact_location)
    for path in artifact_root.rglob("*"):
        assert not path.is_file() or b"hunter2-planted" not in path.read_bytes(), path


def test_spool_write_refuses_names_outside_the_spool(tmp_path: Path) -> None:
    run = SpooledRun.new(EXPERIMENT, "job")
    with pytest.raises(ValueError, match="outside the spool"):
        spool.write(tmp_path, run, RunRecord(files={"../../escaped.txt": b"x"}))
    assert not (tmp_path.parent / "escaped.txt").exists()


def test_sync_without_arguments_reads_multirun_and_outputs_into_the_default_store(tmp_path: Path) -> None:
    for root, name in (("multirun", "swept"), ("outputs", "single")):
        run = SpooledRun.new(EXPERIMENT, name)
        run.status = "FINISHED"
        spool.write(tmp_path / root / "2026-01-01" / "12-00-00" / SPOOL_FOLDER, run, job_record(0))
    elsewhere = SpooledRun.new(EXPERIMENT, "not-a-default-root")
    spool.write(tmp_path / "other" / SPOOL_FOLDER, elsewhere, job_record(0))
    process = sync_process(tmp_path)
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, out + err
    assert "2 run(s) uploaded" in out and str(tmp_path / "mlflow.db") in out
    assert sorted(r.info.run_name for r in runs_of(f"sqlite:///{tmp_path / 'mlflow.db'}")) == ["single", "swept"]
    empty = tmp_path / "empty"
    empty.mkdir()
    nothing = sync_process(empty)
    out, _ = nothing.communicate(timeout=300)
    assert nothing.returncode == 0 and "no spooled runs under multirun, outputs" in out
    assert not (empty / "mlflow.db").exists()


def test_a_job_synced_before_its_sweep_leaves_one_sweep_run(tmp_path: Path, store_uri: str) -> None:
    """The layout a sweep spools into while its store is down: the sweep's own run in the sweep directory, each job's
    in its job directory. `sync <sweep dir>/0` (the job's own hint) makes a stand-in for the sweep; a later plain
    `sync` must complete that stand-in with the sweep's spool, not add a second, empty sweep run."""
    sweep_dir = tmp_path / "multirun" / "2026-01-01" / "12-00-00"
    parent = SpooledRun.new(EXPERIMENT, "sweep 01-01 12:00:00 norm_fn=a,b")
    spool.write(sweep_dir / SPOOL_FOLDER, parent, RunRecord(tags={"sweep_overrides": "norm_fn=a,b"}))
    for index in range(2):
        child = SpooledRun.new(EXPERIMENT, f"job-{index}", parent=spool.SPOOL_PARENT_PREFIX + parent.spool_id)
        child.status = "FINISHED"
        spool.write(sweep_dir / str(index) / SPOOL_FOLDER, child, job_record(index))
    parent.status = "FINISHED"
    spool.write(sweep_dir / SPOOL_FOLDER, parent, RunRecord())
    uri = store_uri  # tmp_path / 'store.db', a copy of the session's migrated empty store
    assert sync_cli.main(["--tracking-uri", uri, str(sweep_dir / "0")]) == 0
    assert sync_cli.main(["--tracking-uri", uri, str(tmp_path / "multirun")]) == 0
    runs = runs_of(uri)
    (sweep,) = [r for r in runs if PARENT_TAG not in r.data.tags]  # one sweep run, not a second "Sweep of 0 job(s)"
    assert len(runs) == 1 + 2
    assert sweep.info.run_name == parent.run_name and sweep.data.tags["sweep_overrides"] == "norm_fn=a,b"
    assert sweep.data.tags[SPOOL_TAG] == parent.spool_id
    assert sorted(r.info.run_name for r in runs if r.data.tags.get(PARENT_TAG) == sweep.info.run_id) == [
        "job-0",
        "job-1",
    ]
    assert sweep.info.status == "FINISHED" and sweep.data.metrics["sweep/jobs"] == 2
    assert "Sweep of 2 job(s): 2 FINISHED" in sweep.data.tags["mlflow.note.content"]


def test_a_reaped_run_brought_back_by_sync_drops_its_earlier_fate(tmp_path: Path, store_uri: str) -> None:
    """A job opened its run, the store failed, the job finished into the spool and its process exited; `reap --yes`
    then marked the run KILLED (tags `error`, `gflops_track.reaped`). `sync` uploads the spooled results: the run
    is FINISHED, says it was recovered, and keeps no tag of the fate it no longer had."""
    from gflops_track.cli import reap
    from gflops_track.tracking.reap import PID_START_TAG, REAPED_TAG, liveness_tags
    from gflops_track.tracking.spool import RECOVERED_TAG
    from test_reap import finished_process

    uri = store_uri  # tmp_path / 'store.db', a copy of the session's migrated empty store
    client = MlflowClient(uri)
    experiment_id = client.create_experiment(EXPERIMENT)
    gone_pid, gone_start = finished_process()
    tags = {**liveness_tags(), "gflops_track.pid": str(gone_pid), PID_START_TAG: f"{gone_start:.3f}"}
    run_id = client.create_run(experiment_id, run_name="job-0", tags=tags).info.run_id
    spooled = SpooledRun.new(EXPERIMENT, "job-0", run_id=run_id)
    spooled.status = "FINISHED"
    spool.write(tmp_path / "outputs" / SPOOL_FOLDER, spooled, job_record(0))
    assert reap.main(["--tracking-uri", uri, "--yes"]) == 0
    reaped = client.get_run(run_id)
    assert reaped.info.status == "KILLED" and {REAPED_TAG, "error"} <= set(reaped.data.tags)
    assert sync_cli.main(["--tracking-uri", uri, str(tmp_path / "outputs")]) == 0
    recovered = client.get_run(run_id)
    assert recovered.info.status == "FINISHED" and recovered.data.metrics["cost/macs"] == 1000.0
    assert REAPED_TAG not in recovered.data.tags and "error" not in recovered.data.tags
    assert recovered.data.tags[RECOVERED_TAG].startswith(f"was KILLED (process {gone_pid} on ")


def test_the_spool_hint_names_the_store_and_uploads_there_when_run_as_printed(
    tmp_path: Path, migrated_store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store that fails (here: its folder is a file) sends the run to the spool; the console's hint, run as printed
    from another directory, uploads it into that store, not into ./mlflow.db there."""
    import shlex
    import shutil

    from gflops_track.tracking.recorder import Recorder, RunTarget

    (tmp_path / "stores").write_text("a file where the store's folder should be")
    uri = f"sqlite:///{tmp_path / 'stores' / 'team.db'}"
    said: list[str] = []
    recorder = Recorder(RunTarget(uri, EXPERIMENT, "job-0"), tmp_path / "job" / SPOOL_FOLDER, said.append)
    recorder.open(job_record(0))
    recorder.finish("FINISHED")
    assert recorder.spooled is not None and len(said) == 1
    hint = said[0].split("upload it later with: ", 1)[1]
    assert hint == f"gflops-track sync {tmp_path / 'job'} --tracking-uri {uri}"
    (tmp_path / "stores").unlink()
    (tmp_path / "stores").mkdir()
    shutil.copyfile(migrated_store, tmp_path / "stores" / "team.db")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    command = shlex.split(hint)
    assert command[:2] == ["gflops-track", "sync"] and sync_cli.main(command[2:]) == 0
    (uploaded,) = runs_of(uri)
    assert uploaded.info.run_name == "job-0" and uploaded.data.metrics["cost/macs"] == 1000.0
    assert not (elsewhere / "mlflow.db").exists()
