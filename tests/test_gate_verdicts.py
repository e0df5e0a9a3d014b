"""The regression gate's rule at its edges and the lines it prints: interval bounds exactly at 1, the bootstrap's
quantiles, a side with samples against one without, the thresholds allowed, how a row becomes a Side, and each
verdict's line and label. Synthetic rows and samples (test_gate.py has the rule's main cases)."""

from __future__ import annotations

import math
import warnings
from dataclasses import replace

import numpy as np
import pytest

from gflops_track.compare.gate import (
    EXIT_BROKEN,
    EXIT_INCONCLUSIVE,
    EXIT_PASSED,
    EXIT_REGRESSION,
    FAILED,
    FASTER,
    INCONCLUSIVE,
    LOW_ESTIMATOR,
    LOW_WHY,
    MISSING,
    NOT_FINITE,
    OK,
    REGRESSION,
    RERUN_HINT,
    WITHIN_NOISE,
    AmbiguousMatch,
    Side,
    Verdict,
    bootstrap_ratio,
    exit_code,
    judge,
    pair_label,
    pair_rows,
    parse_threshold,
)
from test_gate import DEFAULT, lognormal, row

SPARE_CORES = "timed under load with cores to spare: decided on the low quantile"  # what follows the loaded sides


def logged(label: str, median: float, low: float, high: float, count: int = 30) -> Side:
    """A side known only by its logged median and 95% CI (no samples)."""
    return Side.from_row(row(label, median, ci_low_ms=low, ci_high_ms=high, timed_iterations=count), None)


def test_interval_bounds_exactly_at_one() -> None:
    """REGRESSION needs the interval *wholly above* 1 (low > 1), FASTER wholly below (high < 1). From logged CIs:
    low = candidate CI low / baseline CI high, high = candidate CI high / baseline CI low."""
    base = logged("b", 10.0, 8.0, 10.5)
    touching = judge(base, logged("c", 12.0, 10.5, 13.0), DEFAULT)  # low = 10.5 / 10.5 = 1, ratio 1.2
    assert touching.ratio_low == 1.0 and touching.ratio == pytest.approx(1.2) and touching.status == WITHIN_NOISE
    above = judge(base, logged("c", 12.0, 10.6, 13.0), DEFAULT)
    assert above.ratio_low is not None and above.ratio_low > 1 and above.status == REGRESSION
    at_one = judge(base, logged("c", 9.0, 7.0, 8.0), DEFAULT)  # high = 8 / 8 = 1
    assert at_one.ratio_high == 1.0 and at_one.status == OK
    below = judge(base, logged("c", 7.0, 6.0, 7.9), DEFAULT)
    assert below.ratio_high is not None and below.ratio_high < 1 and below.status == FASTER


def test_bootstrap_is_the_seeded_percentile_interval() -> None:
    """2,000 resamples of each side (numpy's generator, seed 0; the baseline's first), ratio of the resampled medians,
    the 0.5% and 99.5% quantiles for 99%; repeatable, and wider at 99% than at 90%."""
    base, cand = lognormal(3, 40), lognormal(4, 40, 12.0)
    rng = np.random.default_rng(0)
    base_medians = np.median(rng.choice(np.asarray(base), size=(2000, 40)), axis=1)
    cand_medians = np.median(rng.choice(np.asarray(cand), size=(2000, 40)), axis=1)
    ratios = cand_medians / base_medians
    expected = (float(np.quantile(ratios, 0.005)), float(np.quantile(ratios, 0.995)))
    assert bootstrap_ratio(base, cand) == expected == bootstrap_ratio(base, cand)
    ninety = bootstrap_ratio(base, cand, confidence=0.90)
    assert ninety == (float(np.quantile(ratios, 0.05)), float(np.quantile(ratios, 0.95)))
    assert expected[0] < ninety[0] < ninety[1] < expected[1]


def test_samples_on_one_side_only_fall_back_to_the_logged_intervals() -> None:
    """The bootstrap needs samples on both sides; otherwise both logged CIs are used."""
    sampled = Side.from_samples("b", [10.0 + 0.1 * (i % 7) for i in range(30)])
    sampled = Side(sampled.label, sampled.median_ms, 9.9, 10.4, sampled.samples, sampled.sample_count)
    verdict = judge(sampled, logged("c", 12.0, 11.8, 12.2), DEFAULT)
    assert verdict.noise_basis == "logged 95% CIs" and verdict.ratio_low == pytest.approx(11.8 / 10.4)
    unknown = judge(Side("b", 10.0, sample_count=30), Side("c", 20.0, sample_count=30), DEFAULT)
    assert (unknown.noise_basis, unknown.ratio_low, unknown.ratio_high) == ("no interval known", None, None)
    assert unknown.status == INCONCLUSIVE and unknown.reason == (
        f"no confidence interval known for the medians (no stored samples): decide with {RERUN_HINT}"
    )


