"""Runs selected from MLflow, as comparison rows: one per run, grouped by hardware and variant."""

from __future__ import annotations

import json
import math
import re
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode
from mlflow.tracking import MlflowClient

from gflops_track.common import names
from gflops_track.common.listing import named
from gflops_track.common.names import ERROR_TAG, PARENT_TAG
from gflops_track.machine.environment import ENVIRONMENT_ARTIFACT, parse_environment_txt
from gflops_track.tracking.store import child_runs, search_all_runs


@dataclass(frozen=True)
class Row:
    """One run's headline numbers (units in the names); ``None`` where the run did not log the metric."""

    run_id: str
    run_name: str
    status: str
    hardware: str
    batch_size: int | None
    params: float | None
    gmacs: float | None
    gflops: float | None
    median_ms: float | None
    ci_low_ms: float | None
    ci_high_ms: float | None
    throughput_samples_per_s: float | None
    achieved_gflop_per_s: float | None
    utilization_vs_measured_peak: float | None
    utilization_vs_spec_peak: float | None
    arithmetic_intensity: float | None
    measured_peak_gflop_per_s: float | None
    measured_bandwidth_gb_per_s: float | None
    spec_peak_gflop_per_s: float | None
    spec_bandwidth_gb_per_s: float | None
    error: str = ""
    mode: str = "inference"  # or "train": the step_* fields and mfu are the training step's
    step_gflops: float | None = None
    step_median_ms: float | None = None
    step_achieved_gflop_per_s: float | None = None
    mfu: float | None = None
    relative_speed: float | None = None  # baseline median / this median: > 1 is faster than the baseline
    timed_iterations: int | None = None
    start_time: int | None = None  # ms since the epoch (MLflow's run start), tells same-named runs apart
    speed_basis: str = "latency"  # what relative_speed compares: "latency" (same batch sizes) or "throughput"
    tags: dict[str, str] = field(default_factory=dict, compare=False)  # the run's tags (the gate's identity, load)
    config: dict[str, str] = field(default_factory=dict, compare=False)  # the run's params (the gate's fallback)
    not_finite: tuple[str, ...] = ()  # "metric=nan" for each metric of the run that is NaN or inf: said, never plotted
    other_load: float | None = None  # CPU-seconds per second other processes used while it was timed
    spare_cpus: float | None = None  # CPUs available to the run less the threads it timed with
    group: str = ""  # what the rows of its group share: the model and its input (see ``group_of``); "" when unknown
    label: str = ""  # what tells the row apart inside its group (see ``label_rows``), e.g. "norm_fn=batch"

    @property
    def key(self) -> tuple[str, str]:
        return (self.hardware, self.run_name)


def stored_value(value: float) -> float:
    """A metric as logged: MLflow's SQL stores keep an inf as the largest float, which means inf."""
    return math.copysign(math.inf, value) if abs(value) == sys.float_info.max else value


