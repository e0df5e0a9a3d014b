"""The options every step takes (count, runtime, timing, peaks, training): the only defaults in the project."""