def test_threshold_values_allowed() -> None:
    """A fraction or a percentage from 0 (any slowdown beyond the noise) up to, not including, 10 (1,000%)."""
    assert parse_threshold("0") == 0 and parse_threshold("0%") == 0
    assert parse_threshold(" 12.5% ") == 0.125 and parse_threshold("9.99") == 9.99
    for bad in ("10", "1000%", "-0.01", "-5%", "", "5 %x"):
        with pytest.raises(
            ValueError, match=r"is not allowed: give a fraction such as 0\.05 or a percentage such as 5%"
        ):
            parse_threshold(bad)


def test_a_row_becomes_a_side() -> None:
    """Label = run name; sample count = the stored samples' (else the logged timed iterations); timed under load
    when the timing_suspect tag says true, in any case."""
    samples = [10.0, 11.0, 12.0]
    side = Side.from_row(row("job", 11.0, timed_iterations=99, tags={"timing_suspect": "True"}), samples)
    assert (side.label, side.median_ms, side.samples, side.sample_count, side.timing_suspect) == (
        "job", 11.0, (10.0, 11.0, 12.0), 3, True
    )  # fmt: skip
    plain = Side.from_row(row("job", 11.0, timed_iterations=99, tags={"timing_suspect": "false"}), None)
    assert (plain.samples, plain.sample_count, plain.timing_suspect) == ((), 99, False)
    untagged = Side.from_row(row("job", 11.0, tags={}), [])
    assert (untagged.samples, untagged.sample_count, untagged.timing_suspect) == ((), None, False)
    sampled = Side.from_samples("c", [3, 1, 2], timing_suspect=True)
    assert (sampled.label, sampled.median_ms, sampled.sample_count, sampled.timing_suspect) == ("c", 2.0, 3, True)


def test_each_verdict_line() -> None:
    """What the gate prints per pair: label, medians, change, interval (or "interval unknown"), basis, verdict; a
    reason other than INCONCLUSIVE's is added in parentheses."""
    interval = {"ratio_low": 1.05, "ratio_high": 1.25, "noise_basis": "logged 95% CIs"}

    def line(status: str, reason: str = "", **changes: object) -> str:
        fields = {"label": "v", "baseline_ms": 1000.0, "candidate_ms": 1150.0, "ratio": 1.15, **interval}
        return Verdict(**{**fields, **changes}, status=status, reason=reason).describe(0.05)  # type: ignore[arg-type]

    why = "; median: no samples stored, the logged median and its CI"  # the estimator, named with its reason
    head = f"v: median 1,000.000 ms -> 1,150.000 ms (+15.0%, interval +5.0% .. +25.0%, logged 95% CIs{why}): "
    assert line(REGRESSION) == head + "REGRESSION (> 5.0% and beyond noise)"
    assert line(INCONCLUSIVE, "timed under load") == head + "INCONCLUSIVE: timed under load"
    assert line(WITHIN_NOISE) == head + "slower beyond the threshold, but within the measured noise"
    assert line(OK, "baseline timed under load") == head + "ok (baseline timed under load)"
    assert line(FASTER) == head + "faster"
    unknown = line(INCONCLUSIVE, "x", ratio_low=None, noise_basis="no interval known")
    assert unknown == f"v: median 1,000.000 ms -> 1,150.000 ms (+15.0%, interval unknown, no interval known{why}): " + (
        "INCONCLUSIVE: x"
    )
    assert "interval unknown" in line(OK, ratio_high=None)
    verdict = judge(Side.from_samples("base", [10.0] * 30), Side.from_samples("cand", [10.0] * 30), DEFAULT)
    described = verdict.describe(DEFAULT)
    assert verdict.label == "cand" and described.startswith(f"cand: {LOW_ESTIMATOR} 10.000 ms -> 10.000 ms (+0.0%")
    assert described.endswith(f"; {LOW_ESTIMATOR}: {LOW_WHY}): ok")
    loaded = judge(Side.from_samples("b", [10.0] * 30, True), Side.from_samples("c", [10.0] * 30, True), DEFAULT)
    assert (loaded.status, loaded.reason) == (OK, f"baseline and candidate {SPARE_CORES}")


