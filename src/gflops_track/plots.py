"""Plots (matplotlib, PNG, no display needed): the roofline and the throughput-vs-batch-size curve."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure


def save_figure(figure: Figure, axes: Axes, path: Path, title: str, grid: bool = True) -> Path:
    """Title, grid and legend, then write the PNG and free the figure."""
    axes.set_title(title)
    if grid:
        axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path


@dataclass(frozen=True)
class Roof:
    """A compute roof (GFLOP/s) and a memory roof (GB/s), e.g. the vendor's or the measured ones."""

    label: str
    gflop_per_s: float
    bandwidth_gb_s: float

    @property
    def ridge(self) -> float:
        """Arithmetic intensity (FLOP/byte) where the memory roof meets the compute roof."""
        return self.gflop_per_s / self.bandwidth_gb_s


@dataclass(frozen=True)
class RooflinePoint:
    label: str
    intensity: float  # FLOP/byte
    gflop_per_s: float


def roofline_png(path: Path, roofs: Sequence[Roof], points: Sequence[RooflinePoint], title: str) -> Path:
    """Log-log roofline: attainable GFLOP/s = min(compute roof, intensity x bandwidth), with the runs on it."""
    figure, axes = plt.subplots(figsize=(7, 4.5), dpi=110)
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
    figure, axes = plt.subplots(figsize=(7, 4.5), dpi=110)
    for label, points in sorted(series.items()):
        ordered = sorted(points)
        axes.plot([b for b, _ in ordered], [t for _, t in ordered], marker="o", label=label)
    axes.set_xscale("log", base=2)
    axes.set_xlabel("batch size")
    axes.set_ylabel("throughput (samples/s)")
    return save_figure(figure, axes, path, title)
