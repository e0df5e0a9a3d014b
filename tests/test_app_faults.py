"""Faults on the app's paths (issue 11): secrets in URIs, markup in texts, SystemExit from user code, config that
would slip past preflight, Ctrl-C under the joblib launcher. Each test reproduces the fault first; nothing may be
left RUNNING, leaked or lost."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from mlflow.tracking import MlflowClient

from conftest import QUICK_NO_THOP, SMALL_BLOCK, cli_env, run_cli
from gflops_track.app.callbacks import end_interrupted_runs
from gflops_track.app.channels import OutcomeLedger, run_key
from gflops_track.tracking.reap import HOST_TAG, PID_START_TAG, PID_TAG, liveness_tags
from gflops_track.tracking.recorder import Recorder, RunTarget
from servers import Server, SignallingProxy, free_port

pytestmark = pytest.mark.slow
SECRET = "TopSecret-4f1c9"


def all_runs(uri: str) -> list:
    client = MlflowClient(uri)
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


def dead_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]  # closed again: nothing listens there


def files_holding(root: Path, text: str) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and text.encode() in p.read_bytes()]


@pytest.mark.parametrize("where", ["override", "environment"])
def test_password_in_the_uri_reaches_no_file_and_no_console_line(tmp_path: Path, where: str) -> None:
    uri = f"http://alice:{SECRET}@127.0.0.1:{dead_port()}"
    args = ["-m", "norm_fn=group,none", *SMALL_BLOCK, *QUICK_NO_THOP]
    done = (
        run_cli([*args, f"tracking.uri={uri}"], cwd=tmp_path)
        if where == "override"
        else run_cli(args, cwd=tmp_path, MLFLOW_TRACKING_URI=uri)
    )
    assert done.returncode == 0, done.stderr[-2000:]  # unreachable server: spooled, not failed
    assert "mlflow_spool" in done.stderr and "MLFLOW_TRACKING_PASSWORD" in done.stderr  # told where, and how
    assert SECRET not in done.stdout + done.stderr
    spools = list(tmp_path.rglob("mlflow_spool"))
    assert spools, "the runs were not spooled"
    assert files_holding(tmp_path, SECRET) == []  # spool, config artifacts, .hydra files


def test_markup_in_a_target_is_a_config_error_not_a_crash(tmp_path: Path) -> None:
    done = run_cli(["model=custom", "model._target_='[/x]'", "input.shape=[4]"], cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr and "MarkupError" not in done.stderr
    assert "[/x]" in done.stderr  # printed as text


def test_markup_in_errors_and_notes_is_printed_as_text(tmp_path: Path, store_uri: str) -> None:
    model = ["model=custom", "model._target_=fixture_models.RaisesMarkup", "+model.in_channels=3", "batch.height=4",
             "batch.width=4", "input.shape=[3,4,4]", "peak.measure=false"]  # fmt: skip
    timed = run_cli(["-m", *model, "+model.fail_on=cpu", "timing.warmup=0", "timing.max_time_s=0.2"],
                    cwd=tmp_path, MLFLOW_TRACKING_URI=store_uri)  # fmt: skip
    assert timed.returncode == 1 and "Traceback" not in timed.stderr
    assert "[/opt/ext/op.so] ([bold]missing[/bold])" in timed.stderr  # the failure, verbatim
    noted = run_cli(
        [*model, "+model.fail_on=meta", "timing.enabled=false"], cwd=tmp_path, MLFLOW_TRACKING_URI=store_uri
    )
    assert noted.returncode == 0, noted.stderr[-2000:]
    assert "[/opt/ext/op.so] ([bold]missing[/bold])" in noted.stdout  # the meta-fallback note, verbatim, FINISHED
    statuses = sorted(r.info.status for r in all_runs(store_uri))
    assert statuses == ["FAILED", "FAILED", "FINISHED"]  # the timed job and its sweep; the counting job


def test_system_exit_in_a_forward_fails_that_job_and_the_sweep_goes_on(tmp_path: Path, store_uri: str) -> None:
    done = run_cli(
        ["-m", "model=custom", "model._target_=fixture_models.ExitsInForward", "+model.in_channels=3",
         "+model.exit_on=2", "batch.size=1,2,3", "batch.height=4", "batch.width=4", "input.shape=[3,4,4]",
         *QUICK_NO_THOP],
        cwd=tmp_path, MLFLOW_TRACKING_URI=store_uri,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr[-2000:]
    runs = all_runs(store_uri)
    children = {r.data.params["batch.size"]: r for r in runs if "mlflow.parentRunId" in r.data.tags}
    assert {size: run.info.status for size, run in children.items()} == {
        "1": "FINISHED", "2": "FAILED", "3": "FINISHED"}  # fmt: skip
    assert children["2"].data.tags["error"] == "SystemExit: 3"
    assert children["2"].data.metrics["cost/macs"] == 2 * 3 * 4 * 4 * 4  # counted before the forward exited: kept
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert parent.info.status == "FAILED"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["+timing.max_time=100"], "timing.max_time is not a known key (did you mean timing.max_time_s?)"),
        (["+model.token=abc"], "model.token is not allowed: gflops_track.models.ResidualBlock takes in_planes,"),
        ([f"tracking.experiment={'x' * 10_000}"], "MLflow takes experiment names of at most 500 characters"),
        (["tracking.uri=mysql://u:pw@db/x"], "tracking.uri holds a password for a mysql:// store"),
    ],
)
def test_config_that_would_slip_past_preflight_is_refused(tmp_path: Path, args: list[str], message: str) -> None:
    done = run_cli(["-m", *args], cwd=tmp_path)
    assert done.returncode == 2 and message in done.stderr, done.stderr[-2000:]
    assert "tracking.uri=" not in done.stderr or "mysql" in message  # a long name is not blamed on the URI
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "multirun").exists()


def test_config_path_flag_still_goes_through_preflight(tmp_path: Path) -> None:
    conf = Path(__file__).resolve().parents[1] / "conf"
    done = run_cli(["-m", "-cp", str(conf), "norm_fn=foo"], cwd=tmp_path)
    assert done.returncode == 2 and "norm_fn='foo' is not allowed" in done.stderr
    assert not (tmp_path / "mlflow.db").exists()


def test_more_threads_than_cpus_is_warned(tmp_path: Path, store_uri: str) -> None:
    done = run_cli(["runtime.threads=1000", *SMALL_BLOCK, *QUICK_NO_THOP], cwd=tmp_path, MLFLOW_TRACKING_URI=store_uri)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "runtime.threads=1000 is more than the" in done.stderr
    (run,) = all_runs(store_uri)
    assert run.data.tags["timing_suspect"] == "true"  # and the run itself says its timing is suspect


@pytest.mark.parametrize("who", ["terminal", "submitter"])
def test_ctrl_c_under_joblib_leaves_nothing_running(tmp_path: Path, store_uri: str, who: str) -> None:
    """Two jobs timing in joblib's worker processes; Ctrl-C at a terminal (SIGINT to the whole process group) or
    `kill -INT` of the submitting process alone. Before: joblib killed its workers and the in-flight runs stayed
    RUNNING. Now: exit 130, the sweep's run and both jobs' runs KILLED, and no worker process left behind."""
    sleepers = ["model=custom", "model._target_=fixture_models.Sleeper", "+model.in_channels=3", "batch.height=8"]
    endless = ["timing.min_repeats=100000", "timing.max_repeats=100000", "timing.max_time_s=300"]
    process = subprocess.Popen(
        [sys.executable, "-m", "gflops_track", "-m", "hydra/launcher=joblib_counting", "hydra.launcher.n_jobs=2",
         "+model.ms=20,21", *sleepers, *endless, "peak.measure=false", "counting.thop=false"],
        cwd=tmp_path, env=cli_env(MLFLOW_TRACKING_URI=store_uri, XDG_CACHE_HOME=str(tmp_path / ".cache")),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while sum(r.info.status == "RUNNING" for r in all_runs(store_uri)) < 3:  # the sweep and both jobs
            assert process.poll() is None and time.monotonic() < deadline, "the two jobs never ran at once"
            time.sleep(0.5)
        workers = psutil.Process(process.pid).children(recursive=True)
        if who == "terminal":
            os.killpg(process.pid, signal.SIGINT)
        else:
            process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert process.returncode == 130, err[-3000:]
    assert [(r.info.run_name, r.info.status) for r in all_runs(store_uri) if r.info.status != "KILLED"] == []
    assert len(all_runs(store_uri)) == 3
    _, alive = psutil.wait_procs(workers, timeout=30)
    assert alive == [], f"worker processes left behind: {alive}"


def test_interrupted_command_ends_only_the_job_runs_it_can_judge(tmp_path: Path, store_uri: str) -> None:
    """The ledger's job runs after an interrupt, without a sweep around them: a run whose process is gone is ended
    KILLED with the reason; a run its own process already ended keeps its status; a run of a job on another host
    (a SLURM node) is left to that job (or to gflops-track reap)."""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    ledger = OutcomeLedger(tmp_path / "ledger.jsonl")

    def job_run(name: str, process: dict[str, str]) -> Recorder:
        recorder = Recorder(RunTarget.for_job(store_uri, "interrupt", name, False), tmp_path / "spool", print)
        recorder.open()
        ledger.open_job_run({**recorder.state(), "process": process})
        return recorder

    here = liveness_tags()
    killed = job_run("killed-worker", {**here, PID_TAG: dead.stdout.strip()})  # a PID no longer in use
    ended = job_run("ended-itself", here)
    ended.finish("FINISHED")
    ledger.close_job_run(run_key(ended.state()))
    elsewhere = job_run("on-a-node", {**here, HOST_TAG: "node-17"})
    started = time.monotonic()
    end_interrupted_runs(ledger)
    assert time.monotonic() - started < 5  # a gone process is not waited for
    client = MlflowClient(store_uri)
    run = client.get_run(killed.run_id)
    assert run.info.status == "KILLED"
    assert run.data.tags["error"] == "interrupted: the job's process was stopped before it could end this run"
    assert client.get_run(ended.run_id).info.status == "FINISHED"
    assert client.get_run(elsewhere.run_id).info.status == "RUNNING"
    assert [run_key(state) for state in ledger.open_job_runs()] == [elsewhere.run_id]


def liveness_tags_of(pid: int) -> dict[str, str]:
    """The liveness tags a job's process ``pid`` on this host would have put on its run."""
    return {**liveness_tags(), PID_TAG: str(pid), PID_START_TAG: str(psutil.Process(pid).create_time())}


