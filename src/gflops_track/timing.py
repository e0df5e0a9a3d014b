"""Latency measurement the way benchmarking experts do it.

* ``model.eval()`` and ``torch.inference_mode()``; inputs already on the device;
* warm-up iterations first (allocator, cuDNN/oneDNN algorithm choice, caches), not timed;
* CPU: ``time.perf_counter`` around each call; CUDA: a pair of CUDA events per iteration recorded on the stream and
  one ``synchronize`` at the end (no host sync inside the timed loop), so the host's launch queue stays full;
* peak memory: CUDA ``max_memory_allocated`` after a reset; CPU: growth of the process's peak RSS over the
  resident size before timing (Linux: the kernel's high-water mark is reset first, so earlier peaks don't leak in).
"""

from __future__ import annotations

import contextlib
import math
import resource
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import torch
from torch import nn

from gflops_track.counting.execution import eval_mode

ProgressCallback = Callable[[str, int, int], None]  # (phase, completed, total)

_CLEAR_REFS = Path("/proc/self/clear_refs")
_STATUS = Path("/proc/self/status")


@dataclass(frozen=True)
class LatencyStats:
    """Summary of per-iteration latencies, all in milliseconds; ``cv`` = std / mean (unitless)."""

    samples_ms: tuple[float, ...]
    mean_ms: float
    median_ms: float
    std_ms: float
    min_ms: float
    max_ms: float
    p90_ms: float
    p95_ms: float
    cv: float

    @classmethod
    def from_samples(cls, samples_ms: Sequence[float]) -> LatencyStats:
        if not samples_ms:
            raise ValueError("no latency samples")
        data = sorted(samples_ms)
        mean = statistics.fmean(data)
        std = statistics.stdev(data) if len(data) > 1 else 0.0
        return cls(
            samples_ms=tuple(samples_ms),
            mean_ms=mean,
            median_ms=statistics.median(data),
            std_ms=std,
            min_ms=data[0],
            max_ms=data[-1],
            p90_ms=percentile(data, 90),
            p95_ms=percentile(data, 95),
            cv=std / mean if mean > 0 else math.nan,
        )


def percentile(sorted_data: Sequence[float], q: float) -> float:
    """Linear-interpolation percentile (numpy's default 'linear' method) of already sorted data."""
    if len(sorted_data) == 1:
        return sorted_data[0]
    position = (len(sorted_data) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(sorted_data) - 1)
    return sorted_data[low] + (sorted_data[high] - sorted_data[low]) * (position - low)


@dataclass(frozen=True)
class TimingResult:
    """Latency statistics and peak memory of the timed iterations."""

    latency: LatencyStats
    warmup_iterations: int
    timed_iterations: int
    timer: str  # "cuda_event" or "perf_counter"
    peak_memory_bytes: int
    memory_kind: str  # "cuda_max_allocated" or "cpu_peak_rss_growth"


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


def _call(model: nn.Module, args: Sequence[Any], kwargs: Mapping[str, Any]) -> Any:
    return model(*args, **kwargs)


def measure_latency(
    model: nn.Module,
    args: Sequence[Any],
    kwargs: Mapping[str, Any] | None = None,
    *,
    warmup: int = 10,
    repeats: int = 50,
    on_progress: ProgressCallback | None = None,
) -> TimingResult:
    """Time ``model(*args, **kwargs)`` on the device its inputs live on (CUDA when any input tensor is on CUDA)."""
    if warmup < 0 or repeats < 1:
        raise ValueError(f"warmup={warmup} must be >= 0 and repeats={repeats} >= 1")
    kwargs = kwargs or {}
    tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
    device = tensors[0].device if tensors else next((p.device for p in model.parameters()), torch.device("cpu"))
    report = on_progress or (lambda phase, done, total: None)
    with eval_mode(model), torch.inference_mode():
        for i in range(warmup):
            _call(model, args, kwargs)
            report("warm-up", i + 1, warmup)
        if device.type == "cuda":
            return _time_cuda(model, args, kwargs, device, warmup, repeats, report)
        return _time_cpu(model, args, kwargs, warmup, repeats, report)


def _time_cpu(
    model: nn.Module,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    warmup: int,
    repeats: int,
    report: ProgressCallback,
) -> TimingResult:
    rss_before = _cpu_peak_rss_reset()
    samples = []
    for i in range(repeats):
        start = time.perf_counter()
        _call(model, args, kwargs)
        samples.append((time.perf_counter() - start) * 1e3)
        report("timing", i + 1, repeats)
    return TimingResult(
        latency=LatencyStats.from_samples(samples),
        warmup_iterations=warmup,
        timed_iterations=repeats,
        timer="perf_counter",
        peak_memory_bytes=max(0, _cpu_peak_rss() - rss_before),
        memory_kind="cpu_peak_rss_growth",
    )


def _time_cuda(
    model: nn.Module,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    device: torch.device,
    warmup: int,
    repeats: int,
    report: ProgressCallback,
) -> TimingResult:
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    stream = torch.cuda.current_stream(device)
    pairs = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(repeats)]
    for i, (start, end) in enumerate(pairs):
        start.record(stream)
        _call(model, args, kwargs)
        end.record(stream)
        report("timing (queued)", i + 1, repeats)
    torch.cuda.synchronize(device)
    samples = [start.elapsed_time(end) for start, end in pairs]  # milliseconds
    return TimingResult(
        latency=LatencyStats.from_samples(samples),
        warmup_iterations=warmup,
        timed_iterations=repeats,
        timer="cuda_event",
        peak_memory_bytes=torch.cuda.max_memory_allocated(device),
        memory_kind="cuda_max_allocated",
    )
