"""Plots (matplotlib, PNG, no display needed): the roofline, the throughput-vs-batch-size curve, and the helpers the
comparison charts share.

Figures are built with ``matplotlib.figure.Figure`` directly: no pyplot state and no backend switch, so importing
this module never changes how a notebook draws, and matplotlib is only imported when a plot is written. Every
``*_figure`` function returns the Figure before it is saved, so tests can read its axes; ``*_png`` writes it.

Readable by rule: no offset notation on any axis (a 0.006 GFLOP spread is not blown up to full width), axes that
compare magnitudes start at zero, labels stay inside the axes, and every variant has its own colour and label.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gflops_track.common.numbers import one_place
from gflops_track.results.layers import BoundRoof, LayerRow
from gflops_track.results.peaks import Roof, RooflinePoint

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "Roof",
    "RooflinePoint",
    "finish_figure",
    "layer_roofline_figure",
    "layer_share_figure",
    "new_figure",
    "roofline_figure",
    "roofline_png",
    "save_figure",
    "throughput_curve_figure",
    "throughput_curve_png",
    "variant_colors",
]


def new_figure(width: float = 7, height: float = 4.5) -> tuple[Figure, Axes]:
    """A figure with one axes on an Agg canvas, detached from pyplot (freed when it goes out of scope); the canvas
    can draw, so text extents are known before saving."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(figure)
    return figure, figure.add_subplot()


def variant_colors(labels: Sequence[str]) -> dict[str, Any]:
    """One distinct colour per label, in first-seen order, from a qualitative colormap (tab10, tab20 beyond 10
    labels; cycled beyond 20)."""
    from matplotlib import colormaps

    unique = list(dict.fromkeys(labels))
    palette = colormaps["tab10" if len(unique) <= 10 else "tab20"].colors
    return {label: palette[index % len(palette)] for index, label in enumerate(unique)}


def no_offset(axes: Axes) -> None:
    """Plain tick labels on every linear axis: no ``+1.088e1`` offset, no scientific multiplier."""
    from matplotlib.ticker import ScalarFormatter

    for axis in (axes.xaxis, axes.yaxis):
        formatter = axis.get_major_formatter()
        if isinstance(formatter, ScalarFormatter):
            formatter.set_useOffset(False)
            formatter.set_scientific(False)


def label_inside(axes: Axes, text: str, xy: tuple[float, float], color: Any = None) -> None:
    """Annotate a data point with its label placed towards the middle of the axes (left of points in the right half,
    below points in the top half), so the label stays inside the axes; clipped if it still would not."""
    figure = axes.get_figure()
    assert figure is not None
    figure.canvas.draw()  # limits and transforms are final once drawn
    fx, fy = axes.transAxes.inverted().transform(axes.transData.transform(xy))
    right, top = fx > 0.5, fy > 0.5
    axes.annotate(
        text,
        xy,
        xytext=(-6 if right else 6, -6 if top else 6),
        textcoords="offset points",
        ha="right" if right else "left",
        va="top" if top else "bottom",
        fontsize="small",
        color=color,
        annotation_clip=True,
        clip_on=True,
    )


TITLE_CHARACTERS_PER_INCH = 10  # at the title's 12 pt, about what one inch of figure holds


def fitted_title(title: str, figure: Figure) -> str:
    """The title wrapped at word boundaries to the figure's width, each line as given kept apart: a run's name and
    hardware can be longer than the figure, and a title wider than the figure is cut at both edges."""
    width = max(20, int(figure.get_figwidth() * TITLE_CHARACTERS_PER_INCH))
    return "\n".join(textwrap.fill(line, width) for line in title.splitlines())


LEGEND_MARGIN_INCHES = 0.3  # room either side of a legend below the axes


def finish_figure(
    figure: Figure, axes: Axes, title: str, grid: bool = True, legend: bool = True, legend_below: bool = False
) -> Figure:
    """Title (wrapped to the figure), grid, legend and plain tick labels, laid out. ``legend_below``: the legend
    under the axes, for charts whose bars fill every corner (a legend inside would hide some) or whose points sit too
    close to label; the figure widens when that legend is wider than it."""
    axes.set_title(fitted_title(title, figure))
    if grid:
        axes.grid(True, which="both", alpha=0.3)
    below = None
    if legend and axes.get_legend_handles_labels()[0]:
        if legend_below:
            below = axes.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.12))
        else:
            axes.legend(fontsize="small")
    no_offset(axes)
    if below is not None:  # a legend wider than the figure would be cut at both edges: widen the figure to hold it
        width = below.get_window_extent(figure.canvas.get_renderer()).width / figure.dpi + LEGEND_MARGIN_INCHES
        if width > figure.get_figwidth():
            figure.set_figwidth(width)
    figure.tight_layout()
    return figure


