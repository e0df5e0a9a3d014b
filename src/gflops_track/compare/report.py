"""The comparison report: report.html with its charts and comparison.csv, written to a file or attached to a run;
and the ending of a sweep's run (report, metrics, description, status), shared by the sweep and
``gflops-track sync``."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

from mlflow.tracking import MlflowClient
from mlflow.utils.validation import MAX_TAG_VAL_LENGTH

from gflops_track.common import names
from gflops_track.compare.charts import comparison_charts
from gflops_track.compare.layers import RunLayers, layer_charts, read_run_layers
from gflops_track.compare.render import csv_table, html_report, markdown_table
from gflops_track.compare.rows import Row, build_rows
from gflops_track.tracking.store import NOTE_TAG, TRACKING_ERRORS, child_runs, first_line

REPORT_ERROR_TAG = "report_error"


def write_report(
    rows: Sequence[Row],
    path: Path,
    title: str,
    source: str,
    charts_dir: Path | None = None,
    layers: Sequence[RunLayers] = (),
) -> Path:
    """The HTML report with every chart the rows support, embedded (charts kept in ``charts_dir`` when given), and
    the per-layer charts of the runs in ``layers`` (time share vs FLOP share; the runs side by side)."""
    with tempfile.TemporaryDirectory() as scratch:
        folder = charts_dir or Path(scratch)
        charts = [*comparison_charts(rows, folder), *layer_charts(layers, folder)]
        path.write_text(html_report(rows, charts, title, source), encoding="utf-8")
    return path


def log_report(client: MlflowClient, run_id: str, rows: Sequence[Row], title: str, source: str) -> None:
    """Attach report.html, its charts (report/*.png) and comparison.csv to a run (the sweep's parent), so the
    comparison opens from the MLflow UI."""
    client.log_text(run_id, csv_table(rows), names.COMPARISON_ARTIFACT)
    with tempfile.TemporaryDirectory() as folder:
        charts = Path(folder) / "charts"
        charts.mkdir()
        layers, _missing = read_run_layers(client, rows)
        report = write_report(rows, Path(folder) / names.REPORT_ARTIFACT, title, source, charts, layers)
        client.log_artifact(run_id, str(report))
        client.log_artifacts(run_id, str(charts), names.REPORT_CHARTS_FOLDER)


def sweep_note(status_line: str, table: str) -> str:
    """The sweep run's note (its Overview in the MLflow UI, Markdown): the status line, then the comparison table;
    whole rows are dropped from the end to stay within MLflow's tag limit, and the note says so."""
    if not table:
        return status_line
    lines = table.rstrip("\n").split("\n")
    head, rows = lines[:2], lines[2:]
    while rows:
        shown = [*head, *rows]
        more = len(lines) - len(shown)
        tail = f"\n\n{more} more row(s) in comparison.csv." if more else ""
        note = f"{status_line}\n\n" + "\n".join(shown) + tail
        if len(note) <= MAX_TAG_VAL_LENGTH:
            return note
        rows = rows[:-1]
    return status_line + " The table is longer than an MLflow note may be: see comparison.csv."


def finish_sweep(
    client: MlflowClient, parent_run_id: str, source: str, status: str | None = None, terminate: bool = True
) -> str:
    """End a sweep's parent run the way the sweep does: the comparison report (report.html, charts, CSV), the
    ``jobs``/``failed_jobs`` metrics, a description (``mlflow.note.content``, the run's Overview in the UI), and a
    status derived from the children: FAILED when a child failed or was killed, else FINISHED (a child still RUNNING
    was spooled, which is not failure); ``status`` overrides it, e.g. KILLED for an interrupted sweep.
    ``terminate=False`` leaves the status to the run's owner (``mlflow run``, or the sweep's recorder). Returns the
    status."""
    runs = child_runs(client, parent_run_id)
    failed = [run for run in runs if run.info.status in ("FAILED", "KILLED")]
    pending = [run for run in runs if run.info.status == "RUNNING"]  # spooled (or still running): not failed
    derived = status or ("FAILED" if failed else "FINISHED")
    title = f"sweep {parent_run_id}: {len(runs)} job(s)"
    table = ""
    if runs:
        try:
            rows = build_rows(runs)
            table = markdown_table(rows)
            log_report(client, parent_run_id, rows, title, source)
        except TRACKING_ERRORS:
            raise
        except Exception as error:  # the report is a view of runs already safe in the store
            client.set_tag(parent_run_id, REPORT_ERROR_TAG, first_line(error))
    client.log_metric(parent_run_id, names.JOBS, len(runs))
    client.log_metric(parent_run_id, names.FAILED_JOBS, len(failed))
    listed = ", ".join(run.info.run_name or run.info.run_id for run in failed)
    status_line = (
        f"Sweep of {len(runs)} job(s): {len(runs) - len(failed) - len(pending)} FINISHED"
        + (f", {len(failed)} failed or killed ({listed})" if failed else "")
        + (f", {len(pending)} not complete in the store yet (gflops-track sync uploads them)" if pending else "")
        + ". The comparison is in report.html (charts under report/, numbers in comparison.csv)."
    )
    client.set_tag(parent_run_id, NOTE_TAG, sweep_note(status_line, table))
    if terminate:
        client.set_terminated(parent_run_id, derived)
    return derived
