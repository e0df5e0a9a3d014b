"""Latency measurement the way benchmarking experts do it, and a bit stricter.

* ``torch.inference_mode()``; inputs already on the device; the caller puts the module in eval mode;
* the first call is timed on its own (``cold_start_ms``: allocator, algorithm selection, compilation);
* warm-up by count *and* by time: at least ``warmup`` iterations, then on until the latency settles (median of the
  last 5 within ``SETTLE_TOLERANCE`` of the 5 before, and likewise for the last 3) or ``warmup_max_s`` runs out;
* adaptive repetition: timed iterations continue until the 95% confidence interval of the median is within
  ``target_precision`` of it (half-width / median, distribution-free order-statistic interval) with at least
  ``min_repeats`` samples, or ``max_time_s`` / ``max_repeats`` runs out. The achieved precision, the sample count and
  whether the target was met are part of the result, and every raw sample is kept;
* CPU: ``time.perf_counter`` around each call. CUDA: a pair of CUDA events per iteration on the stream and one
  synchronise per block of iterations (~20 ms), never inside a block; optionally the L2 cache is flushed before every
  iteration (cold L2: ``L2_cache_size`` bytes zeroed), and a CUDA-Graph replay of the forward is timed separately
  (launch overhead can dominate small modules);
* peak memory: CUDA ``max_memory_allocated`` after a reset; CPU: growth of the process's peak RSS over the
  resident size before timing (Linux: the kernel's high-water mark is reset first).
"""

from __future__ import annotations

import contextlib
import math
import resource
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import torch

from gflops_track.conditions import Conditions, watch_conditions

ProgressCallback = Callable[[str, int, int], None]  # (phase, completed, total; total 0 = open-ended)
Forward = Callable[[], Any]

SETTLE_WINDOW = 5
SETTLE_TOLERANCE = 0.05
CUDA_BLOCK_S = 0.02
CONFIDENCE = 0.95
_CLEAR_REFS = Path("/proc/self/clear_refs")
_STATUS = Path("/proc/self/status")


@dataclass(frozen=True)
class TimingOptions:
    """How long and how precisely to time (see the module docstring)."""

    warmup: int = 10
    warmup_max_s: float = 5.0
    min_repeats: int = 30
    max_repeats: int = 10_000
    target_precision: float = 0.01
    max_time_s: float = 10.0
    cuda_graph: bool = False
    flush_l2: bool = False

    def problems(self) -> list[tuple[str, str]]:
        """(field, "=value is not allowed: ...") per invalid option; callers prefix the key they expose."""
        checks = [
            ("warmup", self.warmup, 0),
            ("min_repeats", self.min_repeats, 1),
            ("max_repeats", self.max_repeats, max(1, self.min_repeats)),
        ]
        found = [
            (name, f"={value!r} is not allowed: it must be an integer >= {low}")
            for name, value, low in checks
            if isinstance(value, bool) or not isinstance(value, int) or value < low
        ]
        for name in ("warmup_max_s", "max_time_s", "target_precision"):
            if not getattr(self, name) > 0:
                found.append((name, f"={getattr(self, name)!r} is not allowed: it must be > 0"))
        return found


def percentile(sorted_data: Sequence[float], q: float) -> float:
    """Linear-interpolation percentile (numpy's default method) of already sorted data."""
    if len(sorted_data) == 1:
        return sorted_data[0]
    position = (len(sorted_data) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(sorted_data) - 1)
    return sorted_data[low] + (sorted_data[high] - sorted_data[low]) * (position - low)


