"""``gflops-track compare`` / ``python -m gflops_track.cli compare``: tables, plots, HTML report, regression gate.

Exit codes: 0 fine; 1 the regression gate found a regression (and nothing else: a CI job reads 1 as "slower");
2 bad arguments, an unknown or ambiguous run or sweep id, a bad ``--filter``, an output directory that does not
exist, a store that does not exist or does not answer, an ambiguous match, or nothing to compare — always one line on
stderr; 3 the gate found no regression but could not judge every row (INCONCLUSIVE: too few samples, no confidence
interval, or load on one side alone could explain the verdict; each line names the setting or flag that decides
it); 4 the gate found a baseline row the candidate did not measure (its run FAILED or was
KILLED, or is MISSING) or a median that is NaN or inf (NOT FINITE), whatever the other rows say. Reading never
creates a store.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from rich.console import Console
from rich.markup import escape
from rich.text import Text

from gflops_track.compare.gate import (
    DEFAULT_THRESHOLD,
    EXIT_USAGE,
    MIN_SAMPLES,
    AmbiguousMatch,
    Side,
    Verdict,
    exit_code,
    judge,
    judge_paired,
    pair_label,
    pair_rows,
    parse_threshold,
    row_label,
    unmeasured_verdict,
)
from gflops_track.compare.layers import RICH_LEGEND as LAYERS_LEGEND
from gflops_track.compare.layers import change_line, read_run_layers
from gflops_track.compare.layers import markdown as layers_markdown
from gflops_track.compare.layers import rich_tables as layer_tables
from gflops_track.compare.render import ALL_COLUMNS, csv_table, markdown_table, parse_columns, rich_table
from gflops_track.compare.report import log_report, write_report
from gflops_track.compare.rows import (
    Row,
    build_rows,
    expand,
    latency_samples,
    not_finite_notes,
    resolve_run_id,
    select_runs,
    stored_packages,
)
from gflops_track.machine.environment import ENV_HASH_TAG, ENV_PACKAGES_TAG, environment_note
from gflops_track.tracking.credentials import command_store
from gflops_track.tracking.store import (
    StoreError,
    cap_http_retries,
    first_line,
    open_store,
    redact_uri,
)


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
    output.add_argument(
        "--baseline-row",
        help="run id or run name the speed column is relative to (latency; throughput when batch sizes differ)",
    )
    output.add_argument(
        "--format",
        choices=("rich", "markdown", "csv"),
        default="rich",
        help="rich (default): in a terminal, the columns that fit its width; piped, every column as Markdown",
    )
    output.add_argument(
        "--columns",
        help="comma-separated columns to show, in this order, nothing cut: " + ",".join(ALL_COLUMNS),
    )
    output.add_argument("--wide", action="store_true", help="every column, nothing cut (long lines wrap)")
    output.add_argument(
        "--layers",
        type=int,
        nargs="?",
        const=5,
        metavar="N",
        help="the N layers (default 5) that take the most time in each run, with share, bound and efficiency",
    )
    output.add_argument(
        "--output", type=Path, help="write the table here instead of stdout: Markdown (csv with --format csv)"
    )
    output.add_argument("--html", type=Path, help="write the self-contained HTML report (tables + plots) here")
    output.add_argument("--log-report", action="store_true", help="with --sweep: attach report.html to the sweep run")
    gate = cli.add_argument_group(
        "regression gate (exit 1 on a regression, 3 when inconclusive, 4 when a candidate row FAILED, is MISSING or "
        "NOT FINITE)"
    )
    gate.add_argument("--baseline", help="run id or sweep id of the reference")
    gate.add_argument("--candidate", help="run id or sweep id to check against it")
    gate.add_argument(
        "--threshold",
        default=f"{DEFAULT_THRESHOLD:.0%}",
        help=f"allowed slowdown, e.g. 5%% or 0.05 (default {DEFAULT_THRESHOLD * 100:g}%%)",
    )
    gate.add_argument(
        "--rerun",
        action="store_true",
        help="re-measure each INCONCLUSIVE pair now, baseline and candidate interleaved in this process (both "
        "rebuilt from their runs' config.yaml: the model's _target_ must be importable here), then decide",
    )
    gate.add_argument(
        "--rerun-time-s",
        type=float,
        help="time budget of each re-measured pair, both sides together (default: the runs' timing.max_time_s)",
    )
    gate.add_argument(
        "--min-samples",
        type=int,
        default=MIN_SAMPLES,
        help=f"timed iterations each side needs, else the row is INCONCLUSIVE (default {MIN_SAMPLES})",
    )
    return cli


def run_gate(
    client: MlflowClient,
    baseline: str,
    candidate: str,
    threshold_text: str,
    console: Console,
    min_samples: int = MIN_SAMPLES,
    rerun: bool = False,
    rerun_time_s: float | None = None,
) -> int:
    """Pair the two sides' rows by identity, judge each pair, print one line per baseline row; the exit code says
    the worst (``gate.exit_code``: FAILED, MISSING or NOT FINITE 4, regression 1, inconclusive 3, else 0)."""
    threshold = parse_threshold(threshold_text)
    if min_samples < 2:
        raise ValueError(f"--min-samples={min_samples} is not allowed: it must be an integer >= 2")
    base_rows = build_rows(expand(client, baseline, "--baseline"))
    cand_rows = build_rows(expand(client, candidate, "--candidate"))
    try:
        pairing = pair_rows(base_rows, cand_rows)
    except AmbiguousMatch as error:
        Console(stderr=True).print(
            f"[red]gflops-track compare:[/red] ambiguous match: {escape(str(error))}", highlight=False, soft_wrap=True
        )
        return EXIT_USAGE
    if not pairing.matched:
        console.print(
            f"[red]no timed runs of {escape(baseline)} and {escape(candidate)} match by {pairing.basis}[/red]",
            highlight=False,
            soft_wrap=True,
        )
        for line in pairing.unmatched:
            console.print(f"[yellow]{escape(line)}[/yellow]", highlight=False, soft_wrap=True)
        return EXIT_USAGE
    console.print(f"rows matched by {pairing.basis}", highlight=False, soft_wrap=True)
    machines = {row.hardware for row in base_rows}, {row.hardware for row in cand_rows}
    if machines[0] != machines[1]:
        console.print(
            f"[yellow]hardware differs: baseline {escape(str(sorted(machines[0])))}, "
            f"candidate {escape(str(sorted(machines[1])))}[/yellow]",
            highlight=False,
            soft_wrap=True,
        )
    environments = {
        note
        for base, cand in pairing.pairs
        if base.tags.get(ENV_HASH_TAG) != cand.tags.get(ENV_HASH_TAG)
        and (
            note := environment_note(
                base.tags, cand.tags, names=("baseline", "candidate"), packages=_packages(client, base, cand)
            )
        )
    }
    for note in sorted(environments):  # said, so a "regression" from a library upgrade is read as one
        console.print(f"[yellow]{escape(note)}[/yellow]", highlight=False, soft_wrap=True)
    grouped = len({row.group for row in [*base_rows, *cand_rows]}) > 1  # labels name their group
    verdicts = []
    for base, cand in pairing.pairs:
        verdict = judge(
            Side.from_row(base, latency_samples(client, base.run_id)),
            Side.from_row(cand, latency_samples(client, cand.run_id)),
            threshold,
            min_samples,
        )
        verdict = replace(verdict, label=pair_label(base, cand, pairing.basis, grouped))
        if rerun and verdict.inconclusive:
            verdict = remeasured(client, base, cand, threshold, min_samples, rerun_time_s, verdict, console)
        verdicts.append(verdict)
    compared = len(verdicts)
    verdicts += [
        unmeasured_verdict(base, runs, row_label(base, pairing.basis, grouped)) for base, runs in pairing.unmeasured
    ]
    for verdict in verdicts:
        style = "red" if verdict.regression or verdict.broken else "yellow" if verdict.inconclusive else "green"
        console.print(f"[{style}]{escape(verdict.describe(threshold))}[/{style}]", highlight=False, soft_wrap=True)
    for line in pairing.unmatched:
        console.print(f"[yellow]not compared ({escape(line)})[/yellow]", highlight=False, soft_wrap=True)
    regressions = sum(verdict.regression for verdict in verdicts)
    inconclusive = sum(verdict.inconclusive for verdict in verdicts)
    broken = Counter(verdict.status for verdict in verdicts if verdict.broken)
    console.print(
        f"{regressions} regression(s), {inconclusive} inconclusive in {compared} compared row(s), "
        + "".join(f"{count} {status}, " for status, count in sorted(broken.items()))
        + f"threshold {threshold:.1%}, at least {min_samples} samples per side",
        highlight=False,
        soft_wrap=True,
    )
    return exit_code(verdicts)


def remeasured(
    client: MlflowClient,
    base: Row,
    cand: Row,
    threshold: float,
    min_samples: int,
    budget_s: float | None,
    stored: Verdict,
    console: Console,
) -> Verdict:
    """The pair's verdict from a re-measurement now, interleaved (``app.rerun``): both sides under the same load,
    so neither is suspect. The stored verdict's reason is said first."""
    from gflops_track.app.rerun import rerun_pair  # builds models: only when asked

    console.print(
        f"[yellow]{escape(stored.label)}: stored runs INCONCLUSIVE ({escape(stored.reason)}); re-measuring both "
        "now, interleaved[/yellow]",
        highlight=False,
        soft_wrap=True,
    )
    fresh = rerun_pair(client, base.run_id, cand.run_id, budget_s)
    verdict = judge_paired(stored.label, fresh.baseline_ms, fresh.candidate_ms, threshold, min_samples)
    rounds = len(fresh.baseline_ms)
    where = f"re-measured now, interleaved: {rounds} rounds, {fresh.seconds:.1f} s, {fresh.device}"
    return replace(verdict, noise_basis=f"{verdict.noise_basis}, {where}")


