"""The table a first GPU run should be checked against. Run by hand on a quiet GPU; prints two tables.

    python bench/bench_gpu.py [--device cuda:0] [--max-time 3]

* the seed block ``ResidualBlock(384, 384, 'group')`` on (2, 384, 32, 32) at fp32, tf32, fp16 and bf16 (autocast),
  L2 flush off and on: eager median, CUDA-graph replay median and their ratio, GFLOP/s (counted FLOPs / median),
  share of the datasheet's dense peak, energy per forward (J) and GFLOP/J where NVML reports energy (L2 flush off
  only: the flush would run inside the energy window; never on a MIG slice; those rows' bound is at least 4 s, so the
  timed loop outlasts the 1 s the counter's ~100 ms steps need), suspect flag;
* the probes per dtype against the datasheet: best GEMM (GFLOP/s and share of the datasheet figure), the roof (best
  of GEMM and convolution) and which kernel set it, copy bandwidth and share of the datasheet's.

What to look for: graph/eager between ~0.3 and ~1.1 (below 0.02 it is rejected as an empty graph); for graph
replays, flush on >= flush off (an eager row that is launch-bound, graph/eager well below 1, can be quicker with the
flush: the flush kernel lets the CPU queue the forward ahead, so the GPU no longer waits on each launch); no GEMM
probe above ~100% of the datasheet (above: the probe's timing is wrong); a roof above 100% is a convolution by an
algorithm that does fewer multiplications than counted (on an H200, fp32 3x3 convolutions ran as FFTs: 162%);
bf16/fp16 several times fp32 where the GPU, not the CPU, sets the pace. Tables are Markdown when piped; in a
terminal, 80 columns keep every number whole. Numbers from an H200: docs/benchmarks.md.
Probes use a temporary peaks cache, never the user's. Without CUDA the script says so and exits 0.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import torch
from rich import box
from rich.table import Table
from rich.text import Text

from gflops_track.app.console import Whole, console
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
ENERGY_LOOP_S = 4.0  # the flush-off rows' bound: with a graph, eager gets 60% of it, warm-up up to half: 1.2 s timed
ENERGY_REPEATS = 100_000  # more than fit in the bound, so the bound ends the loop


def _pct(value: float | None, of: float | None) -> str:
    return f"{value / of:.0%}" if value and of else "-"


def seed_rows(device: torch.device, max_time_s: float) -> tuple[list[list[str]], list[str]]:
    """The seed table's rows, and the footnotes its "suspect" cells point to (a timing's notes, whole)."""
    spec = gpu_spec(torch.cuda.get_device_name(device))
    rows, footnotes = [], []
    for dtype in DTYPES:
        for flush in (False, True):
            runtime = RuntimeOptions(dtype=dtype)
            model = ResidualBlock(384, 384, "group").to(device).eval()
            x = torch.randn(SEED_SHAPE, device=device)
            flops = count_cost(model, (x,)).flops
            options = TimingOptions(max_time_s=max_time_s, cuda_graph=True, flush_l2=flush)
            if not flush:  # energy needs a loop of ENERGY_MIN_WINDOW_S or more: time until the bound, not the precision
                options = replace(options, max_time_s=max(max_time_s, ENERGY_LOOP_S), min_repeats=ENERGY_REPEATS,
                                  max_repeats=ENERGY_REPEATS)  # fmt: skip
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
            if (graph is None or timing.suspect) and timing.notes:
                footnotes.append(f"{dtype}, L2 flush {rows[-1][1]}: " + "; ".join(timing.notes))
                rows[-1][-1] += f" [{len(footnotes)}]"
    return rows, footnotes


PROBE_LABELS = ("GEMM probe GFLOP/s", "datasheet GFLOP/s", "GEMM of datasheet", "roof GFLOP/s", "roof of datasheet",
                "roof kernel", "copy GB/s", "copy of datasheet")  # fmt: skip


def probe_columns(device: torch.device, cache_dir: Path) -> list[list[str]]:
    """One column of figures per dtype, in ``PROBE_LABELS``' order (the table is printed one row per figure)."""
    spec = gpu_spec(torch.cuda.get_device_name(device))
    rows = []
    for dtype in DTYPES:
        peak = measured_peak(device, dtype, f"bench:{torch.cuda.get_device_name(device)}", cache_dir)
        datasheet = spec.tflops.get(dtype) * 1e3 if spec and spec.tflops.get(dtype) else None
        rows.append([
            f"{peak.gemm_gflop_per_s:,.0f} (n={peak.gemm_size})", f"{datasheet:,.0f}" if datasheet else "-",
            _pct(peak.gemm_gflop_per_s, datasheet), f"{peak.compute_gflop_per_s:,.0f}",
            _pct(peak.compute_gflop_per_s, datasheet), peak.compute_kernel,
            f"{peak.bandwidth_gb_s:,.0f}" if peak.bandwidth_gb_s else "-",
            _pct(peak.bandwidth_gb_s, spec.bandwidth_gb_s if spec else None),
        ])  # fmt: skip
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--max-time", type=float, default=3.0, help="timing.max_time_s per row (s)")
    args = parser.parse_args()
    markdown = not console.is_terminal  # a pipe, a file, a CI log: Markdown tables at their natural width
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
    rows, footnotes = seed_rows(device, args.max_time)
    seed = _table(f"Seed block ResidualBlock(384, 384, 'group') on {SEED_SHAPE}, autocast where fp16/bf16", markdown,
                  ("dtype", "L2 flush", "eager ms", "graph ms", "graph / eager", "GFLOP/s", "of spec",
                   "J per forward", "GFLOP/J", "suspect"), rows)  # fmt: skip
    console.print(Whole(seed))
    for number, footnote in enumerate(footnotes, start=1):
        console.print(Text(f"[{number}] {footnote}"))
    with tempfile.TemporaryDirectory() as cache_dir:
        columns = probe_columns(device, Path(cache_dir))
    rows = [[label, *(column[index] for column in columns)] for index, label in enumerate(PROBE_LABELS)]
    probes = _table("Probes vs datasheet (dense figures)", markdown, ("", *DTYPES), rows)
    console.print(Whole(probes))
    console.print(Text(ROOF_ABOVE_DATASHEET))
    return 0


ROOF_ABOVE_DATASHEET = (
    "A roof above 100% of the datasheet is a convolution whose algorithm does fewer multiplications than the direct "
    "one counted here (cuDNN's Winograd or FFT kernels): its GFLOP/s are counted FLOPs per second, not the chip's. A "
    "GEMM probe above ~100% means the probe's timing is wrong."
)


def _table(title: str, markdown: bool, columns: tuple[str, ...], rows: list[list[str]]) -> Table:
    """A table whose numbers are never cut or folded: each column at least as wide as the longest word in it, so
    cells and headers wrap at spaces only; a light box in a terminal (80 columns fit), Markdown elsewhere."""
    table = Table(
        title=title,
        box=box.MARKDOWN if markdown else box.SIMPLE_HEAD,
        title_justify="left",
        padding=(0, 1) if markdown else (0, 0),
        show_edge=markdown,
    )
    for index, column in enumerate(columns):
        words = [word for text in (column, *(row[index] for row in rows)) for word in text.split()]
        table.add_column(column, overflow="fold", min_width=max(map(len, words), default=1))
    for row in rows:
        table.add_row(*row)
    return table


if __name__ == "__main__":
    sys.exit(main())
