"""Deprecated: renamed ``gflops_track.tracking.records`` (what it holds); this alias goes in the next release."""

import warnings

from gflops_track.tracking.records import (
    RunRecord,
    cost_record,
    flatten_params,
    peak_record,
    start_record,
    timing_record,
    write_to_mlflow,
)

warnings.warn("gflops_track.tracking.run_logger is now gflops_track.tracking.records", DeprecationWarning, stacklevel=2)

__all__ = [
    "RunRecord",
    "cost_record",
    "flatten_params",
    "peak_record",
    "start_record",
    "timing_record",
    "write_to_mlflow",
]
