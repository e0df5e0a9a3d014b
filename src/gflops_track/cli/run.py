"""The thin Hydra entry point: preflight -> compose -> run the job -> exit code from the jobs' outcomes."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from gflops_track.app import console
from gflops_track.app.callbacks import JOB_GRACE_S, end_interrupted_runs
from gflops_track.app.channels import EXIT_CONFIG_ERROR, INVALID_CONFIG, JobOutcome, OutcomeLedger
from gflops_track.app.credentials import credentials_to_environment
from gflops_track.app.job import run_job
from gflops_track.app.preflight import preflight
from gflops_track.app.schema import ConfigError, register_schema, to_app_config
from gflops_track.app.signals import SIGNAL_EXITS, Terminated, raise_on_termination
from gflops_track.common.names import FAILED
from gflops_track.common.redact import install_console_masking
from gflops_track.tracking.records import flatten_params
from gflops_track.tracking.store import cap_http_retries

NOT_LOGGED = ("norm_fn",)  # top-level keys logged through the model (model.norm_fn) when they apply to it


def config_dir() -> str:
    """conf/ shipped inside the installed package, else the repository's top-level conf/ (editable install)."""
    packaged = Path(__file__).resolve().parents[1] / "conf"
    return str(packaged if packaged.is_dir() else Path(__file__).resolve().parents[3] / "conf")


CONFIG_DIR = config_dir()
register_schema()


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def hydra_app(cfg: DictConfig) -> JobOutcome:
    """One job, in whichever process runs it; its outcome goes to the command's ledger, which ``main`` reads back for
    the exit code."""
    outcome = job_outcome(cfg)
    ledger = OutcomeLedger.current()
    if ledger is not None:
        ledger.record(outcome)
    return outcome


def job_outcome(cfg: DictConfig) -> JobOutcome:
    """Run the job; never raises for the job's own failure (a FAILED outcome, the sweep goes on)."""
    hydra_config = HydraConfig.get()
    try:
        config = to_app_config(cfg)
    except ConfigError as error:  # normally caught by preflight; here when Hydra was called in another way
        console.print_config_errors(error.errors, run_created=hydra_config.mode == RunMode.MULTIRUN)
        return JobOutcome(hydra_config.job.override_dirname, None, INVALID_CONFIG, "; ".join(error.errors))
    try:
        container = OmegaConf.to_container(cfg, resolve=True)
        assert isinstance(container, dict)
        return run_job(
            config,
            params=flatten_params({key: value for key, value in container.items() if key not in NOT_LOGGED}),
            config_yaml=OmegaConf.to_yaml(cfg, resolve=True),
            launch_dir=Path(hydra_config.runtime.cwd),
            output_dir=Path(hydra_config.runtime.output_dir),
            in_sweep=hydra_config.mode == RunMode.MULTIRUN,
            overrides=list(hydra_config.overrides.task),
        )
    except Exception as error:  # a fault of ours past the job's own handling: this job failed, the sweep goes on
        message = f"{type(error).__name__}: {error}"
        console.print_job_failure(hydra_config.job.override_dirname or "job", None, message)
        return JobOutcome(hydra_config.job.override_dirname, None, FAILED, message)


def stop_after_interrupt(
    ledger: OutcomeLedger, interrupt: KeyboardInterrupt | Terminated, grace_s: float = JOB_GRACE_S
) -> int:
    """End what the interrupted jobs could not (the job in flight marked its run KILLED or, killed itself, left it to
    us; finished runs stay as they are), say so, and return the exit code: 128 + the signal's number. A second
    interrupt during that clean-up cuts its wait short (the sweep's run is still ended); the code stays the first's."""
    try:
        end_interrupted_runs(ledger, grace_s)
    except (KeyboardInterrupt, Terminated):
        console.print_warning(
            "interrupted again: stopped waiting for the jobs' processes; the sweep's run is KILLED, and "
            "`gflops-track reap --yes` ends any job run whose process is gone"
        )
    signum = interrupt.signum if isinstance(interrupt, Terminated) else signal.SIGINT
    name = "SIGINT (Ctrl-C)" if signum == signal.SIGINT else signal.Signals(signum).name
    console.print_warning(f"stopped by {name}: the run in progress is marked KILLED, finished runs are kept")
    return SIGNAL_EXITS[signal.Signals(signum)]


def import_from_launch_dir() -> None:
    """A module in the directory the command runs from imports, as under ``python -m`` (``model._target_=mymodels.Net``
    next to mymodels.py): the ``gflops-track`` console script's path starts with its own folder instead."""
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())


def main() -> None:
    """``python -m gflops_track [overrides]``; exits 2 on a config error (no run created), 1 if any job failed,
    128 + the signal's number when interrupted (SIGINT 130, SIGTERM 143, SIGHUP 129)."""
    import_from_launch_dir()
    install_console_masking()  # belt and braces: no console line shows a credential, whoever prints it
    cap_http_retries()  # a dead server must not stall every call for minutes of retries
    argv, moved, refused = credentials_to_environment(sys.argv[1:], os.environ)
    sys.argv[1:] = argv  # from here on no URI holds a password: not Hydra's files, not a run, not a console line
    checked = preflight(argv, CONFIG_DIR)
    if refused or checked.errors:
        console.print_config_errors([*refused, *checked.errors])
        sys.exit(EXIT_CONFIG_ERROR)
    for warning in [*moved, *checked.warnings]:
        console.print_warning(warning)
    raise_on_termination()
    ledger = OutcomeLedger.create()
    try:
        hydra_app()
        code = ledger.exit_code()
    except (KeyboardInterrupt, Terminated) as interrupt:
        code = stop_after_interrupt(ledger, interrupt)
    finally:
        ledger.remove()
    sys.exit(code)
