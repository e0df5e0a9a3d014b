"""The timing engine: statistics against hand-computed values, cold start, settling warm-up, adaptive stopping,
conditions, and the CUDA paths (skipped without CUDA)."""

from __future__ import annotations

import math
import statistics
import time

import pytest
import torch
from torch import nn

from conftest import requires_cuda
from gflops_track import CountOptions, PeakOptions, profile
from gflops_track.conditions import suspicions
from gflops_track.timing import LatencyStats, TimingOptions, measure_latency, median_ci, percentile

QUICK = TimingOptions(warmup=1, min_repeats=5, max_time_s=1)


def test_latency_stats_formulas() -> None:
    samples = [float(v) for v in (4, 1, 3, 2, 5, 10, 9, 8, 7, 6)]  # 1..10, unsorted
    stats = LatencyStats.from_samples(samples)
    assert stats.samples_ms == tuple(samples)  # raw order kept
    assert stats.mean_ms == 5.5 and stats.median_ms == 5.5 and stats.min_ms == 1 and stats.max_ms == 10
    # sample standard deviation: sqrt(sum((x - 5.5)^2) / (n - 1)) = sqrt(82.5 / 9)
    assert stats.std_ms == pytest.approx(math.sqrt(82.5 / 9))
    # linear interpolation at position (n - 1) * q: p90 -> 8.1 -> 9 + 0.1 * (10 - 9); p95 -> 8.55 -> 9.55
    assert stats.p90_ms == pytest.approx(9.1) and stats.p95_ms == pytest.approx(9.55)
    assert stats.cv == pytest.approx(math.sqrt(82.5 / 9) / 5.5)


def test_median_confidence_interval_order_statistics() -> None:
    """n = 30, z = 1.959964: ranks j = floor(15 - z*sqrt(30)/2) = 9, k = ceil(16 + z*sqrt(30)/2) = 22 (1-based)."""
    data = [float(v) for v in range(1, 31)]
    z = statistics.NormalDist().inv_cdf(0.975)
    assert math.floor(15 - z * math.sqrt(30) / 2) == 9 and math.ceil(16 + z * math.sqrt(30) / 2) == 22
    assert median_ci(data) == (9.0, 22.0)
    stats = LatencyStats.from_samples(data)
    assert stats.precision == pytest.approx((22 - 9) / 2 / 15.5)
    assert median_ci([5.0, 6.0]) == (5.0, 6.0)  # tiny samples: the whole range


def test_percentile_matches_statistics_quantiles_inclusive() -> None:
    data = sorted([0.3, 1.7, 2.2, 2.9, 4.0, 4.4, 6.1, 7.5])
    assert percentile(data, 50) == pytest.approx(statistics.median(data))
    assert percentile(data, 90) == pytest.approx(statistics.quantiles(data, n=10, method="inclusive")[8])
    assert percentile([3.0], 95) == 3.0


def sleeper(schedule_ms: list[float], then_ms: float):
    """A callable that sleeps schedule_ms[i] on its i-th call, then then_ms forever."""
    calls = iter(schedule_ms)

    def fn() -> None:
        time.sleep(next(calls, then_ms) / 1e3)

    return fn


def test_cold_start_is_its_own_metric() -> None:
    result = measure_latency(sleeper([40.0], 2.0), "cpu", QUICK)
    assert result.cold_start_ms >= 40.0
    assert result.latency.median_ms < 20.0  # the cold call is not among the samples


def test_warmup_runs_until_latency_settles() -> None:
    """warmup=2 asks for two iterations, but the first eight are slow: warm-up goes on until the fast ones fill the
    comparison windows (the medians of the last 5 and the last 3 agree with the ones before within 5%)."""
    fn = sleeper([1.0] + [15.0] * 8, 2.0)  # cold start, then 8 slow warm-up calls, then steady 2 ms
    result = measure_latency(fn, "cpu", TimingOptions(warmup=2, min_repeats=5, max_time_s=1))
    assert result.warmup_settled and result.warmup_iterations >= 8 + 5
    assert result.latency.median_ms < 10.0


def test_warmup_time_budget_ends_unsettled_warmup() -> None:
    alternating = iter([1.0, 30.0] * 1000)
    result = measure_latency(
        lambda: time.sleep(next(alternating) / 1e3),
        "cpu",
        TimingOptions(warmup=2, warmup_max_s=0.3, min_repeats=3, max_time_s=0.2),
    )
    assert not result.warmup_settled and result.warmup_s >= 0.3
    assert any("had not settled" in note for note in result.notes)


def test_adaptive_stops_at_min_repeats_when_precise_enough() -> None:
    result = measure_latency(sleeper([], 2.0), "cpu", TimingOptions(warmup=1, min_repeats=30, target_precision=0.5))
    assert result.timed_iterations == 30 and result.precision_met
    assert result.latency.precision <= 0.5


def test_adaptive_stops_on_time_budget_and_says_so() -> None:
    noisy = iter([1.0, 9.0] * 10_000)
    options = TimingOptions(warmup=0, min_repeats=5, target_precision=1e-9, max_time_s=0.3)
    result = measure_latency(lambda: time.sleep(next(noisy) / 1e3), "cpu", options)
    assert not result.precision_met and result.timed_iterations >= 5
    assert any("precision target not met" in note for note in result.notes)


