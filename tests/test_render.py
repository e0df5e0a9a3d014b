"""The comparison's tables and charts on rows with known numbers: columns that fit 80 columns, whole piped output,
the speed ratio's formula, and plots read back from their axes and from real PNGs."""

from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path

import pytest
from matplotlib.colors import to_rgb, to_rgba
from matplotlib.figure import Figure
from mlflow.tracking import MlflowClient
from PIL import Image
from rich.console import Console

from gflops_track.cli.compare import main
from gflops_track.common.numbers import one_place, three_places
from gflops_track.compare.charts import bars_figure, comparison_charts, flops_vs_latency_figure, roofline_sets
from gflops_track.compare.layers import RunLayers, layer_time_by_run_figure
from gflops_track.compare.render import (
    ALL_COLUMNS,
    ERROR_SHOWN,
    LEFT_OUT_NOTE,
    ComparisonTable,
    markdown_table,
    parse_columns,
    speed_header,
)
from gflops_track.compare.rows import Row, build_rows
from gflops_track.machine.environment import environment_tags
from gflops_track.render.plots import (
    Roof,
    RooflinePoint,
    layer_roofline_figure,
    layer_share_figure,
    roofline_figure,
    throughput_curve_figure,
)
from gflops_track.results.layers import BoundRoof, LayerRow

LONG_MACHINE = "cpu:AMD EPYC 7B13 64-Core Processor (Zen 3, 2 cores, AVX2)"


def make_row(name: str, hardware: str = LONG_MACHINE, **numbers: float | int | None) -> Row:
    """A finished row with the figures of a small block (explicit numbers override them)."""
    values: dict = dict(
        batch_size=2, params=4704.0, gmacs=0.00543, gflops=10.8823, median_ms=1234.5678, ci_low_ms=1200.125,
        ci_high_ms=1300.875, throughput_samples_per_s=1.62, achieved_gflop_per_s=8.815,
        utilization_vs_measured_peak=None, utilization_vs_spec_peak=0.056, arithmetic_intensity=7.7,
        measured_peak_gflop_per_s=None, measured_bandwidth_gb_per_s=None, spec_peak_gflop_per_s=156.5,
        spec_bandwidth_gb_per_s=20.0,
    )  # fmt: skip
    values.update(numbers)
    if "median_ms" in numbers and "ci_low_ms" not in numbers:  # the CI brackets the median: 97%..105% of it
        values.update(ci_low_ms=values["median_ms"] * 0.97, ci_high_ms=values["median_ms"] * 1.05)
    return Row(
        run_id=f"{abs(hash((name, hardware))):032x}"[:32],
        run_name=f"residual_block-{name}-b2-cpu-fp32",
        status="FINISHED",
        hardware=hardware,
        start_time=1_764_620_000_000,
        relative_speed=1.0,
        tags={"variant": f"norm_fn={name}"},
        **values,
    )


ROWS = [
    make_row("group"),
    make_row("batch", gflops=10.8881, median_ms=987.654),
    make_row("instance", hardware="cuda:NVIDIA H200 (MIG 1g.18gb)", gflops=10.8859, median_ms=12.345),
]


def printed(table: ComparisonTable, width: int, terminal: bool) -> str:
    """What ``table`` prints on a console ``width`` wide, a terminal or a pipe (the CLI's consoles: a pipe soft-wraps,
    and the CLI prints without cropping)."""
    out = io.StringIO()
    console = Console(file=out, width=width, force_terminal=terminal, soft_wrap=not terminal, color_system=None)
    console.print(table, crop=False)
    return out.getvalue()


@pytest.mark.parametrize("width", [80, 100, 200])
def test_terminal_table_fits_its_width_and_cuts_nothing(width: int) -> None:
    text = printed(ComparisonTable(ROWS, "three runs"), width, terminal=True)
    assert max(len(line) for line in text.splitlines()) <= width and "…" not in text
    for row in ROWS:
        for whole in (row.tags["variant"], f"{row.gflops:,.3f}", f"{row.median_ms:,.3f}"):
            assert whole in text
    header = text.splitlines()[1:4]
    assert any("GFLOPs" in line for line in header)  # the key columns are the ones that made it
    if width >= 200:
        assert LONG_MACHINE in text and ROWS[0].run_id[:8] in text and "2025-12-01 20:13:20" in text


def test_a_terminal_narrower_than_a_label_still_bounds_the_table() -> None:
    """A terminal table is drawn at the terminal's width even when one column is wider (12 columns here, the label
    norm_fn=instance 16): no line runs past the edge; only a piped table takes its natural width."""
    text = printed(ComparisonTable(ROWS, "t"), 12, terminal=True)
    assert max(len(line) for line in text.splitlines()) <= 12, text


