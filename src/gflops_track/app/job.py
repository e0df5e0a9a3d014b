"""One job: config values -> model and inputs -> measurements -> one MLflow run -> console.

Plain functions on plain values (an ``AppConfig``), no DictConfig: the Hydra entry point only composes and calls.
A failure after the run exists marks it FAILED with the reason as the ``error`` tag and returns (the sweep goes
on); whatever was measured before the failure is already logged.
"""

from __future__ import annotations

import contextlib
import getpass
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

import torch
import yaml
from torch import nn

from gflops_track.app import console
from gflops_track.app.building import build_inputs, build_job_model, model_factory, model_label, model_tag
from gflops_track.app.channels import (
    JobOutcome,
    OutcomeLedger,
    published_parent_run,
    published_swept_keys,
    run_key,
)
from gflops_track.app.schema import DEFAULT_RUN_NAME, AppConfig
from gflops_track.app.signals import JobTimeout, job_deadline
from gflops_track.common import names
from gflops_track.common.names import FAILED, FINISHED, KILLED
from gflops_track.compare.gate import override_identity
from gflops_track.counting.counting_forward import on_meta
from gflops_track.models.construct import construct
from gflops_track.pipeline.placement import resolve_device, where_it_runs
from gflops_track.pipeline.steps import (
    WEIGHTLESS,
    count,
    layer_table,
    measure,
    measure_layers,
    peak_report,
    timing_skipped_note,
)
from gflops_track.pipeline.training_step import (
    count_training_step,
    measure_step_layers,
    measure_training_step,
    step_layer_table,
    training_input_errors,
)
from gflops_track.results.fingerprint import Fingerprint
from gflops_track.results.layers import LayerTiming
from gflops_track.results.profile import ProfileResult
from gflops_track.results.training import TrainingStep
from gflops_track.tracking.reap import liveness_tags
from gflops_track.tracking.recorder import Recorder, RunTarget
from gflops_track.tracking.records import (
    RunRecord,
    cost_record,
    layers_record,
    peak_record,
    start_record,
    step_layers_record,
    summary_record,
    timing_record,
    training_count_record,
)
from gflops_track.tracking.spool import SPOOL_FOLDER
from gflops_track.tracking.store import launched_by_mlflow, redact_uri, resolve_tracking_uri

PassTiming = TypeVar("PassTiming", bound=LayerTiming)  # what a per-layer pass returns (the step's is one too)


def job_device(config: AppConfig) -> torch.device:
    """device.type resolved ('auto' -> cuda when available); device.index applies whenever that is CUDA."""
    device = resolve_device(config.device.type)
    if device.type == "cuda" and config.device.index is not None:
        return resolve_device(f"cuda:{config.device.index}")
    return device


def device_label(device: torch.device) -> str:
    """The device as a run name spells it: ``cpu``, ``cuda`` for the first GPU however it was asked for
    (``device=auto`` resolves to ``cuda``, ``device=cuda`` to ``cuda:0``: one GPU, one name, so runs pair by name),
    ``cuda:1`` for another: runs on two GPUs of one machine never share a name."""
    return "cuda" if device.type == "cuda" and not device.index else str(device)


def run_name_for(config: AppConfig, device: torch.device, variant: Sequence[str] = ()) -> str:
    """tracking.run_name filled in; ``{norm_fn}`` is the model's own norm_fn argument (empty segment dropped for
    models without one). A train-mode job whose template has no ``{mode}`` gets ``-train`` appended, so the two
    modes of one variant never share a name. In a sweep, the default name starts with the ``variant`` (the job's
    overrides that differ inside the sweep), so the runs table tells the jobs apart even where it cuts names:
    ``group-residual_block-b2-cpu-fp32``, ``b8-residual_block-group-cpu-fp32``, ``planes64-residual_block-...``."""
    template = config.tracking.run_name
    name = template.format(
        model=model_label(config),
        norm_fn=config.model.get("norm_fn", ""),
        batch_size=config.batch.size,
        device=device_label(device),
        dtype=config.precision.dtype,
        mode=config.mode,
    )
    if config.mode == "train" and "{mode}" not in template:
        name += "-train"
    segments = [segment for segment in re.sub(r"-{2,}", "-", name).strip("-").split("-") if segment]
    if variant and template == DEFAULT_RUN_NAME:
        leading = [variant_segment(override) for override in variant]
        segments = leading + [segment for segment in segments if segment not in leading]
    return "-".join(segments)


