"""Plots (matplotlib, PNG, no display needed): the roofline and the throughput-vs-batch-size curve.

Figures are built with ``matplotlib.figure.Figure`` directly: no pyplot state and no backend switch, so importing
this module never changes how a notebook draws, and matplotlib is only imported when a plot is written.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from gflops_track.peaks import Roof, RooflinePoint

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["Roof", "RooflinePoint", "new_figure", "roofline_png", "save_figure", "throughput_curve_png"]


def new_figure(width: float = 7, height: float = 4.5) -> tuple[Figure, Axes]:
    """A figure with one axes, detached from pyplot (freed when it goes out of scope)."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=110)
    return figure, figure.add_subplot()


def save_figure(figure: Figure, axes: Axes, path: Path, title: str, grid: bool = True) -> Path:
    """Title, grid and legend, then write the PNG."""
    axes.set_title(title)
    if grid:
        axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path)
    return path


def roofline_png(path: Path, roofs: Sequence[Roof], points: Sequence[RooflinePoint], title: str) -> Path:
    """Log-log roofline: attainable GFLOP/s = min(compute roof, intensity x bandwidth), with the runs on it."""
    figure, axes = new_figure()
    intensities = [p.intensity for p in points] + [r.ridge for r in roofs]
    low = min(intensities, default=1.0) / 10
    high = max(intensities, default=100.0) * 10
    for roof, style in zip(roofs, ("-", "--", ":", "-."), strict=False):
        xs = [low, roof.ridge, high]
        ys = [low * roof.bandwidth_gb_s, roof.gflop_per_s, roof.gflop_per_s]
        axes.plot(
            xs, ys, style, label=f"{roof.label}: {roof.gflop_per_s:,.0f} GFLOP/s, {roof.bandwidth_gb_s:,.0f} GB/s"
        )
    for point in points:
        axes.scatter([point.intensity], [point.gflop_per_s], zorder=3)
        axes.annotate(point.label, (point.intensity, point.gflop_per_s), textcoords="offset points", xytext=(5, 5))
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlabel("arithmetic intensity (FLOP/byte)")
    axes.set_ylabel("GFLOP/s")
    return save_figure(figure, axes, path, title)


def throughput_curve_png(path: Path, series: dict[str, list[tuple[int, float]]], title: str) -> Path:
    """Throughput (samples/s) against batch size, one line per variant."""
    figure, axes = new_figure()
    for label, points in sorted(series.items()):
        ordered = sorted(points)
        axes.plot([b for b, _ in ordered], [t for _, t in ordered], marker="o", label=label)
    axes.set_xscale("log", base=2)
    axes.set_xlabel("batch size")
    axes.set_ylabel("throughput (samples/s)")
    return save_figure(figure, axes, path, title)
