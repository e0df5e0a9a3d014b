"""The regression gate: did a candidate's latency get worse than the baseline's, beyond a threshold *and* beyond the
measured noise?

Rows are matched by run name (which carries model, norm, batch size, device and dtype). For each pair the change is
the ratio of median latencies, candidate / baseline, with a 95% bootstrap confidence interval from the raw samples
both runs stored (2,000 resamples, fixed seed). A pair is a REGRESSION when the ratio exceeds 1 + threshold and its
interval lies wholly above 1 (the slowdown is not noise). Without stored samples, the runs' logged 95% CIs of the
median stand in: the candidate's lower bound must exceed the baseline's upper bound.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from gflops_track.compare.rows import Row

BOOTSTRAP_RESAMPLES = 2000
SEED = 0


@dataclass(frozen=True)
class Verdict:
    run_name: str
    baseline_ms: float
    candidate_ms: float
    ratio: float
    ratio_low: float
    ratio_high: float
    noise_basis: str  # "bootstrap of stored samples" or "logged median CIs"
    regression: bool

    @property
    def change(self) -> float:
        return self.ratio - 1

    def describe(self, threshold: float) -> str:
        interval = f"95% CI {self.ratio_low - 1:+.1%} .. {self.ratio_high - 1:+.1%}"
        if self.regression:
            verdict = f"REGRESSION (> {threshold:.1%} and beyond noise)"
        elif self.change > threshold:
            verdict = "slower beyond the threshold, but within the measured noise"
        elif self.ratio_high < 1:
            verdict = "faster"
        else:
            verdict = "ok"
        return (
            f"{self.run_name}: {self.baseline_ms:,.3f} ms -> {self.candidate_ms:,.3f} ms ({self.change:+.1%}, "
            f"{interval}, {self.noise_basis}): {verdict}"
        )


def bootstrap_ratio(baseline: Sequence[float], candidate: Sequence[float]) -> tuple[float, float]:
    """95% interval of median(candidate) / median(baseline), resampling each sample set with replacement."""
    rng = np.random.default_rng(SEED)
    base = np.asarray(baseline, dtype=float)
    cand = np.asarray(candidate, dtype=float)
    base_medians = np.median(rng.choice(base, size=(BOOTSTRAP_RESAMPLES, base.size)), axis=1)
    cand_medians = np.median(rng.choice(cand, size=(BOOTSTRAP_RESAMPLES, cand.size)), axis=1)
    ratios = cand_medians / base_medians
    return float(np.quantile(ratios, 0.025)), float(np.quantile(ratios, 0.975))


def judge(
    baseline: Row,
    candidate: Row,
    threshold: float,
    baseline_samples: Sequence[float] | None,
    candidate_samples: Sequence[float] | None,
) -> Verdict:
    assert baseline.median_ms and candidate.median_ms
    ratio = candidate.median_ms / baseline.median_ms
    if baseline_samples and candidate_samples:
        low, high = bootstrap_ratio(baseline_samples, candidate_samples)
        basis = "bootstrap of stored samples"
    else:
        low = (candidate.ci_low_ms or candidate.median_ms) / (baseline.ci_high_ms or baseline.median_ms)
        high = (candidate.ci_high_ms or candidate.median_ms) / (baseline.ci_low_ms or baseline.median_ms)
        basis = "logged median CIs"
    return Verdict(
        run_name=candidate.run_name,
        baseline_ms=baseline.median_ms,
        candidate_ms=candidate.median_ms,
        ratio=ratio,
        ratio_low=low,
        ratio_high=high,
        noise_basis=basis,
        regression=ratio > 1 + threshold and low > 1,
    )


def pair_rows(baseline: Sequence[Row], candidate: Sequence[Row]) -> tuple[list[tuple[Row, Row]], list[str]]:
    """Timed rows matched by run name; the names found on one side only."""
    base = {row.run_name: row for row in baseline if row.median_ms}
    cand = {row.run_name: row for row in candidate if row.median_ms}
    pairs = [(base[name], cand[name]) for name in sorted(base.keys() & cand.keys())]
    unmatched = sorted(base.keys() ^ cand.keys())
    return pairs, unmatched


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
