"""``gflops-track reap``: the command over ``gflops_track.tracking.reap`` (which runs are dead, and why)."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from mlflow.exceptions import MlflowException
from rich.console import Console
from rich.markup import escape

from gflops_track.common.redact import install_console_masking
from gflops_track.tracking import reap as reaping
from gflops_track.tracking.credentials import command_store
from gflops_track.tracking.reap import DEFAULT_STALE_AFTER_S, HEARTBEAT_EVERY_S, find_dead, parse_duration, reap
from gflops_track.tracking.store import StoreError, cap_http_retries, first_line, open_store, redact_uri


def main(argv: Sequence[str] | None = None) -> int:
    cli = argparse.ArgumentParser(
        prog="gflops-track reap", description=reaping.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    cli.add_argument("--tracking-uri", help="default: $MLFLOW_TRACKING_URI, else sqlite:///./mlflow.db")
    cli.add_argument("--experiment", action="append", default=[], help="experiment name (repeatable; default: all)")
    cli.add_argument(
        "--stale-after",
        default=f"{DEFAULT_STALE_AFTER_S:.0f}s",
        help=f"heartbeat age, e.g. 10m (default: %(default)s; more than {HEARTBEAT_EVERY_S:.0f}s)",
    )
    cli.add_argument("--yes", action="store_true", help="mark the runs KILLED (default: only list them)")
    args = cli.parse_args(argv)
    cap_http_retries()
    console = Console(soft_wrap=True, highlight=False)
    errors = Console(stderr=True, soft_wrap=True, highlight=False)
    try:
        stale_after_s = parse_duration(args.stale_after)
        uri, warnings = command_store(args.tracking_uri, Path.cwd())  # a password moves to the environment
        client = open_store(uri)
        for warning in warnings:  # after the store answered: a failure stays one line
            errors.print(f"[yellow]warning: {escape(warning)}[/yellow]")
        if args.experiment:
            found = [client.get_experiment_by_name(name) for name in args.experiment]
            missing = [name for name, experiment in zip(args.experiment, found, strict=True) if experiment is None]
            if missing:
                raise StoreError(f"--experiment={missing[0]!r} does not exist in {redact_uri(uri)}")
            ids = [experiment.experiment_id for experiment in found if experiment is not None]
        else:
            ids = [experiment.experiment_id for experiment in client.search_experiments()]
        dead = find_dead(client, ids, time.time(), stale_after_s)
        for run in dead:
            verb = "KILLED" if args.yes else "would mark KILLED"
            console.print(f"{verb}: run {run.run_id} ({escape(run.run_name)}): {escape(run.reason)}")
        if args.yes:
            reap(client, dead)
    except (ValueError, StoreError, MlflowException, OSError) as error:
        errors.print(f"[red]gflops-track reap:[/red] {escape(first_line(error))}")
        return 2
    if not dead:
        console.print(f"no run left RUNNING by a process that is gone in {redact_uri(uri)}")
    elif not args.yes:
        console.print(f"{len(dead)} run(s) to reap: run again with --yes to mark them KILLED")
    return 0


if __name__ == "__main__":
    install_console_masking()
    sys.exit(main())
