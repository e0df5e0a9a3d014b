"""`gflops-track reap` in process (``gflops_track.cli.reap.main``) on a real SQLite store: what it lists, what
``--yes`` marks, ``--experiment``, and its exit codes. The same command as a subprocess is in test_reap.py."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from gflops_track.cli.reap import main
from gflops_track.tracking.reap import (
    HEARTBEAT_TAG,
    HOST_TAG,
    PID_START_TAG,
    PID_TAG,
    REAPED_TAG,
    find_dead,
    liveness_tags,
    parse_duration,
    seen_from_here,
)
from test_reap import finished_process


def test_reap_in_process(store_uri: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Two experiments; in each, a run whose process is gone (this host, a PID that exited), and in the first also
    a live run (this process), a stale run of another host (no heartbeat for an hour), a fresh one and another
    tool's run. The dry run lists the 3 dead ones and changes nothing; ``--experiment gflops-track --yes`` marks that
    experiment's 2 KILLED, with the reason as tags (an existing error tag is kept); then nothing is left there."""
    client = MlflowClient(store_uri)
    ours, other = client.create_experiment("gflops-track"), client.create_experiment("other")
    here = liveness_tags()
    gone_pid, gone_start = finished_process()
    dead = {**here, PID_TAG: str(gone_pid), PID_START_TAG: f"{gone_start:.3f}"}
    now = time.time()
    runs = {
        "dead": (ours, {**dead, "error": "the job's own error"}),
        "live": (ours, here),
        "stale": (ours, {HOST_TAG: "node-b", PID_TAG: "1", HEARTBEAT_TAG: f"{now - 3600:.0f}"}),
        "fresh": (ours, {HOST_TAG: "node-b", PID_TAG: "1", HEARTBEAT_TAG: f"{now - 30:.0f}"}),
        "not-ours": (ours, {}),
        "dead-elsewhere": (other, dead),
    }
    ids = {name: client.create_run(exp, run_name=name, tags=tags).info.run_id for name, (exp, tags) in runs.items()}

    assert main(["--tracking-uri", store_uri]) == 0
    out = capsys.readouterr().out
    gone = f"process {gone_pid} on {here[HOST_TAG]} is gone (checked by gflops-track reap)"
    assert f"would mark KILLED: run {ids['dead']} (dead): {gone}" in out
    assert f"would mark KILLED: run {ids['dead-elsewhere']} (dead-elsewhere): {gone}" in out
    assert f"would mark KILLED: run {ids['stale']} (stale): no heartbeat from node-b for 6" in out  # 60 min and more
    assert out.count("would mark KILLED") == 3 and "3 run(s) to reap: run again with --yes to mark them KILLED" in out
    assert {client.get_run(run_id).info.status for run_id in ids.values()} == {"RUNNING"}

    assert main(["--tracking-uri", store_uri, "--experiment", "gflops-track", "--yes", "--stale-after", "10m"]) == 0
    out = capsys.readouterr().out
    assert out.count("KILLED: run ") == 2 and "would mark" not in out and "to reap" not in out
    status = {name: client.get_run(run_id).info.status for name, run_id in ids.items()}
    assert status == {"dead": "KILLED", "live": "RUNNING", "stale": "KILLED", "fresh": "RUNNING",
                      "not-ours": "RUNNING", "dead-elsewhere": "RUNNING"}  # fmt: skip
    dead_tags = client.get_run(ids["dead"]).data.tags
    assert dead_tags[REAPED_TAG] == gone and dead_tags["error"] == "the job's own error"
    stale_tags = client.get_run(ids["stale"]).data.tags
    assert stale_tags["error"] == stale_tags[REAPED_TAG]
    assert stale_tags[REAPED_TAG].endswith(" min (stale after 10 min; checked by gflops-track reap)")

    assert main(["--tracking-uri", store_uri, "--experiment", "gflops-track"]) == 0
    assert capsys.readouterr().out == f"no run left RUNNING by a process that is gone in {store_uri}\n"
    assert find_dead(client, [], now) == []
    assert seen_from_here(here) and seen_from_here(liveness_tags())  # by default, "here" is this process


def test_reap_errors_are_one_line_and_exit_2(
    tmp_path: Path, store_uri: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--tracking-uri", store_uri, "--experiment", "nope"]) == 2
    assert capsys.readouterr().err == f"gflops-track reap: --experiment='nope' does not exist in {store_uri}\n"
    missing = f"sqlite:///{tmp_path / 'typo' / 'x.db'}"
    assert main(["--tracking-uri", missing]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gflops-track reap: no tracking store at") and err.count("\n") == 1
    assert not (tmp_path / "typo").exists()


def test_durations() -> None:
    """Seconds, s, m (60 s) or h (3,600 s), with or without a fraction, spaces around allowed."""
    assert parse_duration(" 90 ") == 90 and parse_duration("90s") == 90 and parse_duration("2m") == 120
    assert parse_duration("0.5h") == 1800 and parse_duration("1h") == 3600
    for bad in ("10 min", "m", "-5m", "1d"):
        with pytest.raises(Exception, match=r"is not allowed: a duration like 600s, 10m or 1h"):
            parse_duration(bad)
