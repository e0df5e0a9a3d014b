"""The regression gate: its decision rule on synthetic samples, its matching of rows, and the real
``gflops-track compare --baseline --candidate`` command on runs logged with known samples into a real MLflow store."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from conftest import cli_env
from gflops_track.cli.compare import main as compare_main
from gflops_track.compare.gate import (
    FASTER,
    INCONCLUSIVE,
    MIN_SAMPLES,
    OK,
    REGRESSION,
    WITHIN_NOISE,
    AmbiguousMatch,
    Side,
    bootstrap_ratio,
    judge,
    judge_paired,
    mann_whitney_greater,
    pair_rows,
    parse_threshold,
)
from gflops_track.compare.rows import Row
from gflops_track.results.timing import LatencyStats

DEFAULT = 0.05  # the gate's default threshold, 5%


def lognormal(seed: int, n: int, median_ms: float = 10.0, cv: float = 0.10) -> list[float]:
    """n samples of a log-normal with the given median and coefficient of variation (CV = sqrt(exp(s^2) - 1))."""
    sigma = float(np.sqrt(np.log(1 + cv**2)))
    return (median_ms * np.random.default_rng(seed).lognormal(0.0, sigma, n)).tolist()


def row(name: str, median_ms: float | None = 10.0, run_id: str = "", **extra: object) -> Row:
    """A comparison row as rows.row_from_run builds it; only what the gate reads is set."""
    fields: dict[str, object] = dict.fromkeys(
        ("batch_size", "params", "gmacs", "gflops", "ci_low_ms", "ci_high_ms", "throughput_samples_per_s",
         "achieved_gflop_per_s", "utilization_vs_measured_peak", "utilization_vs_spec_peak", "arithmetic_intensity",
         "measured_peak_gflop_per_s", "measured_bandwidth_gb_per_s", "spec_peak_gflop_per_s",
         "spec_bandwidth_gb_per_s"),
    )  # fmt: skip
    fields.update(extra)
    return Row(run_id=run_id or name, run_name=name, status="FINISHED", hardware="cpu:test", median_ms=median_ms,
               **fields)  # type: ignore[arg-type]  # fmt: skip


# --- the decision rule ---------------------------------------------------------------------------------------------


def test_above_threshold_but_interval_includes_one_is_not_a_regression() -> None:
    """+10% (over the 5% threshold) on samples spread 50..150 ms: the bootstrap interval of the ratio includes 1, so
    the slowdown is within the noise. Deleting the 'interval lies above 1' condition makes this a REGRESSION."""
    base = [50.0 + 100.0 * i / 30 for i in range(31)]  # median 100 ms
    verdict = judge(Side.from_samples("b", base), Side.from_samples("c", [1.10 * v for v in base]), DEFAULT)
    assert verdict.ratio == pytest.approx(1.10) and verdict.ratio > 1 + DEFAULT
    assert verdict.ratio_low is not None and verdict.ratio_high is not None
    assert verdict.ratio_low < 1 < verdict.ratio_high
    assert verdict.status == WITHIN_NOISE and not verdict.regression


def test_slowdown_beyond_threshold_and_noise_is_a_regression() -> None:
    base = [10.0 + 0.1 * (i % 7) for i in range(30)]  # tight: 10.0 .. 10.6 ms
    verdict = judge(Side.from_samples("b", base), Side.from_samples("c", [1.2 * v for v in base]), DEFAULT)
    assert verdict.ratio == pytest.approx(1.2) and verdict.ratio_low is not None and verdict.ratio_low > 1
    assert verdict.status == REGRESSION and verdict.noise_basis == "99% bootstrap of stored samples"
    faster = judge(Side.from_samples("b", base), Side.from_samples("c", [0.5 * v for v in base]), DEFAULT)
    assert faster.status == FASTER and faster.ratio_high is not None and faster.ratio_high < 1


def test_boundary_exactly_at_the_threshold_is_not_a_regression() -> None:
    """ratio == 1 + threshold passes; the rule is 'more than the threshold'. Noise-free samples: only the threshold
    decides."""
    base = Side.from_samples("b", [100.0] * 30)
    at = judge(base, Side.from_samples("c", [105.0] * 30), DEFAULT)
    assert at.ratio == 1 + DEFAULT and at.status == OK
    above = judge(base, Side.from_samples("c", [105.01] * 30), DEFAULT)
    assert above.ratio > 1 + DEFAULT and above.status == REGRESSION


def test_no_samples_uses_the_logged_confidence_intervals() -> None:
    """Without stored samples the interval is candidate CI / baseline CI: low = 11.8 / 10.2, high = 12.2 / 9.8."""
    base = Side.from_row(row("b", 10.0, ci_low_ms=9.8, ci_high_ms=10.2, timed_iterations=30), None)
    slower = Side.from_row(row("c", 12.0, ci_low_ms=11.8, ci_high_ms=12.2, timed_iterations=30), None)
    verdict = judge(base, slower, DEFAULT)
    assert verdict.noise_basis == "logged 95% CIs" and verdict.status == REGRESSION
    assert verdict.ratio_low == pytest.approx(11.8 / 10.2) and verdict.ratio_high == pytest.approx(12.2 / 9.8)
    overlapping = Side.from_row(row("c", 11.0, ci_low_ms=9.9, ci_high_ms=12.0, timed_iterations=30), None)
    wide = judge(base, overlapping, DEFAULT)
    assert wide.ratio_low == pytest.approx(9.9 / 10.2) and wide.status == WITHIN_NOISE
    unknown = judge(base, Side.from_row(row("c", 20.0, timed_iterations=30), None), DEFAULT)
    assert unknown.status == INCONCLUSIVE and "no confidence interval" in unknown.reason
    assert "interval unknown" in unknown.describe(DEFAULT)
    uncounted = judge(base, Side.from_row(row("c", 20.0, ci_low_ms=19.0, ci_high_ms=21.0), None), DEFAULT)
    assert uncounted.status == INCONCLUSIVE and "too few samples (30, unknown" in uncounted.reason


def test_too_few_samples_is_inconclusive_not_a_regression() -> None:
    short = MIN_SAMPLES - 1
    few = judge(Side.from_samples("b", lognormal(1, short)), Side.from_samples("c", lognormal(2, short, 20.0)))
    assert few.status == INCONCLUSIVE and f"too few samples ({short}, {short}; at least {MIN_SAMPLES} each)" in (
        few.reason
    )
    enough = judge(
        Side.from_samples("b", lognormal(1, MIN_SAMPLES)), Side.from_samples("c", lognormal(2, MIN_SAMPLES, 20.0))
    )
    assert enough.status == REGRESSION


def contended(samples: list[float]) -> Side:
    """A side timed while other processes took 1.7 CPU-seconds per second of a 2-core machine its 2 threads ran on
    (more than the 0 cores its threads left free: contended)."""
    return replace(Side.from_samples("x", samples, timing_suspect=True, other_load=1.7), contended=True)


def test_contended_sides_decide_only_where_the_load_cannot_explain_the_verdict() -> None:
    """Load only adds time. Both contended: INCONCLUSIVE naming --rerun. One contended: a verdict its load could
    explain (the contended candidate slower; a candidate no slower than a contended baseline) is INCONCLUSIVE naming
    --rerun; the opposite direction stands. Load with cores to spare: decided on the low quantile."""
    base = [10.0 + 0.1 * (i % 7) for i in range(30)]
    slow = [1.6 * v for v in base]
    cand_loaded = judge(Side.from_samples("b", base), contended(slow), DEFAULT)
    assert cand_loaded.status == INCONCLUSIVE and "`--rerun`" in cand_loaded.reason
    assert "only the candidate was timed while other processes took the cores" in cand_loaded.describe(DEFAULT)
    base_loaded = judge(contended(base), Side.from_samples("c", slow), DEFAULT)
    assert base_loaded.status == REGRESSION and "works against this verdict" in base_loaded.reason
    both = judge(contended(base), contended(slow), DEFAULT)
    assert both.status == INCONCLUSIVE and "both sides" in both.reason and "`--rerun`" in both.reason
    calm = judge(contended(base), Side.from_samples("c", base), DEFAULT)
    assert calm.status == INCONCLUSIVE and "--rerun" in calm.reason  # the baseline's load could hide a slowdown
    assert judge(Side.from_samples("b", base), contended(base), DEFAULT).status == OK  # slowed, still not slower
    spare = judge(Side.from_samples("b", base, True), Side.from_samples("c", slow, True), DEFAULT)
    assert spare.status == REGRESSION and "cores to spare" in spare.reason
    assert "10% quantile" in spare.describe(DEFAULT) and "only adds time" in spare.describe(DEFAULT)


def test_additive_load_noise_is_decided_on_the_low_quantile() -> None:
    """Both sides on a loaded machine: 40% of iterations hit by a burst adding 0-150% (additive, positive). The
    candidate is identical, then 1.3x slower through its code. The median moves with the bursts; the 10% quantile
    does not: identical pairs are ok, the 1.3x pair a REGRESSION, each decided (never INCONCLUSIVE)."""
    rng = np.random.default_rng(3)

    def bursty(scale: float) -> list[float]:
        core = scale * (7.0 + 0.3 * rng.lognormal(0.0, 0.1, 20))
        return np.where(rng.random(20) < 0.4, core * (1 + rng.uniform(0, 1.5, 20)), core).tolist()

    same = judge(Side.from_samples("b", bursty(1), True), Side.from_samples("c", bursty(1), True), DEFAULT)
    slower = judge(Side.from_samples("b", bursty(1), True), Side.from_samples("c", bursty(1.3), True), DEFAULT)
    assert same.status in (OK, FASTER, WITHIN_NOISE) and slower.status == REGRESSION
    assert slower.ratio == pytest.approx(1.3, rel=0.05) and slower.p_value is not None and slower.p_value < 0.01


def test_mann_whitney_matches_the_textbook_example() -> None:
    """U for candidate [3, 4, 5] over baseline [1, 2]: every candidate sample is larger, U = 3 * 2 = 6; normal
    approximation with continuity correction: z = (6 - 3 - 0.5) / sqrt(3*2*6/12) = 2.5 / sqrt(3), p = 1 - Phi(z)."""
    import math

    expected = 0.5 * math.erfc((2.5 / math.sqrt(3)) / math.sqrt(2))
    assert mann_whitney_greater([1.0, 2.0], [3.0, 4.0, 5.0]) == pytest.approx(expected)
    assert mann_whitney_greater([3.0, 4.0, 5.0], [1.0, 2.0]) > 0.9


def test_identical_distributions_give_no_false_alarm_at_the_default_threshold() -> None:
    """100 pairs of 30-sample sets from one log-normal (CV 10%), seeded: at most 1 false REGRESSION at 5%, while a
    2x slowdown is caught in every pair. With the noise condition deleted about 10% of these pairs would fail."""
    false_alarms = caught = 0
    for pair in range(100):
        base = Side.from_samples("b", lognormal(2 * pair, 30))
        false_alarms += judge(base, Side.from_samples("c", lognormal(2 * pair + 1, 30)), DEFAULT).regression
        caught += judge(base, Side.from_samples("c", lognormal(2 * pair + 1, 30, 20.0)), DEFAULT).regression
    assert false_alarms <= 1 and caught == 100


def test_bootstrap_ratio_and_threshold_parsing() -> None:
    baseline = [10.0 + 0.1 * (i % 7) for i in range(50)]
    doubled = [2 * value for value in baseline]
    low, high = bootstrap_ratio(baseline, doubled)
    assert 1.9 < low <= 2.0 <= high < 2.1
    assert bootstrap_ratio(baseline, doubled) == (low, high)  # seeded: the gate is repeatable
    narrower = bootstrap_ratio(baseline, doubled, confidence=0.5)
    assert low <= narrower[0] <= narrower[1] <= high
    assert parse_threshold("5%") == 0.05 and parse_threshold("0.05") == 0.05
    with pytest.raises(ValueError, match="--threshold='lots' is not allowed"):
        parse_threshold("lots")


# --- matching ------------------------------------------------------------------------------------------------------

SAME_NAME = "residual_block-group-b1-cpu-fp32"  # the default run name leaves out planes


def test_rows_with_one_name_are_matched_by_their_overrides() -> None:
    base = [row(SAME_NAME, tags={"overrides": "model.planes=32 norm_fn=group"}, run_id="b32"),
            row(SAME_NAME, tags={"overrides": "model.planes=64 norm_fn=group"}, run_id="b64")]  # fmt: skip
    cand = [row(SAME_NAME, tags={"overrides": "norm_fn=group model.planes=64 tracking.experiment=ci"}, run_id="c64"),
            row(SAME_NAME, tags={"overrides": "+hydra.x=1 norm_fn=group model.planes=32"}, run_id="c32")]  # fmt: skip
    pairing = pair_rows(base, cand)
    assert pairing.basis == "overrides" and not pairing.unmatched
    assert sorted((b.run_id, c.run_id) for b, c in pairing.pairs) == [("b32", "c32"), ("b64", "c64")]


def test_ambiguous_match_is_refused_naming_the_rows() -> None:
    base = [row("a", tags={"overrides": "x=1"}, run_id="id-a"), row("b", tags={"overrides": "x=1"}, run_id="id-b")]
    with pytest.raises(AmbiguousMatch, match=r"the baseline has 2 runs with the same identity 'x=1': a \(id-a\), b"):
        pair_rows(base, [row("c", tags={"overrides": "x=1"}), row("d", tags={"overrides": "x=2"})])
    cand = [row("c", tags={"overrides": "x=1"}, run_id="id-c"), row("d", tags={"overrides": "x=1"}, run_id="id-d")]
    with pytest.raises(AmbiguousMatch, match="the candidate has 2 runs"):
        pair_rows([row("a", tags={"overrides": "x=1"}), row("b", tags={"overrides": "x=2"})], cand)


def test_old_runs_are_matched_by_the_params_that_differ_then_by_name() -> None:
    """No overrides tag: identity = the params that differ between the rows of a side (here norm_fn.name; the
    tracking.uri is common to a side, so left out, though it differs between the sides), so a lone candidate finds its
    baseline among several."""
    common = {"tracking.uri": "sqlite:///x.db", "batch.size": "1"}
    elsewhere = {**common, "tracking.uri": "sqlite:///y.db"}
    base = [row(SAME_NAME, run_id="bg", config={**common, "norm_fn.name": "group"}),
            row(SAME_NAME, run_id="bn", config={**common, "norm_fn.name": "none"})]  # fmt: skip
    cand = [row("renamed", run_id="cn", config={**elsewhere, "norm_fn.name": "none"}),
            row("other", run_id="cg", config={**elsewhere, "norm_fn.name": "group"})]  # fmt: skip
    pairing = pair_rows(base, cand)
    assert pairing.basis == "params"
    assert sorted((b.run_id, c.run_id) for b, c in pairing.pairs) == [("bg", "cg"), ("bn", "cn")]
    untimed = row("untimed", None, config={"norm_fn.name": "group"})
    lone = pair_rows(base, [*cand[:1], untimed])
    assert [(b.run_id, c.run_id) for b, c in lone.pairs] == [("bn", "cn")]
    assert [(b.run_id, runs) for b, runs in lone.unmeasured] == [("bg", [untimed])] and not lone.unmatched
    by_name = pair_rows([row("x-b1"), row("x-b2")], [row("x-b2"), row("x-b4")])
    assert by_name.basis == "run name" and [b.run_name for b, _ in by_name.pairs] == ["x-b2"]
    assert [(b.run_name, runs) for b, runs in by_name.unmeasured] == [("x-b1", [])]
    assert by_name.unmatched == ["candidate only: x-b4 [x-b4]"]
    assert pair_rows([row("a")], [row("b")]).basis == "one run on each side"


# --- the real command on a real store ------------------------------------------------------------------------------


def log_sweep(client: MlflowClient, experiment_id: str, jobs: list[dict[str, object]], legacy: bool = False) -> str:
    """A sweep parent and one child per job, logged the way the app logs them: the latency metrics computed from
    the samples by the package's own statistics, the samples as latency_samples.json, params, and tags. ``legacy``:
    under the flat metric names of runs logged before the metrics had chart sections. A job with ``"status"`` ends
    so (e.g. FAILED); one with no samples logs no metric (a job that failed before timing); ``"metrics"`` replace or
    add logged values (e.g. a NaN median)."""
    parent = client.create_run(experiment_id, run_name="sweep", tags={"sweep_overrides": "x"}).info.run_id
    for job in jobs:
        samples = list(job["samples"])  # type: ignore[call-overload]
        tags = {"mlflow.parentRunId": parent, "hardware": "cpu:test", **job.get("tags", {})}  # type: ignore[dict-item]
        run_id = client.create_run(experiment_id, run_name=str(job["name"]), tags=tags).info.run_id
        for key, value in job.get("params", {}).items():  # type: ignore[attr-defined]
            client.log_param(run_id, key, value)
        if not samples:
            client.set_terminated(run_id, str(job.get("status", "FINISHED")))
            continue
        stats = LatencyStats.from_samples(samples)
        metrics = {"latency/median_ms": stats.median_ms, "latency/ci95_low_ms": stats.ci_low_ms,
                   "latency/ci95_high_ms": stats.ci_high_ms, "timing/timed_iterations": len(samples)}  # fmt: skip
        if legacy:
            metrics = {"latency_median_ms": stats.median_ms, "latency_ci95_low_ms": stats.ci_low_ms,
                       "latency_ci95_high_ms": stats.ci_high_ms, "timed_iterations": len(samples)}  # fmt: skip
        for key, value in {**metrics, **job.get("metrics", {})}.items():  # type: ignore[dict-item]
            client.log_metric(run_id, key, value)
        client.log_text(run_id, json.dumps({"latency_ms": samples}), "latency_samples.json")
        client.set_terminated(run_id, str(job.get("status", "FINISHED")))
    client.set_terminated(parent)
    return parent


def gate(uri: str, cwd: Path, baseline: str, candidate: str, *extra: str) -> subprocess.CompletedProcess[str]:
    """The real console command: ``gflops-track compare`` is ``gflops_track.cli.main:main``."""
    command = [sys.executable, "-m", "gflops_track.cli", "compare", "--tracking-uri", uri,
               "--baseline", baseline, "--candidate", candidate, *extra]  # fmt: skip
    return subprocess.run(command, cwd=cwd, env=cli_env(), capture_output=True, text=True, timeout=300)


def jobs(seed: int, slow_first: float = 1.0, suspect: str = "false", n: int = 40) -> list[dict[str, object]]:
    """Two jobs sharing one run name, told apart only by their overrides (planes): the case the name-based gate
    dropped. The first job's samples are scaled by ``slow_first``."""
    return [
        {"name": SAME_NAME, "samples": [slow_first * v for v in lognormal(seed, n, 5.4, 0.05)],
         "tags": {"overrides": "model.planes=32", "variant": "planes=32", "timing_suspect": suspect},
         "params": {"model.planes": "32"}},
        {"name": SAME_NAME, "samples": lognormal(seed + 1, n, 40.0, 0.05),
         "tags": {"overrides": "model.planes=64", "variant": "planes=64", "timing_suspect": suspect},
         "params": {"model.planes": "64"}},
    ]  # fmt: skip


