"""Rendering a run: the summary text and the plots (matplotlib imported inside the functions only)."""
