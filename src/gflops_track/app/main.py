"""The thin Hydra entry point: compose -> validate -> run the job -> exit code."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from gflops_track.app import callbacks, console, job
from gflops_track.app.preflight import preflight
from gflops_track.app.schema import ConfigError, register_schema, to_app_config
from gflops_track.tracking.run_logger import flatten_params

EXIT_CONFIG_ERROR = 2
INVALID_CONFIG = "invalid config"  # stands in failed_jobs for a job whose config failed validation inside Hydra
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}
EXIT_JOB_FAILED = 1
EXIT_SIGINT = 130  # 128 + SIGINT, as shells report it
EXIT_SIGTERM = 143  # 128 + SIGTERM


class Terminated(BaseException):
    """SIGTERM, raised in the main thread like KeyboardInterrupt so every run is ended on the way out."""


def _raise_terminated(_signum: int, _frame: object) -> None:
    raise Terminated()


def config_dir() -> str:
    """conf/ shipped inside the installed package, else the repository's top-level conf/ (editable install)."""
    packaged = Path(__file__).resolve().parents[1] / "conf"
    return str(packaged if packaged.is_dir() else Path(__file__).resolve().parents[3] / "conf")


CONFIG_DIR = config_dir()
register_schema()


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def hydra_app(cfg: DictConfig) -> None:
    hydra_config = HydraConfig.get()
    try:
        config = to_app_config(cfg)
    except ConfigError as error:  # normally caught by preflight; here when Hydra was called in another way
        console.print_config_errors(error.errors)
        job.failed_jobs.append(INVALID_CONFIG)
        return
    job.run_job(
        config,
        params=flatten_params(OmegaConf.to_container(cfg, resolve=True)),
        config_yaml=OmegaConf.to_yaml(cfg, resolve=True),
        launch_dir=Path(hydra_config.runtime.cwd),
        output_dir=Path(hydra_config.runtime.output_dir),
        in_sweep=hydra_config.mode == RunMode.MULTIRUN,
    )


def main() -> None:
    """``python -m gflops_track [overrides]``; exits 2 on a config error (no run created), 1 if any job failed."""
    for name, value in HTTP_DEFAULTS.items():  # a dead server must not stall every call for minutes of retries
        os.environ.setdefault(name, value)
    checked = preflight(sys.argv[1:], CONFIG_DIR)
    if checked.errors:
        console.print_config_errors(checked.errors)
        sys.exit(EXIT_CONFIG_ERROR)
    for warning in checked.warnings:
        console.print_warning(warning)
    signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        hydra_app()
    except (KeyboardInterrupt, Terminated) as interrupt:
        # the job in flight already marked its run KILLED; finished runs stay as they are
        callbacks.end_interrupted_sweep()
        name = "SIGTERM" if isinstance(interrupt, Terminated) else "SIGINT (Ctrl-C)"
        console.print_warning(f"stopped by {name}: the run in progress is marked KILLED, finished runs are kept")
        sys.exit(EXIT_SIGTERM if isinstance(interrupt, Terminated) else EXIT_SIGINT)
    if job.failed_jobs:
        sys.exit(EXIT_CONFIG_ERROR if INVALID_CONFIG in job.failed_jobs else EXIT_JOB_FAILED)
