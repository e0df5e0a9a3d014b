"""``gflops-track compare --layers``: the layers that take the most time in each run compared, with their share of the
forward, their roofline bound and how close they come to it; and across runs, the layer whose share changes most
(the blog post's question: why one network's GFLOP/s differ between machines)."""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from rich.table import Table
from rich.text import Text

from gflops_track.common import names
from gflops_track.common.names import FAILED, KILLED
from gflops_track.common.numbers import percent
from gflops_track.compare.rows import Row, group_of
from gflops_track.render.plots import (
    finish_figure,
    layer_roofline_figure,
    layer_share_figure,
    new_figure,
    variant_colors,
)
from gflops_track.results.layers import BoundRoof, LayerRow, milliseconds, rows_from_csv

if TYPE_CHECKING:
    from matplotlib.figure import Figure

HEADERS = ("#", "layer", "type", "self ms", "time share", "FLOP share", "bound ms", "roof", "efficiency")


@dataclass(frozen=True)
class RunLayers:
    """One run's timed layers table, the names it is shown by, and the roof its bounds were taken against (None
    for a run that logged none)."""

    run_name: str
    hardware: str
    rows: list[LayerRow]
    roof: BoundRoof | None = None
    model: tuple[str, ...] = ()  # what the run shares with the runs its layers may be set against (``model_key``)

    def top(self, count: int) -> list[LayerRow]:
        timed = [row for row in self.rows if row.self_ms is not None]
        return sorted(timed, key=lambda row: row.self_ms or 0.0, reverse=True)[:count]


def _ms(value: float | None) -> str:
    return "-" if value is None else milliseconds(value)


def _share(value: float | None) -> str:
    return "-" if value is None else percent(value)


def cells(row: LayerRow, rank: int) -> tuple[str, ...]:
    return (
        str(rank), row.name, row.type, _ms(row.self_ms), _share(row.time_share), _share(row.flops_share),
        _ms(row.bound_ms), row.bound or "-", _share(row.efficiency),
    )  # fmt: skip


def share_change(runs: Sequence[RunLayers]) -> tuple[str, float, Mapping[str, float]] | None:
    """The layer (in two runs or more of one model and input: a layer's name means nothing across models) whose time
    share differs most between the runs: (name, max - min, share by run name); None with fewer than two timed runs
    of one model."""
    shares: dict[tuple[tuple[str, ...], str], dict[str, float]] = {}
    for run in runs:
        for row in run.rows:
            if row.time_share is not None:
                shares.setdefault((run.model, row.name), {})[run.run_name] = row.time_share
    spread = {key: by_run for key, by_run in shares.items() if len(by_run) >= 2}
    if not spread:
        return None
    key = max(spread, key=lambda key: max(spread[key].values()) - min(spread[key].values()))
    by_run = spread[key]
    return key[1], max(by_run.values()) - min(by_run.values()), by_run


def model_key(row: Row) -> tuple[str, ...]:
    """A run's model, mode and input (its comparison group without the hardware: the same layers on a CPU and a
    GPU are set against each other)."""
    return group_of(row)[1:]


def change_line(runs: Sequence[RunLayers]) -> str | None:
    change = share_change(runs)
    if change is None:
        return None
    name, delta, by_run = change
    listed = ", ".join(f"{run} {share:.1%}" for run, share in by_run.items())
    return f"the layer whose time share changes most: {name} ({delta * 100:.1f} percentage points: {listed})"


def markdown(runs: Sequence[RunLayers], count: int) -> str:
    """Every run's top layers as one Markdown table per run, headed by the run and its hardware."""
    parts = []
    for run in runs:
        lines = [
            f"### {run.run_name} ({run.hardware})",
            "",
            "| " + " | ".join(HEADERS) + " |",
            "|" + "---|" * len(HEADERS),
        ]
        lines += [
            "| " + " | ".join(cell.replace("|", "\\|") for cell in cells(row, rank)) + " |"
            for rank, row in enumerate(run.top(count), start=1)
        ]
        parts.append("\n".join(lines) + "\n")
    change = change_line(runs)
    return "\n".join(parts) + (f"\n{change}\n" if change else "")


RICH_HEADERS = ("layer", "self ms", "time", "FLOPs", "bound ms", "roof", "eff.")
RICH_LEGEND = "time, FLOPs: the layer's share of the forward's; eff.: bound ms / self ms (1 = at the roof)"


def rich_tables(runs: Sequence[RunLayers], count: int) -> list[Table]:
    """One table per run, in 80 columns: layer names wrap (folded, never cut), numbers stay whole on one line."""
    tables = []
    for run in runs:
        table = Table(title=Text(f"{run.run_name} ({run.hardware})"), show_edge=False, pad_edge=False)
        for index, header in enumerate(RICH_HEADERS):
            text = index in (0, 5)
            table.add_column(header, justify="left" if text else "right", no_wrap=not text, overflow="fold")
        for rank, row in enumerate(run.top(count), start=1):
            full = cells(row, rank)
            table.add_row(*(Text(cell) for cell in (full[1], *full[3:])))
        tables.append(table)
    return tables