def test_pair_labels_and_one_run_each() -> None:
    """A pair is named by the candidate's variant tag (else its run name), whatever the rows were matched by: the
    identity they were paired by is said once for the whole gate, not per row."""
    overrides = "norm_fn=group model.planes=64 +tracking.uri=x ~hydra.run.dir Xtracking.z=1"
    tags = {"variant": "planes=64", "overrides": overrides}
    base, cand = row("b", tags=tags), row("c", tags=tags)
    assert pair_label(base, cand, "overrides") == "planes=64" and pair_label(base, cand, "params") == "planes=64"
    assert pair_label(base, row("c", tags={"overrides": "a=1"}), "overrides") == "c"
    assert pair_label(base, row("c", tags={"variant": "v"}), "overrides") == "v"
    lone = pair_rows([base], [cand])
    assert (lone.pairs, lone.unmeasured, lone.unmatched, lone.basis) == ([(base, cand)], [], [], "one run on each side")
    failed = replace(row("c-failed", None), status="FAILED")
    alone = pair_rows([base], [failed])  # the candidate's one run failed: it is that row's run, not a stranger
    assert (alone.pairs, alone.unmeasured, alone.unmatched, alone.basis) == (
        [], [(base, [failed])], [], "one run on each side"
    )  # fmt: skip


def test_identities_and_clashes_are_named_in_full() -> None:
    """Matched by params: a row's identity is every differing key=value, in key order, '<unset>' where it has
    none; a clash names the side, the count, the identity and each run, and says the gate will not guess."""
    base = [row("b1", config={"a": "1", "b": "x"}), row("b2", config={"a": "2"})]
    cand = [row("c1", config={"a": "1", "b": "x"}), row("c3", config={"a": "3", "b": "x"})]
    pairing = pair_rows(base, cand)
    assert pairing.basis == "params" and [(b.run_name, c.run_name) for b, c in pairing.pairs] == [("b1", "c1")]
    assert [(b.run_name, runs) for b, runs in pairing.unmeasured] == [("b2", [])]  # judged MISSING, not listed
    assert pairing.unmatched == ["candidate only: c3 [a=3 b=x]"]
    apart = pair_rows([base[1], row("b4", config={"a": "4", "b": "x"})], cand[1:])  # nothing pairs: all listed
    assert apart.unmatched == ["baseline only: b2 [a=2 b=<unset>]", "baseline only: b4 [a=4 b=x]",
                               "candidate only: c3 [a=3 b=x]"]  # fmt: skip
    twice = [row("x", run_id="id-1", config={"a": "1"}), row("y", run_id="id-2", config={"a": "1"})]
    with pytest.raises(AmbiguousMatch) as refused:
        pair_rows([*twice, row("z", config={"a": "2"})], [row("c", config={"a": "1"}), row("d", config={"a": "2"})])
    assert str(refused.value) == (
        "the baseline has 2 runs with the same identity 'a=1': x (id-1), y (id-2) — give one run or sweep per side, "
        "the gate will not guess"
    )
    unnamed = [row("p", run_id="id-p", tags={"overrides": "tracking.uri=a"}),
               row("q", run_id="id-q", tags={"overrides": "tracking.uri=b"})]  # fmt: skip
    with pytest.raises(AmbiguousMatch, match=r"^the candidate has 2 runs with the same identity '\(none\)': p "):
        pair_rows([row("b", tags={"overrides": "x=1"}), row("e", tags={"overrides": "x=2"})], unnamed)
    two_clashes = [row(name, run_id=name, config={"a": value}) for name, value in zip("mnop", "1122", strict=True)]
    with pytest.raises(AmbiguousMatch, match=r"'a=1': m \(m\), n \(n\); the baseline has 2 runs .* 'a=2': o \(o\)"):
        pair_rows(two_clashes, [row("c", config={"a": "1"}), row("d", config={"a": "2"})])


@pytest.mark.parametrize(
    ("statuses", "code"),
    [
        ((), EXIT_PASSED),  # nothing compared: nothing failed (the command itself says nothing matched: exit 2)
        ((OK, FASTER, WITHIN_NOISE), EXIT_PASSED),
        ((OK, INCONCLUSIVE), EXIT_INCONCLUSIVE),
        ((INCONCLUSIVE, REGRESSION, OK), EXIT_REGRESSION),  # a regression outranks an inconclusive row
        ((REGRESSION, FAILED), EXIT_BROKEN),  # a candidate that failed outranks everything
        ((OK, MISSING), EXIT_BROKEN),
        ((INCONCLUSIVE, NOT_FINITE), EXIT_BROKEN),
    ],
)
def test_the_exit_code_is_the_worst_row(statuses: tuple[str, ...], code: int) -> None:
    """What CI reads, worst first: 4 when a row is FAILED, MISSING or NOT FINITE; 1 on a REGRESSION; 3 when a row is
    INCONCLUSIVE; else 0."""
    assert (EXIT_PASSED, EXIT_REGRESSION, EXIT_INCONCLUSIVE, EXIT_BROKEN) == (0, 1, 3, 4)
    verdicts = [Verdict("row", 10.0, None, None, None, None, "", status) for status in statuses]
    assert exit_code(verdicts) == code


