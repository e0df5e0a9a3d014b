"""What both per-layer passes (``timing/layers.py``, the forward; ``timing/step_layers.py``, the training step) time
modules with: time marks (``perf_counter`` on CPU, pooled CUDA events on CUDA), the global forward hooks that open a
span when a named module starts and close it when it ends, each forward's inclusive and self times from the spans'
nesting, the spread they report (the interquartile range), and the unhooked call timed beside the hooked ones.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

MIN_ITERATIONS = 3  # a pass times at least this many forwards (or steps), whatever its time budget


@dataclass
class Span:
    """One call of a named module: when it started and ended, and the span it ran inside (-1: none)."""

    name: str
    start: Any  # perf_counter seconds (CPU) or a recorded CUDA event
    end: Any = None
    parent: int = -1


class Marks:
    """Time marks: ``perf_counter`` on CPU; CUDA events from a pool on CUDA (``elapsed`` only after a synchronise)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.pool: list[Any] = []
        self.used = 0

    def mark(self) -> Any:
        if not self.cuda:
            return time.perf_counter()
        if self.used == len(self.pool):  # only in the warm-up forward, which sizes the pool
            self.pool.append(torch.cuda.Event(enable_timing=True))
        event = self.pool[self.used]
        self.used += 1
        event.record()
        return event

    def elapsed_ms(self, start: Any, end: Any) -> float:
        return start.elapsed_time(end) if self.cuda else (end - start) * 1e3


class Recorder:
    """Global forward hooks that open a span when a named module starts and close it when it ends."""

    def __init__(self, names: dict[int, str], marks: Marks) -> None:
        self.names = names
        self.marks = marks
        self.spans: list[Span] = []
        self.stack: list[int] = []

    def pre(self, module: nn.Module, _args: Any) -> None:
        name = self.names.get(id(module))
        if name is not None:
            parent = self.stack[-1] if self.stack else -1
            self.stack.append(len(self.spans))
            self.spans.append(Span(name, self.marks.mark(), parent=parent))

    def post(self, module: nn.Module, _args: Any, _output: Any) -> None:
        name = self.names.get(id(module))
        if name is not None and self.stack and self.spans[self.stack[-1]].name == name:
            self.spans[self.stack.pop()].end = self.marks.mark()

    def forward_times(self) -> tuple[dict[str, float], dict[str, float], dict[str, int]]:
        """(inclusive ms, self ms, calls) per module name for the forward just recorded."""
        inclusive: dict[str, float] = defaultdict(float)
        own: dict[str, float] = defaultdict(float)
        calls: dict[str, int] = defaultdict(int)
        durations = [
            self.marks.elapsed_ms(span.start, span.end) if span.end is not None else 0.0 for span in self.spans
        ]
        children: list[float] = [0.0] * len(self.spans)
        for index, span in enumerate(self.spans):
            if span.parent >= 0:
                children[span.parent] += durations[index]
        for index, span in enumerate(self.spans):
            inclusive[span.name] += durations[index]
            own[span.name] += durations[index] - children[index]
            calls[span.name] += 1
        return inclusive, own, calls

    def reset(self) -> None:
        self.spans, self.stack = [], []
        self.marks.used = 0


@dataclass(frozen=True)
class Unhooked:
    """One call with no hook: its time as the hooked ones are timed (CUDA: events, then a synchronise) and, on CUDA,
    the CPU's time to issue it (``perf_counter`` from before the first event is recorded to after the last, before
    the synchronise; 0 on CPU, where issuing is running). Issuing that takes most of the GPU's time leaves little
    slack for the hooks' CPU time (``LayerTiming.launch_bound``)."""

    ms: float
    dispatch_ms: float


def unhooked_call(call: Callable[[], Any], device: torch.device, cuda: bool) -> Unhooked:
    """Time one call of ``call`` with no hook (CPU: ``perf_counter``)."""
    if not cuda:
        start = time.perf_counter()
        call()
        return Unhooked((time.perf_counter() - start) * 1e3, 0.0)
    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    issued = time.perf_counter()
    begin.record()
    call()
    end.record()
    dispatch_ms = (time.perf_counter() - issued) * 1e3
    torch.cuda.synchronize(device)
    return Unhooked(begin.elapsed_time(end), dispatch_ms)


def unhooked_summary(calls: list[Unhooked]) -> dict[str, float]:
    """The reference a pass reports: the unhooked calls' median and quickest time and median dispatch time (ms), as
    ``LayerTiming``'s ``plain_ms``, ``plain_min_ms`` and ``plain_dispatch_ms`` (all 0 without a call)."""
    if not calls:
        return {"plain_ms": 0.0, "plain_min_ms": 0.0, "plain_dispatch_ms": 0.0}
    return {
        "plain_ms": statistics.median(call.ms for call in calls),
        "plain_min_ms": min(call.ms for call in calls),
        "plain_dispatch_ms": statistics.median(call.dispatch_ms for call in calls),
    }


def iqr(values: list[float]) -> float:
    """Interquartile range (0 for fewer than two values): the spread a pass reports beside its medians."""
    if len(values) < 2:
        return 0.0
    quartiles = statistics.quantiles(values, n=4, method="inclusive")
    return quartiles[2] - quartiles[0]


@contextlib.contextmanager
def forward_hooks(recorder: Recorder) -> Iterator[None]:
    """The recorder's global forward hooks, for one forward (removed even when it raises)."""
    handles = [
        nn.modules.module.register_module_forward_pre_hook(recorder.pre),
        nn.modules.module.register_module_forward_hook(recorder.post, always_call=True),
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