def test_fitted_columns_are_whole_at_every_width_and_fill_it() -> None:
    """For terminals 80..160 wide: no line is wider than the terminal, every header word is a whole word of a column's
    header (a column squeezed into the width shows "ut" for "utilization"), every cell of every shown column is in
    its row whole, and the fit is tight: a terminal exactly as wide as the table shows the same table (a column joins
    when the table with it is at most the terminal's width, not only when it is narrower)."""
    words = {word for column in ALL_COLUMNS.values() for word in column.header.split()}
    words |= set(speed_header(ROWS, short=True).split())
    for width in range(80, 161, 4):
        text = printed(ComparisonTable(ROWS, "three runs"), width, terminal=True).split(LEFT_OUT_NOTE)[0]
        lines = text.splitlines()[1:]
        assert max(len(line) for line in lines) <= width, (width, text)
        header = [line for line in lines if not line.startswith(("hardware:", "norm_fn="))]
        assert {word for line in header for word in line.split()} <= words, (width, text)
        shown = [key for key, column in ALL_COLUMNS.items() if all(
            any(part in line for line in header) for part in column.header.split("\n"))]  # fmt: skip
        assert "variant" in shown and "gflops" in shown, (width, text)
        for row in ROWS:
            (line,) = [line for line in lines if line.startswith(row.tags["variant"] + " ")]
            for key in shown:
                assert ALL_COLUMNS[key].cell(row) in line, (width, key, line)
        tight = max(len(line) for line in text.splitlines())
        at_tight = printed(ComparisonTable(ROWS, "three runs"), tight, terminal=True).split(LEFT_OUT_NOTE)[0]
        assert at_tight == text, (width, tight)


@pytest.mark.parametrize("width", [80, 120, 400])
def test_a_fitted_table_names_the_columns_it_left_out(width: int) -> None:
    """At 80 columns the key ones fit (variant, GFLOPs, median, ...): the line under the table names, by the keys
    --columns takes, every column with values that did not (run id, params, CI, ...), so no figure a run holds is
    dropped without a word; where every column fits there is no such line."""
    text = printed(ComparisonTable(ROWS, "three runs"), width, terminal=True)
    table, _, note = text.partition(LEFT_OUT_NOTE)
    assert max(len(line) for line in text.splitlines()) <= width, text
    header = " ".join(table.splitlines()[1:4])
    left_out = [key for key, column in ALL_COLUMNS.items()
                if key in {"run_id", "params", "ci", "throughput", "gmacs", "start", "run_name"}
                and not all(part in header for part in column.header.split("\n"))]  # fmt: skip
    if width == 400:
        assert left_out == [] and note == "", text
        return
    assert left_out, text
    listed = note.split(":", 1)[1].split("(")[0].replace(",", " ").split()
    assert sorted(listed) == sorted(left_out), text
    hint = "(--wide shows every column, --columns picks them; a pipe or a file gets them all)"
    assert " ".join(note.split()).endswith(hint), text


def test_the_left_out_note_is_dim_and_only_under_a_fitted_table() -> None:
    """The note is secondary (dim, under the numbers); a table of the columns a user named (--columns) or --wide
    leaves nothing out that was not asked for, so it has no note."""
    out = io.StringIO()
    Console(file=out, width=80, force_terminal=True, color_system="standard").print(ComparisonTable(ROWS, "t"))
    assert f"\x1b[2m{LEFT_OUT_NOTE} at 80 columns" in out.getvalue()
    for table in (ComparisonTable(ROWS, "t", columns=["variant", "gflops"]), ComparisonTable(ROWS, "t", wide=True)):
        assert LEFT_OUT_NOTE not in printed(table, 80, terminal=True)


def test_a_failed_row_says_why_at_80_columns() -> None:
    """A FAILED run has no numbers: at 80 columns its status and error are shown (wrapped between words at the
    label cap), not dropped for the numeric columns, which left a row of blank cells that said nothing. Every word
    of the error is on the screen, and no line is wider than the terminal."""
    error = "RuntimeError: mat1 and mat2 shapes cannot be multiplied (2x256 and 512x2048)"
    failed = replace(make_row("layer"), status="FAILED", error=error, median_ms=None, gflops=None)
    text = printed(ComparisonTable([*ROWS[:2], failed], "a failed run"), 80, terminal=True)
    assert max(len(line) for line in text.splitlines()) <= 80, text
    assert "status" in text and "FAILED:" in text, text
    shown = " ".join(text.split())
    assert all(word in shown for word in error.split()), text


def test_a_long_error_is_cut_between_words_and_marked() -> None:
    """An error longer than ERROR_SHOWN characters ended mid-word ('...that the model's first f'), read as if whole."""
    error = "ValueError: " + " ".join(f"word{i}" for i in range(30))  # 12 + 30 words of 5-6 characters: over 80
    failed = replace(make_row("layer"), status="FAILED", error=error, median_ms=None, gflops=None)
    cell = ALL_COLUMNS["status"].cell(failed)
    shown = cell.removeprefix("FAILED: ")
    assert shown.endswith(" …") and len(shown) <= ERROR_SHOWN and error.startswith(shown.removesuffix(" …")), cell
    assert shown.removesuffix(" …").split()[-1] in error.split()  # the last word shown is whole


def test_piped_table_prints_every_column_whole_as_markdown() -> None:
    text = printed(ComparisonTable(ROWS, "three runs"), 80, terminal=False)
    assert "…" not in text and "| variant" in text and "| run name" in text
    for row in ROWS:
        for whole in (
            row.tags["variant"],
            row.run_name,
            row.hardware,
            row.run_id[:8],
            "4,704",
            "[1,200.125, 1,300.875]",
        ):
            assert whole in text
    assert max(len(line) for line in text.splitlines()) > 80  # nothing wrapped to fit 80 columns


