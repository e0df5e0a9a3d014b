"""The regression gate's false-alarm rate and its power, measured. Run by hand; prints two tables.

    python bench/bench_gate.py [--pairs 100] [--synthetic-pairs 1000] [--threshold 5%]

* synthetic: pairs of sample sets drawn from the same distribution (false alarms) and from one 2x slower (power), for
  sample counts n = 1 ... 50, judged by the gate's rule without its sample minimum (``min_samples=1``) and with it,
  and by the same rule with a 95% instead of the gate's 99% bootstrap interval.
  Distributions: log-normal with CV 10%; the same with a between-run drift (each run's median scaled by a factor
  drawn uniformly from 0.97 .. 1.03, which the samples of one run cannot see); a heavy tail (10% of samples 1.5-3x).
  This is what chooses the gate's ``MIN_SAMPLES``.
* real: pairs of identical profiles of a small MLP (two 256x256 Linear layers, batch 32) timed by the package's own
  engine (``gflops_track.timing.engine.measure_latency``) and judged by ``gflops_track.compare.gate.judge``, as the gate
  judges stored runs: on the machine as it is ("quiet"), and with the candidate timed under a CPU load this script
  makes itself (one busy-looping subprocess per CPU, each with its own deadline, stopped by PID). The 2x rows time the
  candidate as two forward calls per iteration: exactly twice the work. ``timing_suspect`` comes from the timing
  run's own conditions watcher, as in the app. "raw rule" is the verdict with the load rule switched off (what the
  gate said before it read ``timing_suspect``).

Targets: at most 1 false REGRESSION in 100 pairs at the default threshold (5%); a 2x slowdown never passes
(REGRESSION on a quiet machine; REGRESSION or INCONCLUSIVE under load). Timings taken on a busy machine say little:
re-measure on a quiet one before quoting the real rows.
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

from gflops_track.compare.gate import (
    INCONCLUSIVE,
    MIN_SAMPLES,
    REGRESSION,
    Side,
    bootstrap_ratio,
    judge,
    parse_threshold,
)
from gflops_track.options.timing import TimingOptions
from gflops_track.timing.engine import measure_latency

SIZES = (1, 2, 3, 5, 8, 10, 15, 20, 30, 50)
CV = 0.10
DRIFT = 0.03
LOAD_DEADLINE_S = 900  # a load process never outlives this, even if this script dies
BUSY_LOOP = "import sys, time\nend = time.monotonic() + float(sys.argv[1])\nwhile time.monotonic() < end:\n    pass\n"

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
        f"identical: gate (99%, n >= {MIN_SAMPLES})", "2x: caught, 99%, any n",
    )  # fmt: skip
    for column in columns:
        table.add_column(column, justify="left" if column == "distribution" else "right")
    rng = np.random.default_rng(1)
    for name, draw in DISTRIBUTIONS.items():
        for n in SIZES:
            raw95 = raw = gated = caught = 0
            for _ in range(pairs):
                base = Side.from_samples("b", draw(rng, n).tolist())
                same = Side.from_samples("c", draw(rng, n).tolist())
                slow = Side.from_samples("c", (2 * draw(rng, n)).tolist())
                rule = judge(base, same, threshold, min_samples=1)
                raw += rule.regression
                low95 = bootstrap_ratio(base.samples, same.samples, 0.95)[0]
                raw95 += rule.ratio > 1 + threshold and low95 > 1
                gated += judge(base, same, threshold).regression
                caught += judge(base, slow, threshold, min_samples=1).regression
            rates = (raw95, raw, gated)
            table.add_row(name, str(n), *(f"{count / pairs:.1%}" for count in rates), f"{caught}/{pairs}")
    return table


@contextmanager
def cpu_load(processes: int) -> Iterator[list[int]]:
    """``processes`` busy-looping Python subprocesses, each bounded by its own deadline; terminated by PID on exit."""
    busy = [
        subprocess.Popen([sys.executable, "-c", BUSY_LOOP, str(LOAD_DEADLINE_S)], stdin=subprocess.DEVNULL)
        for _ in range(processes)
    ]
    try:
        time.sleep(0.3)  # let them reach their loops
        yield [process.pid for process in busy]
    finally:
        for process in busy:
            process.terminate()
        for process in busy:
            process.wait(timeout=10)


def timed_side(label: str, forward: Callable[[], object], options: TimingOptions) -> Side:
    result = measure_latency(forward, "cpu", options)
    return Side.from_samples(label, result.latency.samples_ms, timing_suspect=bool(result.conditions.warnings))


def real(pairs: int, threshold: float, options: TimingOptions, load_processes: int) -> Table:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 256)).eval()
    x = torch.randn(32, 256)

    def once() -> object:
        return model(x)

    def twice() -> object:
        return model(x), model(x)

    table = Table(title=f"real: {pairs} pairs per row, threshold {threshold:.0%}, MLP 2x256x256 batch 32, CPU")
    for column in ("candidate", "timed", "REGRESSION", "INCONCLUSIVE", "passed", "raw rule: REGRESSION", "suspect"):
        table.add_column(column, justify="left" if column in ("candidate", "timed") else "right")
    for slowdown, forward in (("identical", once), ("2x slower", twice)):
        for loaded in (False, True):
            verdicts: Counter[str] = Counter()
            raw = suspect = 0
            for index in range(pairs):
                base = timed_side(f"pair {index}", once, options)
                if loaded:
                    with cpu_load(load_processes):
                        cand = timed_side(f"pair {index}", forward, options)
                else:
                    cand = timed_side(f"pair {index}", forward, options)
                verdict = judge(base, cand, threshold)
                verdicts[verdict.status] += 1
                suspect += base.timing_suspect or cand.timing_suspect
                calm = judge(replace(base, timing_suspect=False), replace(cand, timing_suspect=False), threshold)
                raw += calm.regression
            passed = pairs - verdicts[REGRESSION] - verdicts[INCONCLUSIVE]
            where = f"candidate under load ({load_processes} busy)" if loaded else "quiet (as the machine is)"
            table.add_row(
                slowdown, where, str(verdicts[REGRESSION]), str(verdicts[INCONCLUSIVE]), str(passed), str(raw),
                str(suspect),
            )  # fmt: skip
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
    args = cli.parse_args()
    threshold = parse_threshold(args.threshold)
    console = Console(width=160)
    console.print(synthetic(args.synthetic_pairs, threshold))
    if not args.skip_real:
        torch.set_num_threads(args.threads)
        options = TimingOptions(warmup=3, warmup_max_s=0.5, min_repeats=30, max_time_s=args.max_time_s)
        console.print(real(args.pairs, threshold, options, args.load_processes))
    console.print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
