"""What timing produces: ``LatencyStats`` (the statistics of the samples: median, its distribution-free 95% CI,
percentiles), ``Conditions`` (what the machine was doing meanwhile) and ``TimingResult``, with the metric names they
are logged under. The engine that fills them is ``gflops_track.timing.engine``.

Units: milliseconds for latencies, bytes for memory, joules for energy; ``cv`` and ``precision`` are unitless.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from gflops_track.common import names
from gflops_track.common.numbers import percent, three_places

CONFIDENCE = 0.95
SAMPLE_EVERY_S = 0.05  # NVML clock/reason samples at most this often while the GPU is busy


def percentile(sorted_data: Sequence[float], q: float) -> float:
    """Linear-interpolation percentile (numpy's default method) of already sorted data."""
    if len(sorted_data) == 1:
        return sorted_data[0]
    position = (len(sorted_data) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(sorted_data) - 1)
    return sorted_data[low] + (sorted_data[high] - sorted_data[low]) * (position - low)


def quantile_ci(sorted_data: Sequence[float], q: float, confidence: float = CONFIDENCE) -> tuple[float, float] | None:
    """Distribution-free CI of the ``q`` quantile: order statistics at ranks n*q -/+ z*sqrt(n*q*(1-q)) (normal
    approximation to the binomial, as ``median_ci_ranks`` for q = 0.5); None when those are not valid distinct ranks
    (too few samples: for the 10% quantile at 95%, about 35). Exact, and cheaper than a bootstrap."""
    n = len(sorted_data)
    z = statistics.NormalDist().inv_cdf(0.5 + confidence / 2)
    spread = z * math.sqrt(n * q * (1 - q))
    low_rank, high_rank = math.floor(n * q - spread), math.ceil(1 + n * q + spread)
    if not 1 <= low_rank < high_rank <= n:
        return None
    return sorted_data[low_rank - 1], sorted_data[high_rank - 1]


def median_ci_ranks(n: int, confidence: float = CONFIDENCE) -> tuple[int, int] | None:
    """1-based ranks j = floor(n/2 - z*sqrt(n)/2) and k = ceil(1 + n/2 + z*sqrt(n)/2) of the distribution-free CI of
    the median (normal approximation to the binomial); None when they are not valid distinct ranks (1 <= j < k <= n):
    too few samples for any interval at this confidence."""
    if n < 1:
        return None
    z = statistics.NormalDist().inv_cdf(0.5 + confidence / 2)
    low_rank = math.floor(n / 2 - z * math.sqrt(n) / 2)
    high_rank = math.ceil(1 + n / 2 + z * math.sqrt(n) / 2)
    return (low_rank, high_rank) if 1 <= low_rank < high_rank <= n else None


MIN_CI_SAMPLES = next(n for n in range(1, 1000) if median_ci_ranks(n) is not None)  # 8 at 95%


def median_ci(sorted_data: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float] | None:
    """Order statistics at ``median_ci_ranks``; None when there are too few samples for the interval."""
    ranks = median_ci_ranks(len(sorted_data), confidence)
    if ranks is None:
        return None
    return sorted_data[ranks[0] - 1], sorted_data[ranks[1] - 1]


@dataclass(frozen=True)
class LatencyStats:
    """Summary of per-iteration latencies in milliseconds; ``cv`` = std / mean and ``precision`` = half-width of the
    95% CI of the median / median (both unitless). ``ci_low_ms``, ``ci_high_ms`` and ``precision`` are None when no
    CI is known (fewer than ``MIN_CI_SAMPLES`` samples; precision also when the median is 0)."""

    samples_ms: tuple[float, ...]
    mean_ms: float
    median_ms: float
    std_ms: float
    min_ms: float
    max_ms: float
    p90_ms: float
    p95_ms: float
    cv: float
    ci_low_ms: float | None
    ci_high_ms: float | None
    precision: float | None
    p10_ms: float = math.nan  # the 10% quantile: what the regression gate decides on (load only adds time)
    p10_ci: tuple[float, float] | None = None  # its distribution-free 95% CI (``quantile_ci``), when known

    @classmethod
    def from_samples(cls, samples_ms: Sequence[float]) -> LatencyStats:
        if not samples_ms:
            raise ValueError("no latency samples")
        data = sorted(samples_ms)
        mean = statistics.fmean(data)
        std = statistics.stdev(data) if len(data) > 1 else 0.0
        median = statistics.median(data)
        interval = median_ci(data)
        low, high = interval if interval is not None else (None, None)
        precision = None
        if low is not None and high is not None and median > 0:
            precision = (high - low) / 2 / median
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
            precision=precision,
            p10_ms=percentile(data, 10),
            p10_ci=quantile_ci(data, 0.10),
        )

    def meets(self, target_precision: float) -> bool:
        """The CI is known and its half-width is within ``target_precision`` of the median."""
        return self.precision is not None and self.precision <= target_precision