NO_LAYER_TIMES = (
    "no per-layer times in {count} run(s): {ids} (from before the layer pass, timing.layers=false, mode=train, "
    "compile, or a pass that failed)"
)


def read_run_layers(client: MlflowClient, rows: Sequence[Row]) -> tuple[list[RunLayers], list[str]]:
    """Each run's timed layers table (``layers.csv``), and what to say of those with none: a run that failed or was
    killed, one line each with its error; every other, one line naming them all by short id (the id every table
    prints), instead of a line each that repeats why. Only a run tagged ``layer_timing`` is read: the layer pass
    writes that tag with its table (every timed ``layers.csv`` has it), so a counting-only run costs no download."""
    timed: list[RunLayers] = []
    missing: list[str] = []
    untimed: list[str] = []
    for row in rows:
        try:
            if names.LAYER_TIMING_TAG not in row.tags:
                raise ValueError("the run has no per-layer times")
            with tempfile.TemporaryDirectory() as folder:
                text = Path(client.download_artifacts(row.run_id, names.LAYERS_CSV_ARTIFACT, folder)).read_text()
            layers = rows_from_csv(text)
            timed.append(RunLayers(row.run_name, row.hardware, layers, logged_roof(client, row), model_key(row)))
        except (ValueError, OSError, MlflowException):
            if row.status in (FAILED, KILLED):
                error = f": {row.error.strip().splitlines()[0]}" if row.error.strip() else ""
                missing.append(f"run {row.run_id[:8]} {row.status}{error}; no layers")
            else:
                untimed.append(row.run_id[:8])
    if untimed:
        missing.append(NO_LAYER_TIMES.format(count=len(untimed), ids=", ".join(untimed)))
    return timed, missing


def logged_roof(client: MlflowClient, row: Row) -> BoundRoof | None:
    """The roof a run's layer bounds used, from its ``layers/roof_*`` metrics and ``layer_bound_rule`` tag (no
    bandwidth or on-chip size logged: no memory roof, as the bounds had none)."""
    run = client.get_run(row.run_id)
    metrics, rule = run.data.metrics, run.data.tags.get(names.LAYER_BOUND_TAG, "")
    rate = metrics.get(names.LAYERS_ROOF_GFLOP_PER_S)
    if not rate:
        return None
    bandwidth, on_chip_mib = metrics.get(names.LAYERS_ROOF_BANDWIDTH), metrics.get(names.LAYERS_ON_CHIP_MIB)
    on_chip = int(on_chip_mib * names.MIB) if on_chip_mib is not None and bandwidth else None
    return BoundRoof(row.hardware, rate, bandwidth if on_chip is not None else None, on_chip, rule)


def layer_time_by_run_figure(runs: Sequence[RunLayers], top: int = 8) -> Figure:
    """Per layer, its time share on each run side by side (the layers among any run's ``top`` slowest); the title
    names the layer whose share changes most."""
    layers: list[str] = []
    for run in runs:
        layers += [row.name for row in run.top(top) if row.name not in layers]
    figure, axes = new_figure(7.5, max(3.0, 0.5 * len(layers) + 1.5) + 0.25 * len(runs))  # + the legend below
    colors = variant_colors([f"{run.run_name} ({run.hardware})" for run in runs])
    height = 0.8 / max(1, len(runs))
    for index, run in enumerate(runs):
        shares = {row.name: 100 * (row.time_share or 0.0) for row in run.rows}
        label = f"{run.run_name} ({run.hardware})"
        positions = [position - 0.4 + height * (index + 0.5) for position in range(len(layers))]
        axes.barh(positions, [shares.get(name, 0.0) for name in layers], height, label=label, color=colors[label])
    axes.set_yticks(range(len(layers)), layers, fontsize="small")
    axes.invert_yaxis()
    axes.set_xlim(left=0)
    axes.set_xlabel("share of the forward's time (%)")
    change = share_change(runs)
    title = "time share per layer, by run"
    if change is not None:
        title += f"\nchanges most: {change[0]} ({change[1] * 100:.1f} points)"
    return finish_figure(figure, axes, title, legend_below=True)


def layer_charts(runs: Sequence[RunLayers], folder: Path, most: int = 6) -> list[Path]:
    """The report's per-layer charts: the runs side by side (two runs or more), then for each run (the first
    ``most``) its time share against its FLOP share and its per-layer roofline (each layer's intensity and achieved
    GFLOP/s under the roof its bounds used; none for a run whose layers have neither)."""
    charts = []
    if len(runs) >= 2:
        path = folder / "layers_time_by_run.png"
        layer_time_by_run_figure(runs).savefig(path)
        charts.append(path)
    for index, run in enumerate(runs[:most]):
        label = f"{run.run_name} ({run.hardware})"
        path = folder / f"layers_time_vs_flops_{index + 1}.png"
        layer_share_figure(run.rows, f"{label}: time vs FLOP share").savefig(path)
        charts.append(path)
        if any(row.intensity and row.gflop_per_s for row in run.rows):  # a roofline needs a point to draw
            path = folder / f"layers_roofline_{index + 1}.png"
            layer_roofline_figure(run.rows, run.roof, f"{label}: per-layer roofline").savefig(path)
            charts.append(path)
    return charts
