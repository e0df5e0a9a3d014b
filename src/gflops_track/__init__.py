"""gflops-track: what a PyTorch module costs (params, MACs, FLOPs) and how fast it runs, tracked in MLflow.

The core API imports neither MLflow, Hydra nor matplotlib. One call does everything::

    from gflops_track import profile
    result = profile(model, torch.randn(2, 384, 32, 32), device="cpu")
    print(result.macs, result.flops, result.median_latency_ms)

or run the steps yourself: ``count`` -> ``measure`` -> ``peak_report`` (see ``pipeline/steps.py``). A training step
(forward, loss, backward, optimizer step) and its MFU: ``profile_training_step`` (see ``pipeline/training_step.py``).
What the steps take is in ``options/``, what they return in ``results/``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gflops_track.options.count import CountOptions
    from gflops_track.options.peaks import PeakOptions
    from gflops_track.options.runtime import RuntimeOptions
    from gflops_track.options.timing import TimingOptions
    from gflops_track.peaks.report import compare_with_peaks
    from gflops_track.pipeline.placement import resolve_device
    from gflops_track.pipeline.steps import count, measure, peak_report, profile
    from gflops_track.pipeline.training_step import count_training_step, measure_training_step, profile_training_step
    from gflops_track.results.peaks import PeakReport
    from gflops_track.results.profile import CountResult, ProfileResult
    from gflops_track.results.timing import TimingResult

# Each public name and the module that defines it, imported on first use (PEP 562): a tool that only reads runs,
# such as `gflops-track compare`, never pays for importing torch.
_PUBLIC = {
    "CountOptions": "options.count",
    "PeakOptions": "options.peaks",
    "RuntimeOptions": "options.runtime",
    "TimingOptions": "options.timing",
    "compare_with_peaks": "peaks.report",
    "resolve_device": "pipeline.placement",
    "count": "pipeline.steps",
    "measure": "pipeline.steps",
    "profile": "pipeline.steps",
    "peak_report": "pipeline.steps",
    "count_training_step": "pipeline.training_step",
    "measure_training_step": "pipeline.training_step",
    "profile_training_step": "pipeline.training_step",
    "PeakReport": "results.peaks",
    "CountResult": "results.profile",
    "ProfileResult": "results.profile",
    "TimingResult": "results.timing",
}


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'gflops_track' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"gflops_track.{module}"), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_PUBLIC])


__all__ = [
    "CountOptions",
    "CountResult",
    "PeakOptions",
    "PeakReport",
    "ProfileResult",
    "RuntimeOptions",
    "TimingOptions",
    "TimingResult",
    "compare_with_peaks",
    "count",
    "count_training_step",
    "measure",
    "measure_training_step",
    "peak_report",
    "profile",
    "profile_training_step",
    "resolve_device",
]
__version__ = "0.1.0"
