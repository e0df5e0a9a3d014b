"""The GPU path (issue 14), written to catch each defect on real hardware; skipped without CUDA.

1 graph on a non-current device / empty graph (and the current stream restored after it); 3 memory baseline vs
growth; 4 NVML by UUID, energy deltas (none with the L2 flush in the window); 6 flush buffer size; 8 probes timed with
events, cache keyed by the GPU's UUID; 10 warm-up in blocks without a sync per iteration; a training step's memory
growth holds its gradients. Every test uses a temporary peaks cache, never the user's."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient
from torch import nn

from conftest import QUICK_NO_THOP, SMALL_BLOCK, requires_cuda, run_cli
from gflops_track import CountOptions, PeakOptions, profile
from gflops_track.options.runtime import RuntimeOptions
from gflops_track.options.timing import TimingOptions
from gflops_track.peaks.probes import cache_key, measured_peak
from gflops_track.peaks.table import gpu_spec
from gflops_track.timing.conditions import NvmlDevice
from gflops_track.timing.engine import FLUSH_MIN_BYTES, _graph_forward, flush_bytes, measure_latency

pytestmark = [pytest.mark.cuda, requires_cuda]
TWO_GPUS = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
SRC = str(Path(__file__).resolve().parents[1] / "src")
GRAPHED = TimingOptions(warmup=5, min_repeats=20, max_time_s=3, cuda_graph=True)


def conv_forward(device: torch.device) -> tuple[nn.Module, torch.Tensor]:
    """A 3x3 conv whose kernel time (~10^2 us) dominates its launch cost: a replay cannot be much faster."""
    return nn.Conv2d(64, 64, 3, padding=1).to(device).eval(), torch.randn(8, 64, 56, 56, device=device)


def test_graph_replay_is_not_empty_on_the_current_device() -> None:
    device = torch.device("cuda", torch.cuda.current_device())
    model, x = conv_forward(device)
    result = measure_latency(lambda: model(x), device, GRAPHED)
    graph = result.graph_latency
    assert graph is not None, result.notes
    # an empty replay takes a few us against ~100 us of convolution: 0.5 catches it with room to spare
    assert graph.median_ms > 0.5 * result.latency.median_ms


@TWO_GPUS
def test_graph_on_a_non_current_device_captures_that_device() -> None:
    """Issue 14.1: with cuda:0 current, timing on cuda:1 once captured nothing and replayed an empty graph on cuda:0."""
    torch.cuda.set_device(0)
    device = torch.device("cuda", 1)
    model, x = conv_forward(device)
    result = measure_latency(lambda: model(x), device, GRAPHED)
    assert result.graph_latency is not None, result.notes
    assert result.graph_latency.median_ms > 0.5 * result.latency.median_ms
    assert torch.cuda.current_device() == 0  # the device scope is restored


def test_empty_graph_is_an_error_and_is_not_timed() -> None:
    """The failed capture leaves the device's default stream current: torch.cuda.graph raises from capture_end before
    it restores the stream, and everything after would run on the dead capture stream."""
    device = torch.device("cuda", torch.cuda.current_device())
    with pytest.raises((UserWarning, RuntimeError), match="CUDA Graph is empty"):
        _graph_forward(lambda: torch.ones(4).sum(), device)  # CPU work only: nothing reaches the capture stream
    assert torch.cuda.current_stream(device) == torch.cuda.default_stream(device)
    result = measure_latency(lambda: torch.ones(4).sum(), device, GRAPHED)
    assert result.graph_latency is None
    assert any("CUDA graph replay not timed" in note and "empty" in note for note in result.notes)
    assert torch.cuda.current_stream(device) == torch.cuda.default_stream(device)


def test_launch_bound_graph_replay_is_kept() -> None:
    """100 ReLUs on 16 elements: eager pays Python, dispatch and a launch per op, a replay only a node each. The replay
    is far faster and is a genuine graph: GRAPH_MIN_RATIO must not reject it."""
    device = torch.device("cuda", torch.cuda.current_device())
    model, x = nn.Sequential(*[nn.ReLU() for _ in range(100)]).to(device), torch.randn(16, device=device)
    result = measure_latency(lambda: model(x), device, GRAPHED)
    assert result.graph_latency is not None, result.notes
    assert result.graph_latency.median_ms < result.latency.median_ms


def test_memory_baseline_and_growth_exclude_the_flush_buffer() -> None:
    """Linear(16, 16) on (4, 16), fp32: weights 16*16*4 + bias 16*4 + input 4*16*4 = 1,344 bytes held before timing;
    each call allocates a 4*16*4 = 256-byte output. The 256 MiB flush buffer is neither baseline nor growth."""
    device = torch.device("cuda", torch.cuda.current_device())
    model, x = nn.Linear(16, 16).to(device).eval(), torch.randn(4, 16, device=device)
    result = measure_latency(
        lambda: model(x), device, TimingOptions(warmup=2, min_repeats=10, max_time_s=1, flush_l2=True)
    )
    assert result.memory_kind == "cuda_allocated" and result.l2_flushed
    assert 1_344 <= result.memory_baseline_bytes < 64 * 2**20
    assert 256 <= result.memory_growth_bytes < 2**20 and result.memory_growth_bytes < result.l2_flush_bytes


def test_flush_buffer_is_at_least_256_mib_and_twice_l2() -> None:
    device = torch.device("cuda", torch.cuda.current_device())
    l2 = torch.cuda.get_device_properties(device).L2_cache_size
    assert l2 > 0 and FLUSH_MIN_BYTES == 256 * 2**20
    assert flush_bytes(device) == max(256 * 2**20, 2 * l2)
    result = measure_latency(
        lambda: None, device, TimingOptions(warmup=0, min_repeats=1, max_time_s=0.2, flush_l2=True)
    )
    assert result.l2_flush_bytes == flush_bytes(device)


def test_nvml_handle_by_uuid_is_the_torch_device() -> None:
    for index in range(torch.cuda.device_count()):
        with NvmlDevice.open(torch.device("cuda", index)) as gpu:
            if gpu is None:
                pytest.skip("NVML unavailable")
            uuid = gpu.nvml.nvmlDeviceGetUUID(gpu.handle)
            uuid = uuid.decode() if isinstance(uuid, bytes) else uuid
            assert uuid.split("-", 1)[1] == str(torch.cuda.get_device_properties(index).uuid)
            assert gpu.name() == torch.cuda.get_device_name(index)
            reference = gpu.sm_clock_reference_mhz()  # default applications clock, else applications, else maximum
            maximum = gpu.nvml.nvmlDeviceGetMaxClockInfo(gpu.board, gpu.nvml.NVML_CLOCK_SM)
            assert reference is not None and 0 < reference <= maximum


UUID_CHECK = textwrap.dedent(
    """
    import torch
    from gflops_track.timing.conditions import NvmlDevice
    with NvmlDevice.open(torch.device("cuda", 0)) as gpu:
        uuid = gpu.nvml.nvmlDeviceGetUUID(gpu.handle)
        uuid = uuid.decode() if isinstance(uuid, bytes) else uuid
        print(uuid.split("-", 1)[1] == str(torch.cuda.get_device_properties(0).uuid))
    """
)


@TWO_GPUS
def test_nvml_under_cuda_visible_devices_reads_the_visible_gpu() -> None:
    """CUDA_VISIBLE_DEVICES=1: CUDA's device 0 is NVML's GPU 1. A lookup by index would read GPU 0."""
    env = os.environ | {"CUDA_VISIBLE_DEVICES": "1", "PYTHONPATH": SRC}
    done = subprocess.run([sys.executable, "-c", UUID_CHECK], env=env, capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "True", done.stderr


def test_energy_is_a_delta_around_the_timed_loop() -> None:
    """Over 1 s of back-to-back 2048^3 GEMMs: the energy counter's delta gives J per iteration and GFLOP/J; the
    average power it implies lies between 0 and 1.5x the board's power limit."""
    device = torch.device("cuda", torch.cuda.current_device())
    a = torch.randn(2048, 2048, device=device)
    options = TimingOptions(warmup=5, min_repeats=10_000, max_repeats=100_000, max_time_s=3.0)
    result = measure_latency(lambda: a @ a, device, options)
    metrics = result.conditions.metrics
    assert not any("energy counter needs" in note for note in result.notes)  # the loop outlasted ENERGY_MIN_WINDOW_S
    if "gpu_energy_j" not in metrics:
        pytest.skip("this GPU does not report total energy (pre-Volta or no NVML)")
    assert result.energy_per_iteration_j == pytest.approx(metrics["gpu_energy_j"] / result.timed_iterations)
    assert result.gflop_per_joule(2 * 2048**3) == pytest.approx(2 * 2048**3 / 1e9 / result.energy_per_iteration_j)
    if "gpu_power_limit_w" in metrics:
        assert 0 < metrics["gpu_power_w"] < 1.5 * metrics["gpu_power_limit_w"]
    assert "gpu_sm_clock_mhz" in metrics  # sampled while the GPU worked through a block


