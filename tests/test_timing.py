"""The timing engine: statistics against hand-computed values, cold start, settling warm-up, adaptive stopping, the
time bound over the whole phase, honest precision with few samples, suspect runs, and conditions.

Every timing decision is tested with an injected clock: the forward advances a fake clock by the latency the test
sets, so nothing depends on how busy this machine is (and nothing sleeps). The CUDA paths are in test_cuda.py."""

from __future__ import annotations

import math
import statistics
import sys
from collections.abc import Callable, Iterable, Iterator

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from fixture_models import Sleeper
from gflops_track import CountOptions, profile
from gflops_track.options.timing import TimingOptions
from gflops_track.results.timing import (
    MIN_CI_SAMPLES,
    LatencyStats,
    ci_text,
    latency_metrics,
    median_ci,
    median_ci_ranks,
    percentile,
    precision_text,
)
from gflops_track.timing.conditions import (
    ENERGY_MIN_WINDOW_S,
    available_cpus,
    energy_metrics,
    short_energy_window_note,
    suspicions,
    watch_conditions,
)
from gflops_track.timing.engine import SKEW_LIMIT, measure_latency, skew_reasons

QUICK = TimingOptions(warmup=1, min_repeats=5, max_time_s=1)


class FakeClock:
    """Seconds that pass only when a fake forward says so."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def fake_forward(clock: FakeClock, schedule_ms: Iterable[float], then_ms: float) -> Callable[[], None]:
    """A forward whose i-th call takes schedule_ms[i] on the fake clock, then then_ms forever; counts its calls."""
    durations: Iterator[float] = iter(schedule_ms)

    def fn() -> None:
        fn.calls += 1  # type: ignore[attr-defined]
        clock.now += next(durations, then_ms) / 1e3

    fn.calls = 0  # type: ignore[attr-defined]
    return fn


def cycle(pattern: list[float], times: int = 100_000) -> list[float]:
    return pattern * times


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


def test_too_few_samples_have_no_confidence_interval() -> None:
    """n = 7: j = floor(3.5 - z*sqrt(7)/2) = floor(0.907) = 0, no valid rank; n = 8: j = floor(4 - 2.772) = 1 and
    k = ceil(5 + 2.772) = 8, the whole sample. So 8 is the smallest n with a 95% CI of the median."""
    z = statistics.NormalDist().inv_cdf(0.975)
    assert math.floor(3.5 - z * math.sqrt(7) / 2) == 0
    assert (math.floor(4 - z * math.sqrt(8) / 2), math.ceil(5 + z * math.sqrt(8) / 2)) == (1, 8)
    assert MIN_CI_SAMPLES == 8 and median_ci_ranks(7) is None and median_ci_ranks(8) == (1, 8)
    assert median_ci([5.0, 6.0]) is None
    for n in (1, 2, 7):
        stats = LatencyStats.from_samples([float(v) for v in range(1, n + 1)])
        assert stats.ci_low_ms is None and stats.ci_high_ms is None and stats.precision is None
        assert not stats.meets(1e9)  # no target is met without an interval, however loose
    eight = LatencyStats.from_samples([float(v) for v in range(1, 9)])
    assert (eight.ci_low_ms, eight.ci_high_ms) == (1.0, 8.0) and eight.precision == pytest.approx((8 - 1) / 2 / 4.5)


@given(st.lists(st.floats(min_value=0.001, max_value=1e4), min_size=1, max_size=300))
def test_ci_brackets_the_median_whenever_it_exists(samples: list[float]) -> None:
    stats = LatencyStats.from_samples(samples)
    if len(samples) < MIN_CI_SAMPLES:
        assert stats.ci_low_ms is None and stats.precision is None
    else:
        assert stats.ci_low_ms is not None and stats.ci_high_ms is not None and stats.precision is not None
        assert stats.ci_low_ms <= stats.median_ms <= stats.ci_high_ms and stats.precision >= 0


def test_percentile_matches_statistics_quantiles_inclusive() -> None:
    data = sorted([0.3, 1.7, 2.2, 2.9, 4.0, 4.4, 6.1, 7.5])
    assert percentile(data, 50) == pytest.approx(statistics.median(data))
    assert percentile(data, 90) == pytest.approx(statistics.quantiles(data, n=10, method="inclusive")[8])
    assert percentile([3.0], 95) == 3.0


def test_cold_start_is_its_own_metric() -> None:
    clock = FakeClock()
    result = measure_latency(fake_forward(clock, [40.0], 2.0), "cpu", QUICK, clock=clock)
    assert result.cold_start_ms == pytest.approx(40.0)
    assert result.latency.median_ms == pytest.approx(2.0) and result.latency.max_ms == pytest.approx(2.0)


def test_warmup_runs_until_latency_settles() -> None:
    """warmup=2 asks for two iterations, but the first eight are slow: warm-up goes on until the fast ones fill the
    comparison windows (the medians of the last 5 and the last 3 agree with the ones before within 5%)."""
    clock = FakeClock()
    fn = fake_forward(clock, [1.0] + [15.0] * 8, 2.0)  # cold start, then 8 slow warm-up calls, then steady 2 ms
    result = measure_latency(fn, "cpu", TimingOptions(warmup=2, min_repeats=5, max_time_s=1), clock=clock)
    assert result.warmup_settled and result.warmup_iterations >= 8 + 5
    assert result.latency.median_ms == pytest.approx(2.0)


def test_warmup_time_budget_ends_unsettled_warmup() -> None:
    clock = FakeClock()
    fn = fake_forward(clock, cycle([1.0, 30.0]), 1.0)
    options = TimingOptions(warmup=2, warmup_max_s=0.3, min_repeats=3, max_time_s=10)
    result = measure_latency(fn, "cpu", options, clock=clock)
    assert not result.warmup_settled and 0.3 <= result.warmup_s <= 0.3 + 0.030
    assert any("had not settled" in note for note in result.notes)
    assert not any("cut warm-up" in note for note in result.notes)  # warmup_max_s ended warm-up, not max_time_s


def test_adaptive_stops_at_min_repeats_when_precise_enough() -> None:
    clock = FakeClock()
    options = TimingOptions(warmup=1, min_repeats=30, target_precision=0.5)
    result = measure_latency(fake_forward(clock, [], 2.0), "cpu", options, clock=clock)
    assert result.timed_iterations == 30 and result.precision_met
    assert result.latency.precision == 0.0  # every sample 2 ms: the CI is [2, 2]


def test_adaptive_stops_on_time_budget_and_says_so() -> None:
    """More than min_repeats samples, but too noisy for the target when max_time_s ends timing: the run is flagged
    time_bound_hit with a note (CI once saw this case pass silently: neither met, nor suspect, nor bound hit)."""
    clock = FakeClock()
    options = TimingOptions(warmup=0, min_repeats=5, target_precision=1e-9, max_time_s=0.3)
    result = measure_latency(fake_forward(clock, cycle([1.0, 9.0]), 1.0), "cpu", options, clock=clock)
    assert not result.precision_met and result.timed_iterations >= 5
    assert result.time_bound_hit and result.metrics(1.0)["timing/time_bound_hit"] == 1.0
    assert result.total_s <= 0.3 + 0.009  # the bound, plus at most the excess of one call over the one before
    assert any("precision target not met: median known to" in note for note in result.notes)
    cut = f"it cut timing to {result.timed_iterations} iteration(s) (min_repeats=5) before the median was known to"
    assert any(cut in note for note in result.notes)


def test_max_time_bounds_the_whole_phase_warmup_included() -> None:
    """A 250 ms forward, max_time_s = 2, warmup = 10, min_repeats = 30: the old engine ran 1 + 10 + 30 calls
    (10.25 s). Now: cold start (0.25 s); warm-up within half the bound (calls ending at 0.5, 0.75, 1.0 s); timed calls
    until the next would end past 2 s (1.25, 1.5, 1.75, 2.0 s). 1 + 3 + 4 calls, 2.0 s. The clock starts at 1000 s:
    the bounds count from the start, and 3 warm-up calls are too few to know the latency settled (10 needed)."""
    clock = FakeClock()
    clock.now = 1000.0
    fn = fake_forward(clock, [], 250.0)
    result = measure_latency(fn, "cpu", TimingOptions(warmup=10, min_repeats=30, max_time_s=2), clock=clock)
    assert fn.calls == 1 + 3 + 4  # type: ignore[attr-defined]
    assert result.warmup_iterations == 3 and result.timed_iterations == 4
    assert result.total_s == pytest.approx(2.0) and result.time_bound_hit
    assert any("it cut warm-up to 3 iteration(s) (warmup=10, latency not known to have settled;" in note
               for note in result.notes)  # fmt: skip
    assert not result.warmup_settled
    assert any("it cut timing to 4 iteration(s) (min_repeats=30)" in note for note in result.notes)
    assert not result.precision_met  # 4 samples: no CI (needs 8)


def test_precise_but_too_few_samples_is_not_met_and_says_the_bound_hit() -> None:
    """A steady 125 ms forward, min_repeats = 30, max_time_s = 2, no warm-up: cold start 0.125 s, then timed calls
    until the next would end past 2 s: (2 - 0.125) / 0.125 = 15 samples, every one 125 ms, so the CI is [125, 125]
    (precision 0, within any target). The rule is "precise *and* at least min_repeats samples": 15 < 30, so the
    target is not met, and it was the bound that ended timing."""
    clock = FakeClock()
    options = TimingOptions(warmup=0, min_repeats=30, max_time_s=2)
    result = measure_latency(fake_forward(clock, [], 125.0), "cpu", options, clock=clock)
    assert result.timed_iterations == 15 and result.latency.precision == 0.0
    assert not result.precision_met and result.time_bound_hit
    assert result.metrics(1.0)["timing/precision_target_met"] == 0.0
    assert any("it cut timing to 15 iteration(s) (min_repeats=30)" in note for note in result.notes)


def test_warmup_cut_by_the_bound_is_a_bound_hit_even_when_timing_meets_its_target() -> None:
    """A steady 15.625 ms (1/64 s) forward, warmup = 1000, max_time_s = 2: warm-up may use half the bound, so it is
    cut at 1 s, after (1 - 1/64) / (1/64) = 63 iterations; the 30 timed samples are then precise (all equal) and meet
    the target. The run still says the bound cut it short: time_bound_hit and the note, which (like warmup_settled)
    says the latency had settled by then."""
    clock = FakeClock()
    options = TimingOptions(warmup=1000, min_repeats=30, max_time_s=2)
    result = measure_latency(fake_forward(clock, [], 1000 / 64), "cpu", options, clock=clock)
    assert result.warmup_iterations == 63 and result.timed_iterations == 30 and result.precision_met
    assert result.time_bound_hit and result.metrics(1.0)["timing/time_bound_hit"] == 1.0
    assert any("bounds the whole timing phase: it cut warm-up to 63 iteration(s) (warmup=1000, settled;" in note
               for note in result.notes)  # fmt: skip
    assert result.warmup_settled  # 63 equal calls had settled before the bound cut warm-up


def test_one_sample_has_no_ci_and_never_meets_the_target() -> None:
    """The issue's case: a 3 s forward with max_time_s = 2 took 52 s (10 mandatory warm-ups). Now the cold call and
    one timed call run (they always do) and nothing else: 6 s, with no CI and the target not met."""
    clock = FakeClock()
    fn = fake_forward(clock, [], 3000.0)
    options = TimingOptions(warmup=10, min_repeats=30, max_time_s=2, target_precision=0.5)
    result = measure_latency(fn, "cpu", options, clock=clock)
    assert fn.calls == 2 and result.total_s == pytest.approx(6.0)  # type: ignore[attr-defined]
    assert result.warmup_iterations == 0 and result.timed_iterations == 1 and not result.warmup_settled
    latency = result.latency
    assert latency.ci_low_ms is None and latency.ci_high_ms is None and latency.precision is None
    assert not result.precision_met
    assert any("no confidence interval is known after 1 timed iteration(s)" in note for note in result.notes)


def test_slow_cold_start_does_not_skip_warmup_when_the_bound_has_room() -> None:
    """A 3 s cold start (autotuning) then 1 ms calls, max_time_s = 10: warm-up still runs and settles (the first warm-up
    call is judged against the whole budget, 3 + 3 <= 10 s), and timing reaches its target."""
    clock = FakeClock()
    fn = fake_forward(clock, [3000.0], 1.0)
    result = measure_latency(fn, "cpu", TimingOptions(warmup=10, min_repeats=30, max_time_s=10), clock=clock)
    assert result.warmup_settled and result.warmup_iterations == 10 and result.timed_iterations == 30
    assert result.precision_met and not result.time_bound_hit


def test_cold_start_longer_than_the_bound_leaves_one_timed_call() -> None:
    """A 30 s compile, then 1 ms calls, max_time_s = 10: the bound is spent; one timed call runs, and the note says
    where the time went."""
    clock = FakeClock()
    result = measure_latency(fake_forward(clock, [30_000.0], 1.0), "cpu", TimingOptions(max_time_s=10), clock=clock)
    assert result.warmup_iterations == 0 and result.timed_iterations == 1 and not result.precision_met
    assert any("the cold start took 30.00 s" in note for note in result.notes)


def test_bound_with_uneven_calls_ends_within_one_call_of_it() -> None:
    """Calls alternate 10 and 40 ms: the engine predicts the next call from the last one, so it can overrun the bound
    by at most the difference of one call (30 ms)."""
    clock = FakeClock()
    options = TimingOptions(warmup=3, min_repeats=10_000, max_repeats=100_000, max_time_s=1.0)
    result = measure_latency(fake_forward(clock, cycle([10.0, 40.0]), 10.0), "cpu", options, clock=clock)
    assert 1.0 - 0.040 <= result.total_s <= 1.0 + 0.030


def test_skewed_distribution_is_flagged() -> None:
    """Two of three calls wait 5x the work (1 ms + 4 ms of someone else's time): median 5 > 2 x min 1."""
    clock = FakeClock()
    fn = fake_forward(clock, cycle([1.0, 5.0, 5.0]), 1.0)
    result = measure_latency(fn, "cpu", TimingOptions(warmup=3, min_repeats=9, max_time_s=0.5), clock=clock)
    assert result.latency.median_ms == pytest.approx(5.0) and result.latency.min_ms == pytest.approx(1.0)
    assert result.suspect
    skew = [reason for reason in result.suspect_reasons if "its minimum" in reason]
    assert skew == [f"latency median 5.000 ms is 5.0x its minimum 1.000 ms (limit {SKEW_LIMIT:g}x): most "
                    "iterations waited for something else"]  # fmt: skip
    assert skew[0] in result.notes


def test_skew_rule_boundary() -> None:
    """median = 2 x min exactly is not flagged; just above is."""
    assert skew_reasons(LatencyStats.from_samples([1.0, 2.0, 2.0])) == []
    assert len(skew_reasons(LatencyStats.from_samples([1.0, 2.01, 2.01]))) == 1
    assert skew_reasons(LatencyStats.from_samples([2.0] * 10)) == []


def test_threads_over_cores_and_shared_cores_are_suspect() -> None:
    assert suspicions({"threads": 8, "cpus_available": 2}, []) == [
        "8 threads on 2 available CPUs: the threads share cores, latency may be inflated"
    ]
    assert suspicions({"threads": 2, "cpus_available": 2}, []) == []
    assert suspicions({"other_processes_cpu_per_wall": 0.8}, [])[0].startswith("other processes used 0.80")
    assert suspicions({"cpu_steal_fraction": 0.2}, []) == [
        "the hypervisor stole 20% of CPU time while we timed: latency may be inflated"
    ]
    assert "throttling (hw_slowdown)" in suspicions({}, ["gpu_idle", "hw_slowdown"])[0]
    assert suspicions({"gpu_sm_clock_mhz": 1980, "gpu_sm_clock_reference_mhz": 1980}, ["gpu_idle"]) == []
    assert suspicions({"gpu_thermal_violation_fraction": 0.5}, []) == [
        "the GPU's clocks were held back by its thermal limit for 50% of the timed loop: latency may be inflated"
    ]


def test_power_capped_gpu_at_its_default_clock_is_not_suspect() -> None:
    """Sustained load at the power cap is a GPU's normal state: the sw_power_cap reason and power-policy violation time
    raise nothing. The clock is held against the default applications clock (H100 SXM: 1,755 MHz), not the boost
    maximum (1,980 MHz): 1,650 MHz is 94% of the default (fine) though 83% of the maximum; 1,500 MHz is 85% of it."""
    capped = {"gpu_power_violation_fraction": 0.9, "gpu_sm_clock_max_mhz": 1980, "gpu_sm_clock_reference_mhz": 1755}
    assert suspicions(capped | {"gpu_sm_clock_mhz": 1650}, ["sw_power_cap"]) == []
    assert suspicions(capped | {"gpu_sm_clock_mhz": 1500}, ["sw_power_cap"]) == [
        "the GPU's SM clock was 1500 MHz while it worked, below 90% of its default 1755 MHz: latency may be inflated"
    ]
    assert "throttling (hw_power_brake_slowdown)" in suspicions({}, ["sw_power_cap", "hw_power_brake_slowdown"])[0]


def test_conditions_reasons_are_the_suspect_reasons() -> None:
    """One list, one flag: every conditions warning is a suspect reason, and the flag is set by any reason."""
    clock = FakeClock()
    result = measure_latency(fake_forward(clock, [], 1.0), "cpu", QUICK, clock=clock)
    metrics = result.conditions.metrics
    assert metrics["threads"] == torch.get_num_threads() and metrics["cpus_available"] == available_cpus()
    assert {"load_avg_1m_before", "process_cpu_per_wall", "other_processes_cpu_per_wall"} <= set(metrics)
    assert result.suspect_reasons == result.conditions.warnings  # no skew: 1 ms every call
    assert result.suspect == bool(result.conditions.warnings)


def test_energy_needs_a_window_the_counter_can_resolve() -> None:
    """NVML's counter (mJ) read at both ends of the loop: 150,000 mJ over 1.5 s -> 150 J, 150 / 1.5 = 100 W. The same
    counter over 0.02 s (the seed block's 36 timed forwards on an H200) moved 16,200 mJ in one step: 0.45 J a forward,
    over 800 W on a 700 W board; under ENERGY_MIN_WINDOW_S (1 s) nothing is reported, and the note says why and how many
    iterations would fill 1 s. A counter that is missing or did not move reports nothing either."""
    assert energy_metrics(1_000_000, 1_150_000, 1.5) == {"gpu_energy_j": 150.0, "gpu_power_w": 100.0}
    assert energy_metrics(1_000_000, 1_016_200, 0.02) == {}
    assert energy_metrics(1_000_000, 1_016_200, ENERGY_MIN_WINDOW_S) == pytest.approx(
        {"gpu_energy_j": 16.2, "gpu_power_w": 16.2}
    )
    assert energy_metrics(None, 1_016_200, 2.0) == {} and energy_metrics(1_000, 1_000, 2.0) == {}
    note = short_energy_window_note(0.02, 0.000547 * 1e3)  # 36 forwards of 0.547 ms: 1 s needs ceil(1000 / 0.547)
    assert "the timed loop lasted 0.020 s, under the 1 s NVML's energy counter needs" in note
    assert (
        "1,829 iterations of 0.547 ms fill it: set timing.min_repeats=1829 and timing.max_repeats to at least" in note
    )


def test_gpu_conditions_without_nvml_never_raise() -> None:
    """A CUDA device descriptor on a machine without a driver: NVML is not there, and the CPU conditions still are."""
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA (test_cuda.py covers NVML)")
    with watch_conditions(torch.device("cuda", 0), 1) as conditions:
        conditions.sample()  # the timer's busy-time hook: a no-op without NVML
    assert "other_processes_cpu_per_wall" in conditions.metrics
    assert not any(key.startswith("gpu_") for key in conditions.metrics)


def test_training_step_memory_growth_includes_the_gradients() -> None:
    """Linear(4096, 4096) without bias, fp32: a 64 MiB weight, so a 64 MiB gradient per step (each step frees it, so
    the window opens with none). 64 MiB is above glibc's largest mmap threshold: the gradient's pages come and go
    with it, and the RSS high-water mark sees them. A window that opened with the gradient held would see ~0."""
    if sys.platform != "linux":
        pytest.skip("the RSS high-water mark is reset only on Linux")
    from gflops_track.pipeline.training_step import measure_training_step

    model = nn.Linear(4096, 4096, bias=False)
    options = TimingOptions(warmup=1, min_repeats=3, max_repeats=3, max_time_s=5.0)
    timed = measure_training_step(model, torch.randn(1, 4096), optimizer="sgd", options=options)
    assert timed.step.memory_growth_bytes >= 0.9 * 4096 * 4096 * 4  # held at the window's start: ~0
    assert all(parameter.grad is None for parameter in model.parameters())


def test_max_repeats_caps_samples() -> None:
    clock = FakeClock()
    options = TimingOptions(warmup=0, min_repeats=3, max_repeats=7, target_precision=1e-12, max_time_s=60)
    assert (
        measure_latency(fake_forward(clock, cycle([1.0, 2.0]), 1.0), "cpu", options, clock=clock).timed_iterations == 7
    )


def test_bad_timing_options_rejected() -> None:
    with pytest.raises(ValueError, match="min_repeats=0 is not allowed"):
        measure_latency(lambda: None, "cpu", TimingOptions(min_repeats=0))


def test_real_clock_busy_wait_module() -> None:
    """The real perf_counter path on a module that busy-waits 2 ms: no sample can be shorter than the wait."""
    model = Sleeper(1, 2.0).eval()
    x = torch.randn(1, 1, 2, 2)
    result = measure_latency(lambda: model(x), "cpu", TimingOptions(warmup=1, min_repeats=8, max_time_s=0.5))
    assert result.timer == "perf_counter" and result.latency.min_ms >= 2.0
    assert result.timed_iterations >= 1 and result.total_s >= result.cold_start_ms / 1e3


def test_cpu_memory_is_rss_baseline_and_growth() -> None:
    clock = FakeClock()
    result = measure_latency(fake_forward(clock, [], 1.0), "cpu", QUICK, clock=clock)
    assert result.memory_kind == "cpu_rss" and result.memory_baseline_bytes > 0 and result.memory_growth_bytes >= 0
    assert result.energy_per_iteration_j is None and result.gflop_per_joule(1e9) is None  # no NVML on CPU


def test_metrics_leave_out_what_is_not_known() -> None:
    """One sample: no CI and no precision among the metrics (never a number standing for "unknown"), the target 0."""
    clock = FakeClock()
    options = TimingOptions(warmup=0, min_repeats=30, max_time_s=2)
    one = measure_latency(fake_forward(clock, [], 3000.0), "cpu", options, clock=clock).metrics(flops=1e9)
    assert {"latency/ci95_low_ms", "latency/ci95_high_ms", "latency/precision"}.isdisjoint(one)
    assert one["timing/precision_target_met"] == 0.0 and one["timing/timed_iterations"] == 1
    assert one["latency/median_ms"] == 3000 and one["timing/time_bound_hit"] == 1.0
    assert "speed/energy_per_forward_j" not in one and "speed/gflop_per_joule" not in one
    lone = measure_latency(fake_forward(clock, [], 3000.0), "cpu", options, clock=clock)
    assert ci_text(lone.latency) == "no 95% CI: 1 sample(s), 8 needed"
    assert precision_text(lone) == "unknown (no CI) (target ±1.00% NOT met)"
    many = measure_latency(fake_forward(clock, [], 2.0), "cpu", QUICK, clock=clock).metrics(flops=1e9)
    assert ci_text(LatencyStats.from_samples([float(v) for v in range(1, 31)])) == "95% CI 9.000-22.000"
    tiny = LatencyStats.from_samples([v / 1e5 for v in range(590, 620)])  # a 6 µs forward: 0.0059-0.0062 ms
    assert ci_text(tiny) == "95% CI 0.00598-0.00611", "not 0.006-0.006"
    assert many["latency/ci95_low_ms"] == pytest.approx(2.0) and many["latency/ci95_high_ms"] == pytest.approx(2.0)
    assert many["latency/precision"] == pytest.approx(0.0, abs=1e-9)
    assert many["memory/growth_mib"] >= 0 and many["timing/suspect"] in (0.0, 1.0)


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
    assert metrics["latency/median_ms"] == result.median_latency_ms and metrics["cost/gflops"] == result.flops / 1e9


def test_cuda_only_options_on_cpu_are_noted() -> None:
    options = TimingOptions(warmup=1, min_repeats=3, max_time_s=0.5, cuda_graph=True, flush_l2=True)
    result = profile(nn.ReLU(), torch.randn(8), timing=options, counting=CountOptions(thop=False))
    assert any("CUDA graph replay is GPU-only" in note for note in result.notes)
    assert any("L2 flushing is GPU-only" in note for note in result.notes)
    assert result.timing is not None and not result.timing.l2_flushed and result.timing.l2_flush_bytes == 0


def test_cuda_requested_without_cuda_is_a_clear_error() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ValueError, match="device='cuda' is not allowed on this machine"):
        profile(nn.ReLU(), torch.randn(2), device="cuda")