def interrupted_sweep(tmp_path: Path, store_uri: str) -> tuple[OutcomeLedger, Recorder, MlflowClient, str]:
    """A sweep's run open in a real store and in the command's ledger, as at Ctrl-C: the ledger, the sweep's
    recorder, a client and the experiment's id."""
    ledger = OutcomeLedger(tmp_path / "ledger.jsonl")
    sweep = Recorder(RunTarget.for_sweep(store_uri, "interrupt", "sweep"), tmp_path / "spool", print)
    sweep.open()
    ledger.open_sweep(sweep.state())
    client = MlflowClient(store_uri)
    return ledger, sweep, client, client.get_run(sweep.run_id).info.experiment_id


def test_interrupt_ends_a_job_run_its_process_never_wrote_to_the_ledger(tmp_path: Path, store_uri: str) -> None:
    """The race a busy machine opens: a job's run exists (created with the process's liveness tags) but the process
    was killed before it wrote its ledger entry. The sweep's RUNNING children are checked too: that run is KILLED
    with the reason; a child another host runs, and one already ended, are left as they are."""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    ledger, sweep, client, experiment = interrupted_sweep(tmp_path, store_uri)
    here = liveness_tags()

    def child(name: str, tags: dict[str, str]) -> str:
        return client.create_run(
            experiment, run_name=name, tags={"mlflow.parentRunId": sweep.run_id, **tags}
        ).info.run_id

    orphan = child("killed-before-its-ledger-entry", {**here, PID_TAG: dead.stdout.strip()})
    remote = child("on-a-node", {**here, HOST_TAG: "node-17"})
    finished = child("ended-itself", {**here, PID_TAG: dead.stdout.strip()})
    client.set_terminated(finished, "FINISHED")
    started = time.monotonic()
    end_interrupted_runs(ledger)
    assert time.monotonic() - started < 5  # a gone process is not waited for
    run = client.get_run(orphan)
    assert (run.info.status, run.data.tags["error"]) == (
        "KILLED",
        "interrupted: the job's process was stopped before it could end this run",
    )
    assert client.get_run(remote).info.status == "RUNNING"
    assert client.get_run(finished).info.status == "FINISHED"
    assert client.get_run(sweep.run_id).info.status == "KILLED" and ledger.open_sweeps() == []


