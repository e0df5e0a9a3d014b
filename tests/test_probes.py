"""Measured peaks: the probes' FLOP formulas, the roof (best of GEMM and convolution, raised by a run that beats it),
and the peaks cache — per machine, locked across processes, repaired when its JSON has the wrong shape, and kept when
the bandwidth probe runs out of memory. Probes run for real, with a tiny plan so the tests stay short."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from gflops_track.peaks.probes import (
    MAX_AGE_DAYS,
    ProbePlan,
    cache_key,
    compute_probes,
    conv3x3_flops,
    entry_problem,
    gemm_flops,
    measured_peak,
    raise_roof,
    seconds_per_call,
)
from gflops_track.results.peaks import MeasuredPeak

CPU = torch.device("cpu")
TINY = ProbePlan(
    gemm_sizes=(32, 64),
    conv_shapes=((1, 8, 8, "contiguous"), (1, 8, 8, "channels_last")),
    bandwidth_bytes=4 * 2**20,
    window_s=0.002,
    repeats=1,
)
SRC = str(Path(__file__).resolve().parents[1] / "src")


def cache_of(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "peaks.json").read_text())


def test_probe_flop_formulas_match_torch_flop_counter() -> None:
    """GEMM: 2*n^3; 3x3 conv, stride 1, padding 1, C->C: 2*N*C*H*W*C*9 — as torch's FlopCounterMode counts them."""
    assert gemm_flops(64) == 2 * 64**3
    assert conv3x3_flops(2, 16, 8) == 2 * 2 * 16 * 8 * 8 * 16 * 9
    with FlopCounterMode(display=False) as counter:
        torch.mm(torch.randn(64, 64), torch.randn(64, 64))
    assert counter.get_total_flops() == gemm_flops(64)
    with FlopCounterMode(display=False) as counter:
        F.conv2d(torch.randn(2, 16, 8, 8), torch.randn(16, 16, 3, 3), padding=1)
    assert counter.get_total_flops() == conv3x3_flops(2, 16, 8)


def busy_wait(first_ms: float, then_ms: float) -> tuple[Callable[[], None], list[float]]:
    """A function that busy-waits ``first_ms`` on its second call (the probe's window-sizing call) and ``then_ms`` on
    every other, and the list of how long each call really lasted, in ms (longer than asked when the machine took
    the core away mid-call)."""
    lasted: list[float] = []

    def fn() -> None:
        started = time.perf_counter()
        until = started + (first_ms if len(lasted) == 1 else then_ms) / 1e3
        while time.perf_counter() < until:
            pass
        lasted.append((time.perf_counter() - started) * 1e3)

    return fn, lasted


def test_probe_time_is_never_one_fast_sizing_call() -> None:
    """The window-sizing call takes 0.5 ms, every other 2 ms: the answer is the best window (>= 2 ms per call), not the
    lone fast call. When the sizing call alone lasts a window, it is the answer and no window runs. On a busy machine
    the sizing call can itself last a window (the core taken away mid-call): then that rule applies instead."""
    fn, lasted = busy_wait(0.5, 2.0)
    plan = ProbePlan(gemm_sizes=(), conv_shapes=(), window_s=0.01, repeats=2)
    assert seconds_per_call(fn, CPU, plan) >= 2e-3
    sizing_lasted_a_window = lasted[1] >= plan.window_s * 1e3
    assert len(lasted) == 2 if sizing_lasted_a_window else len(lasted) > 2, lasted
    fn, lasted = busy_wait(3.0, 3.0)
    assert seconds_per_call(fn, CPU, replace(plan, window_s=0.002)) >= 3e-3 and len(lasted) == 2


def test_roof_is_the_best_of_gemm_and_convolution(tmp_path: Path) -> None:
    kernels, notes = compute_probes(CPU, "fp32", TINY)
    assert notes == [] and len(kernels) == len(TINY.gemm_sizes) + len(TINY.conv_shapes)
    peak = measured_peak(CPU, "fp32", "cpu:test x1", tmp_path, TINY)
    assert not peak.cached and peak.compute_gflop_per_s >= peak.gemm_gflop_per_s > 0
    assert peak.roof_gflop_per_s == peak.compute_gflop_per_s
    assert peak.compute_kernel.startswith(("gemm", "conv3x3")) and peak.gemm_size in TINY.gemm_sizes
    assert peak.bandwidth_gb_s is not None and peak.bandwidth_gb_s > 0 and peak.bandwidth_buffer_mib == 4


