"""The per-layer pass: each module's forward timed with global module hooks, in a pass of its own that runs after the
headline timing, so its hooks and synchronisation never touch ``latency/*``.

* CPU: ``time.perf_counter`` read in each module's pre- and post-forward hook.
* CUDA: a CUDA event recorded on the current stream in each hook (events come from a pool made before the timed
  iterations, so no ``cudaEventCreate`` falls inside a span) and one synchronise after each forward, never inside it.
  The times are the GPU's between the events: kernels queued by a module, attributed to it.

Each call is a span; a span's *inclusive* time runs from its pre-hook to its post-hook, its *self* time is that minus
the inclusive time of the spans that ran inside it (the runtime nesting, so a module shared under several names or
called twice is counted where it ran). Per forward a module's calls are summed; the result is the median over the
iterations, with the interquartile range as the spread. The self times of one forward add up exactly to the root's
inclusive time; what separates their sum from the headline median is the hooks' own cost and the machine's noise,
which the run logs as ``layers/self_sum_gap``. Each hooked forward is preceded by one with no hooks, timed the same
way (``plain_ms``, their median): the side-by-side reference the self times are checked against on a busy machine,
where a median taken seconds earlier measures the load as much as the model (``layers/self_sum_gap_side_by_side``).
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from gflops_track.common.names import ROOT_LABEL
from gflops_track.results.layers import LayerTiming, ModuleTime
from gflops_track.timing.module_hooks import (
    MIN_ITERATIONS,
    Marks,
    Recorder,
    Unhooked,
    forward_hooks,
    iqr,
    unhooked_call,
    unhooked_summary,
)

CPU_METHOD = "perf_counter in forward pre/post hooks (CPU), after the headline timing"
CUDA_METHOD = "CUDA events in forward pre/post hooks, one synchronise per forward, after the headline timing"
DEFAULT_ITERATIONS = 21
DEFAULT_MAX_TIME_S = 10.0
# forwards the torch.profiler cross-check records after the pass when asked (CPU). A job does not ask: each start of
# torch.profiler prints two lines (profiler_start, profiler_stop) from its C++ side to stderr, which a job's console
# must not carry, so the check runs from Python and in the tests.
PROFILER_FORWARDS = 3


def time_layers(
    forward: Callable[[], Any],
    model: nn.Module,
    device: torch.device,
    *,
    iterations: int = DEFAULT_ITERATIONS,
    max_time_s: float = DEFAULT_MAX_TIME_S,
    profiler_forwards: int = 0,
) -> LayerTiming:
    """Time every named module of ``model`` while ``forward()`` runs it: one warm-up forward (it also sizes the
    CUDA event pool), then up to ``iterations`` timed forwards, at least ``MIN_ITERATIONS``, stopping early once
    ``max_time_s`` has passed; on CPU, when asked, then ``profiler_forwards`` forwards under ``torch.profiler`` for
    the cross-check (``profiler_shares``; on CUDA it would set CPU dispatch time against GPU time: not run). The
    caller puts the model in eval mode and its inputs in place."""
    if iterations < 1:
        raise ValueError(f"iterations={iterations} is not allowed: use 1 or more")
    names = {id(module): name or ROOT_LABEL for name, module in model.named_modules()}
    marks = Marks(device)
    recorder = Recorder(names, marks)
    per_forward: list[tuple[dict[str, float], dict[str, float], dict[str, int]]] = []
    plain: list[Unhooked] = []
    started = time.perf_counter()
    with torch.inference_mode(), torch.cuda.device(device) if marks.cuda else contextlib.nullcontext():
        for index in range(iterations + 1):
            if index > 0:  # an unhooked forward beside each hooked one: the side-by-side reference
                plain.append(unhooked_call(forward, device, marks.cuda))
            recorder.reset()
            with forward_hooks(recorder):
                forward()
            if marks.cuda:
                torch.cuda.synchronize(device)
            if index > 0:  # the first forward warms up (and sizes the CUDA event pool)
                per_forward.append(recorder.forward_times())
            if index >= MIN_ITERATIONS and time.perf_counter() - started > max_time_s:
                break
    timing = _summarise(per_forward, list(dict.fromkeys(names.values())), CUDA_METHOD if marks.cuda else CPU_METHOD)
    checked = profiler_shares(forward, model, profiler_forwards) if profiler_forwards and not marks.cuda else {}
    return replace(
        timing,
        **unhooked_summary(plain),
        profiler_shares=checked,
        total_s=time.perf_counter() - started,
    )


def _summarise(
    per_forward: list[tuple[dict[str, float], dict[str, float], dict[str, int]]], order: list[str], method: str
) -> LayerTiming:
    """Medians over the forwards, modules in ``named_modules`` order; a module that never ran is left out."""
    modules = []
    for name in order:
        ran = [forward for forward in per_forward if name in forward[2]]
        if not ran:
            continue
        own = [forward[1][name] for forward in ran]
        modules.append(
            ModuleTime(
                name=name,
                calls=max(forward[2][name] for forward in ran),
                inclusive_ms=statistics.median(forward[0][name] for forward in ran),
                self_ms=statistics.median(own),
                self_iqr_ms=iqr(own),
                self_min_ms=min(own),
            )
        )
    roots = [forward[0].get(ROOT_LABEL, 0.0) for forward in per_forward]
    return LayerTiming(method, len(per_forward), statistics.median(roots) if roots else 0.0, modules)


PROFILER_RANGE = "module::"  # the record_function ranges the cross-check opens around each module


def profiler_shares(forward: Callable[[], Any], model: nn.Module, forwards: int = 5) -> dict[str, float]:
    """The cross-check: each module's share of the ATen op time ``torch.profiler`` records over ``forwards``
    forwards (CPU op time; every top-level ``aten::`` op attributed to the innermost module range open around it,
    ranges opened by the same global hooks). Set against ``ModuleTime.self_ms`` shares: they should agree within a
    few percentage points, the layer pass's own time also holding Python and dispatch outside the ops."""
    from torch.autograd.profiler import record_function
    from torch.profiler import ProfilerActivity, profile

    names = {id(module): name or ROOT_LABEL for name, module in model.named_modules()}
    ranges: list[Any] = []

    def pre(module: nn.Module, _args: Any) -> None:
        if id(module) in names:
            ranges.append(record_function(f"{PROFILER_RANGE}{names[id(module)]}"))
            ranges[-1].__enter__()

    def post(module: nn.Module, _args: Any, _output: Any) -> None:
        if id(module) in names and ranges:
            ranges.pop().__exit__(None, None, None)

    handles = [
        nn.modules.module.register_module_forward_pre_hook(pre),
        nn.modules.module.register_module_forward_hook(post, always_call=True),
    ]
    try:
        with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU]) as recorded:
            for _ in range(forwards):
                forward()
    finally:
        for handle in handles:
            handle.remove()
    per_module: dict[str, float] = defaultdict(float)
    for event in recorded.events():
        parent = event.cpu_parent
        if not event.name.startswith("aten::") or (parent is not None and parent.name.startswith("aten::")):
            continue  # only top-level ops: an op inside another is in that one's time
        while parent is not None and not parent.name.startswith(PROFILER_RANGE):
            parent = parent.cpu_parent
        if parent is not None:
            per_module[parent.name.removeprefix(PROFILER_RANGE)] += event.cpu_time_total
    total = sum(per_module.values())
    return {name: spent / total for name, spent in per_module.items()} if total else {}
