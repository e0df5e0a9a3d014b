"""The comparison table as rich (terminal), Markdown, CSV and a self-contained HTML report with embedded plots."""

from __future__ import annotations

import base64
import csv
import html
import io
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from rich import box
from rich.cells import cell_len
from rich.console import Console, ConsoleOptions, RenderResult
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from gflops_track.common import names
from gflops_track.common.numbers import one_place, percent, three_places
from gflops_track.compare.rows import Row, not_finite_notes

Formatter = Callable[[Row], str]
ROOMY = 10_000  # a width no table reaches: measuring at it gives a table's natural (unwrapped) width


def _fmt(value: float | None, spec: str) -> str:
    """A cell: empty when unknown; ``,.3f`` cells (GMACs, GFLOPs, ms) never round a small value to 0.001 or 0.000,
    nor ``,.1f`` cells (GFLOP/s, samples/s) to 0.0."""
    if value is None:
        return ""
    rounding = {",.3f": three_places, ",.1f": one_place}.get(spec)
    return rounding(value) if rounding is not None else format(value, spec)


def _latency(row: Row) -> str:
    if row.median_ms is None:
        return ""
    if row.ci_low_ms is None or row.ci_high_ms is None:
        return three_places(row.median_ms)
    return f"{three_places(row.median_ms)} {_ci(row)}"


def _ci(row: Row) -> str:
    if row.ci_low_ms is None or row.ci_high_ms is None:
        return ""
    return f"[{three_places(row.ci_low_ms)}, {three_places(row.ci_high_ms)}]"


def _ratio(row: Row) -> str:
    """The speed ratio with two decimals, or two significant digits below 0.1 (0.002x, never 0.00x)."""
    value = row.relative_speed
    if value is None:
        return ""
    return f"{value:.2f}x" if value >= 0.095 else f"{value:.2g}x"


def _utilization(row: Row) -> str:
    parts = []
    if row.utilization_vs_measured_peak is not None:
        parts.append(f"{percent(row.utilization_vs_measured_peak, 0)} meas.")
    if row.utilization_vs_spec_peak is not None:
        parts.append(f"{percent(row.utilization_vs_spec_peak, 0)} spec")
    return ", ".join(parts)


def variant(row: Row) -> str:
    """What tells the row apart inside its group (``rows.label_rows``, e.g. ``norm_fn=group``), else its ``variant``
    tag, else the run name."""
    return row.label or row.tags.get(names.VARIANT_TAG) or row.run_name


def short_id(row: Row) -> str:
    """The run id's first 8 characters: enough to tell runs apart and to find the run in the MLflow UI."""
    return row.run_id[:8]


