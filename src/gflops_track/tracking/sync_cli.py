"""``gflops-track sync [FOLDER ...]``: upload spooled runs (default: ./multirun and ./outputs) to the tracking store.

Idempotent: a run already uploaded is recognised by its spool id and skipped, so running it twice creates no
duplicates. Exit code 0 when everything is uploaded, 1 when the store could not be reached (the spool stays as is).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console

from gflops_track.tracking.recorder import TRACKING_ERRORS
from gflops_track.tracking.spool import find, sync
from gflops_track.tracking.store import connect, redact_uri, resolve_tracking_uri

DEFAULT_ROOTS = ("multirun", "outputs")


def main(argv: Sequence[str] | None = None) -> int:
    cli = argparse.ArgumentParser(prog="gflops-track sync", description=__doc__)
    cli.add_argument("folders", nargs="*", type=Path, help="where to look for mlflow_spool folders")
    cli.add_argument("--tracking-uri", help="default: $MLFLOW_TRACKING_URI, else sqlite:///./mlflow.db")
    args = cli.parse_args(argv)
    console = Console()
    roots = args.folders or [Path(name) for name in DEFAULT_ROOTS]
    uri = resolve_tracking_uri(args.tracking_uri, Path.cwd())
    if not find(roots):
        console.print(f"no spooled runs under {', '.join(str(root) for root in roots)}")
        return 0
    try:
        results = sync(connect(uri), roots)
    except TRACKING_ERRORS as error:
        console.print(f"[red]could not upload to {redact_uri(uri)}: {type(error).__name__}: {error}[/red]")
        return 1
    created = sum(1 for _, _, new in results if new)
    for directory, run_id, new in results:
        console.print(f"{'uploaded' if new else 'already there'}: {directory} -> run {run_id}", highlight=False)
    console.print(f"{created} run(s) uploaded, {len(results) - created} already in {redact_uri(uri)}")
    return 0