def test_no_energy_per_forward_with_the_l2_flush_in_the_window() -> None:
    """flush_l2 zeroes 256 MiB before every iteration, inside the energy window: energy per forward and GFLOP/J are
    then not reported (a note says why); without the flush they are."""
    device = torch.device("cuda", torch.cuda.current_device())
    a = torch.randn(2048, 2048, device=device)
    options = TimingOptions(warmup=5, min_repeats=10_000, max_repeats=100_000, max_time_s=3.0)  # a loop over 1 s
    plain = measure_latency(lambda: a @ a, device, options)
    assert not any("energy counter needs" in note for note in plain.notes)
    if "gpu_energy_j" not in plain.conditions.metrics:
        pytest.skip("this GPU does not report total energy (pre-Volta, MIG or no NVML)")
    assert plain.energy_per_iteration_j is not None and plain.energy_per_iteration_j > 0
    assert "speed/energy_per_forward_j" in plain.metrics(2 * 2048**3)
    flushed = measure_latency(lambda: a @ a, device, replace(options, flush_l2=True))
    assert flushed.energy_per_iteration_j is None and flushed.gflop_per_joule(2 * 2048**3) is None
    assert "speed/energy_per_forward_j" not in flushed.metrics(2 * 2048**3)
    assert any("flush_l2=false" in note for note in flushed.notes)


