"""``gflops-track whatif --run ID --hardware NAME [--dtype DTYPE] [--log]``: what a run's forward could do on other
hardware. Each layer of the run (its FLOPs and its per-op bytes) is bounded by the roofs of a card in the datasheet
table (``peaks/table.py``), or with ``--hardware here`` by the run's own machine's. Every figure it prints is a
BOUND — the least time, the most GFLOP/s the roofs allow — never a measurement; where a run of the same config on
that card is in the store, its measured latency is shown beside the bound, with how close it came.

``--log`` writes the bounds to the run as ``whatif/<hardware>/*`` metrics and a ``whatif/<hardware>/layers`` table,
so the MLflow UI can set hardware you do not own beside hardware you do.

Exit code 0; 2 for bad input (an unknown card or dtype, a run without per-layer times) or a store that cannot be
used, with one line naming what and why.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from gflops_track.common import names
from gflops_track.compare.rows import resolve_run_id
from gflops_track.peaks.table import gpu_spec
from gflops_track.peaks.whatif import datasheet_names, datasheet_what_if, find_spec, hardware_slug, what_if
from gflops_track.results.layers import BoundRoof, WhatIf, milliseconds, rows_from_csv
from gflops_track.tracking.credentials import command_store
from gflops_track.tracking.records import RunRecord, table_json, write_to_mlflow
from gflops_track.tracking.store import TRACKING_ERRORS, StoreError, cap_http_retries, connect, first_line, unreachable

EXIT_BAD_INPUT = 2
HERE = "here"
BOUND_WORD = "bound"  # every figure is labelled a bound


def _arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    cli = argparse.ArgumentParser(
        prog="gflops-track whatif", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    cli.add_argument("--run", required=True, help="the run whose layers to bound (its layers.csv has per-layer times)")
    cli.add_argument(
        "--hardware", required=True, help=f"a datasheet card ({', '.join(datasheet_names())}) or 'here' (the run's own)"
    )
    cli.add_argument("--dtype", help="the dtype whose datasheet figure to use (default: the run's)")
    cli.add_argument("--log", action="store_true", help="write whatif/<hardware>/* metrics and a table to the run")
    cli.add_argument("--format", choices=("rich", "markdown"), help="default: rich on a terminal, markdown piped")
    cli.add_argument("--tracking-uri", help="default: $MLFLOW_TRACKING_URI, else sqlite:///./mlflow.db")
    return cli.parse_args(argv)


def _artifact(client: Any, run_id: str, path: str) -> str:
    with tempfile.TemporaryDirectory() as folder:
        return Path(client.download_artifacts(run_id, path, folder)).read_text()


def _roof_here(run: Any) -> BoundRoof:
    """The roof the run's own bounds used, from its metrics (``ValueError`` when it logged none)."""
    metrics, tags = run.data.metrics, run.data.tags
    if names.LAYERS_ROOF_GFLOP_PER_S not in metrics:
        raise ValueError(f"--hardware {HERE} is not allowed for run {run.info.run_id}: it logged no roof (peaks)")
    on_chip = metrics.get(names.LAYERS_ON_CHIP_MIB)
    return BoundRoof(
        f"{tags.get(names.HARDWARE_TAG, 'this machine')} (the run's own roof)",
        metrics[names.LAYERS_ROOF_GFLOP_PER_S],
        metrics.get(names.LAYERS_ROOF_BANDWIDTH),
        int(on_chip * names.MIB) if on_chip is not None else None,
        tags.get(names.LAYER_BOUND_TAG, ""),
    )


def _measured_there(client: Any, run: Any, hardware: str, dtype: str) -> tuple[str, float] | None:
    """A run of the same config (same overrides, dtype) on a GPU of that datasheet card: (run id, latency median)."""
    tags = run.data.tags
    overrides = tags.get(names.OVERRIDES_TAG)
    if overrides is None:
        return None
    quoted = overrides.replace("'", "\\'")
    query = f"tags.{names.OVERRIDES_TAG} = '{quoted}' and tags.{names.DTYPE_TAG} = '{dtype}'"
    for other in client.search_runs([run.info.experiment_id], query, max_results=200):
        spec = gpu_spec(other.data.tags.get("gpu_name", ""))
        median = other.data.metrics.get(names.LATENCY_MEDIAN_MS)
        if spec is not None and spec.name == hardware and median:
            return other.info.run_id, median
    return None