def test_max_repeats_caps_samples() -> None:
    options = TimingOptions(warmup=0, min_repeats=3, max_repeats=7, target_precision=1e-12, max_time_s=60)
    assert measure_latency(lambda: None, "cpu", options).timed_iterations == 7


def test_bad_timing_options_rejected() -> None:
    with pytest.raises(ValueError, match="min_repeats=0 is not allowed"):
        measure_latency(lambda: None, "cpu", TimingOptions(min_repeats=0))


def test_conditions_recorded_and_judged() -> None:
    result = measure_latency(sleeper([], 1.0), "cpu", QUICK)
    metrics = result.conditions.metrics
    assert metrics["threads"] == torch.get_num_threads()
    assert {"load_avg_1m_before", "process_cpu_per_wall", "other_processes_cpu_per_wall"} <= set(metrics)
    assert suspicions({"other_processes_cpu_per_wall": 0.8}, [])[0].startswith("other processes used 0.80")
    assert suspicions({"cpu_steal_fraction": 0.2}, []) == [
        "the hypervisor stole 20% of CPU time while we timed: latency may be inflated"
    ]
    assert "throttling (hw_slowdown)" in suspicions({}, ["gpu_idle", "hw_slowdown"])[0]
    assert suspicions({"gpu_sm_clock_mhz": 1980, "gpu_sm_clock_max_mhz": 1980}, ["gpu_idle"]) == []


def test_cpu_profile_restores_mode_and_derives_throughput() -> None:
    model = nn.Sequential(nn.Linear(256, 256, bias=False), nn.Dropout(0.5)).train()
    result = profile(model, torch.randn(32, 256), timing=QUICK, counting=CountOptions(thop=False))
    assert model.training  # eval() only while counting and timing
    assert result.flops == 2 * 32 * 256 * 256
    assert result.timing is not None and result.timing.timer == "perf_counter"
    median_s = result.median_latency_ms / 1e3
    assert result.throughput_samples_per_s == pytest.approx(32 / median_s)
    assert result.achieved_gflop_per_s == pytest.approx(result.flops / median_s / 1e9)
    metrics = result.metrics()
    assert metrics["latency_median_ms"] == result.median_latency_ms and metrics["gflops"] == result.flops / 1e9


def test_cuda_only_options_on_cpu_are_noted() -> None:
    options = TimingOptions(warmup=1, min_repeats=3, max_time_s=0.5, cuda_graph=True, flush_l2=True)
    result = profile(nn.ReLU(), torch.randn(8), timing=options, counting=CountOptions(thop=False))
    assert any("CUDA graph replay is GPU-only" in note for note in result.notes)
    assert any("L2 flushing is GPU-only" in note for note in result.notes)


def test_cuda_requested_without_cuda_is_a_clear_error() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ValueError, match="device='cuda' is not allowed on this machine"):
        profile(nn.ReLU(), torch.randn(2), device="cuda")


@pytest.mark.cuda
@requires_cuda
def test_cuda_timing_events_graph_flush_and_memory() -> None:
    model = nn.Conv2d(64, 64, 3, padding=1)
    options = TimingOptions(warmup=5, min_repeats=20, max_time_s=2, cuda_graph=True, flush_l2=True)
    result = profile(model, torch.randn(8, 64, 56, 56), device="cuda", timing=options, peak=PeakOptions(measure=True))
    timing = result.timing
    assert timing is not None and timing.timer == "cuda_event" and timing.memory_kind == "cuda_max_allocated"
    assert timing.l2_flushed and timing.graph_latency is not None and timing.graph_latency.median_ms > 0
    assert timing.peak_memory_bytes >= 8 * 64 * 56 * 56 * 4  # at least the output activation (fp32)
    assert all(s > 0 for s in timing.latency.samples_ms)
    assert "gpu_sm_clock_mhz" in timing.conditions.metrics
    assert result.fingerprint.gpu_name and result.fingerprint.gpu_sm_count
    assert result.fingerprint.hardware == f"cuda:{torch.cuda.get_device_name()}"
    assert result.measured_peak is not None and result.measured_peak.gemm_gflop_per_s > 0


@pytest.mark.cuda
@requires_cuda
def test_cuda_counts_equal_cpu_counts() -> None:
    from gflops_track.models import ResidualBlock

    x = torch.randn(2, 64, 16, 16)
    on_cpu = profile(ResidualBlock(64, 64, "group"), x, device="cpu", timing=False, counting=CountOptions(thop=False))
    on_gpu = profile(ResidualBlock(64, 64, "group"), x, device="cuda", timing=False, counting=CountOptions(thop=False))
    assert on_gpu.flops_by_category == on_cpu.flops_by_category and on_gpu.macs == on_cpu.macs


def test_pre_options_keywords_still_work_with_a_deprecation_warning() -> None:
    model = nn.Linear(8, 4)
    with pytest.warns(DeprecationWarning, match="compare_thop"):
        old = profile(model, torch.randn(2, 8), measure_speed=False, compare_thop=False)
    new = profile(model, torch.randn(2, 8), timing=False, counting=CountOptions(thop=False))
    assert old.timing is None and old.thop is None and old.macs == new.macs == 2 * 8 * 4
    with pytest.raises(TypeError, match="'warmup'"):
        profile(model, torch.randn(2, 8), warmup=3)
