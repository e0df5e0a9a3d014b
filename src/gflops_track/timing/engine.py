"""Latency measurement the way benchmarking experts do it, and a bit stricter.

* ``torch.inference_mode()``; inputs already on the device; the caller puts the module in eval mode. On CUDA the whole
  measurement runs inside ``torch.cuda.device(device)``, so every stream, event and graph belongs to that device;
* the first call is timed on its own (``cold_start_ms``: allocator, algorithm selection, compilation);
* warm-up the way we time (blocks of back-to-back calls on CUDA, one call at a time on CPU), by count *and* by time:
  at least ``warmup`` iterations, then on until the latency settles (median of the last 5 within ``SETTLE_TOLERANCE``
  of the 5 before, and likewise for the last 3) or ``warmup_max_s`` runs out;
* adaptive repetition: timed iterations continue until the 95% confidence interval of the median is within
  ``target_precision`` of it (half-width / median, distribution-free order-statistic interval) with at least
  ``min_repeats`` samples, or ``max_time_s`` / ``max_repeats`` runs out. The achieved precision, the sample count and
  whether the target was met are part of the result, and every raw sample is kept. With fewer than
  ``MIN_CI_SAMPLES`` (8) samples the rank formula has no valid ranks: the CI and the precision are ``None`` (not
  known) and the target is never met;
* **time bound**: ``max_time_s`` bounds the *whole* timing phase — cold start, warm-up, timed iterations and the
  CUDA-graph replay. No call (CPU) or block (CUDA) is started when the previous one says it would end past the bound,
  except the cold call and one timed call, which always run. So the phase ends within
  max(``max_time_s``, cold start + one call) + the excess of one call over the one before it. Warm-up may use at most
  ``WARMUP_SHARE`` of the bound (the timed iterations keep the rest); with ``cuda_graph`` the eager part keeps
  ``EAGER_SHARE_WITH_GRAPH`` and the graph replay the rest. A note says when the bound cut warm-up below ``warmup``
  iterations or before the latency settled, or ended timing before the precision target was met (too few samples,
  or enough whose median was not yet known to ``target_precision``): ``time_bound_hit`` is then set;
* CPU: ``time.perf_counter`` (or the injected clock) around each call. CUDA: a pair of CUDA events per iteration on the
  stream and one synchronise per block of iterations (~20 ms), never inside a block; optionally the L2 cache is
  flushed before every iteration (cold L2: ``flush_bytes`` = max(256 MiB, 2 x L2) zeroed, as Triton's ``do_bench``),
  and a CUDA-Graph replay of the forward is timed separately (launch overhead can dominate small modules). The graph is
  captured on a stream of the measured device; PyTorch's empty-graph warning is an error, and a graph median below
  ``GRAPH_MIN_RATIO`` x the eager median is rejected (a replay cannot save more than launch overhead). The events of a
  block are created (recorded once) before its first timed span, so ``cudaEventCreate`` is never inside one;
* memory: ``memory_baseline_bytes`` (held when timing starts) and ``memory_growth_bytes`` (peak over it during the
  timed loop), named by ``memory_kind``: ``cuda_allocated`` (``memory_allocated`` / ``max_memory_allocated``; the L2
  flush buffer is allocated before and excluded) or ``cpu_rss`` (resident set size / growth of the kernel's
  high-water mark, reset first on Linux);
* suspect: one list of reasons (``suspect_reasons``) and one flag (``suspect``): the conditions' warnings (other
  processes on our cores, more threads than cores, steal, GPU throttling) and a distribution far from its minimum
  (median > ``SKEW_LIMIT`` x min);
* energy (NVIDIA, NVML): the total-energy counter read before and after the timed loop gives
  ``energy_per_iteration_j``; ``gflop_per_joule(flops)`` derives GFLOP/J. With ``flush_l2`` the loop also zeroes the
  flush buffer every iteration, so no energy per iteration is reported (a note says so); nor on a MIG slice, whose
  counter is the whole board's (see ``conditions``).
"""

from __future__ import annotations

import contextlib
import enum
import resource
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import torch

from gflops_track.options.timing import ProgressCallback, TimingOptions
from gflops_track.results.timing import MIN_CI_SAMPLES, LatencyStats, TimingResult
from gflops_track.timing.conditions import short_energy_window_note, watch_conditions

Forward = Callable[[], Any]
Clock = Callable[[], float]  # seconds, monotonic