class UsageError(Exception):
    """A bad argument found before anything is read: one line, exit 2."""


def environment_notes(rows: Sequence[Row], client: MlflowClient | None = None) -> list[str]:
    """One line per Python environment among ``rows`` that differs from the first row's (their ``env_hash`` tags),
    naming the packages that changed (from the runs' ``env_packages`` tags, else from the ``environment.txt`` each
    run stores, read through ``client``): a speed difference may come from a library upgrade, not the model."""
    hashed = [row for row in rows if row.tags.get(ENV_HASH_TAG)]
    notes: dict[str, str] = {}
    for row in hashed[1:]:
        if row.tags[ENV_HASH_TAG] in notes or row.tags[ENV_HASH_TAG] == hashed[0].tags[ENV_HASH_TAG]:
            continue
        note = environment_note(
            hashed[0].tags,
            row.tags,
            names=(hashed[0].run_name, row.run_name),
            packages=_packages(client, hashed[0], row),
        )
        if note is not None:
            notes[row.tags[ENV_HASH_TAG]] = note
    return list(notes.values())


def _packages(client: MlflowClient | None, *rows: Row) -> tuple[dict[str, str] | None, dict[str, str] | None]:
    """Each run's stored package list (``environment.txt``) when its tags do not hold one and a store is at hand."""
    found = [
        None if client is None or ENV_PACKAGES_TAG in row.tags else stored_packages(client, row.run_id) for row in rows
    ]
    return found[0], found[1]


