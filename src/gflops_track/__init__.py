"""gflops-track: what a PyTorch module costs (params, MACs, FLOPs) and how fast it runs, tracked in MLflow.

The core API below imports neither MLflow nor Hydra::

    from gflops_track import profile
    result = profile(model, torch.randn(2, 384, 32, 32), device="cpu")
    print(result.macs, result.flops, result.median_latency_ms)
"""

from gflops_track.profiler import profile, resolve_device
from gflops_track.result import ProfileResult

__all__ = ["ProfileResult", "profile", "resolve_device"]
__version__ = "0.1.0"