def piped_header(table: ComparisonTable) -> list[str]:
    """The column headers of a piped (Markdown) table: the cells of its first ``| variant`` line."""
    line = next(line for line in printed(table, 80, terminal=False).splitlines() if line.startswith("| variant"))
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_columns_follow_what_the_rows_differ_in() -> None:
    """Which columns a table holds (ComparisonTable._keys): "batch" only when the rows' batch sizes differ; piped,
    "hardware" and "model / input" columns only when the rows hold more than one (one is named once above the
    table instead); in a terminal (400 columns: every allowed column fits), "status" only when a run did not
    finish (a piped table always has it)."""
    two_machines, one_machine = ROWS, ROWS[:2]
    assert "hardware" in piped_header(ComparisonTable(two_machines, "t"))
    one = printed(ComparisonTable(one_machine, "t"), 80, terminal=False)
    assert "hardware" not in piped_header(ComparisonTable(one_machine, "t")) and f"hardware: {LONG_MACHINE}" in one
    assert "batch" not in piped_header(ComparisonTable(one_machine, "t"))  # both batch 2
    assert "status" in piped_header(ComparisonTable(one_machine, "t"))  # all FINISHED, and still there
    assert "batch" in piped_header(ComparisonTable([ROWS[0], replace(ROWS[1], batch_size=4)], "t"))
    same_group = [replace(row, group="net / 2x3x32x32") for row in one_machine]
    assert "model / input" not in piped_header(ComparisonTable(same_group, "t"))
    assert "model / input: net / 2x3x32x32" in printed(ComparisonTable(same_group, "t"), 80, terminal=False)
    two_groups = [same_group[0], replace(same_group[1], group="net / 4x3x32x32")]
    assert "model / input" in piped_header(ComparisonTable(two_groups, "t"))
    finished = printed(ComparisonTable(one_machine, "t"), 400, terminal=True)
    assert "FINISHED" not in finished and "status" not in finished
    failed = printed(ComparisonTable([one_machine[0], replace(one_machine[1], status="FAILED")], "t"), 400, True)
    assert "FINISHED" in failed and "FAILED" in failed


def test_a_piped_label_is_never_wrapped() -> None:
    """Labels wrap at the label cap (a third of the width, at least 24 columns) only in a terminal: piped, a 62-column
    label stays on one line whatever the width."""
    label = "norm_fn=group model.planes=64 model.depth=3 optimizer.lr=0.001"
    row = replace(ROWS[0], tags={"variant": label})
    assert label in printed(ComparisonTable([row, ROWS[1]], "t"), 80, terminal=False)


def test_title_and_headings_are_bold_lines_of_their_own() -> None:
    """First the title, then above each table its machine and its model / input, each a line of its own in bold
    (SGR 1 on a colour terminal)."""
    out = io.StringIO()
    console = Console(file=out, width=200, force_terminal=True, color_system="standard")
    console.print(ComparisonTable([replace(row, group="net / 2x3x32x32") for row in ROWS], "three runs"), crop=False)
    lines = out.getvalue().splitlines()
    assert lines[0] == "\x1b[1mthree runs\x1b[0m"
    assert f"\x1b[1mhardware: {LONG_MACHINE}\x1b[0m" in lines
    assert "\x1b[1mmodel / input: net / 2x3x32x32\x1b[0m" in lines


def test_columns_option_shows_exactly_those_columns() -> None:
    text = printed(ComparisonTable(ROWS, "t", columns=parse_columns("variant,params,run_id")), 80, terminal=True)
    header = "".join(text.splitlines()[1:5])
    assert "params" in header and "GFLOPs" not in header and ROWS[2].run_id[:8] in text
    with pytest.raises(ValueError, match=r"--columns='variant,nope': unknown column 'nope'; allowed: hardware, "):
        parse_columns("variant,nope")


def test_bad_columns_value_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--tracking-uri", f"sqlite:///{tmp_path / 'none.db'}", "--columns", "gflops,speedup"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "unknown column 'speedup'" in error and not (tmp_path / "none.db").exists()


def _runs(client: MlflowClient, name: str, jobs: list[tuple[int, float]]) -> list:
    """One finished run per (batch size, median ms), throughput = batch / median (samples/s)."""
    experiment = client.create_experiment(name)
    for index, (batch, median_ms) in enumerate(jobs):
        run = client.create_run(experiment, run_name=f"{name}{index}", tags={"variant": f"batch.size={batch}"})
        client.log_param(run.info.run_id, "batch.size", batch)
        client.log_metric(run.info.run_id, "latency/median_ms", median_ms)
        client.log_metric(run.info.run_id, "speed/throughput_samples_per_s", batch / (median_ms / 1000))
        client.set_terminated(run.info.run_id)
    return client.search_runs([experiment])


def test_speed_ratio_is_throughput_when_batch_sizes_differ(tmp_path: Path) -> None:
    """b1: 10 ms for 1 sample (100 samples/s); b4: 40 ms for 4 (100/s); b2: 10 ms for 2 (200/s). The latency ratio
    (baseline median / median) would call b4 0.25x; throughput / baseline throughput says b4 1.00x, b2 2.00x.
    Equal batch sizes keep the latency speed-up: 10 ms vs 20 ms is 10 / 20 = 0.50x."""
    client = MlflowClient(f"sqlite:///{tmp_path / 'store.db'}")
    rows = {
        row.run_name: row for row in build_rows(_runs(client, "sweep", [(1, 10.0), (4, 40.0), (2, 10.0)]), "sweep0")
    }
    assert {name: row.relative_speed for name, row in rows.items()} == pytest.approx(
        {"sweep0": 1.0, "sweep1": 1.0, "sweep2": 2.0}
    )
    assert {row.speed_basis for row in rows.values()} == {"throughput"}
    assert "| throughput vs baseline |" in markdown_table(list(rows.values()))
    equal = {row.run_name: row for row in build_rows(_runs(client, "same", [(2, 10.0), (2, 20.0)]), "same0")}
    assert equal["same1"].relative_speed == pytest.approx(10.0 / 20.0) and equal["same1"].speed_basis == "latency"
    assert "| latency speed-up vs baseline |" in markdown_table(list(equal.values()))
    terminal = printed(ComparisonTable(list(equal.values()), "t", columns=["variant", "speed"]), 80, terminal=True)
    assert "speed-up" in terminal and "(latency)" in terminal and "0.50x" in terminal


