"""The peak step (``compare_with_peaks``): which peaks apply to a run, what utilization it logs, and the notes a
reader needs. The measured roof comes from a real peaks cache in a temp dir, written with known figures (GEMM 100,
convolution 120 GFLOP/s: the roof is 120), so no probe runs and the expected numbers are exact."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from gflops_track.options.peaks import PeakOptions
from gflops_track.peaks.probes import cache_key
from gflops_track.peaks.report import compare_with_peaks, roof_above_spec_notes
from gflops_track.peaks.table import cpu_peak_estimate
from gflops_track.results.peaks import MeasuredPeak, PeakReport

CPU = torch.device("cpu")
HARDWARE = "cpu:test-machine"
GEMM, CONV, BANDWIDTH = 100.0, 120.0, 20.0  # GFLOP/s, GFLOP/s, GB/s
UTILIZATION = "speed/utilization_vs_measured_peak"


@pytest.fixture
def cached_roof(tmp_path: Path) -> Path:
    """A peaks cache holding one fresh entry for (HARDWARE, fp32, this CPU): the roof is max(GEMM, CONV) = 120."""
    key, key_text = cache_key(HARDWARE, "fp32", CPU)
    entry = {
        "gemm_gflop_per_s": GEMM, "gemm_size": 1024, "bandwidth_gb_s": BANDWIDTH, "bandwidth_buffer_mib": 256,
        "dtype": "fp32", "compute_gflop_per_s": CONV, "compute_kernel": "conv3x3", "measured_at": time.time(),
        "hardware": HARDWARE, "key": key_text,
    }  # fmt: skip
    (tmp_path / "peaks.json").write_text(json.dumps({key: entry}))
    return tmp_path


def test_a_run_above_the_roof_raises_it_and_utilization_stays_at_one(cached_roof: Path) -> None:
    """A run at 1.08 x the roof (129.6 GFLOP/s) raises the roof to 129.6 with a note: utilization = 129.6 / 129.6 =
    1.0, never 1.08. The roof is raised from the run's own rate, so a rate of 0 (or none) could never raise it."""
    achieved = 1.08 * CONV
    report = compare_with_peaks(CPU, "fp32", HARDWARE, "", achieved, PeakOptions(measure=True, cache_dir=cached_roof),
                                kernel="ResidualBlock fp32")  # fmt: skip
    assert report.measured is not None and report.measured.roof_gflop_per_s == pytest.approx(achieved)
    assert report.measured.metrics(achieved)[UTILIZATION] == pytest.approx(1.0)
    (raised,) = [note for note in report.notes if "beats the measured roof" in note]
    assert f"achieved {achieved:,.1f} GFLOP/s beats the measured roof {CONV:,.1f}" in raised
    assert "(ResidualBlock fp32)" in raised
    again = compare_with_peaks(CPU, "fp32", HARDWARE, "", achieved, PeakOptions(measure=True, cache_dir=cached_roof))
    assert again.measured is not None and again.measured.roof_gflop_per_s == pytest.approx(achieved)
    assert not any("beats" in note for note in again.notes)  # the cache holds the raised roof now


def test_a_run_below_the_roof_is_divided_by_it(cached_roof: Path) -> None:
    """60 GFLOP/s under a roof of 120: utilization 60 / 120 = 0.5, the roof unchanged, no note about it."""
    report = compare_with_peaks(CPU, "fp32", HARDWARE, "", 60.0, PeakOptions(measure=True, cache_dir=cached_roof))
    assert report.measured is not None and report.measured.roof_gflop_per_s == CONV
    assert report.measured.metrics(60.0)[UTILIZATION] == 0.5
    assert report.measured.cached and not any("measured roof" in note for note in report.notes)
    unknown_rate = compare_with_peaks(CPU, "fp32", HARDWARE, "", None, PeakOptions(measure=True, cache_dir=cached_roof))
    assert unknown_rate.measured is not None and unknown_rate.measured.roof_gflop_per_s == CONV


def test_cpu_roofs_and_the_estimate_note(cached_roof: Path) -> None:
    """On CPU: the theoretical estimate (cores x clock x FLOPs/cycle) and the measured roof, both paired with the
    measured bandwidth; a run faster than the estimate gets a note (a VM's clock is often the base rate)."""
    estimate = cpu_peak_estimate()
    if estimate is None:
        pytest.skip("this machine reports no CPU clock")
    quiet = compare_with_peaks(CPU, "fp32", HARDWARE, "", 1.0, PeakOptions(measure=True, cache_dir=cached_roof))
    assert quiet.cpu_peak == estimate and quiet.gpu_spec is None and quiet.spec_gflop_per_s is None
    assert [(roof.label, roof.gflop_per_s, roof.bandwidth_gb_s) for roof in quiet.roofs()] == [
        ("CPU estimate", estimate.gflop_per_s, BANDWIDTH),
        ("measured", CONV, BANDWIDTH),
    ]
    assert quiet.notes == []
    fast = 2 * max(estimate.gflop_per_s, CONV)
    beyond = compare_with_peaks(CPU, "fp32", HARDWARE, "", fast, PeakOptions())  # no probes: estimate only
    assert beyond.measured is None and beyond.roofs() == []  # no measured bandwidth: no roof to draw
    assert beyond.notes == [
        f"achieved {fast:,.1f} GFLOP/s exceeds the estimated CPU peak {estimate.gflop_per_s:,.1f} "
        f"({estimate.cores} cores x {estimate.clock_ghz:.2f} GHz x {estimate.flops_per_cycle}): the reported clock "
        "is likely the base (TSC) rate, not the boost clock; trust the measured peak"
    ]
    assert compare_with_peaks(CPU, "fp32", HARDWARE, "", estimate.gflop_per_s, PeakOptions()).notes == []