def test_profile_takes_options_objects_not_loose_keywords() -> None:
    model = nn.Linear(8, 4)
    with pytest.raises(TypeError, match="'warmup'"):
        profile(model, torch.randn(2, 8), warmup=3)


def test_low_quantile_and_its_interval_are_stored() -> None:
    """Samples 1..100 ms: the 10% quantile (linear interpolation) is 1 + 0.1 * 99 = 10.9 ms; its 95% CI ranks are
    floor(10 - 1.96*sqrt(100*0.1*0.9)) = floor(4.12) = 4 and ceil(1 + 10 + 5.88) = 17, i.e. 4 ms and 17 ms."""
    stats = LatencyStats.from_samples([float(v) for v in range(100, 0, -1)])
    assert stats.p10_ms == pytest.approx(10.9) and stats.p10_ci == (4.0, 17.0)
    metrics = latency_metrics("latency/", stats)
    assert metrics["latency/p10_ms"] == pytest.approx(10.9)
    assert (metrics["latency/p10_ci95_low_ms"], metrics["latency/p10_ci95_high_ms"]) == (4.0, 17.0)
    assert LatencyStats.from_samples([1.0, 2.0, 3.0]).p10_ci is None  # too few samples for any interval


def test_default_budget_gives_the_gate_its_samples_on_a_busy_machine() -> None:
    """The README's block on this busy 2-core VM: 550-650 ms a forward. With the default options (warm-up at least 3
    calls, at most 2 s; 10 s in all) the cold call (0.55 s) and warm-up (4 calls, 2.4 s) leave about 7 s: at least
    the gate's 10 samples. The old defaults (10 warm-up calls within 5 s) left 7 here: every row INCONCLUSIVE."""
    from gflops_track.compare.gate import MIN_SAMPLES

    clock = FakeClock()
    result = measure_latency(fake_forward(clock, cycle([550.0, 650.0]), 600.0), "cpu", TimingOptions(), clock=clock)
    assert result.timed_iterations >= MIN_SAMPLES and result.total_s <= 10.0 + 0.65
    old = FakeClock()
    before = TimingOptions(warmup=10, warmup_max_s=5.0)
    assert (
        measure_latency(fake_forward(old, cycle([550.0, 650.0]), 600.0), "cpu", before, clock=old).timed_iterations < 10
    )