def variant_segment(override: str) -> str:
    """How one swept override leads a run name: the value as the default name spells it (``norm_fn=group`` ->
    ``group``, ``batch.size=8`` -> ``b8``, ``mode=train`` -> ``train``), else the key's last part and the value
    (``model.planes=64`` -> ``planes64``); a quoted value without its quotes."""
    key, _, value = override.partition("=")
    key = key.lstrip("+~")
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":  # device="cpu": the value is cpu
        value = value[1:-1]
    if key == "batch.size":
        return f"b{value}"
    if key in ("norm_fn", "model.norm_fn", "mode", "device", "precision") or not re.fullmatch(r"[\d.e+-]+", value):
        return value.replace("-", "_").replace(" ", "")
    return f"{key.rsplit('.', 1)[-1]}{value}"


def profile_job(
    config: AppConfig,
    device: torch.device,
    title: str,
    facts: Fingerprint,
    settings: dict[str, str],
    recorder: Recorder | None,
    own_plot: bool = True,
) -> ProfileResult:
    """Build, then count -> log -> time -> log -> peaks -> log: whatever a later step fails on, what the steps
    before it measured is already recorded (a record a quick step follows is held and written with the next one, or
    by ``finish`` when the job fails: one MLflow batch instead of two). ``own_plot``: the run gets its own
    roofline.png (a single run; a sweep's jobs share the one in the sweep's report). While the forward is timed
    nothing draws or logs: the progress line and the heartbeat are paused (``quiet``)."""
    record = recorder.log if recorder is not None else (lambda _record: None)
    with console.job_progress(title) as progress:
        progress("building the model", 0, 1)
        built = build_job_model(config, device)
        model = built.module
        weightless = on_meta(model)  # counted only: nothing to time, nothing to set against the peaks
        args, kwargs = build_inputs(config, device, model)
        runtime = config.runtime_options()
        cost = count(
            model, args, device, kwargs=kwargs, runtime=runtime, options=config.count_options(), on_progress=progress
        )
        skipped = [timing_skipped_note(built.weightless_reason or WEIGHTLESS)] if weightless else []
        result = ProfileResult(cost, facts, runtime, settings, run_notes=skipped if config.timing.enabled else [])
        timed_next = config.mode == "train" or (config.timing.enabled and not weightless)
        if recorder is not None and not timed_next:
            recorder.hold(cost_record(result))  # written with the peaks' record: one batch, not two
        else:
            record(cost_record(result))  # safe in the store before the timing
        if config.mode == "train":
            result = train_step_job(config, model, args, kwargs, device, result, record, progress, recorder)
        elif config.timing.enabled and not weightless:
            with quiet(progress, recorder):
                timing = measure(
                    model, args, device, kwargs=kwargs, runtime=runtime, options=config.timing_options(),
                    on_progress=progress,
                )  # fmt: skip
            result = replace(result, timing=timing)
            if recorder is not None:  # written with the peaks' record, which follows at once: one batch, not two
                recorder.hold(timing_record(result))
        peak = config.peak_options()
        if (config.timing.enabled or peak.measure) and not weightless:
            progress("peak", 0, 1)
            result = replace(result, peaks=peak_report(cost, result.timing, device, runtime, facts, peak))
            record(peak_record(result, title, plot=own_plot))
        if config.timing.enabled and config.timing.layers and not weightless and config.mode != "train":
            result = layers_job(config, model, args, kwargs, device, result, record, progress, recorder, own_plot)
    return result


