"""The regression gate's faults (issue 20): a candidate job that failed, was killed or is missing fails the gate; a
NaN or inf median is a verdict of its own and never reaches a plot; the ``overrides`` tag holds the normalised
identity; run ids by unique prefix. The pure gate functions on synthetic rows, and the real ``compare`` command on
runs logged into a real SQLite store."""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from mlflow.utils.validation import MAX_TAG_VAL_LENGTH

from conftest import QUICK_NO_THOP, SMALL_BLOCK, run_cli
from gflops_track.cli.compare import main as compare_main
from gflops_track.common import names
from gflops_track.compare import charts, gate, rows
from gflops_track.compare.gate import INCONCLUSIVE, OK, REGRESSION, Side, judge, pair_rows
from gflops_track.compare.rows import Row
from test_gate import jobs, log_sweep, row

NAN, INF = float("nan"), float("inf")
Compare = Callable[..., tuple[int, str, str]]


@pytest.fixture
def compare(store_uri: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Compare:
    """``gflops-track compare --tracking-uri <the test's store> ARGS`` in this process: (exit code, stdout, stderr)."""
    monkeypatch.setenv("COLUMNS", "250")  # rich prints lines whole

    def run(*args: str) -> tuple[int, str, str]:
        code = compare_main(["--tracking-uri", store_uri, *args])
        out, err = capsys.readouterr()
        return code, out, err

    return run


def job_row(
    size: str, median_ms: float | None = 10.0, status: str = "FINISHED", error: str = "", side: str = "b"
) -> Row:
    """A row of a batch-size sweep as the gate reads it: its identity is its overrides tag."""
    made = row(f"job-b{size}", median_ms, run_id=f"{side}{size}", tags={"overrides": f"batch.size={size}"}, error=error)
    return replace(made, status=status)


# --- item 2: a candidate that failed, was killed or is missing fails the gate ------------------------------------


def test_a_candidate_row_that_failed_was_killed_or_is_missing_is_a_verdict_of_its_own() -> None:
    base = [job_row(size) for size in ("1", "2", "4", "8", "16")]
    cand = [
        job_row("1", side="c"),
        job_row("2", None, "FAILED", "RuntimeError: boom\nTraceback ...", side="c"),
        job_row("4", 12.0, "KILLED", side="c"),  # timed, then killed: its latency is not judged
        job_row("16", None, "RUNNING", side="c"),  # spooled or still running: nothing to judge yet
        job_row("32", side="c"),  # a new configuration: not a failure
    ]
    pairing = pair_rows(base, cand)
    assert pairing.basis == "overrides" and [(b.run_id, c.run_id) for b, c in pairing.pairs] == [("b1", "c1")]
    verdicts = {b.run_id: gate.unmeasured_verdict(b, runs, gate.row_label(b, pairing.basis))
                for b, runs in pairing.unmeasured}  # fmt: skip
    assert {key: verdict.status for key, verdict in verdicts.items()} == {
        "b16": gate.MISSING, "b2": gate.FAILED, "b4": gate.FAILED, "b8": gate.MISSING,
    }  # fmt: skip
    assert verdicts["b2"].describe(0.05) == (
        "job-b2: 10.000 ms -> FAILED: the candidate's run job-b2 (c2) is FAILED: RuntimeError: boom"
    )
    assert verdicts["b4"].reason == "the candidate's run job-b4 (c4) is KILLED"
    assert verdicts["b8"].reason == "the candidate has no run of this row"
    assert verdicts["b16"].reason == "the candidate's run job-b16 (c16) is RUNNING with no latency"
    assert all(verdict.broken and not verdict.regression for verdict in verdicts.values())
    assert pairing.unmatched == ["candidate only: job-b32 [batch.size=32]"]  # never "baseline only" for a row it ran
    lone = pair_rows([job_row("1")], [job_row("1", None, "FAILED", side="c")])  # --baseline <run> --candidate <run>
    assert lone.basis == "one run on each side" and not lone.pairs and lone.matched
    assert [(b.run_id, [r.run_id for r in runs]) for b, runs in lone.unmeasured] == [("b1", ["c1"])]
    unrelated = pair_rows([job_row("1"), job_row("2")], [job_row("64", side="c"), job_row("128", side="c")])
    assert not unrelated.matched and unrelated.unmatched[0] == "baseline only: job-b1 [batch.size=1]"  # exit 2


def test_the_exit_code_says_the_worst_row() -> None:
    """FAILED, MISSING and NOT FINITE (4) before REGRESSION (1) before INCONCLUSIVE (3) before the rest (0)."""

    def verdicts(*statuses: str) -> list[gate.Verdict]:
        return [gate.Verdict("x", 1.0, 1.0, 1.0, None, None, "", status) for status in statuses]

    cases = {
        (OK, gate.FASTER, gate.WITHIN_NOISE): 0, (INCONCLUSIVE, OK): 3, (REGRESSION, INCONCLUSIVE): 1,
        (REGRESSION, gate.FAILED): 4, (OK, gate.MISSING): 4, (INCONCLUSIVE, gate.NOT_FINITE): 4,
    }  # fmt: skip
    assert {statuses: gate.exit_code(verdicts(*statuses)) for statuses in cases} == cases


def test_gate_command_fails_when_a_candidate_job_crashed_was_killed_or_is_missing(
    store_uri: str, compare: Compare
) -> None:
    """The issue's case: the baseline sweep finished both jobs, the candidate's planes=64 job FAILED before timing.
    The old gate said "not compared (baseline only: ...)" and exited 0."""
    client = MlflowClient(store_uri)
    experiment = client.create_experiment("gate")
    baseline = log_sweep(client, experiment, jobs(0))
    good, second = jobs(10)
    failed = {**second, "samples": [], "status": "FAILED", "tags": {**second["tags"], "error": "RuntimeError: OOM"}}
    crashed = log_sweep(client, experiment, [good, failed])
    code, out, _ = compare("--baseline", baseline, "--candidate", crashed)
    assert code == 4, out
    lines = [line for line in out.splitlines() if line.startswith("model.planes=64: ")]
    assert len(lines) == 1 and re.search(r"ms -> FAILED: the candidate's run \S+ \([0-9a-f]{8}\) is FAILED: "
                                         r"RuntimeError: OOM$", lines[0]), out  # fmt: skip
    assert "baseline only" not in out and "not compared" not in out
    assert "0 regression(s), 0 inconclusive in 1 compared row(s), 1 FAILED, threshold 5.0%" in out
    killed = log_sweep(client, experiment, [good, {**second, "status": "KILLED"}])  # timed, then killed
    code, out, _ = compare("--baseline", baseline, "--candidate", killed)
    assert code == 4 and re.search(r"-> FAILED: the candidate's run \S+ \([0-9a-f]{8}\) is KILLED$", out, re.M), out
    missing = log_sweep(client, experiment, [good])
    code, out, _ = compare("--baseline", baseline, "--candidate", missing)
    assert code == 4 and "-> MISSING: the candidate has no run of this row" in out, out
    code, out, _ = compare("--baseline", baseline, "--candidate", log_sweep(client, experiment, jobs(20)))
    assert code == 0, out  # the same sweep run again, complete: passes


CANDIDATE_MODEL = """
import torch
from torch import nn


class Block(nn.Module):
    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 4, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] == {fail_on}:
            raise RuntimeError("planted failure for batch size {fail_on}")
        return self.conv(x)
"""


@pytest.mark.slow
def test_a_crashed_candidate_job_fails_the_gate_end_to_end(tmp_path: Path, compare: Compare, store_uri: str) -> None:
    """The issue's probe with the real app: the model's code changes between the baseline and the candidate sweep
    (same overrides, so the same identities) and the candidate's batch-2 job raises. Old gate: "not compared
    (baseline only: b2-...)" and a passing exit code."""
    model = tmp_path / "gate_model.py"  # importable: ``python -m`` puts the working directory on sys.path
    sweep_ids = []
    for fail_on in (-1, 2):  # the baseline never fails
        model.write_text(CANDIDATE_MODEL.format(fail_on=fail_on))
        args = [
            "-m",
            "batch.size=1,2",
            "model=custom",
            "model._target_=gate_model.Block",
            "+model.in_channels=3",
            *QUICK_NO_THOP,
        ]
        done = run_cli(args, cwd=tmp_path, MLFLOW_TRACKING_URI=store_uri, PYTHONDONTWRITEBYTECODE="1")
        assert done.returncode == (0 if fail_on < 0 else 1), done.stderr[-3000:]
        client = MlflowClient(store_uri)
        runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
        sweep_ids += [
            r.info.run_id for r in runs if "sweep_overrides" in r.data.tags and r.info.run_id not in sweep_ids
        ]
    baseline, candidate = sweep_ids
    code, out, err = compare("--baseline", baseline, "--candidate", candidate, "--min-samples", "2")
    assert code == 4, out + err
    assert re.search(r"^batch\.size=2: [0-9.]+ ms -> FAILED: the candidate's run b2-block-cpu-fp32 "
                     r"\([0-9a-f]{8}\) is FAILED: .*planted failure for batch size 2$", out, re.M), out  # fmt: skip
    assert "baseline only" not in out and "in 1 compared row(s), 1 FAILED," in out


# --- item 11: NaN and inf ------------------------------------------------------------------------------------------

STEADY = [10.0 + 0.1 * (i % 7) for i in range(30)]  # 30 samples, 10.0 .. 10.6 ms


@pytest.mark.parametrize(
    ("baseline", "candidate", "reason"),
    [
        (Side.from_samples("b", STEADY), Side("c", NAN, samples=tuple(STEADY), sample_count=30),
         "candidate median is nan ms"),
        (Side("b", INF, samples=tuple(STEADY), sample_count=30), Side.from_samples("c", STEADY, timing_suspect=True),
         "baseline median is inf ms"),
        (Side.from_samples("b", STEADY), Side("c", 10.3, samples=(*STEADY[:-1], NAN), sample_count=30),
         "the interval is nan .. nan (a stored sample or logged CI is NaN or inf)"),
        (Side.from_row(row("b", 10.0, ci_low_ms=9.8, ci_high_ms=10.2, timed_iterations=30), None),
         Side.from_row(row("c", 10.0, ci_low_ms=NAN, ci_high_ms=10.2, timed_iterations=30), None),
         "the interval is nan .. 1.041 (a stored sample or logged CI is NaN or inf)"),
    ],
)  # fmt: skip
def test_a_median_or_interval_that_is_not_finite_is_a_verdict_of_its_own(
    baseline: Side, candidate: Side, reason: str
) -> None:
    """The old gate judged each of these "ok": every comparison with NaN is false."""
    verdict = judge(baseline, candidate)
    assert verdict.status == gate.NOT_FINITE and verdict.reason == reason
    assert verdict.broken and gate.exit_code([verdict]) == gate.EXIT_BROKEN
    assert f"NOT FINITE: {reason}" in verdict.describe(0.05)


def test_not_finite_numbers_are_named_and_never_plotted() -> None:
    nan_row = replace(row("nan-run", NAN, run_id="0123456789ab", gflops=2.0, achieved_gflop_per_s=INF),
                      not_finite=(f"{names.ACHIEVED}=inf", f"{names.LATENCY_MEDIAN_MS}=nan"))  # fmt: skip
    drawable = rows.finite_only(nan_row)
    assert drawable.median_ms is None and drawable.achieved_gflop_per_s is None and drawable.gflops == 2.0
    assert rows.not_finite_notes([nan_row, row("fine")]) == [
        f"run nan-run (01234567): {names.ACHIEVED}=inf, {names.LATENCY_MEDIAN_MS}=nan is not a finite number, "
        "left out of the plots"
    ]
    figure = charts.bars_figure([drawable, row("fine", 4.0)], "median_ms", True, "ms", "latency")
    heights = [patch.get_height() for patch in figure.axes[0].patches]
    assert heights == [4.0] and all(math.isfinite(limit) for limit in figure.axes[0].get_ylim())


def test_gate_and_html_report_with_a_nan_median(store_uri: str, compare: Compare, tmp_path: Path) -> None:
    """A candidate job whose median and CI were logged as NaN, its achieved GFLOP/s as inf: the gate says NOT FINITE
    (the old gate: "ok", exit 0), and ``compare --html`` writes the report naming both numbers (the old one failed
    with "Axis limits cannot be NaN or Inf")."""
    client = MlflowClient(store_uri)
    experiment = client.create_experiment("gate")
    baseline = log_sweep(client, experiment, jobs(0))
    first, second = jobs(10)
    latency = {name: NAN for name in (names.LATENCY_MEDIAN_MS, names.LATENCY_CI_LOW_MS, names.LATENCY_CI_HIGH_MS)}
    broken = {**first, "metrics": {**latency, names.ACHIEVED: INF, names.GFLOPS: 0.5}}
    candidate = log_sweep(client, experiment, [broken, {**second, "metrics": {names.GFLOPS: 4.0}}])
    report = tmp_path / "report.html"
    code, out, err = compare("--sweep", candidate, "--html", str(report))
    assert code == 0, err
    nan_run = next(run for run in MlflowClient(store_uri).search_runs([experiment])
                   if math.isnan(run.data.metrics.get(names.LATENCY_MEDIAN_MS, 0.0)))  # fmt: skip
    note = (f"run {nan_run.info.run_name} ({nan_run.info.run_id[:8]}): {names.LATENCY_CI_HIGH_MS}=nan, "
            f"{names.LATENCY_CI_LOW_MS}=nan, {names.LATENCY_MEDIAN_MS}=nan, {names.ACHIEVED}=inf is not a finite "
            "number, left out of the plots")  # fmt: skip
    assert note in out and note in report.read_text()
    assert report.read_text().count('src="data:image/png;base64,') >= 3  # the charts are there, without the NaN
    code, out, _ = compare("--baseline", baseline, "--candidate", candidate)
    assert code == 4 and "model.planes=32: " in out, out  # the short label: what differs in its group
    assert re.search(r"^model.planes=32: .* NOT FINITE: candidate median is nan ms$", out, re.M), out


# --- item 10: the overrides tag ------------------------------------------------------------------------------------


def test_the_overrides_identity_is_sorted_without_tracking_and_hashed_when_long() -> None:
    raw = ["norm_fn=group", "tracking.run_name=" + "r" * 9000, "+hydra.job.chdir=true", "batch.size=2"]
    assert gate.override_identity(raw) == "batch.size=2 norm_fn=group"
    assert gate.stored_identity("tracking.experiment=ci norm_fn=group batch.size=2") == "batch.size=2 norm_fn=group"
    long = ["model.layers=[" + ",".join(str(i) for i in range(3000)) + "]"]  # 13,891 characters: over the limit
    other = [long[0].replace("2999]", "2998]")]  # differs after the cut only
    whole = long[0]
    stored = gate.override_identity(long)
    assert len(whole) > MAX_TAG_VAL_LENGTH and len(stored) == MAX_TAG_VAL_LENGTH
    assert stored.endswith(f" ... sha256={hashlib.sha256(whole.encode()).hexdigest()}")
    assert stored != gate.override_identity(other) and gate.stored_identity(stored) == stored
    old = [row("a", run_id="old", tags={"overrides": "tracking.uri=sqlite:///x.db model.planes=64 norm_fn=group"})]
    new = [row("a", run_id="new", tags={"overrides": gate.override_identity(["norm_fn=group", "model.planes=64"])})]
    assert [(b.run_id, c.run_id) for b, c in pair_rows([*old, row("b", tags={"overrides": "x=1"})],
                                                       [*new, row("c", tags={"overrides": "x=2"})]).pairs] == [
        ("old", "new")
    ]  # fmt: skip


@pytest.mark.slow
def test_a_long_run_name_never_makes_a_sweep_ambiguous_against_itself(
    tmp_path: Path, compare: Compare, store_uri: str
) -> None:
    """A real sweep with a 9,000-character ``tracking.run_name`` first: the old raw tag was cut by MLflow at 8,000
    characters before ``batch.size``, so both jobs had the identity '' and the gate refused the sweep against
    itself (exit 2). The tag now holds the sorted identity without tracking.*."""
    args = ["-m", "tracking.run_name=" + "r" * 9000, "batch.size=1,2", *SMALL_BLOCK, *QUICK_NO_THOP]
    done = run_cli(args, cwd=tmp_path, MLFLOW_TRACKING_URI=store_uri)
    assert done.returncode == 0, done.stderr[-3000:]
    client = MlflowClient(store_uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    sweep = next(run.info.run_id for run in runs if "sweep_overrides" in run.data.tags)
    code, out, err = compare("--baseline", sweep, "--candidate", sweep, "--min-samples", "2")
    assert "rows matched by overrides" in out and "in 2 compared row(s)" in out, out + err
    assert code in (0, 3), out  # 3: a loaded machine timed fewer than 2 iterations in the 0.3 s allowed
    stored = sorted(run.data.tags[names.OVERRIDES_TAG] for run in runs if names.OVERRIDES_TAG in run.data.tags)
    assert len(stored) == 2  # Hydra hands a sweep's job "peak.measure=False": the values as it prints them
    for size, tag in zip((1, 2), stored, strict=True):
        tokens = tag.split()
        assert tokens == sorted(tokens) and f"batch.size={size}" in tokens
        assert len(tokens) == 1 + len(SMALL_BLOCK) + len(QUICK_NO_THOP)
        assert not any(token.startswith("tracking.") for token in tokens)


# --- item 13: run ids by unique prefix -----------------------------------------------------------------------------


def test_run_ids_by_unique_prefix_and_an_ambiguous_prefix_refused(store_uri: str, compare: Compare) -> None:
    """The tables print 8-character ids; --run-id, --sweep, --baseline and --candidate take them. 17 runs: two
    share a first hex digit (pigeonhole), a prefix that names both is refused naming them, exit 2, one line."""
    client = MlflowClient(store_uri)
    experiment = client.create_experiment("prefix")
    baseline, candidate = log_sweep(client, experiment, jobs(0)), log_sweep(client, experiment, jobs(20))
    code, out, err = compare("--run-id", baseline[:8], "--run-id", candidate[:8], "--format", "csv")
    assert code == 0 and baseline in out and candidate in out, err
    code, out, err = compare("--sweep", baseline[:8], "--format", "csv")
    assert code == 0 and len(out.strip().splitlines()) == 1 + 2, err  # header + the sweep's two jobs
    code, out, err = compare("--baseline", baseline[:8], "--candidate", candidate[:8])
    assert code == 0 and "in 2 compared row(s)" in out, out + err
    for index in range(17):
        client.set_terminated(client.create_run(experiment, run_name=f"extra-{index}").info.run_id)
    ids = [run.info.run_id for run in client.search_runs([experiment])]
    shared = next(digit for digit in "0123456789abcdef" if sum(i.startswith(digit) for i in ids) >= 2)
    code, out, err = compare("--run-id", shared)
    named = sorted(i for i in ids if i.startswith(shared))
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"--run-id='{shared}' is ambiguous: {len(named)} runs start with it: " in err
    assert all(run_id in err for run_id in named[:3])  # the first three, then how many more: one line, never cut
    assert (f"(+{len(named) - 3} more)" in err) == (len(named) > 3), err
    code, _, err = compare("--baseline", shared, "--candidate", candidate[:8])
    assert code == 2 and f"--baseline='{shared}' is ambiguous" in err
    code, _, err = compare("--run-id", "0123456789abcdef")
    assert code == 2 and "Run with id=0123456789abcdef not found" in err  # no run starts with it: MLflow's words