def median_ci(sorted_data: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Distribution-free confidence interval of the median: order statistics at 1-based ranks
    j = floor(n/2 - z*sqrt(n)/2) and k = ceil(1 + n/2 + z*sqrt(n)/2) (normal approximation to the binomial)."""
    n = len(sorted_data)
    z = statistics.NormalDist().inv_cdf(0.5 + confidence / 2)
    low_rank = math.floor(n / 2 - z * math.sqrt(n) / 2)
    high_rank = math.ceil(1 + n / 2 + z * math.sqrt(n) / 2)
    return sorted_data[max(low_rank, 1) - 1], sorted_data[min(high_rank, n) - 1]


@dataclass(frozen=True)
class LatencyStats:
    """Summary of per-iteration latencies in milliseconds; ``cv`` = std / mean and ``precision`` = half-width of the
    95% CI of the median / median (both unitless)."""

    samples_ms: tuple[float, ...]
    mean_ms: float
    median_ms: float
    std_ms: float
    min_ms: float
    max_ms: float
    p90_ms: float
    p95_ms: float
    cv: float
    ci_low_ms: float
    ci_high_ms: float
    precision: float

    @classmethod
    def from_samples(cls, samples_ms: Sequence[float]) -> LatencyStats:
        if not samples_ms:
            raise ValueError("no latency samples")
        data = sorted(samples_ms)
        mean = statistics.fmean(data)
        std = statistics.stdev(data) if len(data) > 1 else 0.0
        median = statistics.median(data)
        low, high = median_ci(data)
        return cls(
            samples_ms=tuple(samples_ms),
            mean_ms=mean,
            median_ms=median,
            std_ms=std,
            min_ms=data[0],
            max_ms=data[-1],
            p90_ms=percentile(data, 90),
            p95_ms=percentile(data, 95),
            cv=std / mean if mean > 0 else math.nan,
            ci_low_ms=low,
            ci_high_ms=high,
            precision=(high - low) / 2 / median if median > 0 else math.inf,
        )


@dataclass(frozen=True)
class TimingResult:
    """Everything the timed loop learned."""

    latency: LatencyStats
    cold_start_ms: float
    warmup_iterations: int
    warmup_s: float
    warmup_settled: bool
    target_precision: float
    precision_met: bool
    timer: str  # "cuda_event" or "perf_counter"
    peak_memory_bytes: int
    memory_kind: str  # "cuda_max_allocated" or "cpu_peak_rss_growth"
    l2_flushed: bool = False
    graph_latency: LatencyStats | None = None
    notes: list[str] = field(default_factory=list)
    conditions: Conditions = field(default_factory=Conditions)

    @property
    def timed_iterations(self) -> int:
        return len(self.latency.samples_ms)


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
    """Times blocks of calls on one device: perf_counter on CPU, CUDA events on GPU."""

    def __init__(self, device: torch.device, flush_l2: bool) -> None:
        self.device = device
        self.cuda = device.type == "cuda"
        self.flush_buffer: torch.Tensor | None = None
        if self.cuda and flush_l2:
            l2_bytes = int(getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 0) or 64 * 2**20)
            self.flush_buffer = torch.empty(l2_bytes, dtype=torch.int8, device=device)

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def once(self, fn: Forward) -> float:
        """One synchronous call, wall time in ms (cold start and warm-up)."""
        self.sync()
        start = time.perf_counter()
        fn()
        self.sync()
        return (time.perf_counter() - start) * 1e3

    def block(self, fn: Forward, count: int) -> list[float]:
        if not self.cuda:
            samples = []
            for _ in range(count):
                start = time.perf_counter()
                fn()
                samples.append((time.perf_counter() - start) * 1e3)
            return samples
        stream = torch.cuda.current_stream(self.device)
        pairs = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(count)]
        for start, end in pairs:
            if self.flush_buffer is not None:
                self.flush_buffer.zero_()  # evict the previous iteration's data from L2, outside the timed span
            start.record(stream)
            fn()
            end.record(stream)
        torch.cuda.synchronize(self.device)
        return [start.elapsed_time(end) for start, end in pairs]


def _adaptive_samples(
    timer: _Timer, fn: Forward, options: TimingOptions, estimate_ms: float, phase: str, report: ProgressCallback
) -> tuple[list[float], bool]:
    """Time until the median is known to ``target_precision`` (>= min_repeats samples) or the budget runs out."""
    per_block = max(1, min(1000, int(CUDA_BLOCK_S * 1e3 / max(estimate_ms, 1e-3)))) if timer.cuda else 1
    samples: list[float] = []
    next_check = options.min_repeats
    started = time.perf_counter()
    while True:
        samples += timer.block(fn, min(per_block, options.max_repeats - len(samples)))
        report(phase, len(samples), max(options.min_repeats, len(samples)))
        if len(samples) >= next_check:
            if LatencyStats.from_samples(samples).precision <= options.target_precision:
                return samples, True
            next_check = len(samples) + max(1, len(samples) // 10)
        if len(samples) >= options.max_repeats or time.perf_counter() - started >= options.max_time_s:
            met = len(samples) >= options.min_repeats
            return samples, met and LatencyStats.from_samples(samples).precision <= options.target_precision


def _graph_forward(fn: Forward, device: torch.device) -> Forward:
    """Capture ``fn`` into a CUDA graph (after warm-up on a side stream, as PyTorch requires); return its replay."""
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def measure_latency(
    fn: Forward,
    device: torch.device | str,
    options: TimingOptions | None = None,
    on_progress: ProgressCallback | None = None,
) -> TimingResult:
    """Time ``fn()`` (a forward pass with its inputs bound) on ``device``."""
    device = torch.device(device)
    options = options or TimingOptions()
    problems = options.problems()
    if problems:
        raise ValueError("; ".join(f"{name}{message}" for name, message in problems))
    report = on_progress or (lambda phase, done, total: None)
    timer = _Timer(device, options.flush_l2)
    notes: list[str] = []
    with torch.inference_mode():
        report("cold start", 0, 1)
        cold = timer.once(fn)
        warm: list[float] = []
        warm_start = time.perf_counter()
        settled = options.warmup == 0
        while options.warmup > 0:
            warm.append(timer.once(fn))
            report("warm-up", len(warm), 0)
            settled = _settled(warm)
            if len(warm) >= options.warmup and (settled or time.perf_counter() - warm_start >= options.warmup_max_s):
                break
        warmup_s = time.perf_counter() - warm_start
        if not settled:
            notes.append(f"latency had not settled after {len(warm)} warm-up iterations ({warmup_s:.1f} s)")
        estimate = statistics.median(warm) if warm else cold
        if timer.cuda:
            torch.cuda.reset_peak_memory_stats(device)
        rss_before = _cpu_peak_rss_reset() if not timer.cuda else 0
        with watch_conditions(device, torch.get_num_threads()) as conditions:
            samples, met = _adaptive_samples(timer, fn, options, estimate, "timing", report)
        peak = torch.cuda.max_memory_allocated(device) if timer.cuda else max(0, _cpu_peak_rss() - rss_before)
        graph_latency = None
        if options.cuda_graph and timer.cuda:
            try:
                replay = _graph_forward(fn, device)
                graph_samples, _ = _adaptive_samples(timer, replay, options, estimate, "CUDA graph", report)
                graph_latency = LatencyStats.from_samples(graph_samples)
            except Exception as error:  # some modules cannot be captured (host syncs, dynamic shapes)
                notes.append(f"CUDA graph replay not timed: {type(error).__name__}: {error}")
        elif options.cuda_graph:
            notes.append("CUDA graph replay is GPU-only: not timed on this device")
    latency = LatencyStats.from_samples(samples)
    if not met:
        notes.append(
            f"precision target not met: median known to ±{latency.precision:.2%} "
            f"(target ±{options.target_precision:.2%}) after {len(samples)} iterations"
        )
    return TimingResult(
        latency=latency,
        cold_start_ms=cold,
        warmup_iterations=len(warm),
        warmup_s=warmup_s,
        warmup_settled=settled,
        target_precision=options.target_precision,
        precision_met=met,
        timer="cuda_event" if timer.cuda else "perf_counter",
        peak_memory_bytes=peak,
        memory_kind="cuda_max_allocated" if timer.cuda else "cpu_peak_rss_growth",
        l2_flushed=timer.flush_buffer is not None,
        graph_latency=graph_latency,
        notes=notes + conditions.warnings,
        conditions=conditions,
    )