class ClockSource(Protocol):
    """What ``Conditions.sample`` reads from a GPU while it works (``timing.conditions.NvmlDevice`` is one)."""

    def sm_clock_mhz(self) -> float | None: ...

    def clock_reasons(self) -> list[str] | None: ...


@dataclass
class Conditions:
    """What the machine was doing while we timed (metrics) and what that means (warnings). ``sample`` is called by the
    timer while the GPU works through a block."""

    metrics: dict[str, float] = field(default_factory=dict)
    throttle_reasons: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what was left out and why (not a reason to doubt the run)
    short_energy_window_s: float | None = None  # the loop's seconds when the GPU's energy counter could not resolve it
    _gpu: ClockSource | None = field(default=None, repr=False, compare=False)
    _clocks: list[float] = field(default_factory=list, repr=False, compare=False)
    _last_sample: float = field(default=0.0, repr=False, compare=False)

    def sample(self) -> None:
        """SM clock and clocks-event reasons now (GPU busy), at most every SAMPLE_EVERY_S."""
        now = time.perf_counter()
        if self._gpu is None or now - self._last_sample < SAMPLE_EVERY_S:
            return
        self._last_sample = now
        clock = self._gpu.sm_clock_mhz()
        if clock is not None:
            self._clocks.append(clock)
        for reason in self._gpu.clock_reasons() or []:
            if reason not in self.throttle_reasons:
                self.throttle_reasons.append(reason)


@dataclass(frozen=True)
class TimingResult:
    """Everything the timed loop learned. Memory in bytes named by ``memory_kind`` ("cuda_allocated": CUDA caching
    allocator bytes, L2 flush buffer excluded; "cpu_rss": resident set size of the process)."""

    latency: LatencyStats
    cold_start_ms: float
    warmup_iterations: int
    warmup_s: float
    warmup_settled: bool
    target_precision: float
    precision_met: bool
    timer: str  # "cuda_event" or "perf_counter"
    memory_baseline_bytes: int
    memory_growth_bytes: int
    memory_kind: str  # "cuda_allocated" or "cpu_rss"
    l2_flushed: bool = False
    l2_flush_bytes: int = 0
    graph_latency: LatencyStats | None = None
    notes: list[str] = field(default_factory=list)
    conditions: Conditions = field(default_factory=Conditions)
    suspect_reasons: list[str] = field(default_factory=list)
    time_bound_hit: bool = False  # max_time_s cut warm-up short or ended timing before the precision target
    total_s: float = 0.0  # the whole timing phase, cold start to the end, seconds
    # NVML total-energy delta / timed iterations (GPU board energy); None with flush_l2 or on a MIG slice
    energy_per_iteration_j: float | None = None

    @property
    def timed_iterations(self) -> int:
        return len(self.latency.samples_ms)

    @property
    def suspect(self) -> bool:
        """The numbers may say more about the machine than the module (reasons in ``suspect_reasons``)."""
        return bool(self.suspect_reasons)

    def gflop_per_joule(self, flops: int | float) -> float | None:
        """flops of one iteration / 1e9 / joules per iteration; None when no energy was measured."""
        if not self.energy_per_iteration_j:
            return None
        return flops / 1e9 / self.energy_per_iteration_j

    def metrics(self, flops: int | float) -> dict[str, float]:
        """What timing measured, under names that carry their unit; unknown values (no CI, no energy) are left out,
        never logged as a number. ``flops``: of one forward, for GFLOP/J."""
        values: dict[str, float] = {
            **latency_metrics(names.LATENCY_PREFIX, self.latency),
            names.COLD_START_MS: self.cold_start_ms,
            names.PRECISION_TARGET: self.target_precision,
            names.PRECISION_TARGET_MET: float(self.precision_met),
            names.MEMORY_BASELINE_MIB: self.memory_baseline_bytes / names.MIB,
            names.MEMORY_GROWTH_MIB: self.memory_growth_bytes / names.MIB,
            names.WARMUP_ITERATIONS: self.warmup_iterations,
            names.WARMUP_S: self.warmup_s,
            names.WARMUP_SETTLED: float(self.warmup_settled),
            names.TIMED_ITERATIONS: self.timed_iterations,
            names.TIMING_TOTAL_S: self.total_s,
            names.TIME_BOUND_HIT: float(self.time_bound_hit),
            names.TIMING_SUSPECT: float(self.suspect),
            names.L2_FLUSHED: float(self.l2_flushed),
            names.L2_FLUSH_MIB: self.l2_flush_bytes / names.MIB,
            **{f"{names.CONDITION_PREFIX}{key}": value for key, value in self.conditions.metrics.items()},
        }
        if self.energy_per_iteration_j:
            values[names.ENERGY_PER_FORWARD_J] = self.energy_per_iteration_j
            values[names.GFLOP_PER_JOULE] = flops / 1e9 / self.energy_per_iteration_j
        if self.graph_latency is not None:
            values.update(latency_metrics(names.GRAPH_LATENCY_PREFIX, self.graph_latency))
        return values


