"""The regression gate: did a candidate's latency get worse than the baseline's, beyond a threshold *and* beyond the
measured noise, on measurements good enough to say so?

Matching. Rows are paired by the configuration that differs, never by display name alone (the default run name
leaves out planes, input size, precision and runtime options). The identity of a row is, in this order, the first
that every timed row on both sides has:

1. its ``overrides`` tag (the job's own Hydra overrides, tokens sorted, so ``a=1 b=2`` equals ``b=2 a=1``; the
   ``tracking.*`` and ``hydra.*`` ones left out: they say where a run is logged, not what was measured);
2. its params: the ``params.*`` keys whose values differ between the rows of either side, with this row's values;
3. its run name.

Two rows of one side with the same identity make the match ambiguous: the gate names them and refuses to guess.
When the baseline holds exactly one timed run and the candidate exactly one run, the two are compared directly (the
user named them).

A baseline row the candidate did not measure fails the gate: FAILED when the candidate's run of that identity FAILED
or was KILLED (its status and error named), MISSING when the candidate has no run of it, or only one still RUNNING or
never timed. A row the candidate has and the baseline has not is listed as not compared (a new configuration).

Decision, per pair. With raw samples stored on both sides (every run of the app stores them) the estimator is the
10% quantile (``LOW_QUANTILE``): noise on a shared machine is overwhelmingly additive and positive (Chen & Revels,
"Robust benchmarking in noisy environments", 2016; BenchmarkTools.jl), so the fast end of the distribution moves
least, while the median moves with every burst of load. ``ratio`` = q10(candidate) / q10(baseline), with a 99%
percentile bootstrap interval of that ratio (2,000 resamples, fixed seed), and a one-sided Mann-Whitney U test over
the samples (Google Benchmark's compare.py), numpy only. Without samples (older runs): ratio of the medians, interval
from the runs' logged 95% CIs of the median (low = candidate CI low / baseline CI high, high = candidate CI high /
baseline CI low: two intervals that do not overlap).

* NOT FINITE when either median, or the interval, or the ratio is NaN or inf.
* INCONCLUSIVE when either side has fewer than ``MIN_SAMPLES`` timed iterations (naming ``timing.max_time_s`` and
  ``--rerun``), or no interval is known (naming ``--rerun``).
* REGRESSION when ``ratio > 1 + threshold``, the interval lies wholly above 1 *and* (with samples) the Mann-Whitney
  p < 0.01.
* otherwise ``faster`` (interval wholly below 1), ``within noise`` (beyond the threshold, not beyond the noise), or
  ``ok``.
* Load only adds time (``_under_load``). Load with cores to spare: decided, said. A side *contended* (other
  processes used more CPU than the cores its threads left free): its times are the scheduler's share. Both
  contended: INCONCLUSIVE, naming ``--rerun``. One contended: a verdict its load could explain is INCONCLUSIVE,
  naming ``--rerun`` (both configs re-measured now, interleaved: ``app.rerun``); the other direction stands.

``MIN_SAMPLES`` = 10 and the 99% interval come from ``bench/bench_gate.py``'s synthetic table (docs/regression-gate.md):
with the 10% quantile and the U test, identical log-normal, heavy-tailed and bursty-load pairs gave at most 1 false
REGRESSION in 200 at n = 10, none from n = 15 on, and a 2x slowdown was caught 187-200 times in 200 at n = 10. The
README's block gets 14-20 timed iterations in the default 10 s budget on a 2-core VM: 10 lets the gate judge it.

Exit code, worst first (``exit_code``): 4 when a row is FAILED, MISSING or NOT FINITE (the candidate, or a
measurement, is broken); 1 on a REGRESSION; 3 when a row is INCONCLUSIVE; else 0. 2 is the command's: bad
arguments, an ambiguous match, or nothing matched.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from mlflow.utils.validation import MAX_TAG_VAL_LENGTH

from gflops_track.common.names import FAILED, OVERRIDES_TAG, TIMING_SUSPECT_TAG, VARIANT_TAG  # FAILED: also a verdict
from gflops_track.common.numbers import three_places
from gflops_track.compare.render import short_id
from gflops_track.compare.rows import Row
from gflops_track.results.timing import median_ci

BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_CONFIDENCE = 0.99
SEED = 0
MIN_SAMPLES = 10
LOW_QUANTILE = 0.10  # the estimator on stored samples: the 10th percentile
MANN_WHITNEY_ALPHA = 0.01  # one-sided: a REGRESSION also needs the candidate's samples to be larger, p below this
LOW_ESTIMATOR = f"{LOW_QUANTILE:.0%} quantile"
LOW_WHY = "noise on a shared machine only adds time, so a low quantile moves least"
MEDIAN_ESTIMATOR = "median"
SPARE = 0.25  # CPU-seconds per second of other processes' load that spare cores absorb before threads compete
RERUN_HINT = "`--rerun` (re-measures both configs interleaved, under the same load)"
DEFAULT_THRESHOLD = 0.05
NOT_CONFIGURATION = ("tracking.", "hydra.")  # overrides that change where a run is logged, not what is measured
ENDED_BADLY = ("FAILED", "KILLED")  # MLflow run statuses of a job that did not finish
HASHED = re.compile(r" \.\.\. sha256=[0-9a-f]{64}$")  # the end of an identity too long for a tag, cut (see below)

REGRESSION = "REGRESSION"
INCONCLUSIVE = "INCONCLUSIVE"
WITHIN_NOISE = "within noise"
FASTER = "faster"
OK = "ok"
NOT_FINITE = "NOT FINITE"  # a median or interval is NaN or inf
MISSING = "MISSING"  # the candidate has no measured run of a baseline row
BROKEN = (NOT_FINITE, FAILED, MISSING)

EXIT_PASSED = 0
EXIT_REGRESSION = 1
EXIT_USAGE = 2
EXIT_INCONCLUSIVE = 3
EXIT_BROKEN = 4


class AmbiguousMatch(ValueError):
    """Rows the gate cannot pair without guessing."""


@dataclass(frozen=True)
class Side:
    """One run as the gate sees it: its median, its noise (raw samples or logged CI) and whether it was timed under
    load. ``sample_count`` is the number of timed iterations (the samples', else the logged metric's)."""

    label: str
    median_ms: float
    ci_low_ms: float | None = None
    ci_high_ms: float | None = None
    samples: tuple[float, ...] = ()
    sample_count: int | None = None
    timing_suspect: bool = False
    other_load: float | None = None  # CPU-seconds per second other processes used meanwhile (None: not logged)
    contended: bool = False  # other processes wanted the cores its threads ran on: its times are the scheduler's

    @classmethod
    def from_row(cls, row: Row, samples: Sequence[float] | None) -> Side:
        assert row.median_ms is not None
        suspect = row.tags.get(TIMING_SUSPECT_TAG, "").lower() == "true"
        count = len(samples) if samples else row.timed_iterations
        contended = (
            row.other_load is not None and row.spare_cpus is not None and row.other_load > row.spare_cpus + SPARE
        )
        return cls(row.run_name, row.median_ms, row.ci_low_ms, row.ci_high_ms, tuple(samples or ()), count, suspect,
                   row.other_load, contended)  # fmt: skip

    @classmethod
    def from_samples(
        cls, label: str, samples: Sequence[float], timing_suspect: bool = False, other_load: float | None = None
    ) -> Side:
        data = np.asarray(samples, dtype=float)
        return cls(label, float(np.median(data)), samples=tuple(samples), sample_count=data.size,
                   timing_suspect=timing_suspect, other_load=other_load)  # fmt: skip


@dataclass(frozen=True)
class Verdict:
    label: str
    baseline_ms: float
    candidate_ms: float | None  # None: the candidate measured nothing (FAILED, MISSING)
    ratio: float | None
    ratio_low: float | None  # None: no interval known
    ratio_high: float | None
    noise_basis: str  # "bootstrap of stored samples", "logged median CIs" or "no interval known"
    status: str  # REGRESSION, INCONCLUSIVE, NOT FINITE, FAILED, MISSING, "within noise", "faster" or "ok"
    reason: str = ""  # why INCONCLUSIVE, NOT FINITE, FAILED or MISSING
    estimator: str = MEDIAN_ESTIMATOR  # what ``ratio`` compares: LOW_ESTIMATOR on stored samples, else the median
    p_value: float | None = None  # one-sided Mann-Whitney U, candidate slower (stored samples only)

    @property
    def regression(self) -> bool:
        return self.status == REGRESSION

    @property
    def inconclusive(self) -> bool:
        return self.status == INCONCLUSIVE

    @property
    def broken(self) -> bool:
        """FAILED, MISSING or NOT FINITE: the gate fails whatever the other rows say."""
        return self.status in BROKEN

    def describe(self, threshold: float) -> str:
        if self.candidate_ms is None or self.ratio is None:
            return f"{self.label}: {three_places(self.baseline_ms)} ms -> {self.status}: {self.reason}"
        interval = (
            f"interval {self.ratio_low - 1:+.1%} .. {self.ratio_high - 1:+.1%}"
            if self.ratio_low is not None and self.ratio_high is not None
            else "interval unknown"
        )
        verdict = {
            REGRESSION: f"REGRESSION (> {threshold:.1%} and beyond noise)",
            INCONCLUSIVE: f"INCONCLUSIVE: {self.reason}",
            NOT_FINITE: f"NOT FINITE: {self.reason}",
            WITHIN_NOISE: "slower beyond the threshold, but within the measured noise",
        }.get(self.status, self.status)
        if self.reason and self.status not in (INCONCLUSIVE, NOT_FINITE):
            verdict += f" ({self.reason})"
        why = {LOW_ESTIMATOR: LOW_WHY, PAIRED_ESTIMATOR: PAIRED_WHY}.get(
            self.estimator, "no samples stored, the logged median and its CI"
        )
        test = "" if self.p_value is None else f", Mann-Whitney U p={self.p_value:.2g}"
        paired = self.estimator == PAIRED_ESTIMATOR
        shown = "median" if paired else self.estimator
        # paired: the change is the median of each round's ratio, which need not match the two medians' ratio
        change = f"each round's ratio, median {self.ratio - 1:+.1%}" if paired else f"{self.ratio - 1:+.1%}"
        return (
            f"{self.label}: {shown} {three_places(self.baseline_ms)} ms -> {three_places(self.candidate_ms)} ms "
            f"({change}, {interval}, {self.noise_basis}{test}; {self.estimator}: {why}): {verdict}"
        )


def bootstrap_ratio(
    baseline: Sequence[float],
    candidate: Sequence[float],
    confidence: float = BOOTSTRAP_CONFIDENCE,
    quantile: float = 0.5,
) -> tuple[float, float]:
    """Percentile-bootstrap interval of quantile(candidate) / quantile(baseline) (``confidence``, two-sided; the
    median by default), resampling each sample set with replacement."""
    rng = np.random.default_rng(SEED)
    base = np.asarray(baseline, dtype=float)
    cand = np.asarray(candidate, dtype=float)
    base_stat = np.quantile(rng.choice(base, size=(BOOTSTRAP_RESAMPLES, base.size)), quantile, axis=1)
    cand_stat = np.quantile(rng.choice(cand, size=(BOOTSTRAP_RESAMPLES, cand.size)), quantile, axis=1)
    ratios = cand_stat / base_stat
    tail = (1 - confidence) / 2
    return float(np.quantile(ratios, tail)), float(np.quantile(ratios, 1 - tail))


def mann_whitney_greater(baseline: Sequence[float], candidate: Sequence[float]) -> float:
    """One-sided p-value of the Mann-Whitney U test that the candidate's samples tend to be larger (slower): the
    normal approximation with tie correction and continuity correction (as scipy's ``mannwhitneyu(...,
    alternative="greater", method="asymptotic")``; numpy only, scipy is not a dependency)."""
    base = np.asarray(baseline, dtype=float)
    cand = np.asarray(candidate, dtype=float)
    n1, n2 = cand.size, base.size
    pooled = np.concatenate([cand, base])
    order = pooled.argsort(kind="mergesort")
    ranks = np.empty(pooled.size)
    ranks[order] = np.arange(1, pooled.size + 1)
    _values, inverse, counts = np.unique(pooled, return_inverse=True, return_counts=True)
    ranks = np.bincount(inverse, weights=ranks)[inverse] / counts[inverse]  # ties share their mean rank
    u = ranks[:n1].sum() - n1 * (n1 + 1) / 2
    n = n1 + n2
    ties = float((counts**3 - counts).sum())
    sigma = math.sqrt(n1 * n2 / 12 * ((n + 1) - ties / (n * (n - 1)))) if n > 1 else 0.0
    if sigma == 0:
        return 0.5
    z = (u - n1 * n2 / 2 - 0.5) / sigma
    return 0.5 * math.erfc(z / math.sqrt(2))


def _interval(baseline: Side, candidate: Side) -> tuple[float | None, float | None, str]:
    if baseline.samples and candidate.samples:
        low, high = bootstrap_ratio(baseline.samples, candidate.samples, quantile=LOW_QUANTILE)
        return low, high, "99% bootstrap of stored samples"
    if None not in (baseline.ci_low_ms, baseline.ci_high_ms, candidate.ci_low_ms, candidate.ci_high_ms):
        assert baseline.ci_low_ms and baseline.ci_high_ms and candidate.ci_low_ms and candidate.ci_high_ms
        return candidate.ci_low_ms / baseline.ci_high_ms, candidate.ci_high_ms / baseline.ci_low_ms, "logged 95% CIs"
    return None, None, "no interval known"


def _not_finite(baseline: Side, candidate: Side, ratio: float, low: float | None, high: float | None) -> str:
    """What is NaN or inf among the numbers a verdict rests on ("" when nothing is)."""
    medians = (("baseline", baseline.median_ms), ("candidate", candidate.median_ms))
    bad = [f"{side} median is {value} ms" for side, value in medians if not math.isfinite(value)]
    if not bad and not all(math.isfinite(value) for value in (low, high) if value is not None):
        bad = [f"the interval is {low:.4g} .. {high:.4g} (a stored sample or logged CI is NaN or inf)"]
    if not bad and not math.isfinite(ratio):
        bad = [f"the ratio is {ratio}"]
    return "; ".join(bad)


def judge(
    baseline: Side, candidate: Side, threshold: float = DEFAULT_THRESHOLD, min_samples: int = MIN_SAMPLES
) -> Verdict:
    """The verdict for one pair (see the module docstring for the rule)."""
    samples = bool(baseline.samples and candidate.samples)
    estimator = LOW_ESTIMATOR if samples else MEDIAN_ESTIMATOR
    p_value = None
    with np.errstate(all="ignore"):  # a NaN or inf median or sample is judged NOT FINITE below, not warned about
        if samples:
            base_stat = float(np.quantile(np.asarray(baseline.samples, dtype=float), LOW_QUANTILE))
            cand_stat = float(np.quantile(np.asarray(candidate.samples, dtype=float), LOW_QUANTILE))
        else:
            base_stat, cand_stat = baseline.median_ms, candidate.median_ms
        ratio = float(np.float64(cand_stat) / np.float64(base_stat))
        low, high, basis = _interval(baseline, candidate)
    reason = ""
    counts = (baseline.sample_count, candidate.sample_count)
    unreadable = _not_finite(baseline, candidate, ratio, low, high)
    if not unreadable and samples:
        p_value = mann_whitney_greater(baseline.samples, candidate.samples)
    if unreadable:
        status, reason = NOT_FINITE, unreadable
    elif any(count is None or count < min_samples for count in counts):
        status = INCONCLUSIVE
        shown = ", ".join("unknown" if count is None else str(count) for count in counts)
        reason = (
            f"too few samples ({shown}; at least {min_samples} each): re-run the profile with a longer timing "
            f"budget (timing.max_time_s=30) or decide now with {RERUN_HINT}"
        )
    elif low is None or high is None:
        status = INCONCLUSIVE
        reason = f"no confidence interval known for the medians (no stored samples): decide with {RERUN_HINT}"
    else:
        status = _decided(ratio, low, high, threshold, p_value is None or p_value < MANN_WHITNEY_ALPHA)
    status, reason = _under_load(baseline, candidate, status, reason)
    return Verdict(candidate.label, base_stat, cand_stat, ratio, low, high, basis, status, reason, estimator,
                   p_value)  # fmt: skip


def _decided(ratio: float, low: float, high: float, threshold: float, significant: bool = True) -> str:
    """The verdict once the evidence is enough to judge: REGRESSION when slower beyond the threshold, the interval
    wholly above 1 and the rank test (where there is one) ``significant``; slower beyond the threshold otherwise is
    within the noise; the interval wholly below 1 is faster; else ok. ``judge`` and ``judge_paired`` share it."""
    if ratio > 1 + threshold:
        return REGRESSION if low > 1 and significant else WITHIN_NOISE
    return FASTER if high < 1 else OK


def _under_load(baseline: Side, candidate: Side, status: str, reason: str) -> tuple[str, str]:
    """The verdict given the load each side was timed under. Load only adds time. A side is *contended* when other
    processes used more CPU than the cores its threads left free (logged conditions): its times are then set by the
    scheduler's share, which changes from run to run, and no estimator over stored samples can undo that (on this
    project's 2-core VM, identical sweeps timed 1.6 CPU-s/s into each other differed by +62% at the 10% quantile).
    Both contended: INCONCLUSIVE, naming ``--rerun``. One contended: a verdict that its load could explain (the
    contended candidate slower, or a candidate no slower than a contended baseline) is INCONCLUSIVE, naming
    ``--rerun``; the other direction stands. Load with cores to spare (``timing_suspect`` but not contended):
    decided on the low quantile, said."""
    if status in (INCONCLUSIVE, NOT_FINITE):
        return status, reason
    contended = [name for name, side in (("baseline", baseline), ("candidate", candidate)) if side.contended]
    suspect = [name for name, side in (("baseline", baseline), ("candidate", candidate)) if side.timing_suspect]
    if len(contended) == 2:
        return INCONCLUSIVE, (
            f"both sides were timed while other processes took the cores ({baseline.other_load:.2f} and "
            f"{candidate.other_load:.2f} CPU-s/s): stored times are the scheduler's share, decide with {RERUN_HINT}"
        )
    if contended:
        side = baseline if contended == ["baseline"] else candidate
        what = f"only the {contended[0]} was timed while other processes took the cores ({side.other_load:.2f} CPU-s/s)"
        if (contended == ["candidate"]) == (status in (REGRESSION, WITHIN_NOISE)):
            return INCONCLUSIVE, f"{what}, which alone could explain this verdict: decide with {RERUN_HINT}"
        return status, f"{what}, which works against this verdict"
    if suspect:
        return status, f"{' and '.join(suspect)} timed under load with cores to spare: decided on the low quantile"
    return status, reason


PAIRED_ESTIMATOR = "median of paired ratios"
PAIRED_WHY = "each round timed both under the same interference, which the ratio cancels (duet benchmarking)"


def judge_paired(
    label: str,
    baseline_ms: Sequence[float],
    candidate_ms: Sequence[float],
    threshold: float = DEFAULT_THRESHOLD,
    min_samples: int = MIN_SAMPLES,
) -> Verdict:
    """The verdict for samples taken interleaved (``timing.duet``: round i timed baseline_ms[i] and candidate_ms[i]
    back to back): ratio = median over rounds of candidate / baseline, with the distribution-free 99% interval of
    that median (order statistics, the sign test's interval). REGRESSION when ratio > 1 + threshold and the interval
    lies wholly above 1; faster, within noise or ok as ``judge`` says them. Load is shared by both sides of a round,
    so no side is suspect."""
    base = np.asarray(baseline_ms, dtype=float)
    cand = np.asarray(candidate_ms, dtype=float)
    with np.errstate(all="ignore"):
        ratios = sorted((cand / base).tolist())
    interval = median_ci(ratios, BOOTSTRAP_CONFIDENCE)
    low, high = interval if interval is not None else (None, None)
    ratio = float(np.median(ratios)) if ratios else math.nan
    medians = float(np.median(base)), float(np.median(cand))
    basis = "99% interval of the median ratio (order statistics)"
    reason = ""
    if not all(math.isfinite(value) for value in (*medians, ratio, *(v for v in (low, high) if v is not None))):
        status, reason = NOT_FINITE, "a re-measured sample is NaN or inf"
    elif len(ratios) < min_samples or low is None or high is None:
        status = INCONCLUSIVE
        reason = f"too few rounds ({len(ratios)}; at least {min_samples}): raise --rerun-time-s"
    else:
        status = _decided(ratio, low, high, threshold)
    return Verdict(label, medians[0], medians[1], ratio, low, high, basis, status, reason, PAIRED_ESTIMATOR)


def override_identity(overrides: Iterable[str]) -> str:
    """A job's identity as its ``overrides`` tag stores it and the gate reads it: its Hydra overrides as
    whitespace-separated tokens, sorted (``a=1 b=2`` equals ``b=2 a=1``), without those that only say where results go
    (tracking.*, hydra.*). Longer than MLflow keeps a tag (``MAX_TAG_VAL_LENGTH``; it would cut it silently), it is
    cut and ends in the SHA-256 of the whole, so identities that differ past the cut never read as one."""
    tokens = " ".join(overrides).split()
    identity = " ".join(sorted(t for t in tokens if not t.lstrip("+~").startswith(NOT_CONFIGURATION)))
    if len(identity) <= MAX_TAG_VAL_LENGTH:
        return identity
    suffix = f" ... sha256={hashlib.sha256(identity.encode()).hexdigest()}"
    return identity[: MAX_TAG_VAL_LENGTH - len(suffix)] + suffix


def stored_identity(tag: str) -> str:
    """The identity an ``overrides`` tag holds: as stored when it was cut and hashed, else normalised again, since
    runs logged before the tag was normalised hold the raw overrides (unsorted, ``tracking.*`` included)."""
    return tag if HASHED.search(tag) else override_identity([tag])


def _override_key(row: Row) -> str:
    return stored_identity(row.tags[OVERRIDES_TAG])


def _differing_params(rows: Sequence[Row]) -> set[str]:
    keys = {key for row in rows for key in row.config}
    return {key for key in keys if len({row.config.get(key) for row in rows}) > 1}


def identity_basis(baseline: Sequence[Row], candidate: Sequence[Row]) -> tuple[str, Callable[[Row], str]]:
    """How rows are matched ("overrides", "params" or "run name") and the function giving a row's identity."""
    rows = [*baseline, *candidate]
    if all(OVERRIDES_TAG in row.tags for row in rows):
        return "overrides", _override_key
    if all(row.config for row in rows):
        keys = sorted(_differing_params(baseline) | _differing_params(candidate))
        return "params", lambda row: " ".join(f"{key}={row.config.get(key, '<unset>')}" for key in keys)
    return "run name", lambda row: row.run_name


def _by_identity(rows: Sequence[Row], identity: Callable[[Row], str], side: str) -> dict[str, Row]:
    found: dict[str, list[Row]] = defaultdict(list)
    for row in rows:
        found[identity(row)].append(row)
    clashes = {key: group for key, group in found.items() if len(group) > 1}
    if clashes:
        lines = [
            f"{side} has {len(group)} runs with the same identity {key or '(none)'!r}: "
            + ", ".join(f"{row.run_name} ({row.run_id})" for row in group)
            for key, group in clashes.items()
        ]
        raise AmbiguousMatch("; ".join(lines) + " — give one run or sweep per side, the gate will not guess")
    return {key: group[0] for key, group in found.items()}


@dataclass(frozen=True)
class Pairing:
    pairs: list[tuple[Row, Row]]
    unmeasured: list[tuple[Row, list[Row]]]  # baseline rows the candidate did not measure, with its runs of them
    unmatched: list[str]  # "candidate only: name [identity]" lines; "baseline only" too when nothing matched
    basis: str

    @property
    def matched(self) -> bool:
        """Whether the candidate has a run, measured or not, of any baseline row: else the two sides have nothing
        in common, which is a usage error rather than a failed candidate."""
        return bool(self.pairs) or any(runs for _, runs in self.unmeasured)


def measured(row: Row) -> bool:
    """A candidate row the gate can judge: timed, and its run did not fail or get killed."""
    return bool(row.median_ms) and row.status not in ENDED_BADLY


def pair_rows(baseline: Sequence[Row], candidate: Sequence[Row]) -> Pairing:
    """Timed baseline rows matched by identity to the candidate's measured rows (see the module docstring); a
    baseline row without one is kept with the candidate's unmeasured runs of its identity (failed, killed, running,
    untimed). Raises AmbiguousMatch rather than guess."""
    base = [row for row in baseline if row.median_ms]
    cand = [row for row in candidate if measured(row)]
    if len(base) == 1 and len(candidate) == 1:
        if cand:
            return Pairing([(base[0], cand[0])], [], [], "one run on each side")
        return Pairing([], [(base[0], list(candidate))], [], "one run on each side")
    basis, identity = identity_basis(base, cand)
    base_by = _by_identity(base, identity, "the baseline")
    cand_by = _by_identity(cand, identity, "the candidate")
    others: dict[str, list[Row]] = defaultdict(list)
    for row in candidate:
        if not measured(row) and (basis != "overrides" or OVERRIDES_TAG in row.tags):
            others[identity(row)].append(row)
    pairs = [(base_by[key], cand_by[key]) for key in sorted(base_by.keys() & cand_by.keys())]
    absent = sorted(base_by.keys() - cand_by.keys())
    unmeasured = [(base_by[key], others.get(key, [])) for key in absent]
    unmatched = [f"candidate only: {cand_by[key].run_name} [{key}]" for key in sorted(cand_by.keys() - base_by.keys())]
    if not pairs and not any(runs for _, runs in unmeasured):
        unmatched = [f"baseline only: {base_by[key].run_name} [{key}]" for key in absent] + unmatched
    return Pairing(pairs, unmeasured, unmatched, basis)


def row_label(row: Row, basis: str, grouped: bool = False) -> str:
    """What to call a row in the gate's output: the short label the comparison table gives it (what differs inside
    its group, ``rows.label_rows``), after its group's name when the rows span several groups (``grouped``); else
    the variant tag or run name. The identity the rows were paired by (``basis``) is said once, not per row."""
    variant = row.label or row.tags.get(VARIANT_TAG) or row.run_name
    return f"{row.group}: {variant}" if grouped and row.group else variant


def pair_label(baseline: Row, candidate: Row, basis: str, grouped: bool = False) -> str:
    """A pair is called by its candidate row (see ``row_label``)."""
    return row_label(candidate, basis, grouped)


def unmeasured_verdict(baseline: Row, runs: Sequence[Row], label: str) -> Verdict:
    """The verdict for a baseline row the candidate did not measure: FAILED when a candidate run of its identity
    FAILED or was KILLED (each named with its status and error), else MISSING (its runs still RUNNING or never timed
    named, or none at all). Either fails the gate."""
    assert baseline.median_ms is not None
    ended = [row for row in runs if row.status in ENDED_BADLY]
    if ended:
        reason = "; ".join(
            f"the candidate's run {row.run_name} ({short_id(row)}) is {row.status}"
            + (f": {row.error.strip().splitlines()[0]}" if row.error.strip() else "")
            for row in ended
        )
        status = FAILED
    elif runs:
        status = MISSING
        reason = "; ".join(
            f"the candidate's run {row.run_name} ({short_id(row)}) is {row.status} with no latency" for row in runs
        )
    else:
        status, reason = MISSING, "the candidate has no run of this row"
    return Verdict(label, baseline.median_ms, None, None, None, None, "", status, reason)


def exit_code(verdicts: Iterable[Verdict]) -> int:
    """The gate's exit code, worst first: 4 when a row is FAILED, MISSING or NOT FINITE; 1 on a REGRESSION; 3 when a
    row is INCONCLUSIVE; else 0."""
    statuses = {verdict.status for verdict in verdicts}
    if statuses & set(BROKEN):
        return EXIT_BROKEN
    if REGRESSION in statuses:
        return EXIT_REGRESSION
    return EXIT_INCONCLUSIVE if INCONCLUSIVE in statuses else EXIT_PASSED


def parse_threshold(text: str) -> float:
    """'5%' or '0.05' -> 0.05."""
    try:
        value = float(text.strip().removesuffix("%")) / (100 if text.strip().endswith("%") else 1)
    except ValueError:
        value = -1.0
    if not 0 <= value < 10:
        raise ValueError(
            f"--threshold={text!r} is not allowed: give a fraction such as 0.05 or a percentage such as 5%"
        )
    return value
