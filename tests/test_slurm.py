"""A real single-node SLURM cluster (Debian's slurm-wlm and munge, started and stopped here by PID): a sweep through
hydra-submitit-launcher's SLURM launcher (`hydra/launcher=slurm_cpu`) against a real `mlflow server`."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from mlflow.tracking import MlflowClient

from conftest import QUICK_NO_THOP as QUICK
from conftest import SMALL_BLOCK as SMALL
from conftest import cli_env
from servers import Server, free_port

pytestmark = pytest.mark.slow
DAEMONS = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "scancel")


def slurm_missing() -> str | None:
    """Why a SLURM cluster cannot run here, or None when it can."""
    absent = [name for name in DAEMONS if shutil.which(name, path=f"/usr/sbin:/usr/bin:{os.environ['PATH']}") is None]
    if absent:
        return f"needs Debian's slurm-wlm and munge (apt-get install slurm-wlm munge): {', '.join(absent)} not found"
    if os.geteuid() != 0:
        return "slurmd starts jobs as their submitting user, which needs root; this test runs as a normal user"
    try:
        import hydra_plugins.hydra_submitit_launcher  # noqa: F401
    except ImportError:
        return "needs hydra-submitit-launcher (the cluster extra)"
    return None


def tool(name: str) -> str:
    found = shutil.which(name, path=f"/usr/sbin:/usr/bin:{os.environ['PATH']}")
    assert found is not None, name
    return found


class Slurm:
    """munged, slurmctld and slurmd in the foreground as this object's children, on a private slurm.conf in a temp
    dir: one node (this host, at 127.0.0.1), one CPU partition `cpu`, proctrack/linuxproc and task/none (no cgroups,
    no systemd), no accounting (submitit then reads job ends from its result files; `scontrol show job` keeps a
    finished job's record for MinJobAge seconds)."""

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="gflops-slurm-"))
        self.node = socket.gethostname().split(".")[0]
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.env = {**os.environ, "SLURM_CONF": str(self.folder / "slurm.conf")}

    def start(self) -> Slurm:
        f = self.folder
        for sub in ("state", "spool", "log"):
            (f / sub).mkdir()
        subprocess.run([tool("mungekey"), "-c", "-f", "-k", str(f / "munge.key")], check=True, capture_output=True)
        os.chmod(f / "munge.key", 0o600)
        cpus = os.cpu_count() or 1
        memory_mib = int(psutil.virtual_memory().total / 2**20 * 0.8)
        (f / "slurm.conf").write_text(
            f"ClusterName=gflops-ci\nSlurmctldHost={self.node}(127.0.0.1)\n"
            f"SlurmctldPort={free_port()}\nSlurmdPort={free_port()}\nSlurmUser=root\nSlurmdUser=root\n"
            f"AuthType=auth/munge\nCredType=cred/munge\nAuthInfo=socket={f / 'munge.sock'}\n"
            f"StateSaveLocation={f / 'state'}\nSlurmdSpoolDir={f / 'spool'}\n"
            f"SlurmctldPidFile={f / 'slurmctld.pid'}\nSlurmdPidFile={f / 'slurmd.pid'}\n"
            f"SlurmctldLogFile={f / 'log' / 'slurmctld.log'}\nSlurmdLogFile={f / 'log' / 'slurmd.log'}\n"
            "ProctrackType=proctrack/linuxproc\nTaskPlugin=task/none\nJobAcctGatherType=jobacct_gather/none\n"
            "AccountingStorageType=accounting_storage/none\nJobCompType=jobcomp/none\nMpiDefault=none\n"
            "SwitchType=switch/none\nSelectType=select/cons_tres\nSelectTypeParameters=CR_CPU\n"
            "ReturnToService=2\nMinJobAge=3600\nKillWait=5\n"
            f"NodeName={self.node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mib} State=UNKNOWN\n"
            f"PartitionName=cpu Nodes={self.node} Default=YES MaxTime=INFINITE State=UP\n"
        )
        self._spawn(
            "munged", tool("munged"), "--foreground", "--force", f"--socket={f / 'munge.sock'}",
            f"--key-file={f / 'munge.key'}", f"--pid-file={f / 'munged.pid'}", f"--seed-file={f / 'munge.seed'}",
            f"--log-file={f / 'log' / 'munged.log'}",
        )  # fmt: skip
        self._wait(lambda: (f / "munge.sock").exists(), "munged")
        self._spawn("slurmctld", tool("slurmctld"), "-D", "-i")
        self._spawn("slurmd", tool("slurmd"), "-D", "-N", self.node)
        self._wait(lambda: " idle" in self.run("sinfo", "-h", "-o", "%P %t").stdout, "the node to come up idle")
        return self

    def _spawn(self, name: str, *command: str) -> None:
        log = (self.folder / "log" / f"{name}.out").open("ab")
        self.processes[name] = subprocess.Popen(command, env=self.env, stdout=log, stderr=log, start_new_session=True)

    def _wait(self, ready: object, what: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not ready():  # type: ignore[operator]
            dead = [name for name, p in self.processes.items() if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                logs = "".join(p.read_text(errors="replace")[-1500:] for p in (self.folder / "log").glob("*"))
                self.stop()
                raise RuntimeError(f"SLURM: waiting for {what}; exited: {dead}\n{logs}")
            time.sleep(0.3)

    def run(self, *command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([tool(command[0]), *command[1:]], env=self.env, capture_output=True, text=True)

    def queued(self) -> list[str]:
        """Job ids still pending or running (array tasks as `<job>_<task>`)."""
        return self.run("squeue", "-h", "-o", "%i").stdout.split()

    def job_states(self, job_id: str) -> dict[str, str]:
        """`{job id: JobState}` of a job, or of every task of a job array, from slurmctld's records."""
        shown = self.run("scontrol", "-o", "show", "job", job_id).stdout
        states = {}
        for line in shown.splitlines():
            fields = dict(re.findall(r"(\w+)=(\S*)", line))
            task = f"{fields['ArrayJobId']}_{fields['ArrayTaskId']}" if "ArrayTaskId" in fields else fields["JobId"]
            states[task] = fields["JobState"]
        return states

    def stop(self) -> None:
        """Cancel what is left, then SIGTERM each daemon by PID (slurmd, slurmctld, munged), then the temp dir."""
        if self.processes.get("slurmctld") and self.processes["slurmctld"].poll() is None:
            self.run("scancel", "--full", "--user=root")
            deadline = time.monotonic() + 30
            while self.queued() and time.monotonic() < deadline:
                time.sleep(0.5)
        for name in ("slurmd", "slurmctld", "munged"):
            process = self.processes.get(name)
            if process is not None and process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        shutil.rmtree(self.folder, ignore_errors=True)


@pytest.fixture(scope="module")
def slurm() -> Iterator[Slurm]:
    missing = slurm_missing()
    if missing:
        pytest.skip(missing)
    cluster = Slurm().start()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = Server(tmp_path_factory.mktemp("server"), free_port()).start()
    yield running
    running.stop()


def sweep_runs(uri: str, experiment: str) -> tuple[list, list]:
    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    runs = client.search_runs([found.experiment_id]) if found else []
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    return parents, [r for r in runs if "mlflow.parentRunId" in r.data.tags]


def submitted_jobs(sweep_dir: Path) -> list[str]:
    """The SLURM array tasks submitit wrote its per-job folders under (`.submitit/<array job>_<task>`)."""
    return sorted(p.name for p in (sweep_dir / ".submitit").iterdir() if re.fullmatch(r"\d+_\d+", p.name))


LAUNCHER = ["hydra/launcher=slurm_cpu", "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1"]


def test_three_job_sweep_on_a_real_slurm_cluster(tmp_path: Path, slurm: Slurm, server: Server) -> None:
    sweep_dir = tmp_path / "sweep"
    env = cli_env(MLFLOW_TRACKING_URI=server.uri, SLURM_CONF=slurm.env["SLURM_CONF"], XDG_CACHE_HOME=str(tmp_path))
    done = subprocess.run(
        [sys.executable, "-m", "gflops_track", "-m", *LAUNCHER, "norm_fn=group,batch,none", *SMALL, *QUICK,
         "tracking.experiment=slurm", f"hydra.sweep.dir={sweep_dir}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    jobs = submitted_jobs(sweep_dir)
    assert len(jobs) == 3  # one SLURM array task per job
    (array_id,) = {job.split("_")[0] for job in jobs}
    assert slurm.job_states(array_id) == dict.fromkeys(jobs, "COMPLETED")  # they ran as SLURM jobs, and ended well
    (parent,), children = sweep_runs(server.uri, "slurm")
    assert len(children) == 3
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parent.info.run_id}  # one parent
    assert all(r.info.status == "FINISHED" for r in [parent, *children])
    assert sorted(r.data.params["model.norm_fn"] for r in children) == ["batch", "group", "none"]
    assert all(r.data.metrics["cost/macs"] == 2 * (2 * 16 * 8 * 8 * 16 * 9) for r in children)  # 2 convs, b2, 16ch, 8x8
    for job in jobs:  # submitit's job side saw SLURM's environment (SLURM_JOB_ID, SLURMD_NODENAME) in each job
        (log,) = (sweep_dir / ".submitit" / job).glob("*_log.out")
        assert f"JobEnvironment(job_id={job}, hostname={slurm.node}" in log.read_text()


def test_ctrl_c_on_the_submitter_leaves_nothing_running(tmp_path: Path, slurm: Slurm, server: Server) -> None:
    """Ctrl-C on the submitting command while the jobs time: it cancels the sweep's jobs (one scancel by the sweep's
    unique job name), each job ends its run KILLED on SIGTERM, the sweep's run ends KILLED, exit 130."""
    sweep_dir = tmp_path / "sweep"
    env = cli_env(MLFLOW_TRACKING_URI=server.uri, SLURM_CONF=slurm.env["SLURM_CONF"], XDG_CACHE_HOME=str(tmp_path))
    sleepers = ["model=custom", "model._target_=fixture_models.Sleeper", "+model.in_channels=3", "batch.height=8"]
    slow = ["timing.warmup=1", "timing.min_repeats=100000", "timing.max_repeats=100000", "timing.max_time_s=600",
            "peak.measure=false", "counting.thop=false"]  # fmt: skip
    submitter = subprocess.Popen(
        [sys.executable, "-m", "gflops_track", "-m", *LAUNCHER, "+model.ms=50,51,52", *sleepers, *slow,
         "tracking.experiment=slurm-ctrl-c", f"hydra.sweep.dir={sweep_dir}"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while not [r for r in sweep_runs(server.uri, "slurm-ctrl-c")[1] if r.info.status == "RUNNING"]:
            assert submitter.poll() is None and time.monotonic() < deadline, "no job started timing"
            time.sleep(1)
        submitter.send_signal(signal.SIGINT)  # Ctrl-C in the submitting shell
        _, err = submitter.communicate(timeout=120)
    finally:
        if submitter.poll() is None:
            submitter.kill()
            submitter.wait()
    assert submitter.returncode == 130, err[-3000:]

    def settled() -> bool:
        parents, children = sweep_runs(server.uri, "slurm-ctrl-c")
        return not slurm.queued() and all(r.info.status != "RUNNING" for r in [*parents, *children])

    deadline = time.monotonic() + 30  # a cancelled job gets SIGTERM, ends its run, exits: seconds, not minutes
    while not settled() and time.monotonic() < deadline:
        time.sleep(1)
    assert slurm.queued() == [], "the sweep's SLURM jobs are still queued or running"
    parents, children = sweep_runs(server.uri, "slurm-ctrl-c")
    assert [r.info.status for r in parents] == ["KILLED"]
    assert children and all(r.info.status in {"KILLED", "FINISHED"} for r in children)
    # each killed job ended its own run on scancel's SIGTERM (on a real cluster the submitter's node cannot do it)
    killed = [r for r in children if r.info.status == "KILLED"]
    errors = [r.data.tags.get("error") for r in killed]
    assert killed and all(error == "Terminated: interrupted" for error in errors), errors
    assert "cancelled this sweep's SLURM jobs (scancel --name=gflops_track-" in err