def start_time(row: Row) -> str:
    if row.start_time is None:
        return ""
    return datetime.fromtimestamp(row.start_time / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")


def speed_header(rows: Sequence[Row], short: bool = False) -> str:
    """The ratio the speed column shows: a latency speed-up when batch sizes are equal, else throughput."""
    throughput = "throughput" in {row.speed_basis for row in rows if row.relative_speed is not None}
    if short:  # two lines in a terminal table
        return "throughput\nvs base" if throughput else "speed-up\n(latency)"
    return "throughput vs baseline" if throughput else "latency speed-up vs baseline"


@dataclass(frozen=True)
class Column:
    """One table column: ``key`` is what ``--columns`` names; ``text`` columns are left-aligned, numbers right."""

    key: str
    header: str
    cell: Formatter
    text: bool = False


ERROR_SHOWN = 80  # characters of a failed run's error in its status cell (its `error` tag holds it whole)


def _short(error: str) -> str:
    """The error's first ``ERROR_SHOWN`` characters, cut between words and marked (a cut word read as the message)."""
    return textwrap.shorten(error, ERROR_SHOWN, placeholder=" …")


ALL_COLUMNS: dict[str, Column] = {
    column.key: column
    for column in (
        Column("hardware", "hardware", lambda r: r.hardware, text=True),
        Column("group", "model / input", lambda r: r.group, text=True),
        Column("variant", "variant", variant, text=True),
        Column("status", "status", lambda r: r.status if not r.error else f"{r.status}: {_short(r.error)}", text=True),
        Column("params", "params", lambda r: _fmt(r.params, ",.0f")),
        Column("gmacs", "GMACs", lambda r: _fmt(r.gmacs, ",.3f")),
        Column("gflops", "GFLOPs", lambda r: _fmt(r.gflops, ",.3f")),
        Column("latency", "median latency ms [95% CI]", _latency),
        Column("median", "median\nlatency ms", lambda r: _fmt(r.median_ms, ",.3f")),
        Column("ci", "95% CI\nms", _ci),
        Column("throughput", "throughput\nsamples/s", lambda r: _fmt(r.throughput_samples_per_s, ",.1f")),
        Column("achieved", "achieved\nGFLOP/s", lambda r: _fmt(r.achieved_gflop_per_s, ",.1f")),
        Column("utilization", "utilization", _utilization),
        Column("speed", "speed vs\nbaseline", _ratio),
        Column("batch", "batch", lambda r: "" if r.batch_size is None else str(r.batch_size)),
        Column("run_id", "run\nid", short_id, text=True),
        Column("start", "start\n(UTC)", start_time, text=True),
        Column("run_name", "run\nname", lambda r: r.run_name, text=True),
        Column("step_gflops", "train step\nGFLOPs", lambda r: _fmt(r.step_gflops, ",.3f")),
        Column("step", "train step\nmedian ms", lambda r: _fmt(r.step_median_ms, ",.3f")),
        Column("step_achieved", "train step\nGFLOP/s", lambda r: _fmt(r.step_achieved_gflop_per_s, ",.1f")),
        Column("mfu", "MFU", lambda r: "" if r.mfu is None else percent(r.mfu)),
    )
}
LEFT_OUT_NOTE = "not shown"  # the line under a fitted table naming the columns that did not fit
WRAPPING = ("variant", "status")  # text that wraps at the label cap in a fitted table: a label, a failed run's error
TRAINING = ["step_gflops", "step", "step_achieved", "mfu"]  # train-mode runs only: shown where a row has them
# Markdown and HTML: every column (the first ones and the last keep their places: readers index them).
FULL = ["hardware", "variant", "status", "params", "gmacs", "gflops", "latency", "throughput", "achieved",
        "utilization", "speed", "run_id", "start", "group", "run_name"]  # fmt: skip
# The terminal: columns join in this order while they fit (key ones first), and show in DISPLAY's order.
PRIORITY = ["variant", "hardware", "group", "gflops", "median", "achieved", "utilization", "step", "mfu", "speed",
            "run_id", "params", "start", "step_gflops", "ci", "throughput", "step_achieved", "batch", "gmacs",
            "run_name"]  # fmt: skip
DISPLAY = ["variant", "hardware", "group", "run_id", "start", "status", "batch", "params", "gmacs", "gflops",
           "median", "ci", "throughput", "achieved", "utilization", "step_gflops", "step", "step_achieved", "mfu",
           "speed", "run_name"]  # fmt: skip
COLUMNS: list[tuple[str, Formatter]] = [(ALL_COLUMNS[key].header, ALL_COLUMNS[key].cell) for key in FULL]
CSV_FIELDS = [
    "run_id", "run_name", "status", "hardware", "batch_size", "params", "gmacs", "gflops", "median_ms", "ci_low_ms",
    "ci_high_ms", "throughput_samples_per_s", "achieved_gflop_per_s", "utilization_vs_measured_peak",
    "utilization_vs_spec_peak", "arithmetic_intensity", "relative_speed", "speed_basis", "start_time", "error",
    "mode", "step_gflops", "step_median_ms", "step_achieved_gflop_per_s", "mfu", "group", "label",
]  # fmt: skip


def full_columns(rows: Sequence[Row]) -> list[str]:
    """Markdown and HTML columns: every one of FULL, then the training-step columns when a row has them."""
    return FULL + [key for key in TRAINING if any(ALL_COLUMNS[key].cell(row) for row in rows)]


def parse_columns(text: str) -> list[str]:
    """``--columns a,b,c`` as column keys, or one clear line naming the bad key and the allowed ones."""
    keys = [key.strip() for key in text.split(",") if key.strip()]
    unknown = [key for key in keys if key not in ALL_COLUMNS]
    if unknown or not keys:
        raise ValueError(f"--columns={text!r}: unknown column {unknown[0] if unknown else '(none)'!r}; allowed: "
                         + ", ".join(ALL_COLUMNS))  # fmt: skip
    return keys


def _headers(rows: Sequence[Row], lines: bool = False) -> dict[str, str]:
    """Each column's header; in two lines (``lines``) where a terminal table saves width by it, else one."""
    headers = {
        key: speed_header(rows, lines) if key == "speed" else column.header for key, column in ALL_COLUMNS.items()
    }
    return headers if lines else {key: header.replace("\n", " ") for key, header in headers.items()}


def column_widths(rows: Sequence[Row], keys: Sequence[str]) -> dict[str, int]:
    """Each column's natural width over all ``rows`` (its longest cell or header line), so that the tables of
    several hardware groups line up."""
    headers = _headers(rows, lines=True)
    return {
        key: max(
            [cell_len(line) for line in headers[key].split("\n")] + [cell_len(ALL_COLUMNS[key].cell(r)) for r in rows]
        )
        for key in keys
    }


def label_cap(rows: Sequence[Row], max_width: int) -> int:
    """The width a variant label may take in a terminal table ``max_width`` wide: a third of it (at least 24), never
    less than its longest word, so a long label wraps between its overrides and leaves room for the numbers."""
    words = [cell_len(word) for row in rows for word in variant(row).split()] or [1]
    return max(max(words), min(max(24, max_width // 3), max(cell_len(variant(row)) for row in rows)))


def build_table(
    rows: Sequence[Row],
    keys: Sequence[str],
    markdown: bool = False,
    widths: dict[str, int] | None = None,
    label_width: int | None = None,
) -> Table:
    """A rich table of ``keys``' columns; number cells never wrap (a number is never cut or folded unless the
    terminal is narrower than the cell itself); with ``label_width`` the variant label and the status (a failed
    run's error) wrap between their words at that width, so a failed row says why in any terminal. ``markdown``
    draws it as a Markdown table."""
    headers = _headers(rows, lines=not markdown)
    table = Table(box=box.MARKDOWN if markdown else None, show_edge=markdown, pad_edge=markdown, header_style="bold")
    for key in keys:
        column = ALL_COLUMNS[key]
        wraps = key in WRAPPING and label_width is not None
        minimum = (widths or {}).get(key)
        table.add_column(
            headers[key],
            justify="left" if column.text else "right",
            no_wrap=not wraps,
            overflow="fold",
            min_width=min(minimum, label_width) if wraps and minimum is not None and label_width else minimum,
            max_width=label_width if wraps else None,
        )
    for row in rows:
        cells = [Text(ALL_COLUMNS[key].cell(row)) for key in keys]  # run names and errors are text, never markup
        ok = row.status == "FINISHED"
        for key, cell in zip(keys, cells, strict=True):
            if key == "status" or (key == "variant" and not ok):
                cell.stylize("green" if ok else "red")
        table.add_row(*cells)
    return table


def natural_width(console: Console, options: ConsoleOptions, renderable: Table) -> int:
    """The width a table takes with nothing wrapped (rich's own measurement)."""
    return Measurement.get(console, options.update_width(ROOMY), renderable).maximum


def fit_columns(
    console: Console,
    options: ConsoleOptions,
    rows: Sequence[Row],
    wanted: Sequence[str],
    widths: dict[str, int] | None = None,
    label_width: int | None = None,
) -> list[str]:
    """The columns that fit ``options.max_width``: each of PRIORITY in turn joins when the table, measured by rich
    as it will be drawn (``widths``, shared with the other tables; the variant label wrapped at ``label_width``,
    else ``label_cap``), still fits; the variant always. Shown in DISPLAY's order."""
    chosen: list[str] = []
    cap = label_width or label_cap(rows, options.max_width)
    for key in wanted:
        trial = [k for k in DISPLAY if k in {*chosen, key}]
        table = build_table(rows, trial, widths=widths, label_width=cap)
        if not chosen or natural_width(console, options, table) <= options.max_width:
            chosen.append(key)
    return [k for k in DISPLAY if k in chosen]


class ComparisonTable:
    """The comparison as a rich renderable that fits where it is printed: in a terminal, one table per hardware
    (named above it) with the columns that fit the terminal's width, key ones first; anywhere else (a pipe, a file,
    a CI log), or with ``columns``/``wide``, one table of every asked-for column at its natural width, as Markdown
    when not in a terminal, nothing cut (print it with ``crop=False`` or a soft-wrapping console)."""

    def __init__(
        self, rows: Sequence[Row], title: str, columns: Sequence[str] | None = None, wide: bool = False
    ) -> None:
        self.rows, self.title, self.columns, self.wide = list(rows), title, columns, wide

    def _keys(self, grouped: bool) -> list[str]:
        failed = any(row.status != "FINISHED" for row in self.rows)
        batches = len({row.batch_size for row in self.rows}) > 1
        keys = [k for k in PRIORITY if k != "batch" or batches]
        if failed:
            keys.insert(1, "status")
        if grouped or len({row.hardware for row in self.rows}) == 1:
            keys.remove("hardware")
        if grouped or len({row.group for row in self.rows}) == 1:
            keys.remove("group")
        return [k for k in keys if any(ALL_COLUMNS[k].cell(row) for row in self.rows)]  # no empty columns

    def _lines(self, console: Console, options: ConsoleOptions, table: Table) -> RenderResult:
        for line in console.render_lines(table, options, pad=False, new_lines=True):
            if "".join(segment.text for segment in line).strip():  # Markdown's box draws blank top/bottom rows
                yield from line

    def _groups(self, keys: Sequence[str]) -> list[tuple[str, str, list[Row]]]:
        """(hardware heading, group heading, rows) per table, in the rows' order (``build_rows``: hardware, group,
        sweep order); a heading is "" where its column is shown instead, or for the hardware, where it is the one
        above."""
        split = [key for key in ("hardware", "group") if key not in keys]
        tables: list[tuple[str, str, list[Row]]] = []
        previous: tuple[str, str] | None = None
        for row in self.rows:
            current = (row.hardware if "hardware" in split else "", row.group if "group" in split else "")
            if current == previous:
                tables[-1][2].append(row)
                continue
            new_machine = previous is None or current[0] != previous[0]
            tables.append((current[0] if new_machine else "", current[1], [row]))
            previous = current
        return tables

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield Text(self.title, style="bold")
        fitted = console.is_terminal and not self.columns and not self.wide
        wanted = self._keys(grouped=True)
        if fitted:
            keys = []  # each table's own, below: without the hardware and group columns, each has its heading
        elif self.columns:
            keys = list(self.columns)
        else:
            keys = [k for k in DISPLAY if self.wide or k in {*self._keys(grouped=False), "status"}]
        cap = label_cap(self.rows, options.max_width) if fitted else None
        widths = column_widths(self.rows, list(ALL_COLUMNS) if fitted else keys)
        groups = self._groups(keys)
        filled: list[tuple[str, ...]] = []
        fits: dict[tuple[str, ...], list[str]] = {}
        left_out: list[str] = []
        if fitted:  # tables whose rows fill the same columns show the same ones (a train-mode group: step and MFU)
            filled = [tuple(k for k in wanted if any(ALL_COLUMNS[k].cell(row) for row in rows)) for *_, rows in groups]
            fits = {
                own: fit_columns(console, options, [row for (*_, rows), o in zip(groups, filled, strict=True)
                                                    if o == own for row in rows], list(own), widths, cap)
                for own in dict.fromkeys(filled)
            }  # fmt: skip
            left_out = list(dict.fromkeys(k for own, shown in fits.items() for k in own if k not in shown))
        for index, (machine, group, members) in enumerate(groups):
            if machine:
                yield Text(f"hardware: {machine}", style="bold")
            if group:
                yield Text(f"model / input: {group}", style="bold")
            shown = fits[filled[index]] if fitted else keys
            table = build_table(members, shown, markdown=not console.is_terminal, widths=widths, label_width=cap)
            width = natural_width(console, options, table)
            yield from self._lines(
                console, options if fitted else options.update_width(max(width, options.max_width)), table
            )
        if left_out:  # nothing a run holds is dropped without a word: say what did not fit and how to see it
            yield Text(
                f"{LEFT_OUT_NOTE} at {options.max_width} columns: {', '.join(left_out)} (--wide shows every column, "
                "--columns picks them; a pipe or a file gets them all)",
                style="dim",
            )


def rich_table(
    rows: Sequence[Row], title: str, columns: Sequence[str] | None = None, wide: bool = False
) -> ComparisonTable:
    """The comparison table for a console (see ComparisonTable)."""
    return ComparisonTable(rows, title, columns, wide)


def markdown_table(rows: Sequence[Row], columns: Sequence[str] | None = None) -> str:
    """Every column (or ``columns``, in that order), one line per run (the speed column's header says which ratio it
    holds)."""
    headers = _headers(rows)
    keys = list(columns) if columns else full_columns(rows)
    lines = ["| " + " | ".join(headers[key] for key in keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(ALL_COLUMNS[key].cell(row).replace("|", "\\|") for key in keys) + " |" for row in rows]
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
h1 { overflow-wrap: anywhere; }  /* a run id in the title wraps in a narrow pane (the MLflow UI's viewer) */
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
    headers = _headers(rows)
    keys = full_columns(rows)
    head = "".join(f"<th>{html.escape(headers[key])}</th>" for key in keys)
    body = []
    for row in rows:
        cells = "".join(
            f'<td class="{"text" if ALL_COLUMNS[key].text else "num"}">{html.escape(ALL_COLUMNS[key].cell(row))}</td>'
            for key in keys
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
        "FLOPs / median latency; speed vs baseline = baseline median / median when batch sizes are equal, else "
        "throughput / baseline throughput (the column's header says which). Train-mode runs: train step GFLOPs "
        "per whole step (forward, backward, optimizer), MFU = step FLOPs / median step time / peak (the run's "
        "mfu_peak tag names the peak).</p>"
        + "".join(f'<p class="warning">{html.escape(note)}</p>' for note in not_finite_notes(rows))
        + f'<table id="runs"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'
        f"{figures}</body></html>"
    )
