"""How long and how precisely to time (``TimingOptions``): the timing defaults, and the progress callback's shape.

``target_precision`` is statistical: the half-width of the median's 95% confidence interval over the median. (The
config group ``precision`` is the dtype: ``RuntimeOptions.dtype``.)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from gflops_track.common.validation import integer_problem

ProgressCallback = Callable[[str, int, int], None]  # (phase, completed, total; total 0 = open-ended)


@dataclass(frozen=True)
class TimingOptions:
    """How long and how precisely to time (how each is used: ``gflops_track.timing.engine``; ``max_time_s`` bounds
    the whole phase). The defaults are chosen together with the regression gate's minimum of 10 timed iterations
    (``compare.gate.MIN_SAMPLES``): at least 3 warm-up calls (the eager CPU and CUDA paths settle within a few; the
    settle check goes on) for at most 2 s, so a 0.5 s forward on a busy 2-core runner still gets about 7 s of the
    10 s budget for timing, 14 samples (with 10 warm-up calls and 5 s, as before, it got 5-11 here: INCONCLUSIVE).
    docs/timing.md says why."""

    warmup: int = 3
    warmup_max_s: float = 2.0
    min_repeats: int = 30
    max_repeats: int = 10_000
    target_precision: float = 0.01
    max_time_s: float = 10.0
    cuda_graph: bool = False
    flush_l2: bool = False
    layers: bool = True  # time each module in a pass of its own after the headline timing (timing/layers.py)
    layer_iterations: int = 21  # forwards the per-layer pass times (fewer once max_time_s has passed; at least 3)

    def problems(self) -> list[tuple[str, str]]:
        """(field, "=value is not allowed: ...") per invalid option; callers prefix the key they expose."""
        checks = [
            ("warmup", self.warmup, 0),
            ("min_repeats", self.min_repeats, 1),
            ("max_repeats", self.max_repeats, max(1, self.min_repeats)),
            ("layer_iterations", self.layer_iterations, 1),
        ]
        found = [(name, problem) for name, value, low in checks if (problem := integer_problem(value, low))]
        for name in ("warmup_max_s", "max_time_s", "target_precision"):
            if not getattr(self, name) > 0:
                found.append((name, f"={getattr(self, name)!r} is not allowed: it must be > 0"))
        return found
