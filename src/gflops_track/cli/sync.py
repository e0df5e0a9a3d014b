"""``gflops-track sync [FOLDER ...]``: upload spooled runs (default: ./multirun and ./outputs) to the tracking store.

Safe to repeat and to run several at once: a run already uploaded to this store is recognised by its spool id and
skipped, so no duplicates. An unreadable spool file is named and skipped; the rest is uploaded. A sweep whose runs
were spooled is then finished the way the sweep would have finished it: status from its children (a child spooled
and uploaded FINISHED counts as FINISHED), the comparison report, the jobs/failed_jobs metrics and a description.

Exit code 0 when everything is uploaded; 1 when something could not be (the store failed during the upload, or a
spool directory is unreadable: each is named, and the spool stays as is for the next try); 2 when the store cannot
be used at all (a server or database that does not answer or refuses the credentials: one line, nothing uploaded).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from filelock import Timeout
from rich.console import Console
from rich.markup import escape

from gflops_track.tracking.credentials import command_store
from gflops_track.tracking.spool import DERIVE, IF_ENDED, SyncReport, find, sync, sync_lock
from gflops_track.tracking.store import (
    TRACKING_ERRORS,
    StoreError,
    cap_http_retries,
    connect,
    first_line,
    redact_uri,
    unreachable,
)

DEFAULT_ROOTS = ("multirun", "outputs")
EXIT_INCOMPLETE = 1
EXIT_UNUSABLE_STORE = 2
PROJECT_TAG = "mlflow.project.entryPoint"  # the run `mlflow run` made: `mlflow run` ends it, not us


def finish_sweeps(report: SyncReport, uri: str, console: Console) -> list[str]:
    """End every sweep whose spooled runs were uploaded, as the sweep would have; the problems, one line each."""
    from gflops_track.compare.report import finish_sweep  # the report code the sweep uses

    client = connect(uri)
    problems: list[str] = []
    for run_id, action in report.sweeps.items():
        try:
            run = client.get_run(run_id)
            if action == "RUNNING" or (action == IF_ENDED and run.info.status == "RUNNING"):
                continue  # the sweep never ended (still running, or killed outright: see gflops-track reap)
            keep = action if action not in (DERIVE, IF_ENDED) else None
            owned = PROJECT_TAG not in run.data.tags
            status = finish_sweep(client, run_id, redact_uri(uri), keep, terminate=owned)
        except TRACKING_ERRORS as error:
            problems.append(f"sweep run {run_id} not finished: {type(error).__name__}: {first_line(error)}")
            continue
        console.print(f"sweep run {run_id}: {status}, report.html logged", highlight=False)
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    cli = argparse.ArgumentParser(
        prog="gflops-track sync", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    cli.add_argument(
        "folders",
        nargs="*",
        type=Path,
        help=f"where to look for mlflow_spool folders (default: {' '.join(DEFAULT_ROOTS)})",
    )
    cli.add_argument("--tracking-uri", help="default: $MLFLOW_TRACKING_URI, else sqlite:///./mlflow.db")
    args = cli.parse_args(argv)
    cap_http_retries()
    console = Console(soft_wrap=True)
    errors = Console(stderr=True, soft_wrap=True, highlight=False)
    roots = args.folders or [Path(name) for name in DEFAULT_ROOTS]
    try:
        uri, warnings = command_store(args.tracking_uri, Path.cwd())  # a password moves to the environment
    except StoreError as error:
        errors.print(f"[red]gflops-track sync:[/red] {escape(str(error))}")
        return EXIT_UNUSABLE_STORE
    if not find(roots):
        console.print(f"no spooled runs under {', '.join(str(root) for root in roots)}", highlight=False)
        return 0
    problem = unreachable(uri)  # one probe, no retries: a dead store is one line at once, not one per spool
    if problem is not None:
        errors.print(f"[red]gflops-track sync:[/red] {escape(problem)}; nothing uploaded, the spool is kept")
        return EXIT_UNUSABLE_STORE
    for warning in warnings:  # after the store answered: a failure stays one line
        errors.print(f"[yellow]warning: {escape(warning)}[/yellow]")
    try:
        with sync_lock(uri):
            report = sync(connect(uri), roots, uri, TRACKING_ERRORS)
            for directory, run_id, new in report.uploaded:
                console.print(f"{'uploaded' if new else 'already there'}: {directory} -> run {run_id}", highlight=False)
            for link in report.links:
                errors.print(f"[yellow]not uploaded, a symbolic link (never followed): {escape(str(link))}[/yellow]")
            for original, run_id in report.recreated.items():
                console.print(
                    f"recreated: run {original} is not in the store any more -> run {run_id}", highlight=False
                )
            problems = [*report.broken, *finish_sweeps(report, uri, console)]
    except Timeout as error:
        errors.print(
            f"[red]another gflops-track sync to {escape(redact_uri(uri))} holds {escape(str(error.lock_file))}[/red]"
        )
        return EXIT_INCOMPLETE
    except TRACKING_ERRORS as error:
        errors.print(f"[red]could not upload to {escape(redact_uri(uri))}: {escape(first_line(error))}[/red]")
        return EXIT_INCOMPLETE
    created = sum(1 for _, _, new in report.uploaded if new)
    console.print(
        f"{created} run(s) uploaded, {len(report.uploaded) - created} already in {redact_uri(uri)}", highlight=False
    )
    for problem in problems:
        errors.print(f"[red]skipped: {escape(problem)}[/red]")
    if problems:
        errors.print(
            f"[red]{len(problems)} spooled item(s) not uploaded; fix or remove them, then run gflops-track sync "
            "again (what was uploaded is not uploaded twice)[/red]"
        )
        return EXIT_INCOMPLETE
    return 0
