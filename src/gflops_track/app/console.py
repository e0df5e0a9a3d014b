"""Everything the command prints, rendered with rich: progress while measuring, a summary per job, a sweep table."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from rich import box
from rich.console import Console, ConsoleOptions, RenderableType, RenderResult
from rich.measure import Measurement
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from gflops_track.render.summary import summary_rows
from gflops_track.results.profile import ProfileResult


def _console(stderr: bool = False) -> Console:
    """A console for stdout (or stderr): a terminal as it is; a pipe, a file or a CI log gets lines printed whole
    (rich would otherwise crop every line at 80 columns there)."""
    probe = Console(stderr=stderr)
    return probe if probe.is_terminal else Console(stderr=stderr, soft_wrap=True)


console = _console()
error_console = _console(stderr=True)


class Whole:
    """A renderable laid out at its natural width when the console is not a terminal, so nothing in it is wrapped
    or folded in a log; in a terminal it fits the terminal as rich lays it out."""

    def __init__(self, renderable: RenderableType) -> None:
        self.renderable = renderable

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        if not console.is_terminal:
            width = Measurement.get(console, options.update_width(10_000), self.renderable).maximum
            options = options.update_width(max(width, options.max_width))
        yield from console.render(self.renderable, options)


class JobProgress:
    """The live line of one job (phase, iterations, elapsed time), drawn by the caller's own thread when a phase
    reports, never by a refresh thread; ``quiet()`` holds every drawing while the forward is timed."""

    DRAW_EVERY_S = 0.1

    def __init__(self, progress: Progress, title: str) -> None:
        self.progress, self.title = progress, title
        self.task = progress.add_task(title, total=None)
        self.drawn_at = 0.0
        self.quiet_now = False

    def __call__(self, phase: str, completed: int, total: int) -> None:
        now = time.monotonic()
        draw = not self.quiet_now and now - self.drawn_at >= self.DRAW_EVERY_S
        if draw:
            self.drawn_at = now
        description = f"{self.title}: {phase}"
        if not total:  # rich's update() leaves the total as it was when given None: clear it here
            self.progress.tasks[self.task].total = None
        self.progress.update(self.task, description=description, completed=completed, total=total or None, refresh=draw)

    @contextmanager
    def quiet(self) -> Iterator[None]:
        """Nothing drawn inside this block (the line says it is timing); the updates it gets are kept for later."""
        self.progress.update(self.task, description=f"{self.title}: timing", refresh=True)
        self.quiet_now = True
        try:
            yield
        finally:
            self.quiet_now = False


@contextmanager
def job_progress(title: str, where: Console | None = None) -> Iterator[JobProgress]:
    """A live line showing the phase (counting, thop, warm-up, timing) and its iterations: ``done/total``, or
    ``done/?`` for an open-ended phase (total 0: warm-up runs until the latency settles), never the total of the
    phase before it. No refresh thread: the job's own thread draws it (see ``JobProgress``)."""
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}", style="bold", markup=False),  # run names are text, never markup
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=where or console,
        transient=True,
        auto_refresh=False,
    ) as progress:
        yield JobProgress(progress, title)


def print_summary(result: ProfileResult, run_name: str, run_id: str | None, where: Console | None = None) -> None:
    """The run's summary table, then its notes. Every string from the run is shown as text, never as rich markup.
    When space is short, labels and values wrap at spaces, so every number stays whole (never cut or folded). Not in
    a terminal (a pipe, a file, a CI log) it is a Markdown table, as every other table is there."""
    where = where or console
    title = Text(run_name + (f"  (MLflow run {run_id})" if run_id else ""))
    markdown = not where.is_terminal
    table = Table(
        title=title,
        show_header=markdown,  # a Markdown table needs its header row
        box=box.MARKDOWN if markdown else box.HEAVY_HEAD,
        show_edge=True,
        title_justify="left" if markdown else "center",
    )
    table.add_column("quantity" if markdown else "", style="bold", overflow="fold")
    table.add_column("value" if markdown else "", justify="right", overflow="fold")
    for label, value in summary_rows(result):
        table.add_row(Text(label), Text(value.replace("|", "\\|") if markdown else value))
    where.print(Whole(table))
    if result.notes:
        where.print(Text("notes:", style="yellow"), Text("\n".join(result.notes)), sep="\n", highlight=False)


def print_config_errors(errors: Sequence[str], run_created: bool = False) -> None:
    """Config problems: one line each, naming the key, the value and what is allowed."""
    for error in errors:
        error_console.print(Text("gflops-track: invalid config: ", style="red") + Text(error), soft_wrap=True)
    if not run_created:
        error_console.print("No MLflow run was created.", highlight=False)


def print_warning(message: str) -> None:
    error_console.print(Text("warning: ", style="yellow") + Text(message), soft_wrap=True)


def print_job_failure(run_name: str, run_id: str | None, error: str) -> None:
    line = job_failure_line(run_name, run_id, error)
    head = line[: len(line) - len(error)]
    error_console.print(Text(head, style="red") + Text(error), soft_wrap=True)


def job_failure_line(run_name: str, run_id: str | None, error: str) -> str:
    where = f" (MLflow run {run_id} marked FAILED)" if run_id else ""
    return f"job {run_name} failed{where}: {error}"


def log_job_failure(run_name: str, run_id: str | None, error: str) -> None:
    """The failure line in Hydra's job log (``<output dir>/<job name>.log``) too: its file handlers get it, the
    console (which has it already) does not get it twice."""
    record = logging.LogRecord(
        __name__, logging.ERROR, __file__, 0, job_failure_line(run_name, run_id, error), None, None
    )
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)