def row_from_run(run: Run) -> Row:
    metrics = {key: stored_value(value) for key, value in run.data.metrics.items()}
    params, tags = run.data.params, run.data.tags
    batch = params.get("batch.size")
    return Row(
        run_id=run.info.run_id,
        run_name=run.info.run_name or run.info.run_id,
        status=run.info.status,
        hardware=tags.get(names.HARDWARE_TAG, "?"),
        batch_size=int(batch) if batch and batch.isdigit() else None,
        params=names.metric_value(metrics, names.PARAMS),
        gmacs=names.metric_value(metrics, names.GMACS),
        gflops=names.metric_value(metrics, names.GFLOPS),
        median_ms=names.metric_value(metrics, names.LATENCY_MEDIAN_MS),
        ci_low_ms=names.metric_value(metrics, names.LATENCY_CI_LOW_MS),
        ci_high_ms=names.metric_value(metrics, names.LATENCY_CI_HIGH_MS),
        throughput_samples_per_s=names.metric_value(metrics, names.THROUGHPUT),
        achieved_gflop_per_s=names.metric_value(metrics, names.ACHIEVED),
        utilization_vs_measured_peak=names.metric_value(metrics, names.UTILIZATION_MEASURED),
        utilization_vs_spec_peak=names.metric_value(metrics, names.UTILIZATION_SPEC),
        arithmetic_intensity=names.metric_value(metrics, names.INTENSITY),
        measured_peak_gflop_per_s=names.metric_value(metrics, names.MEASURED_PEAK),
        measured_bandwidth_gb_per_s=names.metric_value(metrics, names.MEASURED_BANDWIDTH),
        spec_peak_gflop_per_s=names.metric_value(metrics, names.SPEC_PEAK),
        spec_bandwidth_gb_per_s=names.metric_value(metrics, names.SPEC_BANDWIDTH),
        error=tags.get(ERROR_TAG, ""),
        mode=tags.get(names.MODE_TAG, "inference"),
        step_gflops=names.metric_value(metrics, names.STEP_GFLOPS),
        step_median_ms=names.metric_value(metrics, names.STEP_LATENCY_MEDIAN_MS),
        step_achieved_gflop_per_s=names.metric_value(metrics, names.STEP_ACHIEVED),
        mfu=names.metric_value(metrics, names.MFU),
        timed_iterations=None if (timed := names.metric_value(metrics, names.TIMED_ITERATIONS)) is None else int(timed),
        start_time=run.info.start_time,
        other_load=metrics.get(OTHER_LOAD_METRIC),
        spare_cpus=(
            metrics[CPUS_METRIC] - metrics[THREADS_METRIC]
            if CPUS_METRIC in metrics and THREADS_METRIC in metrics
            else None
        ),
        tags=dict(tags),
        config=dict(params),
        not_finite=tuple(f"{key}={value}" for key, value in sorted(metrics.items()) if not math.isfinite(value)),
    )


def finite_only(row: Row) -> Row:
    """The row with every number that is NaN or inf set to None: what a chart may draw (matplotlib refuses such
    axis limits, and a NaN bar means nothing)."""
    bad = {
        item.name: None
        for item in fields(row)
        if isinstance(value := getattr(row, item.name), float) and not math.isfinite(value)
    }
    return replace(row, **bad) if bad else row


def not_finite_notes(rows: Sequence[Row]) -> list[str]:
    """One line per run with a metric that is NaN or inf, naming the run and the metrics: reported, never plotted."""
    return [
        f"run {row.run_name} ({row.run_id[:8]}): {', '.join(row.not_finite)} is not a finite number, left out of "
        "the plots"
        for row in rows
        if row.not_finite
    ]


OTHER_LOAD_METRIC = "timing/cond_other_processes_cpu_per_wall"  # the timing conditions' load, as logged
CPUS_METRIC = "timing/cond_cpus_available"
THREADS_METRIC = "timing/cond_threads"

GROUP_PARAMS = ("input.", "batch.height", "batch.width", "batch.seq_len", "model.name")  # what the input is
GROUP_OVERRIDES = ("model=", "model._target_=", "model.name=", *(f"{key}=" for key in GROUP_PARAMS[1:4]), "input.")


def group_of(row: Row) -> tuple[str, ...]:
    """What a row shares with the rows it may be ranked against: hardware, mode, the model (its ``_target_`` and,
    for a model by name, the name) and its input (``input.*``, ``batch.height/width/seq_len``). A batch size is not
    part of it: a batch sweep is compared by throughput inside one group."""
    model = row.tags.get(names.MODEL_TARGET_TAG) or row.config.get("model._target_", "")
    inputs = tuple(f"{key}={value}" for key, value in sorted(row.config.items()) if key.startswith(GROUP_PARAMS))
    return (row.hardware, row.mode, model, *inputs)


def _tokens(row: Row) -> list[str]:
    """The row's configuration as override tokens: its ``overrides`` tag, else its ``variant`` tag (older runs)."""
    text = row.tags.get(names.OVERRIDES_TAG) or row.tags.get(names.VARIANT_TAG) or ""
    return [token for token in text.split() if not token.lstrip("+~").startswith(("tracking.", "hydra."))]


def _group_title(key: tuple[str, ...], row: Row, keys: Sequence[tuple[str, ...]]) -> str:
    """A group's name: its model (class name, else target) and the input settings that tell it from the other
    groups on its hardware."""
    model = row.tags.get(names.MODEL_TAG) or key[2].rsplit(".", 1)[-1]
    if not model:
        return ""
    others = [other for other in keys if other[0] == key[0] and other != key]
    differing = [part for part in key[3:] if any(part not in other[3:] for other in others)]
    mode = [] if key[1] == "inference" else [f"mode={key[1]}"]
    return " ".join([model, *mode, *differing])