SETTLE_WINDOW = 5
SETTLE_TOLERANCE = 0.05
CUDA_BLOCK_S = 0.02
WARMUP_SHARE = 0.5  # warm-up may use at most half of max_time_s
EAGER_SHARE_WITH_GRAPH = 0.6  # with cuda_graph: cold start + warm-up + eager timing within 60% of max_time_s
# Suspect when median > 2 x min. Interference only ever adds time, so the minimum is the closest sample to the
# module's own cost (Chen & Revels 2016). Turbo/frequency and cache effects move a quiet distribution by tens of
# percent, not 2x; a median over twice the minimum means more than half of the iterations waited longer than the work
# itself took: the median measures the machine's load, not the module.
SKEW_LIMIT = 2.0
# A graph replay saves the CPU launch cost and nothing else: eager pays ~10-30 us of Python and dispatch per op, a
# replay ~1-3 us per node, so a launch-bound module of tiny kernels can replay ~10x faster. A replay 50x faster than
# eager is an empty or partial graph (captured on another device/stream). The empty-graph error is the main guard.
GRAPH_MIN_RATIO = 0.02
FLUSH_MIN_BYTES = 256 * 2**20
_CLEAR_REFS = Path("/proc/self/clear_refs")
_STATUS = Path("/proc/self/status")
_EMPTY_GRAPH_WARNING = r".*CUDA Graph is empty.*"


def skew_reasons(latency: LatencyStats, label: str = "latency") -> list[str]:
    """A reason when the median is more than ``SKEW_LIMIT`` x the minimum (see the constant for why)."""
    if latency.min_ms > 0 and latency.median_ms > SKEW_LIMIT * latency.min_ms:
        return [
            f"{label} median {latency.median_ms:,.3f} ms is {latency.median_ms / latency.min_ms:.1f}x its minimum "
            f"{latency.min_ms:,.3f} ms (limit {SKEW_LIMIT:g}x): most iterations waited for something else"
        ]
    return []


def flush_bytes(device: torch.device) -> int:
    """L2 flush buffer size: max(256 MiB, 2 x L2) (Triton's do_bench uses 256 MB); 256 MiB when L2 is unknown."""
    l2 = int(getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 0) or 0)
    return max(FLUSH_MIN_BYTES, 2 * l2)


def _cpu_peak_rss_reset() -> int:
    """Reset the kernel's peak-RSS mark where possible; return the current RSS in bytes."""
    with contextlib.suppress(OSError):  # not Linux, or not permitted: ru_maxrss then bounds the peak from above
        _CLEAR_REFS.write_text("5")
    return psutil.Process().memory_info().rss


def _cpu_peak_rss() -> int:
    """Peak resident set size of this process in bytes (VmHWM on Linux, ru_maxrss elsewhere)."""
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def _settled(times: list[float]) -> bool:
    """The latest 5 and the latest 3 iterations agree (medians within SETTLE_TOLERANCE) with the ones before them:
    two window sizes, so a change in the last two iterations is not hidden inside a median of five."""
    if len(times) < 2 * SETTLE_WINDOW:
        return False
    for window in (SETTLE_WINDOW, 3):
        recent = statistics.median(times[-window:])
        before = statistics.median(times[-2 * window : -window])
        if abs(recent - before) > SETTLE_TOLERANCE * before:
            return False
    return True


class _Timer:
    """Times blocks of calls on one device: the clock around each call on CPU, CUDA events on GPU."""

    def __init__(self, device: torch.device, flush_l2: bool, clock: Clock) -> None:
        self.device = device
        self.clock = clock
        self.cuda = device.type == "cuda"
        self.flush_buffer: torch.Tensor | None = None
        self.on_busy: Callable[[], None] = lambda: None  # called once per CUDA block while the GPU works
        if self.cuda and flush_l2:  # allocated before anything is measured, and excluded from the baseline
            self.flush_buffer = torch.empty(flush_bytes(device), dtype=torch.int8, device=device)

    @property
    def flush_size(self) -> int:
        return self.flush_buffer.numel() if self.flush_buffer is not None else 0

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def once(self, fn: Forward) -> float:
        """One synchronous call, wall time in ms (the cold start)."""
        self.sync()
        start = self.clock()
        fn()
        self.sync()
        return (self.clock() - start) * 1e3

    def per_block(self, estimate_ms: float) -> int:
        """Iterations per block: 1 on CPU; ~CUDA_BLOCK_S of work on CUDA."""
        return max(1, min(1000, int(CUDA_BLOCK_S * 1e3 / max(estimate_ms, 1e-3)))) if self.cuda else 1

    def block(self, fn: Forward, count: int) -> list[float]:
        if not self.cuda:
            samples = []
            for _ in range(count):
                start = self.clock()
                fn()
                samples.append((self.clock() - start) * 1e3)
            return samples
        stream = torch.cuda.current_stream(self.device)
        pairs = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(count)]
        for start, end in pairs:  # an event is created on its first record: here, not inside a timed span
            start.record(stream)
            end.record(stream)
        for start, end in pairs:
            if self.flush_buffer is not None:
                self.flush_buffer.zero_()  # evict the previous iteration's data from L2, outside the timed span
            start.record(stream)
            fn()
            end.record(stream)
        self.on_busy()  # the GPU is still working through the block: conditions sampled now are under load
        torch.cuda.synchronize(self.device)
        return [start.elapsed_time(end) for start, end in pairs]