def test_interrupt_leaves_a_job_run_whose_process_still_works_to_it(
    tmp_path: Path, store_uri: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A job on this host whose process outlives the grace (a single-node SLURM job still ending its run on
    scancel's SIGTERM; CI failed on this race) keeps its run: the command never writes its own reason over the job's.
    Listed in the ledger or not, the run stays RUNNING for its process to end, and the console says so; the sweep's
    run ends KILLED. Before the fix both runs were KILLED with the command's reason."""
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        ledger, sweep, client, experiment = interrupted_sweep(tmp_path, store_uri)
        working = liveness_tags_of(worker.pid)
        listed, unlisted = (
            client.create_run(experiment, run_name=name, tags={"mlflow.parentRunId": sweep.run_id, **working})
            for name in ("listed", "unlisted")
        )
        job = Recorder(RunTarget(store_uri, "interrupt", "listed", parent=sweep.run_id), tmp_path / "spool", print)
        ledger.open_job_run({**job.state(), "run_id": listed.info.run_id, "process": working})  # as run_job writes it
        end_interrupted_runs(ledger, grace_s=0.5)
        assert client.get_run(listed.info.run_id).info.status == "RUNNING"
        assert client.get_run(unlisted.info.run_id).info.status == "RUNNING"
        assert client.get_run(sweep.run_id).info.status == "KILLED"
        err = capsys.readouterr().err
        for run in (listed, unlisted):  # once each: the ledger's run is not judged (and waited for) again
            warning = f"run {run.info.run_id} is left RUNNING: its job's process {worker.pid} still lives"
            assert err.count(warning) == 1, err
    finally:
        worker.kill()
        worker.wait()


def test_a_second_interrupt_cuts_the_wait_short_and_still_ends_the_sweep(tmp_path: Path, store_uri: str) -> None:
    """Ctrl-C pressed again while the command waits for a live job's process: the wait stops at once, the sweep's
    run is KILLED all the same (before, it stayed RUNNING and the ledger was gone), the job's run is left to its
    process, and the command says so and exits as for the first interrupt. Run as ``main`` runs it, in a fresh
    interpreter whose main thread gets a real SIGINT."""
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        ledger, sweep, client, experiment = interrupted_sweep(tmp_path, store_uri)
        working = liveness_tags_of(worker.pid)
        job = client.create_run(experiment, run_name="job", tags={"mlflow.parentRunId": sweep.run_id, **working})
        program = f"""
import os, signal, threading, time
from pathlib import Path
from gflops_track.cli import run as main
from gflops_track.app.channels import OutcomeLedger
from mlflow.tracking import MlflowClient
# MLflow's SQL store imported and opened first: a SIGINT inside that import (a loaded machine takes seconds) breaks
# the import itself ("Table 'experiments' is already defined"), which is not the wait this test is about.
MlflowClient({store_uri!r}).search_experiments()
threading.Timer(2, os.kill, (os.getpid(), signal.SIGINT)).start()  # the second Ctrl-C, during the wait
started = time.monotonic()
code = main.stop_after_interrupt(OutcomeLedger(Path({str(ledger.path)!r})), KeyboardInterrupt(), grace_s=600)
print(f"exit {{code}} after {{time.monotonic() - started:.0f}} s")
"""
        done = subprocess.run(  # a wait not cut short would run into this timeout (the grace is 600 s)
            [sys.executable, "-c", program], capture_output=True, text=True, timeout=300, env=cli_env()
        )
        assert done.returncode == 0, done.stderr
        exit_code, waited = re.fullmatch(r"exit (\d+) after (\d+) s\n", done.stdout).groups()  # type: ignore[union-attr]
        # the first interrupt's code; 2 s to the second Ctrl-C and the sweep's end, not the 600 s grace
        assert exit_code == "130" and int(waited) < 60, done.stdout
        assert "interrupted again: stopped waiting for the jobs' processes; the sweep's run is KILLED" in done.stderr
        assert client.get_run(sweep.run_id).info.status == "KILLED"
        assert client.get_run(job.info.run_id).info.status == "RUNNING"  # its process lives: it ends its own run
    finally:
        worker.kill()
        worker.wait()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = Server(tmp_path_factory.mktemp("server"), free_port()).start()
    try:
        yield running
    finally:
        running.stop()


@pytest.mark.parametrize(
    ("what", "args"),
    [("single run", []), ("sweep", ["-m", "norm_fn=group,batch"])],
)
def test_interrupt_inside_create_run_leaves_no_orphan_run(
    tmp_path: Path, server: Server, what: str, args: list[str]
) -> None:
    """SIGTERM that lands while the store creates the run (the request sent, the reply not back): the run exists,
    and its process must know its id to end it. The signal is held until ``create_run`` returns, so the run is
    KILLED, not left RUNNING by a process that never learnt its id. Before, the single run stayed RUNNING and the
    job failed on its missing id (exit 1, the signal lost); the sweep's run stayed RUNNING."""
    experiment = f"create-run-{what.replace(' ', '-')}"
    proxy = SignallingProxy(server.port, b"/runs/create", signal.SIGTERM)
    try:
        command = subprocess.Popen(
            [sys.executable, "-m", "gflops_track", *args, *SMALL_BLOCK, *QUICK_NO_THOP, "timing.enabled=false",
             f"tracking.uri={proxy.uri}", f"tracking.experiment={experiment}", f"hydra.sweep.dir={tmp_path / 'sweep'}",
             f"hydra.run.dir={tmp_path / 'run'}"],
            cwd=tmp_path, env=cli_env(XDG_CACHE_HOME=str(tmp_path)), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        proxy.pid = command.pid
        _, err = command.communicate(timeout=300)
    finally:
        proxy.close()
    assert proxy.fired.is_set(), err[-2000:]
    assert command.returncode == 143, err[-2000:]
    client = MlflowClient(server.uri)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert [run.info.status for run in runs] == ["KILLED"], err[-2000:]


def test_ending_a_run_that_was_never_created_keeps_the_callers_error(tmp_path: Path, store_uri: str) -> None:
    """A job whose run creation failed outside the spool's reach (an interrupt, an unexpected error inside MLflow)
    still ends through ``end_job_run``: with no run to end it does nothing, so the job's own error is what the user
    sees (before, an AssertionError from the recorder replaced it). The store stays empty."""
    recorder = Recorder(RunTarget.for_job(store_uri, "never-created", "job", False), tmp_path / "spool", print)
    recorder.finish("KILLED", "Terminated: interrupted")
    assert recorder.run_id is None and recorder.spooled is None and not (tmp_path / "spool").exists()
    assert all_runs(store_uri) == []