def test_gpu_spec_figures_and_notes() -> None:
    """A known card's dense datasheet figure for the dtype, in GFLOP/s (A100 fp16: 312 TFLOP/s = 312,000); no
    figure, and a note, for an unknown card or a dtype its datasheet lacks (T4: no bf16). No probe runs: this needs
    no GPU."""
    gpu = torch.device("cuda", 0)
    a100 = compare_with_peaks(gpu, "fp16", "cuda:a100", "NVIDIA A100-SXM4-40GB", 1000.0)
    assert a100.gpu_spec is not None and a100.spec_gflop_per_s == 312_000 and a100.notes == []
    assert a100.cpu_peak is None and a100.measured is None
    assert [(roof.label, roof.gflop_per_s, roof.bandwidth_gb_s) for roof in a100.roofs()] == [
        ("A100 40GB spec", 312_000, 1555)
    ]
    t4 = compare_with_peaks(gpu, "bf16", "cuda:t4", "Tesla T4", 1000.0)
    assert t4.spec_gflop_per_s is None and t4.roofs() == []
    assert t4.notes == ["T4 has no bf16 peak in its datasheet: utilization vs spec not reported"]
    unknown = compare_with_peaks(gpu, "fp32", "cuda:x", "Imaginary GPU 9000", 1000.0)
    assert unknown.gpu_spec is None and unknown.spec_gflop_per_s is None
    assert unknown.notes == ["no vendor peak known for 'Imaginary GPU 9000': utilization vs spec not reported"]


def test_a_roof_needs_a_measured_bandwidth_and_an_unknown_rate_raises_nothing(tmp_path: Path) -> None:
    """Without a measured bandwidth no roofline roof can be drawn (a roof is compute and memory); a run whose rate
    is unknown raises no roof, even one below 1 GFLOP/s; a raised roof names the run as 'a profiled run' unless told
    otherwise."""
    no_bandwidth = PeakReport(measured=MeasuredPeak(100.0, 64, None, None, "fp32", compute_gflop_per_s=120.0))
    assert no_bandwidth.roofs() == []
    key, key_text = cache_key(HARDWARE, "fp32", CPU)
    entry = {
        "gemm_gflop_per_s": 0.25, "gemm_size": 8, "bandwidth_gb_s": 1.0, "bandwidth_buffer_mib": 4, "dtype": "fp32",
        "compute_gflop_per_s": 0.5, "compute_kernel": "conv3x3", "measured_at": time.time(), "hardware": HARDWARE,
        "key": key_text,
    }  # fmt: skip
    (tmp_path / "peaks.json").write_text(json.dumps({key: entry}))
    options = PeakOptions(measure=True, cache_dir=tmp_path)
    unknown = compare_with_peaks(CPU, "fp32", HARDWARE, "", None, options)
    assert unknown.measured is not None and unknown.measured.roof_gflop_per_s == 0.5
    assert not any("beats" in note for note in unknown.notes)
    raised = compare_with_peaks(CPU, "fp32", HARDWARE, "", 2.0, options)
    assert any(note.endswith("is raised to it (a profiled run)") for note in raised.notes), raised.notes


def test_a_roof_above_the_datasheet_is_explained() -> None:
    """H200 fp32, datasheet 67,000 GFLOP/s. A 3x3 convolution probe at 108,841 GFLOP/s (cuDNN's Winograd: fewer
    multiplications than the direct count 2·N·C·H·W·C·9) is 108,841 / 67,000 = 162.4% of it: the note names the kernel,
    the share and why; a GEMM at 70,000 (104.5%) gets the GEMM's reason; a roof at or below the datasheet, none."""
    conv = MeasuredPeak(51_353.0, 4096, 4_265.0, None, "fp32", compute_gflop_per_s=108_841.0,
                        compute_kernel="conv3x3 64x512x28x28 channels_last")  # fmt: skip
    (note,) = roof_above_spec_notes(conv, 67_000.0, "fp32")
    assert note.startswith("the measured roof, 108,841.0 GFLOP/s (conv3x3 64x512x28x28 channels_last), is 162.4% of")
    assert "67,000.0 GFLOP/s for fp32" in note and "Winograd" in note
    gemm = MeasuredPeak(70_000.0, 8192, None, None, "fp32", compute_gflop_per_s=70_000.0, compute_kernel="gemm 8192")
    (note,) = roof_above_spec_notes(gemm, 67_000.0, "fp32")
    assert "(GEMM), is 104.5% of" in note and "above the datasheet's clocks" in note and "Winograd" not in note
    assert roof_above_spec_notes(conv, 108_841.0, "fp32") == []
    assert roof_above_spec_notes(conv, None, "fp32") == [] and roof_above_spec_notes(None, 67_000.0, "fp32") == []
