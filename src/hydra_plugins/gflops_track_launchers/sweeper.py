"""Hydra's basic sweeper, less a second composition of every job that preflight already composed.

Hydra composes each job of a sweep twice: once to check the batch (``validate_batch_is_legal``, so a launcher in
another process fails early) and once to launch it. Run from ``python -m gflops_track`` (the command's ledger exists),
preflight has composed and checked every job of the command line, with the schema, before anything ran: the check
is that work a second time, about a tenth of a second a job. Run any other way, the check is Hydra's as before.
"""

from __future__ import annotations

from collections.abc import Sequence

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

from gflops_track.app.channels import OutcomeLedger


class CheckedSweeper(BasicSweeper):
    """``BasicSweeper`` that skips its batch check when this command's preflight has composed every job."""

    def validate_batch_is_legal(self, batch: Sequence[Sequence[str]]) -> None:
        if OutcomeLedger.current() is None:  # not run by the entry point: no preflight vouches for the jobs
            super().validate_batch_is_legal(batch)
