"""Everything the command prints, rendered with rich: progress while measuring, a summary per job, a sweep table."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from gflops_track.formatting import summary_rows
from gflops_track.result import ProfileResult
from gflops_track.timing import ProgressCallback

console = Console()
error_console = Console(stderr=True)


@contextmanager
def job_progress(title: str) -> Iterator[ProgressCallback]:
    """A live line showing the phase (counting, thop, warm-up, timing) and its iterations."""
    with Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as progress:
        task = progress.add_task(title, total=None)

        def update(phase: str, completed: int, total: int) -> None:
            progress.update(task, description=f"{title}: {phase}", completed=completed, total=total or None)

        yield update


def print_summary(result: ProfileResult, run_name: str, run_id: str | None) -> None:
    table = Table(title=f"{run_name}" + (f"  (MLflow run {run_id})" if run_id else ""), show_header=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    for label, value in summary_rows(result):
        table.add_row(label, value)
    console.print(table)
    if result.notes:
        console.print("[yellow]notes:[/yellow]\n" + "\n".join(result.notes), highlight=False)


def print_config_errors(errors: Sequence[str]) -> None:
    """Config problems: one line each, naming the key, the value and what is allowed."""
    for error in errors:
        error_console.print(f"[red]gflops-track: invalid config:[/red] {error}", highlight=False, soft_wrap=True)
    error_console.print("No MLflow run was created.", highlight=False)


def print_warning(message: str) -> None:
    error_console.print(f"[yellow]warning:[/yellow] {message}", highlight=False, soft_wrap=True)


def print_job_failure(run_name: str, run_id: str | None, error: str) -> None:
    where = f" (MLflow run {run_id} marked FAILED)" if run_id else ""
    error_console.print(f"[red]job {run_name} failed{where}:[/red] {error}", highlight=False, soft_wrap=True)
