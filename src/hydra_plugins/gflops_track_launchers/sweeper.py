"""Hydra's basic sweeper, less the compositions that preflight has made unnecessary.

Hydra composes each job of a sweep twice: once to check the batch (``validate_batch_is_legal``, so a launcher in
another process fails early) and once to launch it. Run from ``python -m gflops_track`` (the command's ledger exists),
preflight has composed and checked every job of the command line, with the schema, before anything ran: the check
is that work a second time, about a tenth of a second a job, and is skipped. The launch composition stays, but the
in-process launcher composes each distinct choice of config groups once and applies each job's other overrides to a
copy (``gflops_track.app.composition``): a sweep over values (``norm_fn=group,batch,instance``) is composed once.
Run any other way, or with a launcher of its own processes (joblib, SLURM), every composition is Hydra's as before.
"""

from __future__ import annotations

from collections.abc import Sequence

from hydra._internal.core_plugins.basic_launcher import BasicLauncher
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

from gflops_track.app.channels import OutcomeLedger
from gflops_track.app.composition import SharedDefaultsLoader


class CheckedSweeper(BasicSweeper):
    """``BasicSweeper`` that skips its batch check, and launches in-process jobs from shared compositions, when this
    command's preflight has composed every job."""

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        super().setup(hydra_context=hydra_context, task_function=task_function, config=config)
        if OutcomeLedger.current() is not None and type(self.launcher) is BasicLauncher:
            shared = SharedDefaultsLoader(hydra_context.config_loader)
            self.launcher.hydra_context = HydraContext(config_loader=shared, callbacks=hydra_context.callbacks)

    def validate_batch_is_legal(self, batch: Sequence[Sequence[str]]) -> None:
        if OutcomeLedger.current() is None:  # not run by the entry point: no preflight vouches for the jobs
            super().validate_batch_is_legal(batch)
