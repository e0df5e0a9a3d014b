"""The timing engine's rules at their edges, each against numbers worked out by hand: the settling rule, the
warm-up budget and the bound exactly reached, when the precision target is checked, the size of a CUDA block, the
progress reports, the CPU memory peak, and the metrics' units. A fake clock (test_timing.py's) times every call, so
nothing depends on this machine's load."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from gflops_track.common import names
from gflops_track.options.timing import TimingOptions
from gflops_track.results.timing import LatencyStats, TimingResult, precision_text
from gflops_track.timing.engine import _cpu_peak_rss, _settled, _Timer, measure_latency
from test_timing import FakeClock, fake_forward

NEVER = 100.0  # a max_time_s the fake calls never reach


def test_settling_rule() -> None:
    """Settled: 10 or more calls, and the median of the last 5 and of the last 3 each within 5% of the median of the
    5 (3) calls before them."""
    assert _settled([100.0] * 5 + [105.0] * 5)  # exactly 5%: within
    assert not _settled([100.0] * 5 + [106.0] * 5)
    assert _settled([100.0] * 5 + [101.0] * 5)
    assert not _settled([100.0] * 9)  # fewer than 10
    assert not _settled([100.0] * 6 + [70.0, 70.0, 130.0, 130.0])  # last 5 as before (100), last 3 not: 130 vs 100
    assert _settled([200.0] * 5 + [100.0] * 10)  # only the last 10 count


def test_warmup_zero_is_settled() -> None:
    clock = FakeClock()
    result = measure_latency(fake_forward(clock, [], 2.0), "cpu", TimingOptions(warmup=0, min_repeats=8), clock=clock)
    assert result.warmup_iterations == 0 and result.warmup_settled and result.warmup_s == 0
    assert not any("settled" in note for note in result.notes)


@pytest.mark.parametrize(("cold_ms", "warmups"), [(1000.0, 1), (1000.25, 0)])
def test_a_cold_call_ending_exactly_at_the_bound_still_warms_up(cold_ms: float, warmups: int) -> None:
    """max_time_s = 2: warm-up's first call is predicted to take as long as the cold call and runs unless it would
    end *past* the bound: after a 1 s cold call, 1 + 1 = 2 s is not past it (one warm-up call; the next would end
    past warm-up's half of the bound); after 1.00025 s, 2.0005 s is."""
    clock = FakeClock()
    options = TimingOptions(warmup=10, min_repeats=30, max_time_s=2)
    result = measure_latency(fake_forward(clock, [cold_ms], 1.0), "cpu", options, clock=clock)
    assert result.cold_start_ms == pytest.approx(cold_ms) and result.warmup_iterations == warmups


@pytest.mark.parametrize(("warmup", "cold_ms", "expected"), [(3, 125.0, 3), (1, 1000.0, 3)])
def test_warmup_budget_reached_exactly(warmup: int, cold_ms: float, expected: int) -> None:
    """warmup_max_s = 0.5 s, warm-up calls of 125, 250, 125, 250, ... ms (never settled): the budget is used up
    after the third call (0.125 + 0.25 + 0.125 = 0.5 s: reached, not exceeded, ends warm-up), whether that is the
    warmup-th call or later, and whatever the cold call took before."""
    clock = FakeClock()
    options = TimingOptions(warmup=warmup, warmup_max_s=0.5, min_repeats=8, max_time_s=NEVER)
    fn = fake_forward(clock, [cold_ms] + [125.0, 250.0] * 20, 100.0)
    result = measure_latency(fn, "cpu", options, clock=clock)
    assert result.warmup_iterations == expected and result.warmup_s == pytest.approx(0.5)
    assert not result.warmup_settled and f"had not settled after {expected} warm-up iterations" in result.notes[0]


def test_progress_is_reported_per_phase() -> None:
    """Steady 2 ms calls, warmup = 2, min_repeats = 3: the cold start (0 of 1); warm-up 1..10 of an open end (0:
    settling needs 10 calls); timing n of max(min_repeats, n), until 8 samples give a CI (precision 0)."""
    clock = FakeClock()
    reports: list[tuple[str, int, int]] = []
    options = TimingOptions(warmup=2, min_repeats=3, max_time_s=NEVER)
    measure_latency(fake_forward(clock, [], 2.0), "cpu", options, lambda *report: reports.append(report), clock=clock)
    warmup = [("warm-up", n, 0) for n in range(1, 11)]
    timing = [("timing", n, max(3, n)) for n in range(1, 9)]
    assert reports == [("cold start", 0, 1), *warmup, *timing]


def test_precision_is_checked_at_min_repeats_then_every_tenth_more() -> None:
    """Samples alternate 50 and 150 ms 23 times, then stay at 100 ms: from n = 64 on, the 100 ms samples fill the
    ranks j..k of the median's CI (precision 0). The target is checked at min_repeats = 5 and then whenever n has
    grown by max(1, n // 10): 5, 6, ..., 20, 22, ..., 30, 33, 36, 39, 42, 46, 50, 55, 60, 66: timing stops at 66."""
    clock = FakeClock()
    options = TimingOptions(warmup=0, min_repeats=5, target_precision=0.01, max_time_s=NEVER)
    result = measure_latency(fake_forward(clock, [1.0] + [50.0, 150.0] * 23, 100.0), "cpu", options, clock=clock)
    assert result.timed_iterations == 66 and result.precision_met and result.latency.precision == 0.0
    assert not LatencyStats.from_samples(result.latency.samples_ms[:63]).meets(0.01)
    assert LatencyStats.from_samples(result.latency.samples_ms[:64]).meets(0.01)


def test_precision_exactly_at_the_target_meets_it() -> None:
    """8 samples: 75, six of 100, 125: median 100, CI ranks j = 1, k = 8: [75, 125], precision (125 - 75) / 2 / 100
    = 0.25."""
    stats = LatencyStats.from_samples([75.0] + [100.0] * 6 + [125.0])
    assert (stats.ci_low_ms, stats.ci_high_ms, stats.median_ms, stats.precision) == (75.0, 125.0, 100.0, 0.25)
    assert stats.meets(0.25) and not stats.meets(0.2499)


def test_cuda_blocks_hold_about_20_ms_of_work() -> None:
    """Calls per block: 1 on CPU; on CUDA int(20 ms / max(estimate, 1 us)), between 1 and 1,000. The rule itself,
    on a CPU timer switched to the CUDA branch (the block's events need a GPU; test_cuda.py times real blocks)."""
    timer = _Timer(torch.device("cpu"), False, time.perf_counter)
    assert timer.per_block(0.001) == 1 and timer.per_block(1000.0) == 1
    timer.cuda = True
    assert timer.per_block(1.0) == 20 and timer.per_block(0.5) == 40 and timer.per_block(7.0) == 2
    assert timer.per_block(20 / 39.99) == 39  # 39.99 calls' worth: rounded down
    assert timer.per_block(0.01) == 1000 and timer.per_block(0.0) == 1000  # capped; no division by 0
    assert timer.per_block(30.0) == 1  # a call longer than a block: one per block


def test_cpu_peak_rss_is_the_kernels_high_water_mark() -> None:
    """VmHWM from /proc/self/status, in KiB, as bytes."""

    def vmhwm_kib() -> int:
        status = Path("/proc/self/status").read_text().splitlines()
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))

    if not Path("/proc/self/status").is_file():
        pytest.skip("no /proc: the peak comes from getrusage")
    before = vmhwm_kib()
    peak = _cpu_peak_rss()
    assert peak in (before * 1024, vmhwm_kib() * 1024)


