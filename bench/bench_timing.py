"""gflops-track's own benchmark: are our latencies right, repeatable, and cheap to get? Run by hand; prints a table.

    python bench/bench_timing.py [--device cpu|cuda] [--rounds 3]

* agreement: our median vs ``torch.utils.benchmark.Timer(...).blocked_autorange()`` on the same module and input in
  the same process, interleaved round by round, as a ratio (Timer given our thread count: its default is 1 thread);
* repeatability: coefficient of variation of the median over repeated profiles of the same config;
* overhead: wall time of ``python -m gflops_track -m norm_fn=group,batch,instance`` against a plain script doing the
  same counting and the same number of forward calls for the three variants, as a ratio;
* MLflow logging: seconds spent logging one run (params, metrics, tags, artifacts) into a SQLite store.

Speed claims live here, never in unit tests: shared machines are noisy, so everything is a ratio measured side by
side in one run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mlflow
import torch
import torch.utils.benchmark as torch_benchmark
from rich.console import Console
from rich.table import Table

from gflops_track import CountOptions, profile
from gflops_track.common import names
from gflops_track.counting.counting_forward import eval_mode
from gflops_track.models import ResidualBlock
from gflops_track.options.timing import TimingOptions
from gflops_track.timing.engine import measure_latency
from gflops_track.tracking.records import cost_record, peak_record, timing_record, write_to_mlflow
from gflops_track.tracking.store import connect, ensure_experiment

SEED_SHAPE = (2, 384, 32, 32)
NORMS = ("group", "batch", "instance")
PLAIN_SCRIPT = """
import sys, time, torch
from gflops_track.counting.op_counter import count_cost
from gflops_track.models import ResidualBlock
calls = [int(n) for n in sys.argv[1:]]
for norm, n in zip(("group", "batch", "instance"), calls):
    model, x = ResidualBlock(384, 384, norm).eval(), torch.randn(2, 384, 32, 32)
    count_cost(model, (x,))
    with torch.inference_mode():
        for _ in range(n):
            model(x)
"""


def agreement(device: torch.device, rounds: int) -> list[tuple[str, str]]:
    model = ResidualBlock(384, 384, "group").to(device).eval()
    x = torch.randn(SEED_SHAPE, device=device)
    ours, theirs, theirs_one_thread = [], [], []
    for _ in range(rounds):
        with eval_mode(model):
            ours.append(measure_latency(lambda: model(x), device, TimingOptions()).latency.median_ms)
        timer = torch_benchmark.Timer("model(x)", globals={"model": model, "x": x}, num_threads=torch.get_num_threads())
        with torch.inference_mode():
            theirs.append(timer.blocked_autorange(min_run_time=2).median * 1e3)
    default_timer = torch_benchmark.Timer("model(x)", globals={"model": model, "x": x})  # num_threads=1
    with torch.inference_mode():
        theirs_one_thread.append(default_timer.blocked_autorange(min_run_time=2).median * 1e3)
    ratios = [a / b for a, b in zip(ours, theirs, strict=True)]
    return [
        ("our median latency (ms), per round", ", ".join(f"{v:.2f}" for v in ours)),
        ("Timer.blocked_autorange median (ms), same threads", ", ".join(f"{v:.2f}" for v in theirs)),
        ("agreement ours / Timer (median of rounds)", f"{statistics.median(ratios):.3f}"),
        ("Timer with its default num_threads=1 (ms)", f"{theirs_one_thread[0]:.2f}"),
    ]


def repeatability(device: torch.device, repeats: int) -> list[tuple[str, str]]:
    model = ResidualBlock(384, 384, "group")
    x = torch.randn(SEED_SHAPE)
    medians, samples = [], []
    for _ in range(repeats):
        result = profile(
            model, x, device, timing=TimingOptions(layers=False), counting=CountOptions(thop=False, torch_check=False)
        )
        assert result.timing is not None
        medians.append(result.timing.latency.median_ms)
        samples.append(result.timing.timed_iterations)
    cv = statistics.stdev(medians) / statistics.fmean(medians)
    return [
        (f"median over {repeats} profiles (ms)", ", ".join(f"{m:.2f}" for m in medians)),
        ("CV of the median across profiles", f"{cv:.2%}"),
        ("timed iterations per profile", ", ".join(str(n) for n in samples)),
    ]


def overhead(work: Path) -> list[tuple[str, str]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["XDG_CACHE_HOME"] = str(work / ".cache")
    uri = f"sqlite:///{work / 'bench.db'}"
    subprocess.run(  # warm the peak-probe cache, as on any machine after its first sweep
        [sys.executable, "-m", "gflops_track", "timing.enabled=false", f"tracking.uri={uri}"],
        cwd=work, env=env, check=True, capture_output=True,
    )  # fmt: skip
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "gflops_track", "-m", "norm_fn=group,batch,instance", f"tracking.uri={uri}"],
        cwd=work, env=env, check=True, capture_output=True,
    )  # fmt: skip
    ours = time.perf_counter() - start
    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("gflops-track")
    assert experiment is not None
    runs = [r for r in client.search_runs([experiment.experiment_id]) if "model.norm_fn" in r.data.params]
    latest = sorted(runs, key=lambda r: r.info.start_time)[-3:]
    calls = {
        r.data.params["model.norm_fn"]: int(
            1 + r.data.metrics[names.WARMUP_ITERATIONS] + r.data.metrics[names.TIMED_ITERATIONS]
        )
        for r in latest
    }
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-c", PLAIN_SCRIPT, *(str(calls[n]) for n in NORMS)], env=env, check=True, capture_output=True
    )
    plain = time.perf_counter() - start
    return [
        ("sweep command wall time (s)", f"{ours:.1f}"),
        ("plain script, same counting and forward calls (s)", f"{plain:.1f}  (calls {calls})"),
        ("overhead ratio sweep / plain", f"{ours / plain:.2f}"),
    ]


def logging_time(work: Path) -> list[tuple[str, str]]:
    client = connect(f"sqlite:///{work / 'log.db'}")
    experiment = ensure_experiment(client, "bench")
    result = profile(
        ResidualBlock(384, 384, "group"), torch.randn(SEED_SHAPE), timing=TimingOptions(max_time_s=2, layers=False)
    )
    seconds = []
    for index in range(3):
        run_id = client.create_run(experiment, run_name=f"log-{index}").info.run_id
        start = time.perf_counter()
        write_to_mlflow(client, run_id, cost_record(result))
        write_to_mlflow(client, run_id, timing_record(result))
        write_to_mlflow(client, run_id, peak_record(result, f"log-{index}"))
        client.set_terminated(run_id)
        seconds.append(time.perf_counter() - start)
    return [("MLflow logging per run (s), 3 runs", ", ".join(f"{s:.2f}" for s in seconds))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--skip-overhead", action="store_true", help="skip the CLI sweep (GPU machines without MLflow)")
    options = parser.parse_args()
    device = torch.device(options.device)
    console = Console()
    table = Table(title=f"gflops-track benchmark: ResidualBlock(384, 384) on {SEED_SHAPE}, {device}")
    table.add_column("measure")
    table.add_column("value", justify="right")
    rows = agreement(device, options.rounds) + repeatability(device, options.rounds + 2)
    with tempfile.TemporaryDirectory() as folder:
        if not options.skip_overhead:
            rows += overhead(Path(folder))
        rows += logging_time(Path(folder))
    for label, value in rows:
        table.add_row(label, value)
    console.print(table)
    console.print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {sys.platform}")


if __name__ == "__main__":
    main()