def _ms(value: float | None) -> str:
    return "-" if value is None else milliseconds(value)


def _limits(here: str, there: str) -> str:
    return f"{here or '-'}/{there}"


def headline(result: WhatIf, run_name: str, measured: tuple[str, float] | None) -> list[str]:
    """The forward's bounds there and here, the measured time here, and the layers whose bound flips."""
    lines = [
        f"what-if: run {run_name} on {result.hardware} ({result.dtype}); every figure marked {BOUND_WORD} is the least "
        "time (or the most GFLOP/s) the roofs allow, not a measurement",
        f"roofs there: {result.rule}",
        f"forward there: {BOUND_WORD} {_ms(result.forward_bound_ms)} ms"
        + (f", at most {result.max_gflop_per_s:,.1f} GFLOP/s ({BOUND_WORD})" if result.max_gflop_per_s else ""),
    ]
    if measured is not None:
        run_id, median = measured
        lines.append(
            f"forward there, measured: {_ms(median)} ms (run {run_id}); {BOUND_WORD}/measured "
            f"{result.forward_bound_ms / median:.1%}"
        )
    here = result.forward_bound_here_ms
    if result.measured_forward_ms:
        lines.append(
            f"forward here: measured {_ms(result.measured_forward_ms)} ms (latency median)"
            + (f", {BOUND_WORD} here {_ms(here)} ms" if here is not None else "")
        )
    flips = result.flips()
    flipped = ", ".join(f"{layer.name} ({_limits(layer.limit_here, layer.limit_there)})" for layer in flips)
    lines.append(f"layers whose bound flips (here -> there): {flipped or 'none'}")
    return lines


WHATIF_HEADERS = ("layer", "measured here ms", f"{BOUND_WORD} here ms", f"{BOUND_WORD} there ms", "roof here/there")
WHATIF_RICH_HEADERS = ("layer", "here ms", f"{BOUND_WORD} here", f"{BOUND_WORD} there", "roof")
WHATIF_LEGEND = f"ms; here: measured; {BOUND_WORD}: the least time the roofs allow; roof: here/there"


def _cells(result: WhatIf) -> list[tuple[str, ...]]:
    ordered = sorted(result.layers, key=lambda layer: layer.measured_ms or 0.0, reverse=True)
    return [
        (
            layer.name,
            _ms(layer.measured_ms),
            _ms(layer.bound_here_ms),
            _ms(layer.bound_there_ms),
            _limits(layer.limit_here, layer.limit_there),
        )
        for layer in ordered
    ]


def markdown(result: WhatIf) -> str:
    lines = ["| " + " | ".join(WHATIF_HEADERS) + " |", "|" + "---|" * len(WHATIF_HEADERS)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in _cells(result)]
    return "\n".join(lines) + "\n"


def rich_table(result: WhatIf) -> Table:
    """At 80 columns: names and headers wrap at spaces, numbers never wrap (so none is cut)."""
    table = Table(show_edge=False, pad_edge=False)
    for index, header in enumerate(WHATIF_RICH_HEADERS):
        text = index in (0, 4)  # names wrap (folded, never cut); numbers stay whole on one line
        table.add_column(header, justify="left" if text else "right", no_wrap=not text, overflow="fold")
    for row in _cells(result):
        table.add_row(*(Text(cell) for cell in row))
    return table


def log_record(result: WhatIf, slug: str) -> RunRecord:
    """``whatif/<slug>/*`` metrics and a table (the per-layer bounds there) for the source run."""
    prefix = f"{names.WHATIF_PREFIX}{slug}/"
    columns: dict[str, list[Any]] = {key: [] for key in asdict(result.layers[0])} if result.layers else {}
    for layer in result.layers:
        for key, value in asdict(layer).items():
            columns[key].append(value)
    files = {f"{prefix}layers.json": table_json(columns)} if columns else {}
    return RunRecord(
        metrics={f"{prefix}{key}": value for key, value in result.metrics().items()},
        tags={f"{prefix.rstrip('/')}.rule": result.rule[:5000]},
        files=files,
    )


