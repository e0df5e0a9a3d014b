"""Latency statistics against hand-computed values; the CPU and CUDA timing paths."""

from __future__ import annotations

import math
import statistics

import pytest
import torch
from torch import nn

from conftest import requires_cuda
from gflops_track import profile
from gflops_track.timing import LatencyStats, measure_latency, percentile


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


def test_percentile_matches_statistics_quantiles_inclusive() -> None:
    data = sorted([0.3, 1.7, 2.2, 2.9, 4.0, 4.4, 6.1, 7.5])
    assert percentile(data, 50) == pytest.approx(statistics.median(data))
    assert percentile(data, 90) == pytest.approx(statistics.quantiles(data, n=10, method="inclusive")[8])
    assert percentile([3.0], 95) == 3.0


def test_single_sample_has_zero_spread() -> None:
    stats = LatencyStats.from_samples([2.0])
    assert stats.std_ms == 0.0 and stats.cv == 0.0


def test_cpu_timing_counts_iterations_and_restores_mode() -> None:
    model = nn.Sequential(nn.Linear(64, 64), nn.Dropout(0.5)).train()
    phases: list[tuple[str, int, int]] = []
    timing = measure_latency(model, (torch.randn(8, 64),), warmup=3, repeats=7, on_progress=lambda *p: phases.append(p))
    assert timing.timer == "perf_counter" and timing.memory_kind == "cpu_peak_rss_growth"
    assert len(timing.latency.samples_ms) == 7 and all(s > 0 for s in timing.latency.samples_ms)
    assert [p for p in phases if p[0] == "warm-up"][-1] == ("warm-up", 3, 3)
    assert [p for p in phases if p[0] == "timing"][-1] == ("timing", 7, 7)
    assert model.training  # eval() only while timing


def test_bad_iteration_counts_rejected() -> None:
    with pytest.raises(ValueError, match="repeats=0"):
        measure_latency(nn.ReLU(), (torch.randn(2),), repeats=0)


def test_profile_derives_throughput_and_achieved_gflops() -> None:
    model = nn.Linear(256, 256, bias=False)
    result = profile(model, torch.randn(32, 256), warmup=2, repeats=5, compare_thop=False)
    assert result.flops == 2 * 32 * 256 * 256
    median_s = result.median_latency_ms / 1e3
    assert result.throughput_samples_per_s == pytest.approx(32 / median_s)
    assert result.achieved_gflop_per_s == pytest.approx(result.flops / median_s / 1e9)
    metrics = result.metrics()
    assert metrics["latency_median_ms"] == result.median_latency_ms
    assert metrics["gflops"] == result.flops / 1e9


def test_cuda_requested_without_cuda_is_a_clear_error() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ValueError, match="device='cuda' is not allowed here"):
        profile(nn.ReLU(), torch.randn(2), device="cuda")


@pytest.mark.cuda
@requires_cuda
def test_cuda_timing_uses_events_and_reports_allocated_peak() -> None:
    model = nn.Conv2d(64, 64, 3, padding=1)
    result = profile(model, torch.randn(8, 64, 56, 56), device="cuda", warmup=5, repeats=20)
    assert result.timing is not None
    assert result.timing.timer == "cuda_event" and result.timing.memory_kind == "cuda_max_allocated"
    assert result.timing.peak_memory_bytes >= 8 * 64 * 56 * 56 * 4  # at least the output activation (fp32)
    assert all(s > 0 for s in result.timing.latency.samples_ms)
    assert result.fingerprint.gpu_name and result.fingerprint.gpu_sm_count
    assert result.fingerprint.hardware == f"cuda:{torch.cuda.get_device_name()}"


@pytest.mark.cuda
@requires_cuda
def test_cuda_counts_equal_cpu_counts() -> None:
    from gflops_track.models import ResidualBlock

    x = torch.randn(2, 64, 16, 16)
    on_cpu = profile(ResidualBlock(64, 64, "group"), x, device="cpu", measure_speed=False, compare_thop=False)
    on_gpu = profile(ResidualBlock(64, 64, "group"), x, device="cuda", measure_speed=False, compare_thop=False)
    assert on_gpu.flops_by_category == on_cpu.flops_by_category and on_gpu.macs == on_cpu.macs
