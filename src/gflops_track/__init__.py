"""gflops-track: what a PyTorch module costs (params, MACs, FLOPs) and how fast it runs, tracked in MLflow.

The core API imports neither MLflow, Hydra nor matplotlib. One call does everything::

    from gflops_track import profile
    result = profile(model, torch.randn(2, 384, 32, 32), device="cpu")
    print(result.macs, result.flops, result.median_latency_ms)

or run the steps yourself: ``count`` -> ``measure`` -> ``rate`` (see ``profiler.py``). A training step (forward,
loss, backward, optimizer step) and its MFU: ``profile_training_step`` (see ``training_step.py``).
"""

from gflops_track.peak_report import PeakOptions, PeakReport, compare_with_peaks
from gflops_track.profiler import CountOptions, count, measure, profile, rate, resolve_device
from gflops_track.result import CountResult, ProfileResult
from gflops_track.runtime import RuntimeOptions
from gflops_track.timing import TimingOptions, TimingResult
from gflops_track.training_step import count_training_step, measure_training_step, profile_training_step

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
    "profile",
    "profile_training_step",
    "rate",
    "resolve_device",
]
__version__ = "0.1.0"
