"""``compare --rerun``: re-measure a baseline and a candidate run now, interleaved in one process, from the
configurations the runs stored (their ``config.yaml``: the model's ``_target_`` must be importable here). Both
configurations are built as their jobs built them (model, inputs, runtime options) and timed by
``timing.duet.interleaved``, each call inside its own runtime context, so both suffer the same load."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import OmegaConf

from gflops_track.app.building import build_inputs, build_job_model
from gflops_track.app.job import job_device
from gflops_track.app.schema import AppConfig, to_app_config
from gflops_track.common.names import CONFIG_ARTIFACT
from gflops_track.pipeline.placement import place
from gflops_track.pipeline.runtime import prepare, runtime_context
from gflops_track.timing.duet import interleaved

RERUN_MIN_REPEATS = 30  # per side: what the gate's Mann-Whitney test and the 10% quantile's interval are sharp with


@dataclass(frozen=True)
class Rerun:
    """Both sides' fresh samples (ms) and what was timed."""

    baseline_ms: list[float]
    candidate_ms: list[float]
    device: str
    seconds: float


def stored_config(client: object, run_id: str) -> AppConfig:
    """The run's resolved configuration (its ``config.yaml`` artifact), validated as the app validates it."""
    with tempfile.TemporaryDirectory() as folder:
        try:
            path = client.download_artifacts(run_id, CONFIG_ARTIFACT, folder)  # type: ignore[attr-defined]
        except Exception as error:
            raise ValueError(f"--rerun: run {run_id} has no {CONFIG_ARTIFACT} artifact to rebuild it from") from error
        loaded = OmegaConf.load(Path(path))
    return to_app_config(OmegaConf.merge(OmegaConf.structured(AppConfig), loaded))


def _timed_call(config: AppConfig, device: torch.device) -> Callable[[], float]:
    """A call that runs the configuration's forward once, in eval mode and its runtime context, and returns its
    wall time in ms (CUDA synchronised). The model is built for this re-measurement alone."""
    model = build_job_model(config, device).module
    args, kwargs = build_inputs(config, device, model)
    runtime = config.runtime_options()
    args, kwargs = place(model, args, kwargs, device, runtime)
    forward, args, kwargs = prepare(model, args, kwargs, runtime, device)
    model.eval()
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)

    def call() -> float:
        with runtime_context(runtime), torch.inference_mode():
            sync()
            start = time.perf_counter()
            forward()
            sync()
            return (time.perf_counter() - start) * 1e3

    return call


def rerun_pair(client: object, baseline_run: str, candidate_run: str, max_time_s: float | None = None) -> Rerun:
    """Both runs' configurations rebuilt and timed interleaved; the time budget is the larger of the two runs'
    ``timing.max_time_s`` (or ``max_time_s``) for both together, with at least ``RERUN_MIN_REPEATS`` rounds."""
    configs = [stored_config(client, baseline_run), stored_config(client, candidate_run)]
    if any(config.mode != "inference" for config in configs):
        raise ValueError("--rerun re-measures the forward pass: a mode=train run cannot be re-measured this way yet")
    device = job_device(configs[0])
    calls = [_timed_call(config, device) for config in configs]
    budget = max_time_s if max_time_s is not None else max(config.timing.max_time_s for config in configs)
    began = time.perf_counter()
    samples = interleaved(
        calls,
        warmup=max(config.timing.warmup for config in configs),
        min_repeats=max(RERUN_MIN_REPEATS, *(config.timing.min_repeats for config in configs)),
        max_repeats=min(config.timing.max_repeats for config in configs),
        max_time_s=budget,
    )
    return Rerun(samples[0], samples[1], str(device), time.perf_counter() - began)