def _texts_inside_axes(figure: Figure) -> None:
    """Every annotation inside the axes, the legend inside the figure (window extents, in pixels)."""
    renderer = figure.canvas.get_renderer()
    axes = figure.axes[0]
    box = axes.get_window_extent(renderer)
    for text in axes.texts:
        extent = text.get_window_extent(renderer)
        assert box.x0 - 1 <= extent.x0 and extent.x1 <= box.x1 + 1, text.get_text()
        assert box.y0 - 1 <= extent.y0 and extent.y1 <= box.y1 + 1, text.get_text()
    legend = axes.get_legend()
    if legend is not None:
        extent, whole = legend.get_window_extent(renderer), figure.bbox
        assert whole.x0 <= extent.x0 and extent.x1 <= whole.x1 and whole.y0 <= extent.y0 and extent.y1 <= whole.y1


def test_flops_vs_latency_has_no_offset_and_starts_at_zero() -> None:
    figure = flops_vs_latency_figure(ROWS)  # GFLOPs 10.8823..10.8881: a 0.006 spread
    figure.canvas.draw()
    axes = figure.axes[0]
    for axis in (axes.xaxis, axes.yaxis):
        assert axis.get_major_formatter().get_offset() == ""
        assert all("e" not in label.get_text() for label in axis.get_ticklabels())
    assert axes.get_xlim()[0] == 0 and axes.get_ylim()[0] == 0
    labels = axes.get_legend_handles_labels()[1]
    assert sorted(labels) == sorted(
        f"norm_fn={n} ({row.hardware})" for n, row in zip(("group", "batch", "instance"), ROWS, strict=True)
    )
    _texts_inside_axes(figure)


def test_bars_have_one_colour_per_variant_from_zero(tmp_path: Path) -> None:
    one_machine = [make_row(n, hardware="cpu:x") for n in ("group", "batch", "instance")]
    figure = bars_figure(one_machine, "achieved_gflop_per_s", False, "GFLOP/s", "achieved")
    axes = figure.axes[0]
    colours = {patch.get_facecolor() for patch in axes.patches}
    assert len(axes.patches) == 3 and len(colours) == 3
    assert all(abs(c[0] - c[1]) > 0.05 or abs(c[1] - c[2]) > 0.05 for c in colours)  # not a grey
    assert axes.get_ylim()[0] == 0
    # the rows' order (a sweep's, as its table), not the names' sorted: the first value swept is the first bar
    assert axes.get_legend_handles_labels()[1] == ["norm_fn=group", "norm_fn=batch", "norm_fn=instance"]
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    legend = axes.get_legend().get_window_extent(renderer)
    assert legend.y1 <= axes.get_window_extent(renderer).y0  # under the axes: it hides no bar
    figure.savefig(tmp_path / "bars.png")
    with Image.open(tmp_path / "bars.png") as image:
        pixels = set(image.convert("RGB").getdata())
    for colour in colours:
        assert tuple(round(255 * c) for c in to_rgb(colour)) in pixels  # each variant's colour is drawn
    _texts_inside_axes(figure)


def test_throughput_axis_starts_at_zero(tmp_path: Path) -> None:
    figure = throughput_curve_figure({"norm_fn=group": [(1, 90.0), (4, 100.0)], "norm_fn=batch": [(1, 95.0)]}, "t")
    axes = figure.axes[0]
    assert axes.get_ylim()[0] == 0 and axes.get_ylim()[1] == pytest.approx(110.0)  # top: 1.1 x the highest
    assert len({to_rgba(line.get_color()) for line in axes.get_lines()}) == 2
    figure.savefig(tmp_path / "t.png")
    assert (tmp_path / "t.png").read_bytes()[:4] == b"\x89PNG"


def test_roofline_names_every_roof_and_run_in_a_legend_below_the_axes() -> None:
    """Runs of one model sit at nearly one point (on an H200 twelve labels beside them overlapped into one smudge):
    each roof and each run is a legend entry under the axes, inside the figure, none drawn over the plot; the figure
    grows with the entries instead of the axes shrinking, and widens for a legend wider than it; a fifth roof is
    drawn too (styles repeat in a lighter grey), never dropped."""
    roofs = [Roof("spec", 156.5, 20.0), Roof("measured", 120.0, 15.0)]
    points = [
        RooflinePoint("norm_fn=instance long label", 900.0, 150.0),
        RooflinePoint("norm_fn=group", 0.9, 0.5),
        RooflinePoint("norm_fn=batch", 7.7, 8.8),
    ]
    figure = roofline_figure(roofs, points, "roofline")
    figure.canvas.draw()
    axes = figure.axes[0]
    assert len(axes.texts) == 0
    entries = [text.get_text() for text in axes.get_legend().get_texts()]
    assert entries == [
        "spec: 156.5 GFLOP/s, 20.0 GB/s",
        "measured: 120.0 GFLOP/s, 15.0 GB/s",
        *[p.label for p in points],
    ]
    renderer = figure.canvas.get_renderer()
    legend, plot = axes.get_legend().get_window_extent(renderer), axes.get_window_extent(renderer)
    assert legend.y1 <= plot.y0  # under the axes
    _texts_inside_axes(figure)  # and inside the figure
    many = [RooflinePoint(f"norm_fn=instance precision=bf16 train step ({LONG_MACHINE}) {index}", 170.0, 2e4 + index)
            for index in range(12)]  # fmt: skip
    five = [Roof(f"roof {index}", 1e5 * (index + 1), 4e3) for index in range(5)]
    crowded = roofline_figure(five, many, "roofline")
    crowded.canvas.draw()
    assert len(crowded.axes[0].get_lines()) == 5 and len(crowded.axes[0].get_legend().get_texts()) == 17
    assert crowded.get_figheight() > figure.get_figheight() and crowded.get_figwidth() > figure.get_figwidth()
    _texts_inside_axes(crowded)  # the legend whole, inside the widened figure