def test_mig_slice_reports_no_energy() -> None:
    device = torch.device("cuda", torch.cuda.current_device())
    with NvmlDevice.open(device) as gpu:
        if gpu is None or not gpu.mig:
            pytest.skip("not a MIG slice (or no NVML)")
    result = measure_latency(lambda: None, device, TimingOptions(warmup=0, min_repeats=1, max_time_s=0.2))
    assert "gpu_energy_j" not in result.conditions.metrics and result.energy_per_iteration_j is None
    assert any("MIG slice" in note for note in result.notes)


def test_training_step_memory_growth_holds_the_gradients() -> None:
    """Linear(4096, 4096) without bias, fp32, on a (1, 4096) input: a 64 MiB weight gradient per step. Each step frees
    its gradients, so the memory window opens with none and the growth holds the new ones (with them held at the
    start, it was ~the activations alone: kilobytes)."""
    from gflops_track.pipeline.training_step import measure_training_step

    device = torch.device("cuda", torch.cuda.current_device())
    options = TimingOptions(warmup=2, min_repeats=5, max_time_s=1)
    timed = measure_training_step(nn.Linear(4096, 4096, bias=False), torch.randn(1, 4096), device, options=options)
    assert timed.step.memory_growth_bytes >= 4096 * 4096 * 4


