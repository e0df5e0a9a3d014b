"""The regression gate's false-alarm rate and its power, measured. Run by hand; prints two tables.

    python bench/bench_gate.py [--pairs 100] [--synthetic-pairs 1000] [--threshold 5%] [--max-time-s 2]

* synthetic: pairs of sample sets drawn from the same distribution (false alarms) and from ones 1.3x and 2x slower
  (power), for sample counts n = 1 ... 50, judged by the gate's rule (10% quantile, 99% bootstrap, Mann-Whitney U)
  without its sample minimum (``min_samples=1``) and with it, and by a 95% instead of the 99% bootstrap.
  Distributions: log-normal with CV 10%; the same with a between-run drift (each run scaled by a factor drawn
  uniformly from 0.97 .. 1.03, which the samples of one run cannot see); a heavy tail (10% of samples 1.5-3x).
* real: pairs of real profiles (``gflops_track.profile``: counting and timing by the package's own engine, its
  conditions watcher deciding ``timing_suspect`` and the load) under a CPU load this script makes itself: one
  busy-looping process per core and one bursty process (busy and idle in random spells of 50-300 ms), each with its
  own deadline, stopped by PID. The candidate is the same module, or one made 1.3x or 2x slower *through code*: the
  same constructor arguments, a forward that repeats its work 13 or 20 times instead of 10. Each pair is judged twice:
  from the stored runs (``Side.from_row``'s rule: samples, suspect, contended), as ``compare --baseline --candidate``
  would, and re-measured interleaved in one process (``timing.duet``), as ``compare --rerun`` does.

Targets, per 100 pairs under load: identical, no REGRESSION and at most 10 INCONCLUSIVE; 1.3x, at least 95
REGRESSION; 2x, 100 REGRESSION (the gate with ``--rerun``: stored runs whose cores other processes took are
INCONCLUSIVE by design). This is CPU-heavy: ``--pairs`` sets N; numbers from a machine busy with other work say
little beyond the ratio each pair measures side by side.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace

import numpy as np
import torch
from rich.console import Console
from rich.table import Table
from torch import nn

from gflops_track import CountOptions, profile
from gflops_track.compare.gate import (
    INCONCLUSIVE,
    LOW_QUANTILE,
    MIN_SAMPLES,
    REGRESSION,
    SPARE,
    Side,
    bootstrap_ratio,
    judge,
    judge_paired,
    parse_threshold,
)
from gflops_track.options.timing import TimingOptions
from gflops_track.timing.duet import interleaved

SIZES = (1, 2, 3, 5, 8, 10, 15, 20, 30, 50)
CV = 0.10
DRIFT = 0.03
LOAD_DEADLINE_S = 900  # per row at least: a load process never outlives its deadline, even if this script dies
BUSY_LOOP = "import sys, time\nend = time.monotonic() + float(sys.argv[1])\nwhile time.monotonic() < end:\n    pass\n"
BURSTY_LOOP = (  # busy and idle in random spells of 50-300 ms
    "import random, sys, time\nend = time.monotonic() + float(sys.argv[1])\nwhile time.monotonic() < end:\n"
    "    spell = time.monotonic() + random.uniform(0.05, 0.3)\n    while time.monotonic() < spell:\n        pass\n"
    "    time.sleep(random.uniform(0.05, 0.3))\n"
)

Draw = Callable[[np.random.Generator, int], np.ndarray]


def lognormal(rng: np.random.Generator, n: int) -> np.ndarray:
    sigma = np.sqrt(np.log(1 + CV**2))  # CV of a log-normal = sqrt(exp(sigma^2) - 1)
    return 10.0 * rng.lognormal(0.0, sigma, n)


def drifting(rng: np.random.Generator, n: int) -> np.ndarray:
    return lognormal(rng, n) * rng.uniform(1 - DRIFT, 1 + DRIFT)


def heavy_tail(rng: np.random.Generator, n: int) -> np.ndarray:
    data = lognormal(rng, n) * 0.5 + 5.0  # CV 5% core
    outliers = rng.random(n) < 0.10
    return np.where(outliers, data * rng.uniform(1.5, 3.0, n), data)


DISTRIBUTIONS: dict[str, Draw] = {
    "log-normal CV 10%": lognormal,
    f"+ run drift ±{DRIFT:.0%}": drifting,
    "heavy tail (10% at 1.5-3x)": heavy_tail,
}


def synthetic(pairs: int, threshold: float) -> Table:
    table = Table(title=f"synthetic: {pairs} pairs per cell, threshold {threshold:.0%}, counts of REGRESSION")
    columns = (
        "distribution", "n", "identical: 95% interval, any n", "identical: 99% interval, any n",
        f"identical: gate (99%, n >= {MIN_SAMPLES})", "1.3x: caught, 99%, any n", "2x: caught, 99%, any n",
    )  # fmt: skip
    for column in columns:
        table.add_column(column, justify="left" if column == "distribution" else "right")
    rng = np.random.default_rng(1)
    for name, draw in DISTRIBUTIONS.items():
        for n in SIZES:
            raw95 = raw = gated = caught = caught13 = 0
            for _ in range(pairs):
                base = Side.from_samples("b", draw(rng, n).tolist())
                same = Side.from_samples("c", draw(rng, n).tolist())
                slow = Side.from_samples("c", (2 * draw(rng, n)).tolist())
                slower13 = Side.from_samples("c", (1.3 * draw(rng, n)).tolist())
                rule = judge(base, same, threshold, min_samples=1)
                raw += rule.regression
                low95 = bootstrap_ratio(base.samples, same.samples, 0.95, quantile=LOW_QUANTILE)[0]
                raw95 += rule.ratio > 1 + threshold and low95 > 1
                gated += judge(base, same, threshold).regression
                caught += judge(base, slow, threshold, min_samples=1).regression
                caught13 += judge(base, slower13, threshold, min_samples=1).regression
            rates = (raw95, raw, gated)
            table.add_row(
                name, str(n), *(f"{count / pairs:.1%}" for count in rates), f"{caught13}/{pairs}", f"{caught}/{pairs}"
            )
    return table


@contextmanager
def cpu_load(processes: int, bursty: int = 1, deadline_s: float = LOAD_DEADLINE_S) -> Iterator[list[int]]:
    """``processes`` busy-looping Python subprocesses and ``bursty`` ones alternating busy and idle spells, each
    bounded by its own deadline (``deadline_s``: longer than the row they load); terminated by PID on exit."""
    commands = [[sys.executable, "-c", BUSY_LOOP, str(deadline_s)] for _ in range(processes)]
    commands += [[sys.executable, "-c", BURSTY_LOOP, str(deadline_s)] for _ in range(bursty)]
    busy = [subprocess.Popen(command, stdin=subprocess.DEVNULL) for command in commands]
    try:
        time.sleep(0.3)  # let them reach their loops
        yield [process.pid for process in busy]
    finally:
        for process in busy:
            process.terminate()
        for process in busy:
            process.wait(timeout=10)


class Work(nn.Module):
    """Ten units of work: a 256x256 Linear + ReLU on a batch of 32, applied ten times."""

    UNITS = 10

    def __init__(self, width: int = 256) -> None:
        super().__init__()
        self.layer = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(self.UNITS):
            x = torch.relu(self.layer(x))
        return x


class Slower13(Work):
    """The same module, its forward changed to do 13 units: 1.3x the work, the same config."""

    UNITS = 13


class Slower2(Work):
    """The same module, its forward changed to do 20 units: 2x the work, the same config."""

    UNITS = 20


def stored_side(label: str, module: nn.Module, x: torch.Tensor, options: TimingOptions) -> Side:
    """A real profile, as the gate reads its stored run: samples, ``timing_suspect`` and whether other processes
    took the cores its threads needed (the logged conditions, as ``rows.row_from_run`` reads them)."""
    result = profile(module, x, device="cpu", timing=options, counting=CountOptions(thop=False, torch_check=False))
    timing = result.timing
    assert timing is not None
    metrics = timing.metrics(1.0)
    row_like = {key: value for key, value in metrics.items() if key.startswith("timing/cond_")}
    other = row_like.get("timing/cond_other_processes_cpu_per_wall")
    spare = row_like.get("timing/cond_cpus_available", 0.0) - row_like.get("timing/cond_threads", 0.0)
    suspect = bool(timing.conditions.warnings) or metrics.get("timing/suspect", 0.0) == 1.0
    side = Side.from_samples(label, timing.latency.samples_ms, timing_suspect=suspect, other_load=other)
    return replace(side, contended=other is not None and other > spare + SPARE)


def duet_samples(
    base: nn.Module, cand: nn.Module, x: torch.Tensor, options: TimingOptions
) -> tuple[list[float], list[float]]:
    """Both modules re-measured now, interleaved call by call (``compare --rerun``'s way)."""

    def timed(module: nn.Module) -> Callable[[], float]:
        def call() -> float:
            with torch.inference_mode():
                start = time.perf_counter()
                module(x)
                return (time.perf_counter() - start) * 1e3

        return call

    samples = interleaved([timed(base.eval()), timed(cand.eval())], options.warmup, 30, 10_000, options.max_time_s)
    return samples[0], samples[1]


def real(pairs: int, threshold: float, options: TimingOptions, load_processes: int) -> Table:
    torch.manual_seed(0)
    x = torch.randn(32, 256)
    title = (
        f"real profiles under load ({load_processes} busy + 1 bursty process): {pairs} pairs per row, threshold "
        f"{threshold:.0%}, Work (10 x Linear 256 + ReLU, batch 32), CPU, {options.max_time_s:g} s budget"
    )
    table = Table(title=title)
    for column in ("candidate", "judged", "REGRESSION", "INCONCLUSIVE", "passed", "median ratio"):
        table.add_column(column, justify="left" if column in ("candidate", "judged") else "right")
    for name, slower in (("identical", Work), ("1.3x slower (code)", Slower13), ("2x slower (code)", Slower2)):
        verdicts: dict[str, Counter[str]] = {"stored runs": Counter(), "--rerun (interleaved)": Counter()}
        ratios: dict[str, list[float]] = {"stored runs": [], "--rerun (interleaved)": []}
        # a pair: two stored profiles and one interleaved re-measure, each up to max_time_s, plus warm-up: the load
        # must outlast the row (100 pairs at a 3 s budget run past 900 s)
        with cpu_load(load_processes, deadline_s=max(LOAD_DEADLINE_S, pairs * (3 * options.max_time_s + 10))):
            for index in range(pairs):
                torch.manual_seed(index)
                base, cand = Work(), slower()
                cand.load_state_dict(base.state_dict())
                stored = judge(stored_side("b", base, x, options), stored_side("c", cand, x, options), threshold)
                duet = judge_paired("pair", *duet_samples(base, cand, x, options), threshold)
                for key, verdict in (("stored runs", stored), ("--rerun (interleaved)", duet)):
                    verdicts[key][verdict.status] += 1
                    ratios[key].append(verdict.ratio or float("nan"))
        for key, counts in verdicts.items():
            passed = pairs - counts[REGRESSION] - counts[INCONCLUSIVE]
            table.add_row(name, key, str(counts[REGRESSION]), str(counts[INCONCLUSIVE]), str(passed),
                          f"{float(np.nanmedian(ratios[key])):.2f}")  # fmt: skip
    return table


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_argument("--pairs", type=int, default=100, help="real profile pairs per row (default 100)")
    cli.add_argument("--synthetic-pairs", type=int, default=1000, help="synthetic pairs per cell (default 1000)")
    cli.add_argument("--threshold", default="5%")
    cli.add_argument("--max-time-s", type=float, default=2.0, help="timing budget per profile (default 2 s)")
    cli.add_argument("--threads", type=int, default=1, help="torch threads for the real profiles (default 1)")
    cli.add_argument("--load-processes", type=int, default=os.cpu_count() or 1, help="busy processes (default: CPUs)")
    cli.add_argument("--skip-real", action="store_true")
    cli.add_argument("--skip-synthetic", action="store_true")
    args = cli.parse_args()
    threshold = parse_threshold(args.threshold)
    console = Console(width=160)
    if not args.skip_synthetic:
        console.print(synthetic(args.synthetic_pairs, threshold))
    if not args.skip_real:
        torch.set_num_threads(args.threads)
        options = TimingOptions(warmup=3, warmup_max_s=0.5, min_repeats=30, max_time_s=args.max_time_s, layers=False)
        console.print(real(args.pairs, threshold, options, args.load_processes))
    console.print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