class Stop(enum.Enum):
    """Why a loop of samples ended: named members, not words, so a misspelt reason is an error, not a silent
    "some other stop"."""

    SETTLED = "settled"  # warm-up: ``warmup`` iterations ran and the latency settled (or warmup = 0)
    BUDGET = "budget"  # warm-up: warmup_max_s ran out before the latency settled
    PRECISE = "precise"  # timing: the median is known to target_precision with at least min_repeats samples
    MAX_REPEATS = "max_repeats"  # timing: max_repeats samples
    BOUND = "bound"  # either: the next call or block would end past the bound (max_time_s)


@dataclass
class _Phase:
    """Samples of one loop and why it stopped."""

    samples: list[float]
    stop: Stop


def _warmup(
    timer: _Timer,
    fn: Forward,
    options: TimingOptions,
    cold_ms: float,
    until: float,
    eager_until: float,
    report: ProgressCallback,
) -> _Phase:
    """Warm up in blocks the size timing uses until ``warmup`` iterations ran and the latency settled, warmup_max_s
    ran out, or the next block would end past ``until``. The first call is predicted from the cold call, which
    autotuning or compilation can make far longer than the rest: it runs unless a call that long would end past
    ``eager_until`` (the whole eager budget), so one slow cold start does not skip warm-up when the bound has room."""
    warm: list[float] = []
    if options.warmup == 0:
        return _Phase(warm, Stop.SETTLED)
    started = timer.clock()
    estimate_ms = cold_ms
    if started + cold_ms / 1e3 > eager_until:
        return _Phase(warm, Stop.BOUND)
    block_s = 0.0  # the first block is sized from the cold call and always runs (see above)
    while True:
        began = timer.clock()
        if warm and began + block_s > until:
            return _Phase(warm, Stop.BOUND)
        warm += timer.block(fn, timer.per_block(estimate_ms))
        now = timer.clock()
        block_s = now - began
        estimate_ms = statistics.median(warm[-SETTLE_WINDOW:])
        report("warm-up", len(warm), 0)
        if len(warm) >= options.warmup and _settled(warm):
            return _Phase(warm, Stop.SETTLED)
        if len(warm) >= options.warmup and now - started >= options.warmup_max_s:
            return _Phase(warm, Stop.BUDGET)