def test_runs_of_two_precisions_get_a_roofline_each() -> None:
    """An fp32 and a bf16 run of one H200: the bf16 run under the bf16 roofs (datasheet 989,500 GFLOP/s, measured
    756,268), the fp32 run under the fp32 ones (67,000 and 108,841), one chart each; runs of one precision keep the
    single ``roofline``; a run of a second machine is named with its hardware."""
    h200 = "cuda:NVIDIA H200"
    common = dict(arithmetic_intensity=169.9, spec_bandwidth_gb_per_s=4800.0, measured_bandwidth_gb_per_s=4269.6)
    fp32 = replace(make_row("group", h200, achieved_gflop_per_s=19_983.5, spec_peak_gflop_per_s=67_000.0,
                            measured_peak_gflop_per_s=108_841.1, **common), tags={"dtype": "fp32"})  # fmt: skip
    bf16 = replace(make_row("batch", h200, achieved_gflop_per_s=40_516.7, spec_peak_gflop_per_s=989_500.0,
                            measured_peak_gflop_per_s=756_268.0, **common), tags={"dtype": "bf16"})  # fmt: skip
    sets = {name: (roofs, points) for name, roofs, points in roofline_sets([fp32, bf16], [])}
    assert sorted(sets) == ["roofline_bf16", "roofline_fp32"]
    assert [roof.gflop_per_s for roof in sets["roofline_bf16"][0]] == [756_268.0, 989_500.0]
    assert [roof.gflop_per_s for roof in sets["roofline_fp32"][0]] == [108_841.1, 67_000.0]
    assert [point.gflop_per_s for point in sets["roofline_bf16"][1]] == [40_516.7]
    ((name, _, points),) = roofline_sets([fp32, replace(fp32, hardware="cpu:AMD EPYC", run_id="other")], [])
    assert name == "roofline" and {point.label.rsplit(" (", 1)[-1] for point in points} == {
        "cuda:NVIDIA H200)",
        "cpu:AMD EPYC)",
    }


def test_train_rows_bring_their_step_and_mfu_columns() -> None:
    """A train-mode row shows its step GFLOPs, step median, step GFLOP/s and MFU (percent); a sweep of inference runs
    alone has none of those columns, in the terminal, piped, or in Markdown."""
    train = make_row("group", median_ms=None, ci_low_ms=None, ci_high_ms=None, throughput_samples_per_s=None,
                     achieved_gflop_per_s=None, mode="train", step_gflops=32.6545,
                     step_median_ms=3456.789, step_achieved_gflop_per_s=9.446, mfu=0.06031)  # fmt: skip
    mixed = [ROWS[0], replace(train, relative_speed=None)]
    for terminal, width in ((True, 200), (False, 80)):
        text = printed(ComparisonTable(mixed, "two modes"), width, terminal=terminal)
        assert "MFU" in text and "6.0%" in text and "3,456.789" in text and "32.654" in text, text
        assert "MFU" not in printed(ComparisonTable(ROWS, "inference"), width, terminal=terminal)
    assert "| train step GFLOPs | train step median ms | train step GFLOP/s | MFU |" in markdown_table(mixed)
    assert "MFU" not in markdown_table(ROWS)
    narrow = printed(ComparisonTable(mixed, "two modes"), 80, terminal=True)
    assert max(len(line) for line in narrow.splitlines()) <= 80 and "…" not in narrow


def test_at_80_columns_each_group_shows_the_columns_its_rows_fill() -> None:
    """An H200 sweep of both modes, three variants each: the inference group and the train group get a table each.
    At 80 columns the columns were chosen once for all rows, so the train group's table showed latency, GFLOP/s and
    utilization columns it has no values for, and its step median and MFU were "not shown". Each table now fits
    the columns its own rows fill: the train group's step median (1.273 ms) and MFU (31.9% = 21,385.5 / 67,000),
    the inference group's latency; nothing over 80 columns or cut."""
    inference = [
        replace(make_row(norm, "cuda:NVIDIA H200", median_ms=0.545, achieved_gflop_per_s=19_983.5),
                label=f"norm_fn={norm} precision=fp32", group="ResidualBlock")
        for norm in ("group", "batch", "instance")
    ]  # fmt: skip
    train = [
        replace(row, run_id=f"t{row.run_id[1:]}", mode="train", median_ms=None, ci_low_ms=None, ci_high_ms=None,
                throughput_samples_per_s=None, achieved_gflop_per_s=None, utilization_vs_spec_peak=None,
                relative_speed=None, step_gflops=27.230, step_median_ms=1.273, step_achieved_gflop_per_s=21_385.5,
                mfu=21_385.5 / 67_000, group="ResidualBlock mode=train")
        for row in inference
    ]  # fmt: skip
    text = printed(ComparisonTable([*inference, *train], "two modes"), 80, terminal=True)
    assert max(len(line) for line in text.splitlines()) <= 80 and "…" not in text
    inference_part, train_part = text.split("model / input: ResidualBlock mode=train")
    assert "MFU" in train_part and "31.9%" in train_part and "1.273" in train_part
    assert "latency" not in train_part and "utilization" not in train_part
    assert "0.545" in inference_part and "MFU" not in inference_part