def test_warmup_runs_in_blocks_without_a_sync_per_iteration(monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 14.10: warm-up synchronised every iteration while timing ran blocks. Count the synchronises: blocks of
    ~20 ms of a ~10 us module mean far fewer synchronises than iterations, in warm-up as in timing."""
    device = torch.device("cuda", torch.cuda.current_device())
    x = torch.randn(1024, device=device)
    real = torch.cuda.synchronize
    calls = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    result = measure_latency(lambda: x.mul_(1.0), device, TimingOptions(warmup=200, min_repeats=200, max_time_s=2))
    iterations = result.warmup_iterations + result.timed_iterations
    assert result.warmup_iterations >= 200 and len(calls) < iterations / 10


def test_probes_are_timed_with_events_and_stay_under_the_datasheet(tmp_path: Path) -> None:
    """Issue 14.8: a probe timed as one call between synchronises with perf_counter lost 10-25% to launch overhead;
    a mistimed event window would report absurd rates. The fp16 GEMM probe must land between 5% and 110% of the
    datasheet's dense figure when the card is known."""
    device = torch.device("cuda", torch.cuda.current_device())
    peak = measured_peak(device, "fp16", f"cuda:{torch.cuda.get_device_name(device)}", tmp_path)
    assert peak.gemm_gflop_per_s > 0 and peak.compute_gflop_per_s >= peak.gemm_gflop_per_s
    assert peak.bandwidth_gb_s is not None and peak.bandwidth_gb_s > 0
    spec = gpu_spec(torch.cuda.get_device_name(device))
    if spec is not None and spec.tflops.get("fp16"):
        datasheet = spec.tflops.get("fp16") * 1e3
        assert 0.05 * datasheet < peak.gemm_gflop_per_s <= 1.1 * datasheet
        assert peak.bandwidth_gb_s <= 1.1 * spec.bandwidth_gb_s


def test_probe_cache_key_has_uuid_and_power_limit() -> None:
    _, text = cache_key("cuda:X", "fp16", torch.device("cuda", 0))
    assert f"|cuda {torch.cuda.get_device_properties(0).uuid}" in text and "cuda:0" not in text
    with NvmlDevice.open(torch.device("cuda", 0)) as gpu:
        if gpu is not None and gpu.power_limit_w() is not None:
            assert "power_limit_w" in text
    if torch.cuda.device_count() > 1:
        assert (
            cache_key("cuda:X", "fp16", torch.device("cuda", 1))[0]
            != cache_key("cuda:X", "fp16", torch.device("cuda", 0))[0]
        )


@TWO_GPUS
def test_probes_run_on_the_asked_device(tmp_path: Path) -> None:
    torch.cuda.set_device(0)
    torch.cuda.reset_peak_memory_stats(1)
    measured_peak(torch.device("cuda", 1), "fp16", "cuda:second", tmp_path)
    assert torch.cuda.max_memory_allocated(1) >= 2 * 4096 * 4096 * 2  # two fp16 4096^2 operands lived on cuda:1
    assert torch.cuda.current_device() == 0


@pytest.mark.parametrize(
    "runtime",
    [
        RuntimeOptions(dtype="fp16"),
        RuntimeOptions(dtype="bf16"),
        RuntimeOptions(dtype="tf32"),
        RuntimeOptions(dtype="fp16", dtype_mode="convert", memory_format="channels_last"),
    ],
    ids=["fp16-autocast", "bf16-autocast", "tf32", "fp16-convert-channels_last"],
)
def test_seed_block_precisions_time_and_graph(tmp_path: Path, runtime: RuntimeOptions) -> None:
    from gflops_track.models import ResidualBlock

    result = profile(
        ResidualBlock(64, 64, "group"),
        torch.randn(2, 64, 32, 32),
        device="cuda",
        runtime=runtime,
        timing=GRAPHED,
        counting=CountOptions(thop=False),
        peak=PeakOptions(measure=True, cache_dir=tmp_path),
    )
    timing = result.timing
    assert timing is not None and timing.timer == "cuda_event" and timing.memory_kind == "cuda_allocated"
    assert timing.graph_latency is not None, timing.notes
    # a replay removes launch overhead only: one slower than twice eager timed something else
    assert timing.graph_latency.median_ms <= 2 * timing.latency.median_ms
    assert result.measured_peak is not None and result.measured_peak.compute_gflop_per_s > 0


def test_cuda_counts_equal_cpu_counts() -> None:
    from gflops_track.models import ResidualBlock

    x = torch.randn(2, 64, 16, 16)
    on_cpu = profile(ResidualBlock(64, 64, "group"), x, device="cpu", timing=False, counting=CountOptions(thop=False))
    on_gpu = profile(ResidualBlock(64, 64, "group"), x, device="cuda", timing=False, counting=CountOptions(thop=False))
    assert on_gpu.flops_by_category == on_cpu.flops_by_category and on_gpu.macs == on_cpu.macs


def test_a_sweep_on_cuda_tracks_the_gpu_path(tmp_path: Path) -> None:
    """The CLI as a user runs it on a GPU: ``-m mode=inference,train device=cuda`` gives two FINISHED runs named
    for cuda, tagged with the GPU torch sees, timed with CUDA events (forward and step, and their per-layer passes)
    and measuring memory with the CUDA allocator; the step's MFU = step GFLOP/s / the datasheet's, where it has one."""
    store = tmp_path / "mlflow.db"
    done = run_cli(
        ["-m", "mode=inference,train", "device=cuda", "norm_fn=batch", *SMALL_BLOCK, *QUICK_NO_THOP,
         f"tracking.uri=sqlite:///{store}"],
        cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{store}")
    runs = {
        run.info.run_name: run
        for run in client.search_runs([client.get_experiment_by_name("gflops-track").experiment_id])
    }
    inference, train = (
        runs["inference-residual_block-batch-b2-cuda-fp32"],
        runs["train-residual_block-batch-b2-cuda-fp32"],
    )
    for run in (inference, train):
        assert run.info.status == "FINISHED"
        assert run.data.tags["device_type"] == "cuda" and run.data.tags["gpu_name"] == torch.cuda.get_device_name(0)
    assert inference.data.tags["layer_timing"].startswith("CUDA events")
    assert train.data.tags["step_layer_timing"].startswith("CUDA events")
    assert inference.data.metrics["memory/baseline_mib"] > 0 and "cuda_allocated" in done.stdout
    step = train.data.metrics
    assert step["step/achieved_gflop_per_s"] == pytest.approx(step["step/flops"] / step["step/latency_median_ms"] / 1e6)
    if "peak/spec_gflop_per_s" in step:
        assert step["step/mfu"] == pytest.approx(step["step/achieved_gflop_per_s"] / step["peak/spec_gflop_per_s"])


def test_the_peak_probes_leave_no_memory_allocated(tmp_path: Path) -> None:
    """The GEMM probes make cuBLAS allocate its workspace through PyTorch's allocator (32 MiB on an H200); left
    allocated, every later job of a sweep counted it in its memory baseline (on the H200 the seed block's baseline
    was 13.1 MiB in a sweep's first job and 45.1 MiB in the next ones). After the probes, no more is allocated
    than before them."""
    device = torch.device("cuda", torch.cuda.current_device())
    torch._C._cuda_clearCublasWorkspaces()  # earlier tests' GEMMs made one, which the probes would reuse unseen
    torch.cuda.empty_cache()
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    measured_peak(device, "fp32", "probe-memory-test", tmp_path)
    torch.cuda.synchronize(device)
    assert torch.cuda.memory_allocated(device) <= before
