"""Which peaks to find (``PeakOptions``): whether to run the probes, and where their cache lives."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class PeakOptions:
    """``measure``: run the GEMM and bandwidth probes (seconds once per machine, then cached in ``cache_dir``,
    default ``~/.cache/gflops-track``) for utilization vs measured peak."""

    measure: bool = False
    cache_dir: Path | None = None