def test_small_utilization_and_mfu_never_read_as_zero() -> None:
    """A tiny model of one's own (TinyMLP, width 128) on the 2-core VM: 0.677 GFLOP/s against a measured roof of 200
    is 0.677 / 200 = 0.34% (it printed "0% meas."); a train step at 0.0339% MFU printed "0.0%". Below 1% a share
    keeps two significant digits; from 1% up it reads as before (6% spec, 31.9% MFU)."""
    tiny = make_row("group", utilization_vs_measured_peak=0.677 / 200, utilization_vs_spec_peak=0.056)
    train = make_row("batch", mode="train", mfu=0.000339, step_gflops=3.62e-5, step_median_ms=0.221)
    text = markdown_table([tiny, train])
    assert "0.34% meas., 6% spec" in text and "| 0.034% |" in text
    assert "31.9%" in markdown_table([replace(train, mfu=21_385.5 / 67_000)])


def test_report_charts_for_train_runs(tmp_path: Path) -> None:
    """A sweep of both modes: the inference charts, plus the train step's GFLOP/s and MFU bars, and one roofline with
    the inference point and the train step's (at the forward's intensity); a train-only sweep gets its own charts."""
    train = make_row("group", median_ms=None, ci_low_ms=None, ci_high_ms=None, achieved_gflop_per_s=None,
                     mode="train", step_gflops=32.6545, step_median_ms=3456.789, step_achieved_gflop_per_s=9.446,
                     mfu=0.06031, measured_peak_gflop_per_s=160.0, measured_bandwidth_gb_per_s=25.0)  # fmt: skip
    inference = make_row("group", measured_peak_gflop_per_s=160.0, measured_bandwidth_gb_per_s=25.0)
    names = [path.name for path in comparison_charts([inference, train], tmp_path)]
    assert names == ["achieved_gflops.png", "latency.png", "flops_vs_latency.png", "train_step_gflops.png",
                     "mfu.png", "roofline.png"]  # fmt: skip
    (tmp_path / "train").mkdir()
    only_train = [path.name for path in comparison_charts([train], tmp_path / "train")]
    assert only_train == ["train_step_gflops.png", "mfu.png", "roofline.png"]


def test_runs_logged_under_the_old_flat_names_load_as_rows(tmp_path: Path) -> None:
    """A run logged before the metrics had chart sections (`latency_median_ms`, `gflops`, ...) gives the same row as
    one logged under the sectioned names (`latency/median_ms`, `cost/gflops`, ...): stored runs keep comparing."""
    client = MlflowClient(f"sqlite:///{tmp_path / 'old.db'}")
    experiment = client.create_experiment("old-and-new")
    figures = {  # old flat name -> new sectioned name, value
        "params": ("cost/params", 4704.0), "gmacs": ("cost/gmacs", 0.005), "gflops": ("cost/gflops", 0.0109),
        "latency_median_ms": ("latency/median_ms", 1.25), "latency_ci95_low_ms": ("latency/ci95_low_ms", 1.2),
        "latency_ci95_high_ms": ("latency/ci95_high_ms", 1.3),
        "throughput_samples_per_s": ("speed/throughput_samples_per_s", 1600.0),
        "achieved_gflop_per_s": ("speed/achieved_gflop_per_s", 8.7),
        "utilization_vs_measured_peak": ("speed/utilization_vs_measured_peak", 0.05),
        "arithmetic_intensity_flop_per_byte": ("cost/arithmetic_intensity_flop_per_byte", 7.7),
        "measured_peak_gflop_per_s": ("peak/measured_gflop_per_s", 167.7),
        "measured_bandwidth_gb_per_s": ("peak/measured_bandwidth_gb_per_s", 26.9), "timed_iterations": (
            "timing/timed_iterations", 40.0),
    }  # fmt: skip
    runs = {}
    for era, pick in (("old", lambda old, new: old), ("new", lambda old, new: new)):
        run_id = client.create_run(experiment, run_name=era, tags={"hardware": "cpu:test"}).info.run_id
        for old, (new, value) in figures.items():
            client.log_metric(run_id, pick(old, new), value)
        client.set_terminated(run_id)
        runs[era] = client.get_run(run_id)
    old_row, new_row = build_rows([runs["old"], runs["new"]])
    assert old_row.run_name == "old" and new_row.run_name == "new"  # in the order they started
    fields = ("params", "gmacs", "gflops", "median_ms", "ci_low_ms", "ci_high_ms", "throughput_samples_per_s",
              "achieved_gflop_per_s", "utilization_vs_measured_peak", "arithmetic_intensity",
              "measured_peak_gflop_per_s", "measured_bandwidth_gb_per_s", "timed_iterations")  # fmt: skip
    for field in fields:
        assert getattr(old_row, field) == getattr(new_row, field) is not None, field


