"""What the steps produce: counts, timings, peaks and the profile of a run (a leaf: it imports no engine)."""