@pytest.mark.slow
def test_gate_command_on_logged_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                     monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    uri = f"sqlite:///{tmp_path / 'gate.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("gate")
    baseline = log_sweep(client, experiment, jobs(0))
    slower = log_sweep(client, experiment, jobs(10, slow_first=10.6 / 5.4))  # the issue's +96%
    regressed = gate(uri, tmp_path, baseline, slower)
    assert regressed.returncode == 1, regressed.stdout + regressed.stderr
    assert "rows matched by overrides" in regressed.stdout
    assert "\nmodel.planes=32: 10% quantile " in regressed.stdout and "REGRESSION" in regressed.stdout
    assert "1 regression(s), 0 inconclusive in 2 compared row(s), threshold 5.0%" in regressed.stdout

    monkeypatch.setenv("COLUMNS", "250")  # the in-process runs below print through rich: no wrapping

    def in_process(*args: str) -> tuple[int, str, str]:
        code = compare_main(["--tracking-uri", uri, *args])
        out, err = capsys.readouterr()
        return code, out, err

    same = log_sweep(client, experiment, jobs(20))
    code, out, _ = in_process("--baseline", baseline, "--candidate", same)
    assert code == 0 and "0 regression(s), 0 inconclusive in 2 compared row(s)" in out
    stored = log_sweep(client, experiment, jobs(0), legacy=True)  # a baseline stored before the metric sections
    code, out, _ = in_process("--baseline", stored, "--candidate", same)
    assert code == 0 and "0 regression(s), 0 inconclusive in 2 compared row(s)" in out
    code, out, _ = in_process("--baseline", stored, "--candidate", slower)
    assert code == 1 and "1 regression(s), 0 inconclusive in 2 compared row(s)" in out
    busy = {"timing/cond_other_processes_cpu_per_wall": 1.7, "timing/cond_cpus_available": 2.0,
            "timing/cond_threads": 2.0}  # other processes took the cores the run's 2 threads needed  # fmt: skip
    loaded = log_sweep(
        client, experiment, [{**job, "metrics": busy} for job in jobs(30, slow_first=2.0, suspect="true")]
    )
    code, out, _ = in_process("--baseline", baseline, "--candidate", loaded)
    assert code == 3 and "INCONCLUSIVE: only the candidate was timed while other processes took the" in out
    assert "`--rerun`" in out
    few = log_sweep(client, experiment, jobs(40, slow_first=2.0, n=MIN_SAMPLES - 1))
    code, out, _ = in_process("--baseline", baseline, "--candidate", few)
    assert code == 3 and "REGRESSION" not in out and "too few samples" in out
    code, out, _ = in_process("--baseline", baseline, "--candidate", few, "--min-samples", str(MIN_SAMPLES - 1))
    assert code == 1
    doubled = log_sweep(client, experiment, [*jobs(50), jobs(60)[0]])
    code, _, err = in_process("--baseline", baseline, "--candidate", doubled)
    assert code == 2 and "ambiguous match: the candidate has 2 runs with the same identity 'model.planes=32'" in err
    code, _, err = in_process("--baseline", baseline, "--candidate", slower, "--threshold", "lots")
    assert code == 2 and "--threshold='lots' is not allowed" in err

    def in_environment(logged: list[dict[str, object]], env_hash: str) -> list[dict[str, object]]:
        return [{**job, "tags": {**job["tags"], "env_hash": env_hash}} for job in logged]  # type: ignore[dict-item]

    before = log_sweep(client, experiment, in_environment(jobs(70), "aaaaaaaaaaaa"))
    after = log_sweep(client, experiment, in_environment(jobs(80), "bbbbbbbbbbbb"))
    code, out, _ = in_process("--baseline", before, "--candidate", after)
    assert code == 0 and "environments differ: baseline env_hash=aaaaaaaaaaaa, candidate env_hash=bbbbbbbbbbbb" in out