def test_measured_peak_is_cached_per_machine_and_dtype(tmp_path: Path) -> None:
    first = measured_peak(CPU, "fp32", "cpu:test x1", tmp_path, TINY)
    again = measured_peak(CPU, "fp32", "cpu:test x1", tmp_path, TINY)
    assert again.cached and again.compute_gflop_per_s == first.compute_gflop_per_s and again.notes == ()
    assert again.gemm_gflop_per_s == first.gemm_gflop_per_s
    assert not measured_peak(CPU, "bf16", "cpu:test x1", tmp_path, TINY).cached  # another dtype is another probe
    assert not measured_peak(CPU, "fp32", "cpu:other", tmp_path, TINY).cached  # another machine too
    assert len(cache_of(tmp_path)) == 3


def test_run_that_beats_the_roof_raises_it(tmp_path: Path) -> None:
    peak = measured_peak(CPU, "fp32", "cpu:test", tmp_path, TINY)
    same, note = raise_roof(CPU, "fp32", "cpu:test", peak.roof_gflop_per_s * 0.5, tmp_path, TINY)
    assert note is None and same.compute_gflop_per_s == peak.compute_gflop_per_s
    achieved = peak.roof_gflop_per_s * 1.08  # the "108% of measured peak"
    raised, note = raise_roof(CPU, "fp32", "cpu:test", achieved, tmp_path, TINY, kernel="ResidualBlock fp32")
    assert note is not None and "beats the measured roof" in note and "ResidualBlock fp32" in note
    assert raised.compute_gflop_per_s == achieved and raised.compute_kernel == "run: ResidualBlock fp32"
    assert raised.gemm_gflop_per_s == peak.gemm_gflop_per_s  # the GEMM probe keeps meaning what it says
    assert achieved / raised.roof_gflop_per_s == 1.0  # utilization vs the roof can no longer pass 100%
    cached = measured_peak(CPU, "fp32", "cpu:test", tmp_path, TINY)
    assert cached.cached and cached.compute_gflop_per_s == achieved  # the cache entry was rewritten


def test_utilization_divides_by_the_roof() -> None:
    """GEMM 100 GFLOP/s, convolution 120: the roof is 120; a run at 60 GFLOP/s is at 60 / 120 = 0.5 of it."""
    peak = MeasuredPeak(100.0, 64, None, None, "fp32", compute_gflop_per_s=120.0, compute_kernel="conv3x3")
    assert peak.metrics(60.0) == {
        "peak/measured_gflop_per_s": 120.0,
        "peak/measured_gemm_gflop_per_s": 100.0,
        "speed/utilization_vs_measured_peak": 0.5,
    }  # no bandwidth: unknown is left out
    assert MeasuredPeak(100.0, 64, 20.0, 256.0, "fp32").metrics()["peak/measured_gflop_per_s"] == 100.0


BAD_FILES = {
    "a list": b"[1, 2, 3]",
    "null": b"null",
    "a string": b'"peaks"',
    "a number": b"42",
    "not JSON": b"{not json",
    "empty": b"",
    "binary bytes": b"{\xff\xfe" + random.Random(0).randbytes(3000),  # not UTF-8: UnicodeDecodeError
}


@pytest.mark.parametrize("content", BAD_FILES.values(), ids=BAD_FILES.keys())
def test_bad_cache_file_is_remeasured_and_rewritten(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "peaks.json").write_bytes(content)
    peak = measured_peak(CPU, "fp32", "cpu:test", tmp_path, TINY)
    assert not peak.cached and peak.compute_gflop_per_s > 0
    assert any("peaks cache" in note and "rewritten" in note for note in peak.notes)
    cache = cache_of(tmp_path)
    assert isinstance(cache, dict) and [entry_problem(e, "fp32") for e in cache.values()] == [None]
    assert measured_peak(CPU, "fp32", "cpu:test", tmp_path, TINY).cached  # repaired for good


def _sound_entry() -> dict[str, Any]:
    return {
        "gemm_gflop_per_s": 100.0, "gemm_size": 64, "bandwidth_gb_s": 10.0, "bandwidth_buffer_mib": 4.0,
        "dtype": "fp32", "compute_gflop_per_s": 120.0, "compute_kernel": "gemm 64x64x64", "measured_at": time.time(),
    }  # fmt: skip


BAD_ENTRIES = {
    "null": lambda e: None,
    "a list": lambda e: [1, 2, 3],
    "missing field": lambda e: {k: v for k, v in e.items() if k != "gemm_gflop_per_s"},
    "string value": lambda e: e | {"gemm_gflop_per_s": "fast"},
    "bool value": lambda e: e | {"gemm_size": True},
    "negative rate": lambda e: e | {"compute_gflop_per_s": -1.0},
    "string bandwidth": lambda e: e | {"bandwidth_gb_s": "10"},
    "other dtype": lambda e: e | {"dtype": "bf16"},
    "too old": lambda e: e | {"measured_at": time.time() - (MAX_AGE_DAYS + 1) * 86400},
}