def ci_text(latency: LatencyStats) -> str:
    """ "95% CI a-b" in ms, or why there is none (for summaries and tables)."""
    if latency.ci_low_ms is None or latency.ci_high_ms is None:
        return f"no 95% CI: {len(latency.samples_ms)} sample(s), {MIN_CI_SAMPLES} needed"
    return f"95% CI {three_places(latency.ci_low_ms)}-{three_places(latency.ci_high_ms)}"  # 0.00593-0.00601, not 0.006


def precision_text(timing: TimingResult) -> str:
    """ "±x% (target ±y% met|NOT met)", with "unknown" when no CI is known."""
    latency, target = timing.latency, f"target ±{percent(timing.target_precision, 2)}"
    met = "met" if timing.precision_met else "NOT met"
    achieved = f"±{percent(latency.precision, 2)}" if latency.precision is not None else "unknown (no CI)"
    return f"{achieved} ({target} {met})"


def latency_metrics(prefix: str, latency: LatencyStats) -> dict[str, float]:
    """``{prefix}{stat}`` statistics in ms (cv and precision unitless; ``names.LATENCY_STATS``); the CI and precision
    only when known. ``prefix`` carries its separator, e.g. ``latency/``."""
    values = {
        f"{prefix}mean_ms": latency.mean_ms,
        f"{prefix}median_ms": latency.median_ms,
        f"{prefix}std_ms": latency.std_ms,
        f"{prefix}min_ms": latency.min_ms,
        f"{prefix}max_ms": latency.max_ms,
        f"{prefix}p90_ms": latency.p90_ms,
        f"{prefix}p95_ms": latency.p95_ms,
        f"{prefix}p10_ms": latency.p10_ms,
        f"{prefix}cv": latency.cv,
    }
    if latency.p10_ci is not None:
        values[f"{prefix}p10_ci95_low_ms"], values[f"{prefix}p10_ci95_high_ms"] = latency.p10_ci
    if latency.ci_low_ms is not None and latency.ci_high_ms is not None:
        values[f"{prefix}ci95_low_ms"] = latency.ci_low_ms
        values[f"{prefix}ci95_high_ms"] = latency.ci_high_ms
    if latency.precision is not None:
        values[f"{prefix}precision"] = latency.precision
    return values


def achieved_gflop_per_s(flops: int, median_ms: float | None) -> float | None:
    """FLOPs / median latency, in GFLOP/s (10^9 FLOP per second)."""
    return flops / (median_ms / 1e3) / 1e9 if median_ms else None
