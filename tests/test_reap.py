"""`gflops-track reap`: runs left RUNNING by a process that is gone are marked KILLED with the reason; live ones,
fresh heartbeats and other tools' runs are left alone. A real SQLite store, real processes, the real command."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from mlflow.tracking import MlflowClient

from conftest import cli_env
from gflops_track.tracking.reap import (
    HEARTBEAT_TAG,
    HOST_TAG,
    PID_NAMESPACE_TAG,
    PID_START_TAG,
    PID_TAG,
    REAPED_TAG,
    Heartbeat,
    judge,
    liveness_tags,
    parse_duration,
    seen_from_here,
)


def finished_process() -> tuple[int, float]:
    """The PID and start time of a process that has exited."""
    process = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    started = psutil.Process(process.pid).create_time()
    process.communicate(b"")
    return process.pid, started


def reap_command(cwd: Path, uri: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gflops_track.cli", "reap", "--tracking-uri", uri, *args],
        cwd=cwd, env=cli_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_reap_marks_only_runs_whose_process_is_gone(tmp_path: Path, store_uri: str) -> None:
    uri = store_uri  # tmp_path / 'store.db', a copy of the session's migrated empty store
    client = MlflowClient(uri)
    experiment = client.create_experiment("gflops-track")
    here = liveness_tags()
    gone_pid, gone_start = finished_process()
    now = time.time()
    runs = {
        "dead-pid": {**here, "gflops_track.pid": str(gone_pid), PID_START_TAG: f"{gone_start:.3f}"},
        "live-pid": here,  # this test's own process
        "reused-pid": {**here, PID_START_TAG: f"{float(here[PID_START_TAG]) - 3600:.3f}"},  # same PID, newer process
        "other-host-fresh": {HOST_TAG: "node-b", "gflops_track.pid": "1", HEARTBEAT_TAG: f"{now - 30:.0f}"},
        "other-host-stale": {HOST_TAG: "node-b", "gflops_track.pid": "1", HEARTBEAT_TAG: f"{now - 3600:.0f}"},
        "not-ours": {},  # another tool's run: no liveness tags
    }
    ids = {name: client.create_run(experiment, run_name=name, tags=tags).info.run_id for name, tags in runs.items()}
    finished = client.create_run(experiment, run_name="finished", tags={**here, "gflops_track.pid": str(gone_pid)})
    client.set_terminated(finished.info.run_id, "FINISHED")

    dry = reap_command(tmp_path, uri)  # the default lists, and changes nothing
    assert dry.returncode == 0, dry.stderr
    assert "3 run(s) to reap: run again with --yes" in dry.stdout
    assert all(client.get_run(run_id).info.status == "RUNNING" for run_id in ids.values())

    done = reap_command(tmp_path, uri, "--yes", "--stale-after", "10m")
    assert done.returncode == 0, done.stderr
    status = {name: client.get_run(run_id).info.status for name, run_id in ids.items()}
    assert status == {
        "dead-pid": "KILLED", "live-pid": "RUNNING", "reused-pid": "KILLED",
        "other-host-fresh": "RUNNING", "other-host-stale": "KILLED", "not-ours": "RUNNING",
    }  # fmt: skip
    assert client.get_run(finished.info.run_id).info.status == "FINISHED"
    dead = client.get_run(ids["dead-pid"]).data.tags
    assert f"process {gone_pid} on {here[HOST_TAG]} is gone" in dead[REAPED_TAG] and dead["error"] == dead[REAPED_TAG]
    stale = client.get_run(ids["other-host-stale"]).data.tags[REAPED_TAG]
    assert re.search(r"no heartbeat from node-b for 6\d min \(stale after 10 min", stale), stale  # 60 min + run time
    again = reap_command(tmp_path, uri, "--yes")
    assert "no run left RUNNING by a process that is gone" in again.stdout


def test_staleness_rule_with_an_injected_clock(store_uri: str) -> None:
    client = MlflowClient(store_uri)
    experiment = client.create_experiment("e")
    run_id = client.create_run(experiment, tags={HOST_TAG: "node-b", HEARTBEAT_TAG: "1000"}).info.run_id
    run = client.get_run(run_id)
    assert judge(run, now=1000 + 600, stale_after_s=600) is None  # exactly at the limit: still alive
    assert judge(run, now=1000 + 601, stale_after_s=600) is not None
    # the reason in minutes: silent 3600 s / 60 = 60 min, the limit 600 s / 60 = 10 min
    assert judge(run, now=1000 + 3600, stale_after_s=600) == (
        "no heartbeat from node-b for 60 min (stale after 10 min; checked by gflops-track reap)"
    )
    no_beat = client.get_run(client.create_run(experiment, tags={HOST_TAG: "node-b"}).info.run_id)
    start = no_beat.info.start_time / 1000  # no heartbeat yet: the run's start counts
    assert judge(no_beat, now=start + 599, stale_after_s=600) is None
    assert judge(no_beat, now=start + 700, stale_after_s=600) is not None


def test_a_pid_is_judged_only_on_its_own_host(store_uri: str) -> None:
    """A PID means something only on the host (and in the PID namespace) that recorded it. node-b shares this
    machine's PID namespace name (containers on two hosts can) but not its host name: its dead-looking PID is not
    checked here; its fresh heartbeat says it works. The same tags with this host's name: the PID decides."""
    client = MlflowClient(store_uri)
    experiment = client.create_experiment("e")
    here = {HOST_TAG: "node-a", PID_NAMESPACE_TAG: "pid:[4026531836]"}
    now = 10_000.0
    tags = {**here, HOST_TAG: "node-b", PID_TAG: "4242", PID_START_TAG: "100.000", HEARTBEAT_TAG: f"{now - 30:.0f}"}
    elsewhere = client.get_run(client.create_run(experiment, tags=tags).info.run_id)
    local = client.get_run(client.create_run(experiment, tags={**tags, HOST_TAG: "node-a"}).info.run_id)
    checked: list[tuple[int, float | None]] = []

    def gone(pid: int, started: float | None) -> bool:
        checked.append((pid, started))
        return False

    assert not seen_from_here(elsewhere.data.tags, here) and seen_from_here(local.data.tags, here)
    assert judge(elsewhere, now, 600, here, alive=gone) is None and checked == []
    assert judge(local, now, 600, here, alive=gone) == "process 4242 on node-a is gone (checked by gflops-track reap)"
    assert checked == [(4242, 100.0)]
    other_namespace = client.get_run(
        client.create_run(experiment, tags={**tags, HOST_TAG: "node-a", PID_NAMESPACE_TAG: "pid:[1]"}).info.run_id
    )
    assert not seen_from_here(other_namespace.data.tags, here)  # a container on this host: its PIDs are not ours
    assert judge(other_namespace, now, 600, here, alive=gone) is None and checked == [(4242, 100.0)]


