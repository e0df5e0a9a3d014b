"""Interrupts held while a run is created (``tracking/interrupts.py``), with real signals sent to a fresh interpreter
(its main thread: where Python runs signal handlers)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

PRELUDE = """
import json, os, signal, threading
from gflops_track.app.signals import raise_on_termination
from gflops_track.tracking.interrupts import interrupts_held

raise_on_termination()  # SIGTERM and SIGHUP raise Terminated, as in the app
before = [signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)]
steps = []
try:
"""
POSTLUDE = """
except BaseException as error:
    steps.append(type(error).__name__)
after = [signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)]
print(json.dumps({"steps": steps, "restored": after == before}))
"""


def steps_of(block: str) -> list[str]:
    """Run ``block`` (the body of a try whose exception is recorded) in a fresh interpreter; its steps, checked
    that every handler is the one it was before."""
    program = PRELUDE + textwrap.indent(textwrap.dedent(block), "    ") + POSTLUDE
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["restored"], "a signal handler was not restored"
    return result["steps"]


@pytest.mark.parametrize(("signum", "raised"), [("SIGINT", "KeyboardInterrupt"), ("SIGTERM", "Terminated")])
def test_an_interrupt_inside_the_block_is_raised_when_it_ends(signum: str, raised: str) -> None:
    """The run's id is stored before the interrupt is raised, by the handler that was there before."""
    steps = steps_of(f"""
        with interrupts_held():
            os.kill(os.getpid(), signal.{signum})
            steps.append("run id stored")
        steps.append("after the block")
    """)
    assert steps == ["run id stored", raised]


def test_a_second_interrupt_delivers_the_first_at_once() -> None:
    """A store that hangs cannot hold Ctrl-C: the second signal goes through at once, and it is the first that is
    delivered (SIGTERM then Ctrl-C exits as terminated, 143, as it would have without the hold)."""
    steps = steps_of("""
        with interrupts_held():
            os.kill(os.getpid(), signal.SIGTERM)
            steps.append("first held")
            os.kill(os.getpid(), signal.SIGINT)
            steps.append("second held too")
    """)
    assert steps == ["first held", "Terminated"]


def test_an_ignored_signal_stays_ignored() -> None:
    """A command started in the background by a script ignores SIGINT: inside the block it is still ignored, it is
    not taken for the second signal, and a held SIGTERM is delivered when the block ends."""
    steps = steps_of("""
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        before[0] = signal.SIG_IGN
        with interrupts_held():
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGINT)
            steps.append("run id stored")
        steps.append("after the block")
    """)
    assert steps == ["run id stored", "Terminated"]


def test_a_nested_block_leaves_the_holding_to_the_outer_one() -> None:
    """A hold inside a hold is a no-op, so the second signal still goes through at once (stacked holds would only
    hold it again). The app does not nest them today; the block is safe to nest all the same."""
    steps = steps_of("""
        with interrupts_held():
            with interrupts_held():
                os.kill(os.getpid(), signal.SIGINT)
                steps.append("inner held the first")
                os.kill(os.getpid(), signal.SIGINT)
                steps.append("inner held the second too")
            steps.append("ledger written")
    """)
    assert steps == ["inner held the first", "KeyboardInterrupt"]


def test_no_interrupt_no_change_and_other_threads_untouched() -> None:
    """Without a signal the block runs through; in another thread (where Python runs no handler) nothing is held
    or changed."""
    steps = steps_of("""
        with interrupts_held():
            steps.append("created")
        seen = []
        def worker():
            with interrupts_held():
                seen.append(signal.getsignal(signal.SIGINT) is signal.default_int_handler)
        thread = threading.Thread(target=worker)
        thread.start()
        thread.join()
        steps.append(f"thread saw the default handler: {seen[0]}")
    """)
    assert steps == ["created", "thread saw the default handler: True"]