def check_combinations(args: argparse.Namespace) -> None:
    """Options that would be silently ignored together are refused: one selection at a time (a sweep's runs, run ids
    or experiments; ``--filter`` narrows a sweep or experiments), ``--log-report`` needs ``--sweep``, ``--columns``
    picks the columns of a table (not of ``--format csv``'s fixed fields, nor of ``--layers``)."""
    chosen = [flag for flag, given in (("--sweep", args.sweep), ("--run-id", args.run_id),
                                       ("--experiment", args.experiment)) if given]  # fmt: skip
    gate = args.baseline or args.candidate
    if len(chosen) > 1 or (gate and chosen):
        given = " and ".join([*chosen, *(["--baseline/--candidate"] if gate else [])])
        raise UsageError(f"{given} do not go together: choose one way to select the runs")
    if args.filter and (args.run_id or gate):
        raise UsageError("--filter is not allowed with --run-id or --baseline/--candidate: it narrows a --sweep's "
                         "or the experiments' runs")  # fmt: skip
    if args.log_report and not args.sweep:
        raise UsageError("--log-report is not allowed without --sweep: the report is attached to the sweep's run")
    if args.columns is not None and (args.format == "csv" or args.layers is not None):
        raise UsageError(f"--columns is not allowed with {'--format csv' if args.format == 'csv' else '--layers'}: "
                         "it picks the comparison table's columns (csv always has every field)")  # fmt: skip


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