def test_interleaved_rounds_are_judged_by_their_paired_ratios() -> None:
    """30 rounds in which a burst of load hits both calls of a round alike (x1 .. x3): the sides' own spreads overlap,
    but every round's candidate / baseline is 1.3, so the median ratio is 1.3 with a 99% interval of [1.3, 1.3]: a
    REGRESSION. Identical rounds give ratio 1: ok."""
    bursts = [1.0 + 2.0 * ((7 * i) % 30) / 29 for i in range(30)]
    base = [10.0 * burst for burst in bursts]
    slower = judge_paired("p", base, [1.3 * v for v in base], DEFAULT)
    assert slower.status == REGRESSION and slower.ratio == pytest.approx(1.3)
    assert slower.ratio_low == pytest.approx(1.3) and "median of paired ratios" in slower.describe(DEFAULT)
    assert judge_paired("p", base, list(base), DEFAULT).status == OK
    assert judge_paired("p", base[:5], base[:5], DEFAULT).status == INCONCLUSIVE  # too few rounds
    # The change is the median of the rounds' ratios, which need not match the two medians' ratio: bursts on the
    # candidate's half of round 0 and the baseline's of rounds 1, 2 leave both medians at 10.5 ms, while the rounds'
    # ratios 3, 1/3, 1/3, 11/10.5, 10/10.5 have the median 10/10.5 = -4.8%: the line names which ratio it shows.
    mixed = judge_paired("p", [10.0, 30.0, 31.5, 10.5, 10.5], [30.0, 10.0, 10.5, 11.0, 10.0], DEFAULT, min_samples=1)
    line = mixed.describe(DEFAULT)
    assert "median 10.500 ms -> 10.500 ms (each round's ratio, median -4.8%," in line, line
