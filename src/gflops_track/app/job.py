"""One job: config values -> model and inputs -> measurements -> one MLflow run -> console.

Plain functions on plain values (an ``AppConfig``), no DictConfig: the Hydra entry point only composes and calls.
A failure after the run exists marks it FAILED with the reason as the ``error`` tag and returns (the sweep goes
on); whatever was measured before the failure is already logged.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from torch import nn

from gflops_track.app import console
from gflops_track.app.schema import AppConfig
from gflops_track.hardware import Fingerprint, fingerprint
from gflops_track.profiler import profile, resolve_device
from gflops_track.result import ProfileResult
from gflops_track.runtime import runtime_context
from gflops_track.tracking.recorder import Recorder
from gflops_track.tracking.run_logger import cost_record, start_record, timing_record
from gflops_track.tracking.spool import SPOOL_FOLDER
from gflops_track.tracking.store import redact_uri, resolve_tracking_uri

failed_jobs: list[str] = []  # run names (or config keys) of jobs that failed in this process


@dataclass(frozen=True)
class JobOutcome:
    run_name: str
    run_id: str | None
    status: str  # FINISHED or FAILED
    result: ProfileResult | None = None
    error: str = ""


def model_short_name(target: str) -> str:
    """'gflops_track.models.ResidualBlock' -> 'residual_block'."""
    class_name = target.rsplit(".", 1)[-1]
    return re.sub(r"(?<!^)(?=[A-Z])", "_", class_name).lower()


def job_device(config: AppConfig) -> torch.device:
    if config.device.type == "cuda" and config.device.index is not None:
        return resolve_device(f"cuda:{config.device.index}")
    return resolve_device(config.device.type)


def run_name_for(config: AppConfig, device: torch.device) -> str:
    """tracking.run_name filled in; ``{norm_fn}`` is the model's own norm_fn argument (empty segment dropped for
    models without one)."""
    name = config.tracking.run_name.format(
        model=model_short_name(config.model["_target_"]),
        norm_fn=config.model.get("norm_fn", ""),
        batch_size=config.batch.size,
        device=device.type,
        dtype=config.precision.dtype,
    )
    return re.sub(r"-{2,}", "-", name).strip("-")


def build_model(model_config: dict[str, Any]) -> nn.Module:
    """Instantiate ``model._target_`` with the other keys as kwargs (this imports and runs that code)."""
    model = instantiate(model_config, _convert_="all")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model._target_={model_config['_target_']!r} built a {type(model).__name__}, not an nn.Module")
    return model


def build_inputs(config: AppConfig, device: torch.device) -> tuple[tuple[torch.Tensor, ...], dict[str, torch.Tensor]]:
    """Random inputs created directly on ``device``, each (batch.size, *per-sample shape): the first from
    input.shape (image models: (in_planes|in_channels, batch.height, batch.width)), then input.args and input.kwargs.
    A size that cannot be allocated fails here, inside the job, as a FAILED run."""
    batch = config.batch.size
    if config.input.shape is not None:
        first = list(config.input.shape)
    else:
        channels = config.model.get("in_planes", config.model.get("in_channels"))
        first = [int(channels), config.batch.height, config.batch.width]
    args = tuple(torch.randn([batch, *shape], device=device) for shape in [first, *config.input.args])
    kwargs = {name: torch.randn([batch, *shape], device=device) for name, shape in config.input.kwargs.items()}
    return args, kwargs


def measure(
    config: AppConfig, device: torch.device, title: str, recorder: Recorder | None, facts: Fingerprint | None = None
) -> ProfileResult:
    """Build, count (recorded at once: nothing measured is lost if timing fails), then time and record."""
    model = build_model(config.model)
    args, kwargs = build_inputs(config, device)
    with console.job_progress(title) as progress:
        result = profile(
            model,
            args,
            device,
            kwargs=kwargs,
            timing=config.timing.options(),
            runtime=config.runtime_options(),
            measure_speed=config.timing.enabled,
            measure_peak=config.peak.measure,
            peak_cache_dir=Path(config.peak.cache_dir) if config.peak.cache_dir else None,
            compare_thop=config.counting.thop,
            compare_torch=config.counting.torch_check,
            prefer_meta=config.counting.meta,
            on_progress=progress,
            on_cost=(lambda counted: recorder.log(cost_record(counted))) if recorder else None,
            facts=facts,
        )
    if recorder is not None:
        recorder.log(timing_record(result, title))
    return result


def run_job(
    config: AppConfig, params: dict[str, str], config_yaml: str, launch_dir: Path, output_dir: Path, in_sweep: bool
) -> JobOutcome:
    """Profile one configuration into one MLflow run (or the spool in ``output_dir`` if the store fails); never
    raises for a failure inside the job."""
    device = job_device(config)
    run_name = run_name_for(config, device)
    if not config.tracking.enabled:
        return _run_untracked(config, device, run_name)
    uri = resolve_tracking_uri(config.tracking.uri, launch_dir)
    recorder = Recorder(
        uri, config.tracking.experiment, run_name, in_sweep, output_dir / SPOOL_FOLDER, console.print_warning
    )
    recorder.open()
    tags = {"model_target": config.model["_target_"], "device": str(device)}
    params = {**params, "tracking.uri": redact_uri(uri)}
    with runtime_context(config.runtime_options()):  # the thread count in the tags is the one the run uses
        facts = fingerprint(device)
    try:
        recorder.log(start_record(params, config_yaml, tags, facts))
        result = measure(config, device, run_name, recorder, facts)
    except Exception as error:
        failed_jobs.append(run_name)
        message = f"{type(error).__name__}: {error}"
        recorder.finish("FAILED", message)
        console.print_job_failure(run_name, recorder.run_id, message)
        return JobOutcome(run_name, recorder.run_id, "FAILED", error=message)
    except BaseException as interrupt:  # Ctrl-C, SIGTERM: the run is KILLED, the interrupt goes on
        recorder.finish("KILLED", f"{type(interrupt).__name__}: interrupted")
        raise
    recorder.finish("FINISHED")
    console.print_summary(result, run_name, recorder.run_id)
    return JobOutcome(run_name, recorder.run_id, "FINISHED", result=result)


def _run_untracked(config: AppConfig, device: torch.device, run_name: str) -> JobOutcome:
    try:
        result = measure(config, device, run_name, None)
    except Exception as error:
        failed_jobs.append(run_name)
        message = f"{type(error).__name__}: {error}"
        console.print_job_failure(run_name, None, message)
        return JobOutcome(run_name, None, "FAILED", error=message)
    console.print_summary(result, run_name, None)
    return JobOutcome(run_name, None, "FINISHED", result=result)
