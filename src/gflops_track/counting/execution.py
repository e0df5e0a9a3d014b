"""Deprecated: renamed to ``gflops_track.counting.counting_forward`` (the pass it runs). Kept for one release."""

from __future__ import annotations

import warnings

from gflops_track.counting.counting_forward import (
    CountingPass,
    eval_mode,
    meta_tensors,
    run_counting_forward,
)

__all__ = ["CountingPass", "eval_mode", "meta_tensors", "run_counting_forward"]

warnings.warn(
    "gflops_track.counting.execution is deprecated; import from gflops_track.counting.counting_forward",
    DeprecationWarning,
    stacklevel=2,
)
