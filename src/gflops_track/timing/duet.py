"""Duet timing: two calls measured interleaved in one process, so that both suffer the same interference (Bulej et
al., "Duet benchmarking", ICPE 2020). Each round times one call of each, the order alternating (ABBA...), so
neither side always runs first after the other; rounds go on until both have ``min_repeats`` samples and
``max_time_s`` has passed, or both have ``max_repeats``. Core: imports neither MLflow nor Hydra."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

TimedCall = Callable[[], float]  # runs the call once and returns its wall time in ms (device synchronised)


def interleaved(
    calls: Sequence[TimedCall],
    warmup: int,
    min_repeats: int,
    max_repeats: int,
    max_time_s: float,
    clock: Callable[[], float] = time.perf_counter,
) -> list[list[float]]:
    """Per call, its timed samples (ms), taken round by round in alternating order after ``warmup`` untimed rounds
    (each round of warm-up calls each once too)."""
    for _ in range(warmup):
        for call in calls:
            call()
    samples: list[list[float]] = [[] for _ in calls]
    started = clock()
    order = list(range(len(calls)))
    while True:
        for index in order:
            samples[index].append(calls[index]())
        order.reverse()
        count = len(samples[0])
        if count >= max_repeats or (count >= min_repeats and clock() - started >= max_time_s):
            return samples
