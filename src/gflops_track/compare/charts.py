"""Comparison plots (PNG): per-variant bars grouped by hardware, FLOPs vs latency, throughput vs batch size, and a
roofline per precision with every run of it. Every variant has one colour in every chart (tab10/tab20) and its own
legend entry; bars and compared axes start at zero. The ``*_figure`` functions return the Figure (tests read its
axes)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from gflops_track.common import names
from gflops_track.compare.render import variant
from gflops_track.compare.rows import Row, finite_only
from gflops_track.render.plots import finish_figure, new_figure, roofline_png, throughput_curve_png, variant_colors
from gflops_track.results.peaks import Roof, RooflinePoint

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def throughput_series(rows: Sequence[Row]) -> dict[str, list[tuple[int, float]]]:
    """Throughput by batch size, one series per variant (without its batch part) and hardware, when the finished
    rows differ in batch size; empty otherwise."""
    series: dict[str, list[tuple[int, float]]] = {}
    machines = {row.hardware for row in rows}
    for row in rows:
        if row.status != "FINISHED" or row.throughput_samples_per_s is None or row.batch_size is None:
            continue
        tokens = [token for token in variant(row).split() if not token.startswith("batch.size=")]
        name = re.sub(r"-b[0-9]+", "", " ".join(tokens)) or "batch size"  # a run name (older runs) loses its -bN
        label = name if len(machines) == 1 else f"{name} ({row.hardware})"
        series.setdefault(label, []).append((row.batch_size, row.throughput_samples_per_s))
    batch_sizes = {batch for points in series.values() for batch, _ in points}
    return series if len(batch_sizes) > 1 else {}


def _ci_error(row: Row) -> list[list[float]] | None:
    """An asymmetric error bar (ms) from the row's 95% CI of the median; None where no CI is known (fewer than 8
    samples): no bar, since a zero-length one with caps would read as a very tight interval."""
    if row.median_ms is None or row.ci_low_ms is None or row.ci_high_ms is None:
        return None
    return [[max(0.0, row.median_ms - row.ci_low_ms)], [max(0.0, row.ci_high_ms - row.median_ms)]]


def bars_figure(rows: Sequence[Row], value: str, error: bool, ylabel: str, title: str) -> Figure:
    """One bar per run, grouped by hardware along x, in the rows' order (the comparison's: a sweep's first value
    first, as its table), coloured by variant, with the legend under the axes (inside, it hid the tallest bars);
    the value axis from zero."""
    timed = [row for row in rows if getattr(row, value) is not None]
    hardware = list(dict.fromkeys(row.hardware for row in timed))
    colors = variant_colors([variant(row) for row in rows])  # every chart of the rows: one colour per variant
    per_group = max(len([r for r in timed if r.hardware == machine]) for machine in hardware) if timed else 1
    figure, axes = new_figure(max(7.0, 0.9 * per_group * len(hardware) + 2), 4.5 + 0.25 * len(colors))
    width = 0.8 / per_group
    centers = []
    drawn: set[str] = set()
    for group, machine in enumerate(hardware):
        members = [r for r in timed if r.hardware == machine]
        xs = [group + (index - (len(members) - 1) / 2) * width for index in range(len(members))]
        centers.append(group)
        for x, row in zip(xs, members, strict=True):
            name = variant(row)
            axes.bar(
                [x],
                [getattr(row, value)],
                width=width * 0.95,
                yerr=_ci_error(row) if error else None,
                capsize=3,
                color=colors[name],
                label=None if name in drawn else name,
            )
            drawn.add(name)
    axes.set_xticks(centers, hardware, fontsize="small")
    axes.set_ylim(bottom=0)
    axes.set_ylabel(ylabel)
    return finish_figure(figure, axes, title, grid=False, legend_below=True)


def flops_vs_latency_figure(rows: Sequence[Row]) -> Figure:
    """GFLOPs against median latency, one colour per variant, one marker per hardware; both axes from zero."""
    figure, axes = new_figure()
    points = [r for r in rows if r.gflops is not None and r.median_ms is not None]
    colors = variant_colors([variant(row) for row in rows])  # the rows' order, as the bar charts
    markers = dict(zip(sorted({r.hardware for r in points}), "osD^vP*X", strict=False))
    several = len(markers) > 1
    for row in points:
        axes.errorbar(
            [row.gflops],
            [row.median_ms],
            yerr=_ci_error(row),
            fmt=markers.get(row.hardware, "o"),
            color=colors[variant(row)],
            capsize=3,
            label=variant(row) + (f" ({row.hardware})" if several else ""),
        )
    axes.set_xlim(left=0, right=max((r.gflops or 0 for r in points), default=1.0) * 1.15 or 1.0)
    axes.set_ylim(bottom=0, top=max((r.ci_high_ms or r.median_ms or 0 for r in points), default=1.0) * 1.15 or 1.0)
    axes.set_xlabel("GFLOPs per forward pass")
    axes.set_ylabel("median latency (ms)")
    return finish_figure(figure, axes, "FLOPs vs latency")


def _roofs(rows: Sequence[Row]) -> list[Roof]:
    roofs: dict[str, Roof] = {}
    for row in rows:
        if row.measured_peak_gflop_per_s and row.measured_bandwidth_gb_per_s:
            roofs.setdefault(
                f"{row.hardware} measured",
                Roof(f"{row.hardware} measured", row.measured_peak_gflop_per_s, row.measured_bandwidth_gb_per_s),
            )
        if row.spec_peak_gflop_per_s and row.spec_bandwidth_gb_per_s:
            roofs.setdefault(
                f"{row.hardware} spec",
                Roof(f"{row.hardware} spec", row.spec_peak_gflop_per_s, row.spec_bandwidth_gb_per_s),
            )
    return list(roofs.values())


def _save(figure: Figure, path: Path) -> Path:
    figure.savefig(path)
    return path


def comparison_charts(rows: Sequence[Row], folder: Path) -> list[Path]:
    """Every plot the rows support, written into ``folder``: inference runs (latency, achieved GFLOP/s, FLOPs vs
    latency, throughput curve), train runs (step GFLOP/s, MFU), and a roofline per precision with both. A number that
    is NaN or inf is left out (``finite_only``; the report names it)."""
    finished = [finite_only(row) for row in rows if row.status == "FINISHED"]
    timed = [row for row in finished if row.median_ms is not None]
    trained = [row for row in finished if row.step_achieved_gflop_per_s is not None]
    charts = []
    if timed:
        charts += [
            _save(bars_figure(timed, "achieved_gflop_per_s", False, "GFLOP/s", "achieved GFLOP/s"),
                  folder / "achieved_gflops.png"),
            _save(bars_figure(timed, "median_ms", True, "median latency (ms)", "latency (95% CI)"),
                  folder / "latency.png"),
            _save(flops_vs_latency_figure(timed), folder / "flops_vs_latency.png"),
        ]  # fmt: skip
        series = throughput_series(timed)
        if series:
            charts.append(throughput_curve_png(folder / "throughput_vs_batch_size.png", series, "throughput"))
    if trained:
        charts.append(_save(
            bars_figure(trained, "step_achieved_gflop_per_s", False, "GFLOP/s", "train step achieved GFLOP/s"),
            folder / "train_step_gflops.png",
        ))  # fmt: skip
        if any(row.mfu is not None for row in trained):
            charts.append(_save(
                bars_figure(trained, "mfu", False, "MFU (share of the peak: tag mfu_peak)", "MFU"), folder / "mfu.png"
            ))  # fmt: skip
    return charts + _rooflines(timed, trained, folder)


def dtype_of(row: Row) -> str:
    """The precision a run ran in (its ``dtype`` tag, else its ``precision.dtype`` param; "" when unknown)."""
    return row.tags.get(names.DTYPE_TAG) or row.config.get("precision.dtype", "")


def roofline_sets(timed: Sequence[Row], trained: Sequence[Row]) -> list[tuple[str, list[Roof], list[RooflinePoint]]]:
    """(chart name, roofs, runs) per precision: fp32 runs under the fp32 roofs, bf16 runs under the bf16 ones (a
    device's peak differs by an order of magnitude between them); ``roofline`` alone when there is one precision.
    A run's label names its hardware where the runs come from several machines."""
    several = len({row.hardware for row in [*timed, *trained]}) > 1

    def label(row: Row, suffix: str = "") -> str:
        return variant(row) + suffix + (f" ({row.hardware})" if several else "")

    points: dict[str, list[RooflinePoint]] = {}
    for row in timed:
        if row.arithmetic_intensity and row.achieved_gflop_per_s:
            point = RooflinePoint(label(row), row.arithmetic_intensity, row.achieved_gflop_per_s)
            points.setdefault(dtype_of(row), []).append(point)
    for row in trained:  # a train step sits at its forward's intensity: there is no byte model of the backward
        if row.arithmetic_intensity and row.step_achieved_gflop_per_s:
            point = RooflinePoint(label(row, " train step"), row.arithmetic_intensity, row.step_achieved_gflop_per_s)
            points.setdefault(dtype_of(row), []).append(point)
    sets = []
    for dtype, on_roof in sorted(points.items()):
        roofs = _roofs([row for row in [*timed, *trained] if dtype_of(row) == dtype])
        name = "roofline" if len(points) == 1 else f"roofline_{dtype or 'unknown_precision'}"
        if roofs:
            sets.append((name, roofs, on_roof))
    return sets


def _rooflines(timed: Sequence[Row], trained: Sequence[Row], folder: Path) -> list[Path]:
    return [
        roofline_png(folder / f"{name}.png", roofs, points, name.replace("_", ", ", 1))
        for name, roofs, points in roofline_sets(timed, trained)
    ]


__all__ = ["bars_figure", "comparison_charts", "flops_vs_latency_figure", "roofline_sets", "throughput_series"]
