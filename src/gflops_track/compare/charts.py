"""Comparison plots (PNG): per-variant bars grouped by hardware, FLOPs vs latency, throughput vs batch size, and the
roofline with every run on it."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from gflops_track.compare.rows import Row
from gflops_track.peaks import Roof, RooflinePoint
from gflops_track.plots import new_figure, roofline_png, save_figure, throughput_curve_png


def throughput_series(rows: Sequence[Row]) -> dict[str, list[tuple[int, float]]]:
    """Throughput by batch size, one series per variant (run name without its batch part) and hardware, when the
    finished rows differ in batch size; empty otherwise."""
    series: dict[str, list[tuple[int, float]]] = {}
    for row in rows:
        if row.status != "FINISHED" or row.throughput_samples_per_s is None or row.batch_size is None:
            continue
        label = f"{re.sub(r'-b[0-9]+', '', row.run_name)} ({row.hardware})"
        series.setdefault(label, []).append((row.batch_size, row.throughput_samples_per_s))
    batch_sizes = {batch for points in series.values() for batch, _ in points}
    return series if len(batch_sizes) > 1 else {}


def _grouped_bars(path: Path, rows: Sequence[Row], value: str, error: bool, ylabel: str, title: str) -> Path:
    timed = [row for row in rows if getattr(row, value) is not None]
    hardware = sorted({row.hardware for row in timed})
    variants = sorted({row.run_name for row in timed})
    figure, axes = new_figure(max(7, 1.2 * len(variants) * len(hardware)))
    width = 0.8 / max(1, len(hardware))
    for index, machine in enumerate(hardware):
        by_variant = {row.run_name: row for row in timed if row.hardware == machine}
        xs = [v + index * width for v in range(len(variants))]
        heights = [getattr(by_variant[name], value) if name in by_variant else 0.0 for name in variants]
        errors = None
        if error:
            errors = [
                [
                    (r.median_ms or 0) - (r.ci_low_ms or r.median_ms or 0) if (r := by_variant.get(name)) else 0
                    for name in variants
                ],
                [
                    (r.ci_high_ms or r.median_ms or 0) - (r.median_ms or 0) if (r := by_variant.get(name)) else 0
                    for name in variants
                ],
            ]
        axes.bar(xs, heights, width=width, yerr=errors, capsize=3, label=machine)
    axes.set_xticks([v + width * (len(hardware) - 1) / 2 for v in range(len(variants))])
    axes.set_xticklabels(variants, rotation=20, ha="right", fontsize="small")
    axes.set_ylabel(ylabel)
    return save_figure(figure, axes, path, title, grid=False)


def _flops_vs_latency(path: Path, rows: Sequence[Row]) -> Path:
    figure, axes = new_figure()
    for machine in sorted({row.hardware for row in rows}):
        points = [r for r in rows if r.hardware == machine and r.gflops is not None and r.median_ms is not None]
        axes.scatter([r.gflops for r in points], [r.median_ms for r in points], label=machine)
        for r in points:
            axes.annotate(
                r.run_name, (r.gflops, r.median_ms), fontsize="x-small", xytext=(3, 3), textcoords="offset points"
            )
    axes.set_xlabel("GFLOPs per forward pass")
    axes.set_ylabel("median latency (ms)")
    return save_figure(figure, axes, path, "FLOPs vs latency")


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


def comparison_charts(rows: Sequence[Row], folder: Path) -> list[Path]:
    """Every plot the rows support, written into ``folder``."""
    timed = [row for row in rows if row.status == "FINISHED" and row.median_ms is not None]
    if not timed:
        return []
    charts = [
        _grouped_bars(
            folder / "achieved_gflops.png", timed, "achieved_gflop_per_s", False, "GFLOP/s", "achieved GFLOP/s"
        ),
        _grouped_bars(folder / "latency.png", timed, "median_ms", True, "median latency (ms)", "latency (95% CI)"),
        _flops_vs_latency(folder / "flops_vs_latency.png", timed),
    ]
    series = throughput_series(timed)
    if series:
        charts.append(throughput_curve_png(folder / "throughput_vs_batch_size.png", series, "throughput"))
    points = [
        RooflinePoint(row.run_name, row.arithmetic_intensity, row.achieved_gflop_per_s)
        for row in timed
        if row.arithmetic_intensity and row.achieved_gflop_per_s
    ]
    roofs = _roofs(timed)
    if points and roofs:
        charts.append(roofline_png(folder / "roofline.png", roofs, points, "roofline"))
    return charts