def layers_job(
    config: AppConfig,
    model: nn.Module,
    args: tuple[torch.Tensor, ...],
    kwargs: dict[str, torch.Tensor],
    device: torch.device,
    result: ProfileResult,
    record: Callable[[RunRecord], None],
    progress: console.JobProgress,
    recorder: Recorder | None = None,
    own_plot: bool = True,
) -> ProfileResult:
    """After the headline timing and the peaks: each module's time in a pass of its own, joined with the count and
    bounded by this device's roof -> log. A compiled model has no modules to hook: a note says so. Like the headline
    timing, the pass runs ``quiet``: nothing draws or logs beside it. ``own_plot``: the run gets its per-layer PNGs;
    a sweep's job leaves them to the sweep's report (each run's charts, drawn once per sweep; the layers table and
    metrics stay on the job's run)."""
    runtime = config.runtime_options()
    timing = layer_pass(
        result, record, progress, recorder, runtime.compile, "per-layer times", "the layer pass", "timing each layer",
        lambda: measure_layers(
            model, args, device, kwargs=kwargs, runtime=runtime, iterations=config.timing.layer_iterations,
            max_time_s=config.timing.max_time_s,
        ),
    )  # fmt: skip
    if isinstance(timing, ProfileResult):
        return timing  # skipped, with a note
    timing = replace(timing, notes=[*timing.notes, timing.check_note(result.median_latency_ms)])
    rows, roof = layer_table(result.cost, timing, result.peaks, device, runtime.dtype, result.fingerprint.hardware)
    result = replace(result, layer_timing=timing, layer_roof=roof, layer_rows=rows)
    record(layers_record(result, plot=own_plot))
    return result


def layer_pass(
    result: ProfileResult,
    record: Callable[[RunRecord], None],
    progress: console.JobProgress,
    recorder: Recorder | None,
    compile_mode: str,
    subject: str,
    pass_name: str,
    phase: str,
    measure: Callable[[], PassTiming],
) -> PassTiming | ProfileResult:
    """Run a per-layer pass (``measure``) quiet, as the headline timing runs: its timing, or ``result`` with a note
    "<subject> skipped: <why>" (logged with the summary) when the model is compiled (one graph, whose modules no
    hook sees) or the pass fails (the headline figures are logged: a failed extra pass is a note, not a FAILED
    run)."""

    def skipped(why: str) -> ProfileResult:
        noted = replace(result, run_notes=[*result.run_notes, f"{subject} skipped: {why}"])
        record(summary_record(noted))
        return noted

    if compile_mode != "off":
        return skipped(f"compile={compile_mode} runs one graph, whose modules no hook sees")
    progress(phase, 0, 1)
    try:
        with quiet(progress, recorder):
            return measure()
    except Exception as error:
        return skipped(f"{pass_name} failed with {type(error).__name__}: {error}")


@contextlib.contextmanager
def quiet(progress: console.JobProgress, recorder: Recorder | None) -> Iterator[None]:
    """While a forward is timed: nothing drawn (the progress line waits), no heartbeat thread writing the run."""
    with progress.quiet(), recorder.quiet() if recorder is not None else contextlib.nullcontext():
        yield


def train_step_job(
    config: AppConfig,
    model: nn.Module,
    args: tuple[torch.Tensor, ...],
    kwargs: dict[str, torch.Tensor],
    device: torch.device,
    result: ProfileResult,
    record: Callable[[RunRecord], None],
    progress: console.JobProgress,
    recorder: Recorder | None = None,
) -> ProfileResult:
    """mode=train, after the forward's count: count the whole step -> log -> time it -> log (MFU comes with the
    peaks). No inference forward is timed."""
    runtime = config.runtime_options()
    progress("counting the training step", 0, 1)
    step = count_training_step(
        model, args, device, kwargs=kwargs, runtime=runtime, options=config.count_options(), **config.train_options()
    )
    result = replace(result, training=TrainingStep(step))
    record(training_count_record(result))
    if config.timing.enabled and not on_meta(model):
        with quiet(progress, recorder):
            timed = measure_training_step(
                model, args, device, kwargs=kwargs, runtime=runtime, options=config.timing_options(),
                on_progress=progress, **config.train_options(),
            )  # fmt: skip
        result = replace(result, training=TrainingStep(step, timed))
        record(summary_record(result))
        if config.timing.layers:
            result = step_layers_job(config, model, args, kwargs, device, result, record, progress, recorder)
    return result


