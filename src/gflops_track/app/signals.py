"""SIGTERM and SIGHUP raised as exceptions in the main thread, like Ctrl-C's KeyboardInterrupt, so every run on the
way out is ended KILLED: in the command's process, and in a SLURM job (``scancel`` sends SIGTERM, which submitit's
worker would otherwise ignore). SIGALRM bounds a job (``timeout_s``): ``JobTimeout`` in the thread that runs it."""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Iterator
from types import FrameType

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


class JobTimeout(BaseException):
    """A job ran past ``timeout_s``. A BaseException, like KeyboardInterrupt, so no ``except Exception`` on the way
    (the user's forward, a cross-check that notes its failures) can swallow it and let the job run on."""

    def __init__(self, timeout_s: float) -> None:
        super().__init__(f"timed out after {timeout_s:g} s (timeout_s={timeout_s:g})")


@contextlib.contextmanager
def job_deadline(timeout_s: float | None) -> Iterator[bool]:
    """Raise ``JobTimeout`` in this (main) thread once ``timeout_s`` seconds have passed in the block: SIGALRM, one
    shot, no thread. A forward stuck in ``time.sleep`` or Python code stops at once; one stuck inside a single C call
    when that call returns. The previous SIGALRM handler is put back exactly and a timer that was set before is set
    again for what is left of it. Yields whether the bound is in force: not for ``None``, nor outside the main thread
    (a joblib thread backend), nor where there is no SIGALRM (Windows)."""
    armable = timeout_s is not None and hasattr(signal, "SIGALRM")
    if not armable or threading.current_thread() is not threading.main_thread():
        yield False
        return
    assert timeout_s is not None

    def expire(_signum: int, _frame: FrameType | None) -> None:
        raise JobTimeout(timeout_s)

    previous = signal.signal(signal.SIGALRM, expire)
    started = time.monotonic()
    earlier, interval = signal.setitimer(signal.ITIMER_REAL, timeout_s)
    try:
        yield True
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous if previous is not None else signal.SIG_DFL)  # None: set outside Python
        if earlier > 0:  # someone else's timer: due what was left of it (at once if that has passed)
            signal.setitimer(signal.ITIMER_REAL, max(earlier - (time.monotonic() - started), 1e-3), interval)