@pytest.mark.parametrize("spoil", BAD_ENTRIES.values(), ids=BAD_ENTRIES.keys())
def test_bad_cache_entry_is_remeasured_and_rewritten(tmp_path: Path, spoil: Any) -> None:
    key, _ = cache_key("cpu:test", "fp32", CPU, TINY)
    assert entry_problem(_sound_entry(), "fp32") is None
    (tmp_path / "peaks.json").write_text(json.dumps({key: spoil(_sound_entry()), "other": {"kept": True}}))
    peak = measured_peak(CPU, "fp32", "cpu:test", tmp_path, TINY)
    assert not peak.cached and peak.compute_gflop_per_s > 0 and peak.compute_gflop_per_s != 120.0
    assert any("unusable" in note and "re-measured and rewritten" in note for note in peak.notes)
    cache = cache_of(tmp_path)
    assert entry_problem(cache[key], "fp32") is None and cache["other"] == {"kept": True}  # others untouched


def test_unwritable_cache_measures_and_notes(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    peak = measured_peak(CPU, "fp32", "cpu:test", blocker, TINY)
    assert not peak.cached and peak.compute_gflop_per_s > 0
    assert any("measured without the cache" in note for note in peak.notes)


def test_bandwidth_out_of_memory_keeps_the_compute_roof(tmp_path: Path) -> None:
    """A 1 PiB copy buffer (then 512 TiB) exceeds any address space: the bandwidth probe fails with out-of-memory
    on every size it tries, and what was measured (the compute roof) is returned and cached, with notes."""
    plan = ProbePlan(TINY.gemm_sizes, TINY.conv_shapes, 2**50, TINY.window_s, 1, bandwidth_floor_bytes=2**49)
    peak = measured_peak(CPU, "fp32", "cpu:test", tmp_path, plan)
    assert peak.bandwidth_gb_s is None and peak.bandwidth_buffer_mib is None and peak.compute_gflop_per_s > 0
    assert sum("did not fit in memory" in note for note in peak.notes) == 2
    assert any("measured bandwidth unknown" in note for note in peak.notes)
    again = measured_peak(CPU, "fp32", "cpu:test", tmp_path, plan)
    assert again.cached and again.bandwidth_gb_s is None and again.compute_gflop_per_s == peak.compute_gflop_per_s


WRITER = textwrap.dedent(
    """
    import sys
    import time
    from pathlib import Path
    from gflops_track.peaks.probes import update_cache

    folder, name, count = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    (folder / f"ready-{name}").touch()
    while not (folder / "go").exists():  # all writers start together
        time.sleep(0.01)

    def add(cache, i):
        until = time.perf_counter() + 0.002  # a read-modify-write that takes a while, as a probe does
        while time.perf_counter() < until:
            pass
        cache[f"{name}-{i}"] = {"i": i}
        return []

    for i in range(count):
        update_cache(folder / "peaks.json", lambda cache, i=i: add(cache, i))
    """
)


def test_parallel_writers_lose_no_entry(tmp_path: Path) -> None:
    """Four processes, started together, each add 30 entries by read-modify-write. Without the lock writers overwrite
    each other's additions (73 of 180 survived when tried with six); with it all 120 are there, in valid JSON."""
    env = {"PYTHONPATH": SRC}
    names = [f"w{n}" for n in range(4)]
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), name, "30"], env=env) for name in names]
    deadline = time.monotonic() + 300
    while not all((tmp_path / f"ready-{name}").exists() for name in names) and time.monotonic() < deadline:
        time.sleep(0.05)
    (tmp_path / "go").touch()
    assert [writer.wait(timeout=300) for writer in writers] == [0] * 4
    assert set(cache_of(tmp_path)) == {f"{name}-{i}" for name in names for i in range(30)}


PROBER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    import torch
    from gflops_track.peaks.probes import ProbePlan, measured_peak

    plan = ProbePlan((32, 64), ((1, 8, 8, "contiguous"),), 4 * 2**20, 0.002, 1)
    peak = measured_peak(torch.device("cpu"), "fp32", "cpu:parallel", Path(sys.argv[1]), plan)
    print("cached" if peak.cached else "measured")
    """
)


def test_parallel_jobs_measure_once(tmp_path: Path) -> None:
    """Three jobs start on an empty cache at once: the lock is held from read to write, so one measures and the
    others read its entry."""
    env = {"PYTHONPATH": SRC}
    jobs = [
        subprocess.Popen([sys.executable, "-c", PROBER, str(tmp_path)], env=env, stdout=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    outputs = sorted(job.communicate(timeout=300)[0].strip() for job in jobs)
    assert outputs == ["cached", "cached", "measured"]
    assert len(cache_of(tmp_path)) == 1