def step_layers_job(
    config: AppConfig,
    model: nn.Module,
    args: tuple[torch.Tensor, ...],
    kwargs: dict[str, torch.Tensor],
    device: torch.device,
    result: ProfileResult,
    record: Callable[[RunRecord], None],
    progress: console.JobProgress,
    recorder: Recorder | None = None,
) -> ProfileResult:
    """mode=train, after the step's timing: each module's forward and backward time in a pass of its own, joined
    to the step's per-layer FLOPs -> log. As for inference, a compiled model or a failed pass is a note, not a
    FAILED run."""
    assert result.training is not None and result.training.timing is not None
    runtime = config.runtime_options()
    timing = layer_pass(
        result, record, progress, recorder, runtime.compile, "per-layer step times", "the step's layer pass",
        "timing each layer of the step",
        lambda: measure_step_layers(
            model, args, device, kwargs=kwargs, runtime=runtime, iterations=config.timing.layer_iterations,
            max_time_s=config.timing.max_time_s, **config.train_options(),
        ),
    )  # fmt: skip
    if isinstance(timing, ProfileResult):
        return timing  # skipped, with a note
    timing = replace(timing, notes=[*timing.notes, timing.check_note(result.training.timing.step_ms)])
    rows = step_layer_table(result.training.count.cost, timing)
    result = replace(result, training=replace(result.training, layer_timing=timing, layer_rows=rows))
    record(step_layers_record(result))
    return result


def training_config_errors(config: AppConfig) -> list[str]:
    """mode=train: what keeps this model's training step from running (no trainable parameter, a loss that does not
    fit its output), checked on meta tensors by preflight, before any run is made. A model that does not build is
    left to the job, which reports it as a FAILED run."""
    if config.mode != "train":
        return []
    try:
        model = construct(model_factory(config.model), "meta", torch.device("cpu")).module
        args, kwargs = build_inputs(config, torch.device("meta"), model)
    except Exception:
        return []
    return [
        f"mode=train: {error}" for error in training_input_errors(model, args, kwargs=kwargs, **config.train_options())
    ]


def override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def swept_overrides(overrides: Sequence[str]) -> list[str] | None:
    """The job's overrides whose keys take several values in its sweep (None outside a sweep)."""
    swept = published_swept_keys()
    return [o for o in overrides if override_key(o) in swept] if swept else None


def job_tags(config: AppConfig, device: torch.device, overrides: list[str], facts: Fingerprint) -> dict[str, str]:
    """Tags to group and filter by, the same on every run: the job's identity (its overrides, sorted, tracking.* and
    hydra.* left out, hashed when long: ``override_identity``) and its variant (the overrides that differ inside its
    sweep), model, device, dtype, batch size, and MLflow's own source tags (never a remote URL: it
    can hold a token)."""
    swept = swept_overrides(overrides)
    variant = swept if swept is not None else overrides
    tags = {
        names.MODEL_TARGET_TAG: config.model["_target_"],
        names.MODEL_TAG: model_tag(config),
        names.DEVICE_TAG: str(device),
        names.DTYPE_TAG: config.precision.dtype,
        names.BATCH_SIZE_TAG: str(config.batch.size),
        names.MODE_TAG: config.mode,
        names.OVERRIDES_TAG: override_identity(overrides),  # what the gate pairs runs by, as it reads it
        names.VARIANT_TAG: " ".join(variant) or "defaults",
    }
    return {**tags, **source_tags(facts.git_commit)}