def test_compare_says_when_the_runs_environments_differ(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Three runs, two Python environments (env_hash tags, with their package lists): the table is followed by one
    line naming the runs and the package that changed; a CSV on stdout stays clean (the line goes to stderr)."""
    uri = f"sqlite:///{tmp_path / 'env.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("environments")
    old, new = (
        environment_tags({"torch": "2.13.0", "numpy": "2.1.0"}),
        environment_tags({"torch": "2.14.0", "numpy": "2.1.0"}),
    )
    for name, environment in (("a", old), ("b", old), ("c", new)):
        tags = {"hardware": "cpu:test", **environment}
        run_id = client.create_run(experiment, run_name=name, tags=tags).info.run_id
        client.log_metric(run_id, "latency/median_ms", 1.0)
        client.set_terminated(run_id)
    assert main(["--tracking-uri", uri, "--experiment", "environments"]) == 0
    out = capsys.readouterr().out
    said = f"environments differ: a env_hash={old['env_hash']}, c env_hash={new['env_hash']} (torch 2.13.0 -> 2.14.0)"
    assert out.count("environments differ") == 1 and said in out  # b shares a's environment: one line
    assert main(["--tracking-uri", uri, "--experiment", "environments", "--format", "csv"]) == 0
    printed = capsys.readouterr()
    assert "environments differ" not in printed.out and said in printed.err


def _title_inside_figure(figure: Figure) -> None:
    """The title's window extent lies inside the figure's (a wider title is cut at both edges when saved)."""
    renderer = figure.canvas.get_renderer()
    extent, whole = figure.axes[0].title.get_window_extent(renderer), figure.bbox
    assert whole.x0 <= extent.x0 and extent.x1 <= whole.x1, figure.axes[0].get_title()


def _layer_row(name: str, share: float, intensity: float, gflop_per_s: float) -> LayerRow:
    row = LayerRow(name, "T", 1, "", 0, 1, 50, 100, 0.0, "", 0, self_ms=share * 10)
    return replace(row, time_share=share, intensity=intensity, gflop_per_s=gflop_per_s)


def test_per_layer_charts_keep_titles_legends_and_labels_in_view() -> None:
    """A run name with its hardware runs past the figure's width: the title wraps and stays inside it; the runs
    side by side keep their legend below the axes, where no bar is hidden; two layers that nearly coincide on the
    log-log roofline share one label instead of two overlapping ones."""
    name = "instance-residual_block-b2-cpu-fp32 (cpu:AMD EPYC (Zen 4, 2 cores, AVX-512))"
    rows = [_layer_row("conv2", 0.4, 480.0, 70.0), _layer_row("relu", 0.1, 0.13, 0.10),
            _layer_row("(root)", 0.05, 0.09, 0.085), _layer_row("norm1", 0.04, 1.0, 0.8)]  # fmt: skip
    for figure in (
        layer_share_figure(rows, f"{name}: time vs FLOP share"),
        layer_roofline_figure(rows, BoundRoof("cpu", 332.0, 14.0, 0, "rule"), f"{name}: per-layer roofline"),
    ):
        figure.canvas.draw()
        _title_inside_figure(figure)
        _texts_inside_axes(figure)
    labels = sorted(text.get_text() for text in figure.axes[0].texts)  # the roofline's
    assert labels == ["conv2", "norm1", "relu, (root)"]

    runs = [RunLayers(f"{variant}-{name}", "cpu", rows) for variant in ("group", "batch", "instance")]
    figure = layer_time_by_run_figure(runs)
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    legend, plot = figure.axes[0].get_legend().get_window_extent(renderer), figure.axes[0].get_window_extent(renderer)
    assert legend.y1 <= plot.y0 and figure.bbox.y0 <= legend.y0  # under the axes, inside the figure
    _title_inside_figure(figure)


def test_small_numbers_keep_three_significant_digits() -> None:
    """A tiny model's 0.000589 GMACs and a 0.00421 ms forward read as such, not as 0.001 and 0.004 (three decimals
    would round them by up to 70%); from 0.1 up, three decimals with separators as before. Trailing zeros stay, so
    an interval's two bounds read equally precise ([0.00400, 0.00450], not [0.004, 0.0045])."""
    assert [three_places(value) for value in (0.000589, 0.00421, 0.052, 0.0, 0.1, 1234.5678)] == [
        "0.000589", "0.00421", "0.0520", "0.000", "0.100", "1,234.568",
    ]  # fmt: skip
    row = make_row("group", gmacs=0.000589, gflops=0.00118, median_ms=0.00421, ci_low_ms=0.004, ci_high_ms=0.0045)
    table = markdown_table([row])
    assert "| 0.000589 | 0.00118 | 0.00421 [0.00400, 0.00450] |" in table  # GMACs, GFLOPs, median latency [95% CI]