def test_a_candidate_run_that_measured_nothing_is_kept_with_its_baseline_row() -> None:
    """Matched by overrides: the candidate's FAILED run of planes=64 is kept with that baseline row (so the gate says
    FAILED, not MISSING); its sweep's own run, untimed and without an overrides tag, is no row of anything and must
    not break the match."""
    tagged = {planes: {"overrides": f"model.planes={planes}"} for planes in (32, 64)}
    base = [row("b32", tags=tagged[32]), row("b64", tags=tagged[64])]
    failed = replace(row("c64", None, tags=tagged[64]), status="FAILED")
    cand = [row("c32", tags=tagged[32]), failed, row("sweep", None, tags={})]
    pairing = pair_rows(base, cand)
    assert pairing.basis == "overrides" and [(b.run_name, c.run_name) for b, c in pairing.pairs] == [("b32", "c32")]
    assert pairing.unmeasured == [(base[1], [failed])] and pairing.unmatched == []


def test_reasons_name_the_loaded_sides_and_a_quiet_verdict_has_none() -> None:
    """1.6x on tight samples. Quiet: REGRESSION with no reason. Timed under load with cores to spare (suspect, not
    contended: test_gate.py has the contended cases): still decided on the low quantile, the loaded side(s) named,
    joined by " and "; a loaded baseline counts as much as a loaded candidate. Never a reason when quiet."""
    base = [10.0 + 0.1 * (i % 7) for i in range(30)]
    slower = [1.6 * v for v in base]
    both = judge(Side.from_samples("b", base, True), Side.from_samples("c", slower, True), DEFAULT)
    assert (both.status, both.reason) == (REGRESSION, f"baseline and candidate {SPARE_CORES}")
    for loaded_side, baseline_loaded in (("baseline", True), ("candidate", False)):
        one = judge(Side.from_samples("b", base, baseline_loaded), Side.from_samples("c", slower, not baseline_loaded))
        assert (one.status, one.reason) == (REGRESSION, f"{loaded_side} {SPARE_CORES}")
    quiet = judge(Side.from_samples("b", base), Side.from_samples("c", slower), DEFAULT)
    assert (quiet.status, quiet.reason) == (REGRESSION, "")
    same = judge(Side.from_samples("b", base), Side.from_samples("c", base), DEFAULT)
    assert (same.status, same.reason) == (OK, "")
    loaded = judge(Side.from_samples("b", base, True), Side.from_samples("c", base, True), DEFAULT)
    assert (loaded.status, loaded.reason) == (OK, f"baseline and candidate {SPARE_CORES}")


def test_nan_or_inf_is_not_finite_and_never_a_warning() -> None:
    """A NaN median, or a logged CI bound that is NaN or inf (the interval is cand CI / base CI: low = 9 / 11,
    high = 11 / 9 when finite), makes the verdict NOT FINITE with what is wrong, and numpy warns about nothing."""
    finite = Side("b", 10.0, 9.0, 11.0, sample_count=30)
    nan_sample = [10.0] * 29 + [math.nan]  # np.median of a sample with a NaN is NaN
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a RuntimeWarning (invalid value, divide by zero) would fail here
        nan_median = judge(finite, Side.from_samples("c", nan_sample), DEFAULT)
        inf_high = judge(finite, Side("c", 10.0, 9.0, math.inf, sample_count=30), DEFAULT)
        nan_low = judge(finite, Side("c", 10.0, math.nan, 11.0, sample_count=30), DEFAULT)
        zero = judge(Side("b", 0.0, sample_count=30), Side("c", 0.0, sample_count=30), DEFAULT)
    assert (nan_median.status, nan_median.reason) == (NOT_FINITE, "candidate median is nan ms")
    assert (inf_high.status, inf_high.reason) == (
        NOT_FINITE, f"the interval is {9 / 11:.4g} .. inf (a stored sample or logged CI is NaN or inf)"
    )  # fmt: skip
    assert (nan_low.status, nan_low.reason) == (
        NOT_FINITE, f"the interval is nan .. {11 / 9:.4g} (a stored sample or logged CI is NaN or inf)"
    )  # fmt: skip
    assert (zero.status, zero.reason) == (NOT_FINITE, "the ratio is nan")  # 0 / 0
    assert judge(finite, Side("c", 10.0, 9.0, 11.0, sample_count=30), DEFAULT).status == OK


def test_sub_millisecond_latencies_keep_their_digits() -> None:
    """A 6 µs forward: 0.00596 ms against 0.00608 ms, +2.0%, not '0.006 ms -> 0.006 ms (+2.0%)'."""
    verdict = Verdict("row", 0.00596, 0.00608, 0.00608 / 0.00596, 1.01, 1.03, "bootstrap", "within noise")
    line = verdict.describe(0.05)
    assert "0.00596 ms -> 0.00608 ms" in line and "+2.0%" in line