def source_tags(commit: str) -> dict[str, str]:
    """MLflow's own source tags (the UI's Source and User columns): the command, the user and the commit, never a
    remote URL (it can hold a token). None inside `mlflow run`, which sets its own on the run it made."""
    if launched_by_mlflow():
        return {}
    tags = {names.SOURCE_NAME_TAG: "python -m gflops_track", names.USER_TAG: getpass.getuser()}
    if commit:
        tags[names.SOURCE_COMMIT_TAG] = commit
    return tags


def run_job(
    config: AppConfig,
    params: dict[str, str],
    config_yaml: str,
    launch_dir: Path,
    output_dir: Path,
    in_sweep: bool,
    overrides: list[str] | None = None,
) -> JobOutcome:
    """Profile one configuration into one MLflow run (or the spool in ``output_dir`` if the store fails); never
    raises for a failure inside the job (SystemExit from the user's model included, and running past ``timeout_s``):
    the run is FAILED, the reason is its ``error`` tag, and the sweep goes on. An interrupt ends the run KILLED and
    goes on."""
    device = job_device(config)
    run_name = run_name_for(config, device, (swept_overrides(overrides or []) or []) if in_sweep else [])
    facts, settings = where_it_runs(device, config.runtime_options())
    recorder = None
    if config.tracking.enabled:
        uri = resolve_tracking_uri(config.tracking.uri, launch_dir)
        target = RunTarget.for_job(uri, config.tracking.experiment, run_name, in_sweep, published_parent_run())
        recorder = Recorder(target, output_dir / SPOOL_FOLDER, console.print_warning)
    ledger = OutcomeLedger.current()
    try:
        if recorder is not None:
            overrides = list(overrides or [])
            params = {**params, "tracking.uri": redact_uri(recorder.target.uri)}
            start = start_record(params, config_yaml, job_tags(config, device, overrides, facts), facts)
            start.files[names.OVERRIDES_ARTIFACT] = yaml.safe_dump(overrides, default_flow_style=False).encode()
            recorder.open()
            recorder.hold(start)  # written with the count, in one batch: building the model is quick
            if ledger is not None:  # so the command's process can end this run if this process is killed
                ledger.open_job_run({**recorder.state(), "process": liveness_tags()})
        with (
            recorder.heartbeat() if recorder is not None else contextlib.nullcontext(),
            job_deadline(config.timeout_s) as bounded,
        ):
            if config.timeout_s is not None and not bounded:
                console.print_warning(f"timeout_s={config.timeout_s:g} is not in force: this job runs outside the "
                                      "main thread (a thread launcher), where no signal can stop it")  # fmt: skip
            result = profile_job(config, device, run_name, facts, settings, recorder, own_plot=not in_sweep)
    except (Exception, SystemExit, JobTimeout) as error:  # a job past timeout_s fails like one that raised
        message = f"{type(error).__name__}: {error}"
        end_job_run(recorder, ledger, FAILED, message)
        run_id = recorder.run_id if recorder else None
        console.print_job_failure(run_name, run_id, message)
        console.log_job_failure(run_name, run_id, message)
        return JobOutcome(run_name, run_id, FAILED, message)
    except BaseException as interrupt:  # Ctrl-C, SIGTERM, SIGHUP: the run is KILLED, the interrupt goes on
        end_job_run(recorder, ledger, KILLED, f"{type(interrupt).__name__}: interrupted")
        raise
    end_job_run(recorder, ledger, FINISHED)
    run_id = recorder.run_id if recorder else None
    console.print_summary(result, run_name, run_id)
    return JobOutcome(run_name, run_id, FINISHED)


def end_job_run(recorder: Recorder | None, ledger: OutcomeLedger | None, status: str, error: str = "") -> None:
    """End the job's run (if it has one) and say so in the ledger: nobody else needs to end it now."""
    if recorder is None:
        return
    recorder.finish(status, error)
    if ledger is not None:
        ledger.close_job_run(run_key(recorder.state()))