def _adaptive_samples(
    timer: _Timer,
    fn: Forward,
    options: TimingOptions,
    estimate_ms: float,
    until: float,
    phase: str,
    report: ProgressCallback,
) -> _Phase:
    """Time until the median is known to ``target_precision`` (>= min_repeats samples), max_repeats, or the next block
    would end past ``until`` (at least one block always runs)."""
    samples: list[float] = []
    next_check = options.min_repeats
    while True:
        began = timer.clock()
        count = min(timer.per_block(estimate_ms), options.max_repeats - len(samples))
        samples += timer.block(fn, count)
        now = timer.clock()
        report(phase, len(samples), max(options.min_repeats, len(samples)))
        if len(samples) >= next_check:
            if LatencyStats.from_samples(samples).meets(options.target_precision):
                return _Phase(samples, Stop.PRECISE)
            next_check = len(samples) + max(1, len(samples) // 10)
        if len(samples) >= options.max_repeats:
            return _Phase(samples, Stop.MAX_REPEATS)
        if now + (now - began) > until:
            return _Phase(samples, Stop.BOUND)
        estimate_ms = statistics.median(samples[-count:])


def _graph_forward(fn: Forward, device: torch.device) -> Forward:
    """Capture ``fn`` into a CUDA graph on a stream of ``device`` (after warm-up on a side stream, as PyTorch
    requires); return its replay. PyTorch's empty-graph warning (nothing was captured: the work went to another device
    or stream) is raised as an error. The device's current stream is the one it was before, even when capture fails."""
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream(device).wait_stream(side)
    torch.cuda.synchronize(device)
    graph = torch.cuda.CUDAGraph()
    capture = torch.cuda.Stream(device)
    previous = torch.cuda.current_stream(device)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("error", message=_EMPTY_GRAPH_WARNING)
            with torch.cuda.graph(graph, stream=capture):
                fn()
    finally:
        torch.cuda.set_stream(previous)  # torch.cuda.graph leaves the capture stream current when capture_end raises
    return graph.replay


def _device_scope(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """``torch.cuda.device(device)`` on CUDA (current device = the measured one), nothing elsewhere."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


@contextlib.contextmanager
def _memory_window(timer: _Timer) -> Iterator[dict[str, int]]:
    """Baseline when entered and growth of the peak over it on exit (see TimingResult for the kinds)."""
    found: dict[str, int] = {}
    if timer.cuda:
        torch.cuda.synchronize(timer.device)
        torch.cuda.reset_peak_memory_stats(timer.device)
        at_start = torch.cuda.memory_allocated(timer.device)
        found["baseline"] = max(0, at_start - timer.flush_size)
    else:
        at_start = _cpu_peak_rss_reset()
        found["baseline"] = at_start
    try:
        yield found
    finally:
        peak = torch.cuda.max_memory_allocated(timer.device) if timer.cuda else _cpu_peak_rss()
        found["growth"] = max(0, peak - at_start)


def measure_latency(
    fn: Forward,
    device: torch.device | str,
    options: TimingOptions | None = None,
    on_progress: ProgressCallback | None = None,
    *,
    clock: Clock = time.perf_counter,
) -> TimingResult:
    """Time ``fn()`` (a forward pass with its inputs bound) on ``device``; ``clock`` (seconds) is injectable for
    tests: on CPU it times the calls and bounds the phase, on CUDA it bounds the phase (events time the calls)."""
    device = torch.device(device)
    options = options or TimingOptions()
    problems = options.problems()
    if problems:
        raise ValueError("; ".join(f"{name}{message}" for name, message in problems))
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    report = on_progress or (lambda phase, done, total: None)
    with _device_scope(device), torch.inference_mode():
        return _measure(fn, device, options, report, clock)


def _measure(
    fn: Forward, device: torch.device, options: TimingOptions, report: ProgressCallback, clock: Clock
) -> TimingResult:
    timer = _Timer(device, options.flush_l2, clock)
    graph_wanted = options.cuda_graph and timer.cuda
    started = clock()
    eager_until = started + options.max_time_s * (EAGER_SHARE_WITH_GRAPH if graph_wanted else 1.0)
    notes: list[str] = []
    report("cold start", 0, 1)
    cold = timer.once(fn)
    warm_began = clock()
    warmup_until = started + (eager_until - started) * WARMUP_SHARE
    warm = _warmup(timer, fn, options, cold, warmup_until, eager_until, report)
    warmup_s = clock() - warm_began
    # settled: warm-up stopped because the latency settled (or warmup = 0), or the bound cut it once it had
    settled = warm.stop is Stop.SETTLED or (warm.stop is Stop.BOUND and _settled(warm.samples))
    bound_hit = False
    if warm.stop is Stop.BOUND:
        bound_hit = True
        notes.append(
            f"max_time_s={options.max_time_s:g} s bounds the whole timing phase: it cut warm-up to "
            f"{len(warm.samples)} iteration(s) (warmup={options.warmup}, "
            f"{'settled' if settled else 'latency not known to have settled'}; the cold start took {cold / 1e3:.2f} s)"
        )
    elif warm.stop is Stop.BUDGET:
        notes.append(f"latency had not settled after {len(warm.samples)} warm-up iterations ({warmup_s:.1f} s)")
    estimate = statistics.median(warm.samples[-SETTLE_WINDOW:]) if warm.samples else cold
    with (
        _memory_window(timer) as memory,
        watch_conditions(device, torch.get_num_threads()) as conditions,
    ):
        timer.on_busy = conditions.sample
        timed = _adaptive_samples(timer, fn, options, estimate, eager_until, "timing", report)
        timer.on_busy = lambda: None
    latency = LatencyStats.from_samples(timed.samples)
    met = timed.stop is Stop.PRECISE or (
        len(timed.samples) >= options.min_repeats and latency.meets(options.target_precision)
    )
    if timed.stop is Stop.BOUND and not met:
        # The bound, not the precision rule, ended timing: short of min_repeats, or with enough samples whose median
        # was not yet known to target_precision. Either way the run says so (time_bound_hit), never a silent stop.
        bound_hit = True
        notes.append(
            f"max_time_s={options.max_time_s:g} s bounds the whole timing phase: it cut timing to "
            f"{len(timed.samples)} iteration(s) (min_repeats={options.min_repeats}) before the median was known to "
            f"±{options.target_precision:.2%}"
        )
    graph_latency = _graph_latency(timer, fn, options, latency, started + options.max_time_s, report, notes)
    if options.cuda_graph and not timer.cuda:
        notes.append("CUDA graph replay is GPU-only: not timed on this device")
    if not met:
        notes.append(_precision_note(latency, options))
    energy = conditions.metrics.get("gpu_energy_j")
    if timer.flush_buffer is not None and (energy or conditions.short_energy_window_s is not None):
        energy = None
        notes.append(
            f"energy per forward not reported: the L2 flush ({timer.flush_size / 2**20:,.0f} MiB zeroed before every "
            "iteration) ran inside the energy window; time with flush_l2=false to measure energy"
        )
    elif conditions.short_energy_window_s is not None:
        notes.append(short_energy_window_note(conditions.short_energy_window_s, latency.median_ms))
    notes += conditions.notes
    reasons = conditions.warnings + skew_reasons(latency)
    if graph_latency is not None:
        reasons += skew_reasons(graph_latency, "CUDA-graph replay")
    return TimingResult(
        latency=latency,
        cold_start_ms=cold,
        warmup_iterations=len(warm.samples),
        warmup_s=warmup_s,
        warmup_settled=settled,
        target_precision=options.target_precision,
        precision_met=met,
        timer="cuda_event" if timer.cuda else "perf_counter",
        memory_baseline_bytes=memory["baseline"],
        memory_growth_bytes=memory["growth"],
        memory_kind="cuda_allocated" if timer.cuda else "cpu_rss",
        l2_flushed=timer.flush_buffer is not None,
        l2_flush_bytes=timer.flush_size,
        graph_latency=graph_latency,
        notes=notes + reasons,
        conditions=conditions,
        suspect_reasons=reasons,
        time_bound_hit=bound_hit,
        total_s=clock() - started,
        energy_per_iteration_j=energy / len(timed.samples) if energy else None,
    )


def _precision_note(latency: LatencyStats, options: TimingOptions) -> str:
    n = len(latency.samples_ms)
    if latency.precision is None:
        return (
            f"precision target not met: no confidence interval is known after {n} timed iteration(s) "
            f"(the median's 95% CI needs at least {MIN_CI_SAMPLES})"
        )
    return (
        f"precision target not met: median known to ±{latency.precision:.2%} "
        f"(target ±{options.target_precision:.2%}) after {n} iterations"
    )


def _graph_latency(
    timer: _Timer,
    fn: Forward,
    options: TimingOptions,
    eager: LatencyStats,
    until: float,
    report: ProgressCallback,
    notes: list[str],
) -> LatencyStats | None:
    """Time a CUDA-graph replay of ``fn`` (when asked, on CUDA); None with a note when it cannot be trusted."""
    if not (options.cuda_graph and timer.cuda):
        return None
    try:
        replay = _graph_forward(fn, timer.device)
        graph = LatencyStats.from_samples(
            _adaptive_samples(timer, replay, options, eager.median_ms, until, "CUDA graph", report).samples
        )
    except Exception as error:  # some modules cannot be captured (host syncs, dynamic shapes), or the graph was empty
        notes.append(f"CUDA graph replay not timed: {type(error).__name__}: {error}")
        return None
    if graph.median_ms < GRAPH_MIN_RATIO * eager.median_ms:
        notes.append(
            f"CUDA graph replay rejected: its median {graph.median_ms:,.4f} ms is below {GRAPH_MIN_RATIO:g}x the "
            f"eager median {eager.median_ms:,.4f} ms, more than launch overhead can explain (empty or partial graph)"
        )
        return None
    return graph
