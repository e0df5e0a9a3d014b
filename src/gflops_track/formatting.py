"""Deprecated: renamed ``gflops_track.summary`` (what it renders); this alias goes in the next release."""

import warnings

from gflops_track.summary import summary_rows, summary_text

warnings.warn("gflops_track.formatting is now gflops_track.summary", DeprecationWarning, stacklevel=2)

__all__ = ["summary_rows", "summary_text"]
