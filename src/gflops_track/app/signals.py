"""SIGTERM and SIGHUP raised as exceptions in the main thread, like Ctrl-C's KeyboardInterrupt, so every run on the
way out is ended KILLED: in the command's process, and in a SLURM job (``scancel`` sends SIGTERM, which submitit's
worker would otherwise ignore)."""

from __future__ import annotations

import signal

SIGNAL_EXITS = {signal.SIGINT: 130, signal.SIGTERM: 143, signal.SIGHUP: 129}  # 128 + signal number, as shells say


class Terminated(BaseException):
    """SIGTERM or SIGHUP, raised in the main thread like KeyboardInterrupt so every run is ended on the way out."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_terminated(signum: int, _frame: object) -> None:
    raise Terminated(signum)


def raise_on_termination() -> None:
    """From now on SIGTERM and SIGHUP raise ``Terminated`` in this process's main thread."""
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _raise_terminated)