def label_rows(rows: Sequence[Row]) -> list[Row]:
    """Each row with its group's title and its label: the override tokens that differ inside its group (a sweep's
    ``norm_fn=batch``), or, alone in its group, its overrides less those naming the model and input and those every
    selected run shares; "defaults" when nothing is left; the ``variant`` tag or run name when the run has no
    overrides stored."""
    groups: dict[tuple[str, ...], list[Row]] = {}
    for row in rows:
        groups.setdefault(group_of(row), []).append(row)
    everywhere = set.intersection(*(set(_tokens(row)) for row in rows)) if len(rows) > 1 else set()
    labelled: dict[str, Row] = {}
    for key, members in groups.items():
        title = _group_title(key, members[0], list(groups))
        shared = set.intersection(*(set(_tokens(row)) for row in members)) if len(members) > 1 else set()
        for row in members:
            tokens = _tokens(row)
            if not tokens:
                label = row.tags.get(names.VARIANT_TAG) or row.run_name
            else:
                own = [t for t in tokens if t not in shared]
                if len(members) == 1 or not own:
                    own = [t for t in own if not t.lstrip("+~").startswith(GROUP_OVERRIDES) and t not in everywhere]
                swept = (row.tags.get(names.VARIANT_TAG) or "").split()  # the sweep's order, where it has one
                own.sort(key=lambda token: swept.index(token) if token in swept else len(swept))
                label = " ".join(own) or "defaults"
            labelled[row.run_id] = replace(row, group=title, label=label)
    return [labelled[row.run_id] for row in rows]


def _sweep_order(row: Row) -> tuple[float, str]:
    """Within a group, the order the runs were started in: a sweep's jobs in the order of its swept values."""
    return (row.start_time if row.start_time is not None else math.inf, row.run_name)


def _relative(members: list[Row], reference: Row) -> list[Row]:
    """Each row's speed against ``reference`` (same group). Same batch sizes: baseline median / median (latency
    speed-up); batch sizes differ: throughput / baseline throughput, since a batch of 4 takes longer but may do as
    much work."""
    assert reference.median_ms is not None
    timed = [row for row in members if row.median_ms and math.isfinite(row.median_ms)]
    if len({row.batch_size for row in timed}) > 1 and reference.throughput_samples_per_s:
        base = reference.throughput_samples_per_s
        return [
            replace(row, speed_basis="throughput", relative_speed=row.throughput_samples_per_s / base)
            if row.throughput_samples_per_s is not None
            else row
            for row in members
        ]
    median = reference.median_ms
    return [replace(row, relative_speed=median / row.median_ms if row.median_ms else None) for row in members]


def _is_timed(row: Row) -> bool:
    """Whether the row can be a speed reference: a median latency, and a finite one (a NaN is no reference)."""
    return bool(row.median_ms and math.isfinite(row.median_ms))


def _baseline_row(rows: Sequence[Row], baseline: str) -> Row:
    """The timed row ``baseline`` names: its run id, a unique prefix of it (the 8 characters the tables print) or its
    run name."""
    timed = [row for row in rows if _is_timed(row)]
    exact = [row for row in timed if baseline in (row.run_id, row.run_name)]
    matches = exact or [row for row in timed if RUN_ID_PREFIX.fullmatch(baseline) and row.run_id.startswith(baseline)]
    if len(matches) > 1 and not exact:
        ids = ", ".join(row.run_id for row in matches)
        raise ValueError(f"--baseline-row={baseline!r} is ambiguous: {len(matches)} runs start with it ({ids})")
    if not matches:
        raise ValueError(f"--baseline-row={baseline!r} names no timed run among the {len(rows)} selected")
    return matches[0]


def build_rows(runs: Sequence[Run], baseline: str | None = None) -> list[Row]:
    """Rows grouped by hardware, then by what they share (model and input: ``group_of``), each group in the order
    its runs were started (a sweep's order: the first value swept first), each row labelled by what differs inside
    its group and with its speed relative to its group's baseline: the row ``baseline`` names (a run id or run name)
    in its group, else the group's first timed row. Rows of different groups are never ranked against each other."""
    rows = label_rows([row_from_run(run) for run in runs])
    rows.sort(key=lambda row: (row.hardware, row.group, group_of(row), *_sweep_order(row)))
    chosen = _baseline_row(rows, baseline) if baseline is not None else None
    result: list[Row] = []
    for key in dict.fromkeys(group_of(row) for row in rows):
        members = [row for row in rows if group_of(row) == key]
        timed = [row for row in members if _is_timed(row)]
        reference = chosen if chosen is not None and chosen in members else (timed[0] if timed else None)
        result += _relative(members, reference) if reference is not None else members
    return result