def test_cpu_memory_peak_is_reset_before_timing() -> None:
    """A 256 MiB tensor made and freed before timing raised the process's peak; the peak is reset when timing
    starts, so the growth of a forward that allocates nothing stays far below it."""
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("no /proc/self/clear_refs: the peak cannot be reset here")
    big = torch.ones(64 * 2**20)  # 256 MiB, every page written
    del big
    clock = FakeClock()
    result = measure_latency(fake_forward(clock, [], 1.0), "cpu", TimingOptions(warmup=1, min_repeats=8), clock=clock)
    assert result.memory_kind == "cpu_rss" and result.memory_growth_bytes < 64 * 2**20


def test_metrics_in_their_units_and_the_precision_line() -> None:
    """Bytes as MiB (2^20), energy per forward in J, GFLOP/J = FLOPs / 1e9 / J (2e9 FLOPs at 0.5 J: 4), a CUDA-graph
    replay's statistics under their own prefix."""
    eager, replay = LatencyStats.from_samples([2.0] * 10), LatencyStats.from_samples([1.0] * 10)
    result = TimingResult(
        latency=eager, cold_start_ms=5.0, warmup_iterations=3, warmup_s=0.1, warmup_settled=True,
        target_precision=0.01, precision_met=True, timer="perf_counter", memory_baseline_bytes=3 * 2**20,
        memory_growth_bytes=2**19, memory_kind="cpu_rss", l2_flushed=True, l2_flush_bytes=256 * 2**20,
        graph_latency=replay, energy_per_iteration_j=0.5,
    )  # fmt: skip
    metrics = result.metrics(2e9)
    assert (metrics[names.MEMORY_BASELINE_MIB], metrics[names.MEMORY_GROWTH_MIB]) == (3.0, 0.5)
    assert (metrics[names.L2_FLUSHED], metrics[names.L2_FLUSH_MIB]) == (1.0, 256.0)
    assert (metrics[names.ENERGY_PER_FORWARD_J], metrics[names.GFLOP_PER_JOULE]) == (0.5, 4.0)
    assert result.gflop_per_joule(2e9) == 4.0
    assert metrics[names.GRAPH_LATENCY_PREFIX + "median_ms"] == 1.0
    assert metrics[names.LATENCY_PREFIX + "median_ms"] == 2.0
    assert metrics[names.GRAPH_LATENCY_PREFIX + "precision"] == 0.0
    assert precision_text(result) == "±0.00% (target ±1.00% met)"
    few = TimingResult(**{**result.__dict__, "latency": LatencyStats.from_samples([2.0]), "precision_met": False})
    assert precision_text(few) == "unknown (no CI) (target ±1.00% NOT met)"