def _logged_tables(client: Any, run: Any, path: str) -> dict[str, str]:
    """The run's ``mlflow.loggedArtifacts`` tag with ``path`` added as a table (the UI lists tables from it)."""
    from mlflow.utils.mlflow_tags import MLFLOW_LOGGED_ARTIFACTS

    listed = json.loads(run.data.tags.get(MLFLOW_LOGGED_ARTIFACTS, "[]") or "[]")
    if not any(entry.get("path") == path for entry in listed):
        listed.append({"path": path, "type": "table"})
    return {MLFLOW_LOGGED_ARTIFACTS: json.dumps(listed)}


def main(argv: Sequence[str] | None = None) -> int:
    args = _arguments(argv)
    cap_http_retries()
    console = Console()
    if not console.is_terminal:
        console = Console(soft_wrap=True)
    errors = Console(stderr=True, highlight=False, soft_wrap=True)
    try:
        uri, warnings = command_store(args.tracking_uri, Path.cwd())  # a password moves to the environment
        problem = unreachable(uri)
        if problem is not None:
            raise StoreError(problem)
        for warning in warnings:
            errors.print(f"[yellow]warning: {escape(warning)}[/yellow]")
        client = connect(uri)
        run = client.get_run(resolve_run_id(client, args.run, "--run"))  # a whole id or the 8 the tables print
        run_dtype = run.data.tags.get(names.DTYPE_TAG, "fp32")
        dtype = args.dtype or run_dtype
        if args.hardware.strip().lower() != HERE:
            find_spec(args.hardware)  # an unknown card is refused before any artifact is read
        try:
            rows = rows_from_csv(_artifact(client, run.info.run_id, names.LAYERS_CSV_ARTIFACT))
            traffic = json.loads(_artifact(client, run.info.run_id, names.LAYER_TRAFFIC_ARTIFACT))
        except (OSError, *TRACKING_ERRORS) as error:
            raise ValueError(
                f"--run {args.run} is not allowed: its per-layer artifacts cannot be read ({first_line(error)}); "
                "runs profiled with timing.layers=true in inference mode have them"
            ) from error
        median = run.data.metrics.get(names.LATENCY_MEDIAN_MS)
        if args.hardware.strip().lower() == HERE:
            result = what_if(rows, traffic, _roof_here(run), run_dtype, median)
            measured = None
        else:
            result = datasheet_what_if(rows, traffic, args.hardware, dtype, run_dtype, median)
            measured = _measured_there(client, run, result.hardware, dtype)
        for line in headline(result, run.info.run_name or run.info.run_id, measured):
            console.print(Text(line))
        piped = args.format == "markdown" or (args.format is None and not sys.stdout.isatty())
        if piped:
            sys.stdout.write("\n" + markdown(result))
        else:
            console.print(Text(WHATIF_LEGEND))
            console.print(rich_table(result))
        if args.log:
            slug = HERE if args.hardware.strip().lower() == HERE else hardware_slug(result.hardware)
            record = log_record(result, slug)
            table_path = f"{names.WHATIF_PREFIX}{slug}/layers.json"
            record.tags.update(_logged_tables(client, run, table_path))
            write_to_mlflow(client, run.info.run_id, record)
            errors.print(f"logged {len(record.metrics)} whatif metrics and {table_path} to run {run.info.run_id}")
    except (ValueError, StoreError) as error:
        errors.print(Text("gflops-track whatif: ", style="red") + Text(str(error)))
        return EXIT_BAD_INPUT
    except TRACKING_ERRORS as error:
        errors.print(Text("gflops-track whatif: ", style="red") + Text(first_line(error)))
        return EXIT_BAD_INPUT
    return 0
