"""Deprecated: renamed ``gflops_track.render.summary`` (what it renders); this alias goes in the next release."""

import warnings

from gflops_track.render.summary import summary_rows, summary_text

warnings.warn("gflops_track.formatting is now gflops_track.render.summary", DeprecationWarning, stacklevel=2)

__all__ = ["summary_rows", "summary_text"]
