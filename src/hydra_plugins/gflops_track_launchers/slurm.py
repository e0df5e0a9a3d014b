"""hydra-submitit-launcher's SLURM launcher, plus what it lacks: an interrupted sweep leaves nothing RUNNING.

* The submitting process: Ctrl-C (or SIGTERM/SIGHUP) while it waits for the jobs cancels every job it submitted,
  queued or running. The sweep's jobs share a SLURM job name made unique per sweep (``<name>-<8 hex>``), so one
  ``scancel --name`` finds them all, even those submitted in the instant the interrupt arrived.
* Each job: ``scancel`` ends a job with SIGTERM, which submitit's worker ignores (it waits for SLURM's SIGKILL, and the
  run would stay RUNNING). The job raises it as ``Terminated`` instead, so its run ends KILLED. A preempted or timed-out
  job is therefore ended too, not checkpointed: a profiling job has nothing to resume.
"""

from __future__ import annotations

import getpass
import shutil
import subprocess
import uuid
from collections.abc import Sequence
from typing import Any

from hydra.core.utils import JobReturn

from gflops_track.app.signals import raise_on_termination

try:
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher
except ImportError:  # the cluster extra is not installed: there is no SLURM launcher to extend
    SlurmLauncher = None


def cancel_jobs_named(name: str) -> str:
    """``scancel`` this user's SLURM jobs named ``name``; what happened, in one line for the console."""
    scancel = shutil.which("scancel")
    if scancel is None:
        return f"scancel not found: cancel this sweep's SLURM jobs yourself (scancel --name={name})"
    done = subprocess.run(
        [scancel, f"--name={name}", f"--user={getpass.getuser()}"], capture_output=True, text=True, timeout=60
    )
    if done.returncode != 0:
        return f"scancel --name={name} failed ({done.stderr.strip() or done.returncode}): cancel the jobs yourself"
    return f"cancelled this sweep's SLURM jobs (scancel --name={name}): their runs end KILLED"


if SlurmLauncher is not None:

    class CancellingSlurmLauncher(SlurmLauncher):
        """``hydra/launcher=slurm_cpu`` / ``slurm_gpu``: submitit's SLURM launcher that cancels its jobs when the
        sweep is interrupted, and whose jobs end their runs on SIGTERM."""

        def __call__(self, *args: Any, **kwargs: Any) -> JobReturn:
            raise_on_termination()  # in the SLURM job, after submitit installed its own handlers
            return super().__call__(*args, **kwargs)

        def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
            name = f"{self.params.get('name') or 'gflops_track'}-{uuid.uuid4().hex[:8]}"
            self.params["name"] = name
            try:
                return super().launch(job_overrides, initial_job_idx)
            except BaseException:  # Ctrl-C, Terminated, or a failure while submitting or waiting
                from gflops_track.app import console

                console.print_warning(cancel_jobs_named(name))
                raise