def select_runs(
    client: MlflowClient,
    experiments: Sequence[str] = (),
    sweep: str | None = None,
    run_ids: Sequence[str] = (),
    filter_string: str = "",
) -> list[Run]:
    """Runs by sweep (the parent's children), by run ids, or by experiment names (default: all experiments); a sweep's
    or the experiments' runs narrowed by an optional MLflow filter string. Sweep parents themselves are left out of
    experiment-wide selections."""
    if sweep:
        return child_runs(client, resolve_run_id(client, sweep, "--sweep"), filter_string)
    if run_ids:
        return [client.get_run(resolve_run_id(client, run_id, "--run-id")) for run_id in run_ids]
    if experiments:
        found = [client.get_experiment_by_name(name) for name in experiments]
        missing = [name for name, experiment in zip(experiments, found, strict=True) if experiment is None]
        if missing:
            raise ValueError(f"--experiment={missing[0]!r} does not exist in this tracking store")
        ids = [experiment.experiment_id for experiment in found if experiment is not None]
    else:
        ids = [experiment.experiment_id for experiment in client.search_experiments()]
    runs = search_all_runs(client, ids, filter_string=filter_string) if ids else []
    parents = {run.data.tags.get(PARENT_TAG) for run in runs}
    return [run for run in runs if run.info.run_id not in parents]


RUN_ID_PREFIX = re.compile(r"[0-9a-f]{1,31}")  # MLflow's run ids are 32 lowercase hex digits


def resolve_run_id(client: MlflowClient, text: str, flag: str) -> str:
    """The run id ``text`` names: a whole id, or a unique prefix of one (the 8 characters the tables print). An
    unknown id raises MLflow's own error; a prefix of several ids raises ValueError naming them."""
    try:
        return client.get_run(text).info.run_id
    except MlflowException as error:
        if error.error_code != ErrorCode.Name(RESOURCE_DOES_NOT_EXIST) or not RUN_ID_PREFIX.fullmatch(text):
            raise
        experiments = [experiment.experiment_id for experiment in client.search_experiments()]
        found = search_all_runs(client, experiments, f"attributes.run_id LIKE '{text}%'") if experiments else []
        if len(found) == 1:
            return found[0].info.run_id
        if not found:
            raise
        ordered = sorted(found, key=lambda run: run.info.run_id)
        runs = named([f"{run.info.run_name} ({run.info.run_id})" for run in ordered])  # one console line, never cut
        raise ValueError(
            f"{flag}={text!r} is ambiguous: {len(found)} runs start with it: {runs}; give more of the id"
        ) from None


def expand(client: MlflowClient, run_or_sweep: str, flag: str = "--baseline") -> list[Run]:
    """A sweep id means its children; a plain run id means that run (either may be a unique prefix)."""
    run_id = resolve_run_id(client, run_or_sweep, flag)
    children = child_runs(client, run_id)
    return children or [client.get_run(run_id)]


def latency_samples(client: MlflowClient, run_id: str) -> list[float] | None:
    """The raw per-iteration latencies (ms) the run stored, or None when it has none."""
    with tempfile.TemporaryDirectory() as folder:
        try:
            path = client.download_artifacts(run_id, names.SAMPLES_ARTIFACT, folder)
        except Exception:
            return None
        return json.loads(Path(path).read_text()).get("latency_ms")


def stored_packages(client: MlflowClient, run_id: str) -> dict[str, str] | None:
    """The packages the run's ``environment.txt`` artifact lists (``{name: version}``), or None when it has none:
    what ``compare`` names when two runs' ``env_hash`` tags differ."""
    with tempfile.TemporaryDirectory() as folder:
        try:
            path = client.download_artifacts(run_id, ENVIRONMENT_ARTIFACT, folder)
        except Exception:
            return None
        return parse_environment_txt(Path(path).read_text(encoding="utf-8"))
