"""Interrupts held while a run is created: Ctrl-C or SIGTERM that lands inside ``create_run`` would leave a run
that exists in the store but whose id its process never learnt, so nothing could end it (RUNNING until
``gflops-track reap``). Held, the interrupt is raised the moment the block ends, with the id known."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

HELD_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@contextlib.contextmanager
def interrupts_held() -> Iterator[None]:
    """Hold SIGINT, SIGTERM and SIGHUP in this block and deliver the first when it ends, to the handlers that were
    there before (restored exactly). A second signal inside the block delivers the first at once: a store that
    hangs cannot hold Ctrl-C. A signal this process ignores stays ignored. Outside the main thread (where Python runs
    no handler), or inside a block that already holds them, it does nothing more."""
    current = {signum: signal.getsignal(signum) for signum in HELD_SIGNALS}
    if threading.current_thread() is not threading.main_thread() or any(map(_holds, current.values())):
        yield
        return
    # None: a handler set outside Python, which Python cannot put back; SIG_IGN: nothing to deliver
    previous = {signum: handler for signum, handler in current.items() if handler not in (None, signal.SIG_IGN)}
    held: list[int] = []

    def restore() -> None:
        for signum, handler in previous.items():
            signal.signal(signum, handler)

    def hold(signum: int, _frame: FrameType | None) -> None:
        held.append(signum)
        if len(held) > 1:  # the second: the first is delivered now, by the handler that was there before
            first = held[0]
            held.clear()
            restore()
            signal.raise_signal(first)

    hold.holds_interrupts = True  # type: ignore[attr-defined]
    for signum in previous:
        signal.signal(signum, hold)
    try:
        yield
    finally:
        restore()
        if held:
            signal.raise_signal(held[0])


def _holds(handler: object) -> bool:
    return bool(getattr(handler, "holds_interrupts", False))
