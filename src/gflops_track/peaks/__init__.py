"""Peaks: the vendor datasheet table and CPU estimate, the measured probes, and the peak report of a run."""