def test_only_a_running_run_that_names_its_host_is_judged(store_uri: str) -> None:
    """judge's first rule: a run is ours to judge only when it is RUNNING *and* carries ``gflops_track.host``; another
    tool's run (no host tag) or a run that already ended is left alone, however long ago its last sign of life."""
    client = MlflowClient(store_uri)
    experiment = client.create_experiment("e")
    foreign = client.get_run(client.create_run(experiment).info.run_id)  # RUNNING, no host: another tool's
    ended_id = client.create_run(experiment, tags={HOST_TAG: "node-b", HEARTBEAT_TAG: "1000"}).info.run_id
    client.set_terminated(ended_id, "FINISHED")
    ended = client.get_run(ended_id)
    a_day_later = time.time() + 86_400  # both silent for a day, far past the 600 s limit
    assert judge(foreign, now=a_day_later, stale_after_s=600) is None
    assert judge(ended, now=a_day_later, stale_after_s=600) is None


def test_seen_from_here_reads_a_missing_pid_namespace_as_empty() -> None:
    """Same host name and same PID namespace, a missing namespace tag read as "" on either side (where /proc is
    missing, liveness_tags records none): a run tagged without one is this host's only when this process has none
    either. Without ``here``, this process's own liveness tags are the reference."""
    assert seen_from_here({HOST_TAG: "node-a"}, {HOST_TAG: "node-a"})
    assert not seen_from_here({HOST_TAG: "node-a"}, {HOST_TAG: "node-a", PID_NAMESPACE_TAG: "pid:[1]"})
    assert not seen_from_here({HOST_TAG: "node-a", PID_NAMESPACE_TAG: "pid:[1]"}, {HOST_TAG: "node-a"})
    assert seen_from_here(liveness_tags()) and not seen_from_here({**liveness_tags(), HOST_TAG: "elsewhere"})


def test_heartbeat_thread_refreshes_the_tag(store_uri: str) -> None:
    client = MlflowClient(store_uri)
    run_id = client.create_run(client.create_experiment("e"), tags={HEARTBEAT_TAG: "0"}).info.run_id
    with Heartbeat(client, run_id, every_s=0.05):
        deadline = time.monotonic() + 60
        while client.get_run(run_id).data.tags[HEARTBEAT_TAG] == "0" and time.monotonic() < deadline:
            time.sleep(0.05)
    assert float(client.get_run(run_id).data.tags[HEARTBEAT_TAG]) >= time.time() - 120


def test_liveness_tags_describe_this_process() -> None:
    tags = liveness_tags()
    assert tags["gflops_track.pid"] == str(os.getpid())
    assert abs(float(tags[PID_START_TAG]) - psutil.Process().create_time()) < 1


def test_stale_after_parsing() -> None:
    assert parse_duration("10m") == 600 and parse_duration("90") == 90 and parse_duration("1.5h") == 5400
    with pytest.raises(Exception, match="--stale-after='soon' is not allowed"):
        parse_duration("soon")


def test_reap_never_creates_a_store(tmp_path: Path) -> None:
    done = reap_command(tmp_path, f"sqlite:///{tmp_path / 'typo' / 'x.db'}")
    assert done.returncode == 2 and "no tracking store at" in done.stderr and "Traceback" not in done.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("value", ["0", "60s", "1m", "-5"])
def test_stale_after_of_one_heartbeat_or_less_is_refused_in_one_line(
    tmp_path: Path, store_uri: str, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A live run on another host refreshes its heartbeat every 60 s: a shorter --stale-after would mark it KILLED."""
    from gflops_track.cli.reap import main

    client = MlflowClient(store_uri)
    experiment = client.create_experiment("gflops-track")
    remote = {HOST_TAG: "node-b", "gflops_track.pid": "1", HEARTBEAT_TAG: f"{time.time() - 30:.0f}"}
    run_id = client.create_run(experiment, run_name="alive-elsewhere", tags=remote).info.run_id
    assert main(["--tracking-uri", store_uri, "--yes", "--stale-after", value]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1, err
    assert f"--stale-after={value!r} is not allowed" in err and "more than 60s" in err
    assert client.get_run(run_id).info.status == "RUNNING"
