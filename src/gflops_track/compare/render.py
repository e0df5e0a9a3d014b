"""The comparison table as rich (terminal), Markdown, CSV and a self-contained HTML report with embedded plots."""

from __future__ import annotations

import base64
import csv
import html
import io
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

from rich.table import Table
from rich.text import Text

from gflops_track.compare.rows import Row

Formatter = Callable[[Row], str]


def _fmt(value: float | None, spec: str) -> str:
    return "" if value is None else format(value, spec)


def _latency(row: Row) -> str:
    if row.median_ms is None:
        return ""
    if row.ci_low_ms is None or row.ci_high_ms is None:
        return f"{row.median_ms:,.3f}"
    return f"{row.median_ms:,.3f} [{row.ci_low_ms:,.3f}, {row.ci_high_ms:,.3f}]"


def _utilization(row: Row) -> str:
    parts = []
    if row.utilization_vs_measured_peak is not None:
        parts.append(f"{row.utilization_vs_measured_peak:.0%} meas.")
    if row.utilization_vs_spec_peak is not None:
        parts.append(f"{row.utilization_vs_spec_peak:.0%} spec")
    return ", ".join(parts)


COLUMNS: list[tuple[str, Formatter]] = [
    ("hardware", lambda r: r.hardware),
    ("variant", lambda r: r.run_name),
    ("status", lambda r: r.status if not r.error else f"{r.status}: {r.error[:80]}"),
    ("params", lambda r: _fmt(r.params, ",.0f")),
    ("GMACs", lambda r: _fmt(r.gmacs, ",.3f")),
    ("GFLOPs", lambda r: _fmt(r.gflops, ",.3f")),
    ("median latency ms [95% CI]", _latency),
    ("throughput samples/s", lambda r: _fmt(r.throughput_samples_per_s, ",.1f")),
    ("achieved GFLOP/s", lambda r: _fmt(r.achieved_gflop_per_s, ",.1f")),
    ("utilization", _utilization),
    ("speed vs baseline", lambda r: _fmt(r.relative_speed, ".2f") + ("x" if r.relative_speed is not None else "")),
]
CSV_FIELDS = [
    "run_id", "run_name", "status", "hardware", "batch_size", "params", "gmacs", "gflops", "median_ms", "ci_low_ms",
    "ci_high_ms", "throughput_samples_per_s", "achieved_gflop_per_s", "utilization_vs_measured_peak",
    "utilization_vs_spec_peak", "arithmetic_intensity", "relative_speed", "error",
]  # fmt: skip


def rich_table(rows: Sequence[Row], title: str) -> Table:
    table = Table(title=title)
    for name, _ in COLUMNS:
        table.add_column(name, justify="left" if name in ("hardware", "variant", "status") else "right")
    for row in rows:
        cells = [Text(fmt(row)) for _, fmt in COLUMNS]  # run names and errors are text, never rich markup
        cells[2].stylize("green" if row.status == "FINISHED" else "red")
        table.add_row(*cells)
    return table


def markdown_table(rows: Sequence[Row]) -> str:
    lines = ["| " + " | ".join(name for name, _ in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(fmt(row).replace("|", "\\|") for _, fmt in COLUMNS) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def csv_table(rows: Sequence[Row]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({name: getattr(row, name) for name in CSV_FIELDS})
    return buffer.getvalue()


STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 14px; }
th, td { border: 1px solid #bbb; padding: 4px 8px; text-align: right; }
th { background: #e8eef7; }
td.text { text-align: left; }
tr.failed td { background: #fde2e2; }
img { max-width: 900px; display: block; margin: 1em 0; border: 1px solid #ddd; }
"""


def _data_uri(image: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(image.read_bytes()).decode()


def html_report(rows: Sequence[Row], images: Sequence[Path], title: str, source: str) -> str:
    """One self-contained HTML page: the table (``<table id="runs">``, one ``<tr data-run-id>`` per run) and every
    plot embedded as a data URI, so it opens from the MLflow UI or a mail attachment alike."""
    head = "".join(f"<th>{html.escape(name)}</th>" for name, _ in COLUMNS)
    body = []
    for row in rows:
        cells = "".join(
            f'<td class="{"text" if index < 3 else "num"}">{html.escape(fmt(row))}</td>'
            for index, (_, fmt) in enumerate(COLUMNS)
        )
        css = ' class="failed"' if row.status != "FINISHED" else ""
        body.append(f'<tr data-run-id="{html.escape(row.run_id)}"{css}>{cells}</tr>')
    figures = "".join(
        f"<h2>{html.escape(image.stem.replace('_', ' '))}</h2>"
        f'<img alt="{html.escape(image.stem)}" src="{_data_uri(image)}">'
        for image in images
    )
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
        f"<p>{len(rows)} run(s) from {html.escape(source)}, generated {generated} by gflops-track. Units: latency in "
        "ms (median, 95% CI of the median), GMACs/GFLOPs per forward pass of the whole batch, achieved GFLOP/s = "
        "FLOPs / median latency, speed vs baseline = baseline median / median.</p>"
        f'<table id="runs"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'
        f"{figures}</body></html>"
    )