def save_figure(figure: Figure, axes: Axes, path: Path, title: str, grid: bool = True) -> Path:
    """Title, grid and legend, then write the PNG."""
    finish_figure(figure, axes, title, grid)
    figure.savefig(path)
    return path


ROOF_STYLES = ("-", "--", ":", "-.")
ROOF_SHADES = ("0.3", "0.55", "0.75")  # greys: the runs' colours stay theirs
LEGEND_ROW_INCHES = 0.2  # what one legend row below the axes adds to a figure's height


ABOVE_MEMORY_ROOF = "above the memory roof: bytes from cache"  # the intensity counts every byte, unfused


def _attainable(intensity: float, gflop_per_s: float, bandwidth_gb_s: float | None) -> float:
    """A roof's attainable GFLOP/s at ``intensity``: min(compute, intensity x bandwidth); the compute roof alone
    without a bandwidth."""
    return min(gflop_per_s, intensity * bandwidth_gb_s) if bandwidth_gb_s else gflop_per_s


def roofline_figure(roofs: Sequence[Roof], points: Sequence[RooflinePoint], title: str) -> Figure:
    """Log-log roofline: attainable GFLOP/s = min(compute roof, intensity x bandwidth), with the runs on it, each
    in its own colour. Every roof and run is named in a legend below the axes (the figure grows with it): runs of
    one model sit at nearly one point, where labels beside them would overlap. A run above every roof at its
    intensity (a working set that stays in cache outruns the memory roof) says so in its legend entry."""
    entries = len(roofs) + len(dict.fromkeys(point.label for point in points))
    figure, axes = new_figure(height=4.5 + LEGEND_ROW_INCHES * entries)
    intensities = [p.intensity for p in points] + [r.ridge for r in roofs]
    low = min(intensities, default=1.0) / 10
    high = max(intensities, default=100.0) * 10
    for index, roof in enumerate(roofs):
        xs = [low, roof.ridge, high]
        ys = [low * roof.bandwidth_gb_s, roof.gflop_per_s, roof.gflop_per_s]
        style = ROOF_STYLES[index % len(ROOF_STYLES)]
        shade = ROOF_SHADES[index // len(ROOF_STYLES) % len(ROOF_SHADES)]  # a fifth roof: the first style, lighter
        axes.plot(
            xs, ys, style, color=shade,
            label=f"{roof.label}: {one_place(roof.gflop_per_s)} GFLOP/s, {one_place(roof.bandwidth_gb_s)} GB/s",
        )  # fmt: skip
    colors = variant_colors([point.label for point in points])
    for label in colors:
        mine = [point for point in points if point.label == label]
        above = roofs and any(
            point.gflop_per_s > max(_attainable(point.intensity, r.gflop_per_s, r.bandwidth_gb_s) for r in roofs)
            for point in mine
        )
        axes.scatter(
            [point.intensity for point in mine], [point.gflop_per_s for point in mine], zorder=3, color=colors[label],
            label=f"{label} ({ABOVE_MEMORY_ROOF})" if above else label,
        )  # fmt: skip
    rates = [p.gflop_per_s for p in points] + [r.gflop_per_s for r in roofs] + [low * r.bandwidth_gb_s for r in roofs]
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlim(low, high)
    axes.set_ylim(min(rates) / 3, max(rates) * 3)
    axes.set_xlabel("arithmetic intensity (FLOP/byte)")
    axes.set_ylabel("GFLOP/s")
    return finish_figure(figure, axes, title, legend_below=True)


def roofline_png(path: Path, roofs: Sequence[Roof], points: Sequence[RooflinePoint], title: str) -> Path:
    roofline_figure(roofs, points, title).savefig(path)
    return path


def throughput_curve_figure(series: dict[str, list[tuple[int, float]]], title: str) -> Figure:
    """Throughput (samples/s) against batch size, one coloured line per variant; the throughput axis from zero."""
    from matplotlib.ticker import NullFormatter

    figure, axes = new_figure()
    colors = variant_colors(sorted(series))
    for label, points in sorted(series.items()):
        ordered = sorted(points)
        axes.plot([b for b, _ in ordered], [t for _, t in ordered], marker="o", label=label, color=colors[label])
    axes.set_xscale("log", base=2)
    batches = sorted({b for points in series.values() for b, _ in points})
    axes.set_xticks(batches, [str(b) for b in batches])
    axes.xaxis.set_minor_formatter(NullFormatter())  # the batch sizes only, no 3x2^0 in between
    axes.set_ylim(bottom=0, top=max((t for points in series.values() for _, t in points), default=1.0) * 1.1)
    axes.set_xlabel("batch size")
    axes.set_ylabel("throughput (samples/s)")
    return finish_figure(figure, axes, title)


def throughput_curve_png(path: Path, series: dict[str, list[tuple[int, float]]], title: str) -> Path:
    throughput_curve_figure(series, title).savefig(path)
    return path


def layer_share_figure(rows: Sequence[LayerRow], title: str, top: int = 12) -> Figure:
    """Per layer, its share of the forward's time beside its share of the FLOPs (the layers that take the most time,
    ``top`` of them, slowest at the top): where the time goes against where the arithmetic is."""
    timed = sorted((row for row in rows if row.time_share is not None), key=lambda row: row.time_share or 0.0)[-top:]
    figure, axes = new_figure(7, max(2.5, 0.45 * len(timed) + 1.2))
    positions = list(range(len(timed)))
    axes.barh([p + 0.2 for p in positions], [100 * (row.time_share or 0.0) for row in timed], 0.4, label="time")
    axes.barh([p - 0.2 for p in positions], [100 * row.flops_share for row in timed], 0.4, label="FLOPs")
    axes.set_yticks(positions, [row.name for row in timed], fontsize="small")
    axes.set_xlim(left=0)
    axes.set_xlabel("share of the forward (%)")
    return finish_figure(figure, axes, title)


def layer_roofline_figure(rows: Sequence[LayerRow], roof: BoundRoof | None, title: str, labelled: int = 5) -> Figure:
    """Each timed layer at its arithmetic intensity (unfused byte model) and achieved GFLOP/s, under the compute
    roof and, where the bounds have one, the memory roof; the ``labelled`` slowest layers are named."""
    points = [row for row in rows if row.intensity and row.gflop_per_s]
    figure, axes = new_figure()
    intensities = [row.intensity or 1.0 for row in points]
    low, high = min(intensities, default=1.0) / 10, max(intensities, default=100.0) * 10
    if roof is not None:
        if roof.bandwidth_gb_s:
            ridge = roof.gflop_per_s / roof.bandwidth_gb_s
            xs, ys = [low, ridge, high], [low * roof.bandwidth_gb_s, roof.gflop_per_s, roof.gflop_per_s]
        else:
            xs, ys = [low, high], [roof.gflop_per_s, roof.gflop_per_s]
        memory = f", {roof.bandwidth_gb_s:,.0f} GB/s" if roof.bandwidth_gb_s else ""
        axes.plot(xs, ys, "-", color="0.3", label=f"the bounds' roof: {roof.gflop_per_s:,.0f} GFLOP/s{memory}")
    above = [
        roof is not None and (row.gflop_per_s or 0.0) > _attainable(row.intensity or 1.0, roof.gflop_per_s,
                                                                    roof.bandwidth_gb_s)
        for row in points
    ]  # fmt: skip
    for flag, label, marker in ((False, "layers (self time)", "o"), (True, f"layers {ABOVE_MEMORY_ROOF}", "^")):
        chosen = [row for row, is_above in zip(points, above, strict=True) if is_above == flag]
        if chosen:
            axes.scatter(
                [row.intensity or 1.0 for row in chosen], [row.gflop_per_s or 0.0 for row in chosen], zorder=3,
                marker=marker, label=label,
            )  # fmt: skip
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlim(low, high)
    axes.set_xlabel("arithmetic intensity (FLOP/byte, unfused byte model)")
    axes.set_ylabel("achieved GFLOP/s")
    spots: dict[tuple[float, float], list[str]] = {}  # layers drawn close together share one label
    for row in sorted(points, key=lambda row: row.self_ms or 0.0, reverse=True)[:labelled]:
        xy = (row.intensity or 1.0, row.gflop_per_s or 0.0)
        near = next((spot for spot in spots if _close_on_log_axes(spot, xy)), xy)
        spots.setdefault(near, []).append(row.name)
    for xy, layer_names in spots.items():
        label_inside(axes, ", ".join(layer_names), xy)
    return finish_figure(figure, axes, title)


LABEL_SPAN_DECADES = 0.3  # two points closer than this on both log axes would have overlapping labels


def _close_on_log_axes(one: tuple[float, float], other: tuple[float, float]) -> bool:
    """Whether two points of a log-log chart are near enough that their labels would overlap."""
    return all(abs(math.log10(a / b)) < LABEL_SPAN_DECADES for a, b in zip(one, other, strict=True) if a > 0 and b > 0)