def test_small_rates_keep_three_significant_digits() -> None:
    """A tiny model's rate: achieved GFLOP/s = GFLOPs per forward / seconds per forward = 0.00118 / 0.107 = 0.0110,
    which one decimal showed as 0.0; below 1 a rate keeps three significant digits. From 1 up it keeps one decimal
    with separators (throughput = batch / seconds = 2 / 0.107 = 18.7 samples/s; 11,096.5), as before."""
    assert [one_place(value) for value in (0.0110, 0.5, 0.0, 1.0, 75.46, 11096.54)] == [
        "0.0110", "0.500", "0.0", "1.0", "75.5", "11,096.5",
    ]  # fmt: skip
    gflops, median_ms, batch = 0.00118, 107.0, 2
    achieved = gflops / (median_ms / 1e3)  # GFLOP/s = GFLOPs per forward / seconds per forward
    throughput = batch / (median_ms / 1e3)  # samples/s = batch / seconds per forward
    row = make_row("group", gflops=gflops, median_ms=median_ms, achieved_gflop_per_s=achieved,
                   throughput_samples_per_s=throughput)  # fmt: skip
    table = markdown_table([row])
    assert f"| {achieved:#.3g} |" in table and "| 0.0110 |" in table and "| 18.7 |" in table  # 2 / 0.107 s


def test_at_80_columns_a_group_is_fitted_with_the_widths_it_is_drawn_with() -> None:
    """The seed sweep and a tiny model of one's own in one store: the tables share column widths (a tiny model's
    GFLOPs 3.84e-05 and 0.000307 widen the GFLOPs column of the seed block's table too), but each group's columns
    were chosen measuring its own rows alone, so the seed block's table took one column too many and its last,
    the speed-up, was cut at 80 columns ("1." for 1.00x). Every table is now measured as it is drawn."""
    seed = [
        replace(make_row(norm, "cpu:Xeon", gflops=gflops, median_ms=ms, achieved_gflop_per_s=rate,
                         utilization_vs_measured_peak=share, utilization_vs_spec_peak=None,
                         throughput_samples_per_s=None), relative_speed=speed, group="ResidualBlock input.shape=null")
        for norm, gflops, ms, rate, share, speed in (("group", 10.889, 183.494, 59.3, 0.17, 1.0),
                                                     ("batch", 10.883, 162.727, 66.9, 0.19, 1.13))
    ]  # fmt: skip
    tiny = [
        replace(make_row(f"w{width}", "cpu:Xeon", gflops=gflops, gmacs=gflops / 2, median_ms=ms, params=params,
                         achieved_gflop_per_s=gflops / ms * 1e3, utilization_vs_measured_peak=share,
                         utilization_vs_spec_peak=None), relative_speed=speed, group="TinyMLP input.shape=[64]",
                tags={"variant": f"+model.width={width}"})
        for width, gflops, ms, params, share, speed in ((128, 3.84e-05, 0.0185, 9_610, 0.0058, 1.0),
                                                        (1024, 0.000307, 0.0232, 76_810, 0.04, 0.80))
    ]  # fmt: skip
    text = printed(ComparisonTable([*seed, *tiny], "one store"), 80, terminal=True)
    assert max(len(line) for line in text.splitlines()) <= 80 and "…" not in text, text
    assert "1.00x" in text and "1.13x" in text and "0.80x" in text, text


def test_a_variant_has_one_colour_in_every_chart_and_no_ci_draws_no_caps() -> None:
    """The bar charts and 'FLOPs vs latency' colour each variant alike (the scatter once sorted the names: group and
    batch swapped colours between neighbouring plots); a run with fewer than 8 samples has no CI, and gets no error
    bar, where a zero-length one with caps read as a very tight interval."""
    rows = [make_row(n, hardware="cpu:x") for n in ("group", "batch")]
    rows.append(make_row("instance", hardware="cpu:x", ci_low_ms=None, ci_high_ms=None))
    bars = bars_figure(rows, "median_ms", True, "ms", "latency").axes[0]
    scatter = flops_vs_latency_figure(rows).axes[0]
    names = ["group", "batch", "instance"]
    bar_colours = {label: patch.get_facecolor() for patch, label in zip(bars.patches, names, strict=True)}
    scatter_colours = {
        label.removeprefix("norm_fn="): handle.lines[0].get_color() if hasattr(handle, "lines") else handle.get_color()
        for handle, label in zip(*scatter.get_legend_handles_labels(), strict=True)
    }
    assert {name: to_rgba(colour) for name, colour in scatter_colours.items()} == bar_colours
    error_bars = [child for child in bars.containers if getattr(child, "errorbar", None) is not None]
    assert len([bar for bar in error_bars if bar.errorbar is not None]) == 2  # group and batch; instance has no CI


def test_a_point_above_the_memory_roof_says_why() -> None:
    """A Linear(512, 512) at batch 1: 0.5 FLOP/byte counting every byte (the 1 MiB weight each call), 35 GFLOP/s
    achieved, above a 40 GB/s memory roof (20 GFLOP/s there), since the weight stays in cache. The run and the layer
    are drawn where they are, and the legend says why they sit above the roof (it said nothing, beside a text that
    said no layer beats its bound)."""
    run = roofline_figure([Roof("measured", 300.0, 40.0)], [RooflinePoint("linear", 0.5, 35.0)], "roofline")
    assert [text.get_text() for text in run.axes[0].get_legend().get_texts()][-1] == (
        "linear (above the memory roof: bytes from cache)"
    )
    rows = [_layer_row("(root)", 0.03, 0.5, 35.0), _layer_row("relu", 0.01, 0.13, 0.10)]
    layers = layer_roofline_figure(rows, BoundRoof("cpu", 300.0, 40.0, 0, "rule"), "per-layer roofline")
    layers.canvas.draw()
    assert [text.get_text() for text in layers.axes[0].get_legend().get_texts()][1:] == [
        "layers (self time)",
        "layers above the memory roof: bytes from cache",
    ]
    _texts_inside_axes(layers)
