"""``gflops-track compare`` / ``python -m gflops_track.compare``: tables, plots, HTML report, regression gate.

Exit codes: 0 fine; 1 the regression gate found a regression (and nothing else: a CI job reads 1 as "slower");
2 bad arguments, an unknown run or sweep id, a bad ``--filter``, an output directory that does not exist, a store that
does not exist or does not answer, or nothing to compare — always one line on stderr. Reading never creates a store.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from rich.console import Console
from rich.markup import escape

from gflops_track.compare.gate import judge, pair_rows, parse_threshold
from gflops_track.compare.render import csv_table, markdown_table, rich_table
from gflops_track.compare.report import log_report, write_report
from gflops_track.compare.rows import build_rows, expand, latency_samples, select_runs
from gflops_track.tracking.store import (
    StoreError,
    cap_http_retries,
    first_line,
    open_store,
    redact_uri,
    resolve_tracking_uri,
)

EXIT_REGRESSION = 1
EXIT_USAGE = 2


def parser() -> argparse.ArgumentParser:
    cli = argparse.ArgumentParser(
        prog="gflops-track compare",
        description="Compare gflops-track runs across hardware and variants; gate on latency regressions.",
    )
    cli.add_argument("--tracking-uri", help="default: $MLFLOW_TRACKING_URI, else sqlite:///./mlflow.db")
    select = cli.add_argument_group("which runs (default: every run of every experiment, sweep parents left out)")
    select.add_argument("--experiment", action="append", default=[], help="experiment name (repeatable)")
    select.add_argument("--sweep", help="a sweep's parent run id: its jobs")
    select.add_argument("--run-id", action="append", default=[], help="a run id (repeatable)")
    select.add_argument("--filter", default="", help="MLflow filter string, e.g. \"params.`model.norm_fn` = 'group'\"")
    output = cli.add_argument_group("output")
    output.add_argument("--baseline-row", help="run id or run name the 'speed vs baseline' column is relative to")
    output.add_argument("--format", choices=("rich", "markdown", "csv"), default="rich")
    output.add_argument("--output", type=Path, help="write the markdown/csv table here instead of stdout")
    output.add_argument("--html", type=Path, help="write the self-contained HTML report (tables + plots) here")
    output.add_argument("--log-report", action="store_true", help="with --sweep: attach report.html to the sweep run")
    gate = cli.add_argument_group("regression gate (exit 1 on a regression)")
    gate.add_argument("--baseline", help="run id or sweep id of the reference")
    gate.add_argument("--candidate", help="run id or sweep id to check against it")
    gate.add_argument("--threshold", default="5%", help="allowed slowdown, e.g. 5%% or 0.05 (default 5%%)")
    return cli


def run_gate(client: MlflowClient, baseline: str, candidate: str, threshold_text: str, console: Console) -> int:
    threshold = parse_threshold(threshold_text)
    base_rows = build_rows(expand(client, baseline))
    cand_rows = build_rows(expand(client, candidate))
    pairs, unmatched = pair_rows(base_rows, cand_rows)
    if not pairs:
        console.print(f"[red]no timed runs with the same name in {baseline} and {candidate}[/red]")
        return EXIT_USAGE
    verdicts = [
        judge(b, c, threshold, latency_samples(client, b.run_id), latency_samples(client, c.run_id)) for b, c in pairs
    ]
    for verdict in verdicts:
        style = "red" if verdict.regression else "green"
        console.print(f"[{style}]{verdict.describe(threshold)}[/{style}]", highlight=False)
    for name in unmatched:
        console.print(f"[yellow]not compared (present on one side only): {name}[/yellow]")
    regressions = [v for v in verdicts if v.regression]
    console.print(f"{len(regressions)} regression(s) in {len(verdicts)} compared row(s), threshold {threshold:.1%}")
    return EXIT_REGRESSION if regressions else 0


class UsageError(Exception):
    """A bad argument found before anything is read: one line, exit 2."""


def check_outputs(args: argparse.Namespace) -> None:
    """``--output`` / ``--html`` must go into an existing directory: say so before reading any run."""
    for flag in ("output", "html"):
        path: Path | None = getattr(args, flag)
        if path is not None and not path.parent.is_dir():
            raise UsageError(f"--{flag}={str(path)!r}: directory {str(path.parent)!r} does not exist")


def describe_error(error: Exception) -> str:
    """One line for an MLflow or file error: what MLflow said about an unknown run id or a bad filter."""
    if isinstance(error, MlflowException):
        return first_line(Exception(error.message))
    return first_line(error)


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    cap_http_retries()  # a dead server must not stall compare for minutes of retries
    console = Console(width=200) if args.format != "rich" or args.output else Console()
    errors = Console(stderr=True, highlight=False, soft_wrap=True)
    uri = resolve_tracking_uri(args.tracking_uri, Path.cwd())
    try:
        check_outputs(args)
        client = open_store(uri)
        if args.baseline or args.candidate:
            if not (args.baseline and args.candidate):
                raise ValueError("--baseline and --candidate go together")
            return run_gate(client, args.baseline, args.candidate, args.threshold, console)
        runs = select_runs(client, args.experiment, args.sweep, args.run_id, args.filter)
        if not runs:
            errors.print(f"[red]gflops-track compare:[/red] no runs selected in {escape(redact_uri(uri))}")
            return EXIT_USAGE
        rows = build_rows(runs, args.baseline_row)
        title = f"gflops-track comparison ({(args.sweep and f'sweep {args.sweep}') or f'{len(rows)} runs'})"
        text = {"markdown": markdown_table, "csv": csv_table}.get(args.format)
        if text is None:
            console.print(rich_table(rows, title))
        elif args.output:
            args.output.write_text(text(rows), encoding="utf-8")
        else:
            sys.stdout.write(text(rows))
        if args.html:
            write_report(rows, args.html, title, redact_uri(uri))
            console.print(f"HTML report written to {escape(str(args.html))}", highlight=False)
        if args.log_report and args.sweep:
            log_report(client, args.sweep, rows, title, redact_uri(uri))
    except (ValueError, UsageError, StoreError, MlflowException, OSError) as error:
        errors.print(f"[red]gflops-track compare:[/red] {escape(describe_error(error))}")
        return EXIT_USAGE
    return 0
