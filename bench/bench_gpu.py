"""The table a first GPU run should be checked against. Run by hand on a quiet GPU; prints two tables.

    python bench/bench_gpu.py [--device cuda:0] [--max-time 3]

* the seed block ``ResidualBlock(384, 384, 'group')`` on (2, 384, 32, 32) at fp32, tf32, fp16 and bf16 (autocast),
  L2 flush off and on: eager median, CUDA-graph replay median and their ratio, GFLOP/s (counted FLOPs / median),
  share of the datasheet's dense peak, energy per forward (J) and GFLOP/J where NVML reports energy (L2 flush off
  only: the flush would run inside the energy window; never on a MIG slice), suspect flag;
* the probes per dtype against the datasheet: best GEMM (GFLOP/s and share of the datasheet figure), the roof (best
  of GEMM and convolution) and which kernel set it, copy bandwidth and share of the datasheet's.

What to look for: graph/eager between ~0.3 and ~1.1 (below 0.02 it is rejected as an empty graph); flush on >= flush
off; no GEMM probe above ~100% of the datasheet (above: the probe's timing is wrong); bf16/fp16 several times fp32.
Probes use a temporary peaks cache, never the user's. Without CUDA the script says so and exits 0.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from gflops_track.counting.op_counter import count_cost
from gflops_track.models import ResidualBlock
from gflops_track.options.runtime import RuntimeOptions
from gflops_track.options.timing import TimingOptions
from gflops_track.peaks.probes import measured_peak
from gflops_track.peaks.table import gpu_spec
from gflops_track.pipeline.runtime import prepare, runtime_context
from gflops_track.timing.engine import measure_latency

SEED_SHAPE = (2, 384, 32, 32)
DTYPES = ("fp32", "tf32", "fp16", "bf16")


def _pct(value: float | None, of: float | None) -> str:
    return f"{value / of:.0%}" if value and of else "-"


def seed_rows(device: torch.device, max_time_s: float) -> list[list[str]]:
    spec = gpu_spec(torch.cuda.get_device_name(device))
    rows = []
    for dtype in DTYPES:
        for flush in (False, True):
            runtime = RuntimeOptions(dtype=dtype)
            model = ResidualBlock(384, 384, "group").to(device).eval()
            x = torch.randn(SEED_SHAPE, device=device)
            flops = count_cost(model, (x,)).flops
            options = TimingOptions(max_time_s=max_time_s, cuda_graph=True, flush_l2=flush)
            with runtime_context(runtime):
                forward, _, _ = prepare(model, (x,), {}, runtime, device)
                timing = measure_latency(forward, device, options)
            eager, graph = timing.latency.median_ms, timing.graph_latency
            achieved = flops / (eager / 1e3) / 1e9
            datasheet = spec.tflops.get(dtype) * 1e3 if spec and spec.tflops.get(dtype) else None
            per_joule = timing.gflop_per_joule(flops)
            rows.append([
                dtype, "on" if flush else "off", f"{eager:.4f}",
                f"{graph.median_ms:.4f}" if graph else "-", f"{graph.median_ms / eager:.2f}" if graph else "-",
                f"{achieved:,.0f}", _pct(achieved, datasheet),
                f"{timing.energy_per_iteration_j:.4f}" if timing.energy_per_iteration_j else "-",
                f"{per_joule:,.1f}" if per_joule else "-",
                "yes" if timing.suspect else "no",
            ])  # fmt: skip
            if graph is None or timing.suspect:
                rows[-1][-1] += " (" + "; ".join(timing.notes)[:160] + ")"
    return rows


def probe_rows(device: torch.device, cache_dir: Path) -> list[list[str]]:
    spec = gpu_spec(torch.cuda.get_device_name(device))
    rows = []
    for dtype in DTYPES:
        peak = measured_peak(device, dtype, f"bench:{torch.cuda.get_device_name(device)}", cache_dir)
        datasheet = spec.tflops.get(dtype) * 1e3 if spec and spec.tflops.get(dtype) else None
        rows.append([
            dtype, f"{peak.gemm_gflop_per_s:,.0f} (n={peak.gemm_size})", f"{datasheet:,.0f}" if datasheet else "-",
            _pct(peak.gemm_gflop_per_s, datasheet), f"{peak.compute_gflop_per_s:,.0f}", peak.compute_kernel,
            f"{peak.bandwidth_gb_s:,.0f}" if peak.bandwidth_gb_s else "-",
            _pct(peak.bandwidth_gb_s, spec.bandwidth_gb_s if spec else None),
        ])  # fmt: skip
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--max-time", type=float, default=3.0, help="timing.max_time_s per row (s)")
    args = parser.parse_args()
    console = Console()
    if not torch.cuda.is_available():
        console.print("bench_gpu: this machine has no CUDA device (torch.cuda.is_available() is False): nothing to do")
        return 0
    device = torch.device(args.device)
    if device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    spec = gpu_spec(torch.cuda.get_device_name(device))
    console.print(
        f"{torch.cuda.get_device_name(device)} ({device}), torch {torch.__version__}, CUDA {torch.version.cuda}; "
        f"datasheet: {spec.name + ' (' + spec.source + ')' if spec else 'none known'}"
    )
    seed = Table(title=f"Seed block ResidualBlock(384, 384, 'group') on {SEED_SHAPE}, autocast where fp16/bf16")
    for column in ("dtype", "L2 flush", "eager ms", "graph ms", "graph/eager", "GFLOP/s", "of datasheet",
                   "J/forward", "GFLOP/J", "suspect"):  # fmt: skip
        seed.add_column(column)
    for row in seed_rows(device, args.max_time):
        seed.add_row(*row)
    console.print(seed)
    probes = Table(title="Probes vs datasheet (dense figures)")
    for column in ("dtype", "GEMM probe GFLOP/s", "datasheet GFLOP/s", "GEMM of datasheet", "roof GFLOP/s",
                   "roof kernel", "copy GB/s", "of datasheet"):  # fmt: skip
        probes.add_column(column)
    with tempfile.TemporaryDirectory() as cache_dir:
        for row in probe_rows(device, Path(cache_dir)):
            probes.add_row(*row)
    console.print(probes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