def print_layers(
    client: MlflowClient,
    rows: Sequence[Row],
    count: int,
    form: str,
    console: Console,
    errors: Console,
    output: Path | None = None,
) -> int:
    """``--layers N``: each run's top N layers by time; Markdown when piped, asked for or written to ``output``; runs
    without per-layer times are named on stderr."""
    if count < 1:
        raise UsageError(f"--layers={count} is not allowed: it must be an integer >= 1")
    timed, missing = read_run_layers(client, rows)
    for line in missing:
        errors.print(f"[yellow]{escape(line)}[/yellow]")
    if not timed:
        errors.print("[red]gflops-track compare:[/red] none of the runs selected has per-layer times")
        return EXIT_USAGE
    if output is not None:
        output.write_text(layers_markdown(timed, count), encoding="utf-8")
    elif form == "markdown" or (form == "rich" and not console.is_terminal):
        sys.stdout.write(layers_markdown(timed, count))
    else:
        console.print(Text(LAYERS_LEGEND))
        for table in layer_tables(timed, count):
            console.print(table)
        change = change_line(timed)
        if change:
            console.print(Text(change))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    cap_http_retries()  # a dead server must not stall compare for minutes of retries
    console = Console()
    if not console.is_terminal:  # a pipe, a file, a CI log: lines are printed whole, never cropped at 80 columns
        console = Console(soft_wrap=True)
    errors = Console(stderr=True, highlight=False, soft_wrap=True)
    try:
        uri, warnings = command_store(args.tracking_uri, Path.cwd())  # a password moves to the environment
        check_combinations(args)
        check_outputs(args)
        columns = parse_columns(args.columns) if args.columns is not None else None
        client = open_store(uri)
        for warning in warnings:  # after the store answered: a failure stays one line
            errors.print(f"[yellow]warning: {escape(warning)}[/yellow]")
        if args.baseline or args.candidate:
            if not (args.baseline and args.candidate):
                raise ValueError("--baseline and --candidate go together")
            return run_gate(
                client, args.baseline, args.candidate, args.threshold, console, args.min_samples, args.rerun,
                args.rerun_time_s,
            )  # fmt: skip
        sweep = resolve_run_id(client, args.sweep, "--sweep") if args.sweep else None  # a prefix names it too
        runs = select_runs(client, args.experiment, sweep, args.run_id, args.filter)
        if not runs:
            errors.print(f"[red]gflops-track compare:[/red] no runs selected in {escape(redact_uri(uri))}")
            return EXIT_USAGE
        rows = build_rows(runs, args.baseline_row)
        form = "markdown" if args.output and args.format == "rich" else args.format  # a file gets Markdown
        if args.layers is not None:
            return print_layers(client, rows, args.layers, form, console, errors, args.output)
        title = f"gflops-track comparison ({(sweep and f'sweep {sweep}') or f'{len(rows)} runs'})"
        text = {"markdown": lambda rows: markdown_table(rows, columns), "csv": csv_table}.get(form)
        if text is None:
            console.print(rich_table(rows, title, columns, args.wide), crop=False)
        elif args.output:
            args.output.write_text(text(rows), encoding="utf-8")
        else:
            sys.stdout.write(text(rows))
        notes = Console(stderr=True, highlight=False, soft_wrap=True) if text is not None else console
        for note in [*environment_notes(rows, client), *not_finite_notes(rows)]:  # a CSV or Markdown table on stdout
            notes.print(f"[yellow]{escape(note)}[/yellow]")  # stays clean: said on stderr
        if args.html:
            write_report(rows, args.html, title, redact_uri(uri), layers=read_run_layers(client, rows)[0])
            console.print(f"HTML report written to {escape(str(args.html))}", highlight=False)
        if args.log_report and sweep:
            log_report(client, sweep, rows, title, redact_uri(uri))
    except (ValueError, UsageError, StoreError, MlflowException, OSError) as error:
        errors.print(f"[red]gflops-track compare:[/red] {escape(describe_error(error))}")
        return EXIT_USAGE
    return 0
