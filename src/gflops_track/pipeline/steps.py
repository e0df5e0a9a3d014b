"""The pipeline's steps as plain functions, and ``profile``, a thin facade that runs them in order.

    count(model, inputs)            -> CountResult    params, MACs, FLOPs, per-layer table, thop and FlopCounterMode
    measure(model, inputs)          -> TimingResult   latency statistics under the runtime options (timing/engine.py)
    peak_report(cost, timing, ...)  -> PeakReport     vendor / estimated / measured peaks (peaks/report.py)
    profile(model, inputs)          -> ProfileResult  all of the above, with the fingerprint

The training step's counterparts are in ``training_step.py``; what every step shares (the device, the placed call,
the fingerprint) in ``placement.py``.

The Hydra app calls the steps itself (count -> log -> time -> log); Python users call ``profile``. No MLflow, no Hydra.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_map

from gflops_track.counting.counting_forward import eval_mode, on_meta
from gflops_track.counting.op_counter import complex_note, count_cost
from gflops_track.counting.thop_compare import thop_count, thop_notes
from gflops_track.counting.torch_crosscheck import report_agreement
from gflops_track.machine.hardware import on_chip_bytes
from gflops_track.options.count import CountOptions
from gflops_track.options.peaks import PeakOptions
from gflops_track.options.runtime import RuntimeOptions
from gflops_track.options.timing import ProgressCallback, TimingOptions
from gflops_track.peaks.bounds import device_roof, layer_rows
from gflops_track.peaks.report import compare_with_peaks
from gflops_track.pipeline.placement import Inputs, batch_size_of, input_shapes, place, resolve_device, where_it_runs
from gflops_track.pipeline.runtime import prepare, runtime_context
from gflops_track.results.fingerprint import Fingerprint
from gflops_track.results.layers import BoundRoof, LayerRow, LayerTiming
from gflops_track.results.peaks import PeakReport
from gflops_track.results.profile import CountResult, ProfileResult
from gflops_track.results.timing import TimingResult, achieved_gflop_per_s
from gflops_track.timing.engine import measure_latency
from gflops_track.timing.layers import DEFAULT_ITERATIONS as LAYER_ITERATIONS
from gflops_track.timing.layers import DEFAULT_MAX_TIME_S as LAYER_MAX_TIME_S
from gflops_track.timing.layers import time_layers


def timing_options(timing: TimingOptions | bool) -> TimingOptions | None:
    """``timing=`` of the one-call APIs: options as given, ``True`` the defaults, ``False`` no timing (None)."""
    if timing is False:
        return None
    return timing if isinstance(timing, TimingOptions) else TimingOptions()


WEIGHTLESS = "the model's weights are on the meta device (built without weights): it can be counted, not run"


def timing_skipped_note(reason: str = WEIGHTLESS) -> str:
    """What a run without timing says: why, e.g. 'weights need 27.0 GB, 21.3 GB free'."""
    return f"timing skipped: {reason}; the counts above need no weights"


def counting_notes(backend_note: str, uncounted_ops: Mapping[str, int], complex_op_calls: int = 0) -> list[str]:
    """What a count says about itself: why it did not run on meta, every op it has no rule for (never 0), and ops
    on complex tensors (priced as real ones)."""
    notes = [backend_note] if backend_note else []
    if uncounted_ops:
        listed = ", ".join(f"{op} x{calls}" for op, calls in uncounted_ops.items())
        notes.append(f"ops with no counting rule (not included in FLOPs): {listed}")
    if complex_op_calls:
        notes.append(complex_note(complex_op_calls))
    return notes


def _no_progress(phase: str, done: int, total: int) -> None:
    """The default progress callback: say nothing."""


def count(
    model: nn.Module,
    inputs: Inputs,
    device: str | torch.device = "cpu",
    *,
    kwargs: Mapping[str, Any] | None = None,
    runtime: RuntimeOptions | None = None,
    options: CountOptions | None = None,
    on_progress: ProgressCallback | None = None,
) -> CountResult:
    """Params, MACs and FLOPs of ``model(*inputs, **kwargs)`` for the whole batch (dim 0 of the first input), by
    category and by layer, with thop's figure and FlopCounterMode's beside ours. Counting runs in eval mode (on meta
    tensors when possible) and leaves the module's state_dict, hooks and train/eval flags as they were."""
    target = resolve_device(device)
    runtime = runtime or RuntimeOptions.of_model(model)
    options = options or CountOptions()
    report = on_progress or _no_progress
    args, kwargs = place(model, inputs, kwargs, target, runtime)
    with runtime_context(runtime):
        _forward, args, kwargs = prepare(model, args, kwargs, runtime, target)
        report("counting", 0, 1)
        cost = count_cost(
            model,
            args,
            kwargs,
            prefer_meta=options.meta,
            extra_rules=options.extra_rules,
            autocast_dtype=runtime.torch_dtype if runtime.autocasts else None,  # bytes priced in autocast's dtypes
            device_type=target.type,
            torch_check=options.torch_check,  # FlopCounterMode counts the same pass
        )
        notes = counting_notes(cost.backend_note, cost.uncounted_ops, cost.complex_op_calls)
        torch_count = None
        if options.torch_check:
            torch_count = report_agreement(cost)
            notes.extend(f"counters disagree: {note}" for note in torch_count.notes)
        thop = None
        if options.thop:
            report("thop", 0, 1)
            thop = _thop_off_device(model, args, kwargs, cost, target)
            notes.extend(thop_notes(thop, cost.macs, cost.params))
    shapes = input_shapes(args, kwargs)
    return CountResult(
        model_name=type(model).__name__,
        device=str(target),
        input_shapes=shapes,
        batch_size=batch_size_of(shapes),
        params=cost.params,
        macs=cost.macs,
        flops=cost.flops,
        flops_by_category=cost.flops_by_category,
        uncounted_ops=cost.uncounted_ops,
        count_backend=cost.backend,
        layers=cost.layers,
        bytes_moved=cost.bytes_moved,
        min_bytes=cost.min_bytes,
        layer_traffic=cost.layer_traffic,
        thop=thop,
        torch_count=torch_count,
        notes=notes,
    )


def _thop_off_device(
    model: nn.Module, args: tuple[Any, ...], kwargs: Mapping[str, Any], cost: Any, device: torch.device
) -> Any:
    """thop runs real forwards: on a GPU run they go to a CPU copy, so the timed cold start stays cold. A model on
    meta is counted by thop on meta where it is."""
    if device.type == "cpu" or on_meta(model):
        return thop_count(model, args, cost, kwargs)
    on_cpu = tree_map(lambda v: v.cpu() if isinstance(v, torch.Tensor) else v, (args, dict(kwargs)))
    return thop_count(copy.deepcopy(model).cpu(), on_cpu[0], cost, on_cpu[1])


def measure(
    model: nn.Module,
    inputs: Inputs,
    device: str | torch.device = "cpu",
    *,
    kwargs: Mapping[str, Any] | None = None,
    runtime: RuntimeOptions | None = None,
    options: TimingOptions | None = None,
    on_progress: ProgressCallback | None = None,
) -> TimingResult:
    """Latency of ``model(*inputs, **kwargs)`` in eval mode under the runtime options (dtype, memory format,
    threads, torch.compile), timed as ``timing/engine.py`` describes; the module's flags are restored after. A model
    on meta (no weights) cannot be timed: ``ValueError``."""
    if on_meta(model):
        raise ValueError(f"{type(model).__name__} cannot be timed: {WEIGHTLESS}")
    target = resolve_device(device)
    runtime = runtime or RuntimeOptions.of_model(model)
    options = options or TimingOptions()
    problems = options.problems()
    if problems:
        raise ValueError("; ".join(f"{name}{message}" for name, message in problems))
    args, kwargs = place(model, inputs, kwargs, target, runtime)
    with runtime_context(runtime):
        forward, args, kwargs = prepare(model, args, kwargs, runtime, target)  # the unconverted copies are let go
        with eval_mode(model):
            timed = measure_latency(forward, target, options, on_progress)
    if options.flush_l2 and target.type != "cuda":
        return replace(timed, notes=[*timed.notes, "L2 flushing is GPU-only: CPU timings ran with warm caches"])
    return timed


def profile(
    model: nn.Module,
    inputs: Inputs,
    device: str | torch.device = "cpu",
    *,
    kwargs: Mapping[str, Any] | None = None,
    runtime: RuntimeOptions | None = None,
    counting: CountOptions | None = None,
    timing: TimingOptions | bool = True,
    peak: PeakOptions | None = None,
    on_progress: ProgressCallback | None = None,
) -> ProfileResult:
    """Count, time (``timing=False`` skips it; ``True`` uses the default ``TimingOptions``), set against the
    device's peaks and, as the Hydra job does, time each layer in a pass of its own (``TimingOptions.layers``, on by
    default: ``layer_timing`` and ``layer_rows``, the layers table with time and bound); ``model`` and inputs are
    moved to ``device``. A model on meta (built without weights) is counted only: timing and peaks are skipped, and
    a note says why."""
    runtime = runtime or RuntimeOptions.of_model(model)
    counting = counting or CountOptions()
    peak = peak or PeakOptions()
    target = resolve_device(device)
    cost = count(model, inputs, target, kwargs=kwargs, runtime=runtime, options=counting, on_progress=on_progress)
    facts, settings = where_it_runs(target, runtime)
    if on_meta(model):
        notes = [timing_skipped_note()] if timing is not False else []
        return ProfileResult(cost, facts, runtime, settings, run_notes=notes)
    timed = None
    if (options := timing_options(timing)) is not None:
        timed = measure(model, inputs, target, kwargs=kwargs, runtime=runtime, options=options, on_progress=on_progress)
    peaks = peak_report(cost, timed, target, runtime, facts, peak) if timed is not None or peak.measure else None
    result = ProfileResult(cost, facts, runtime, settings, timed, peaks)
    if options is not None and options.layers:
        result = with_layers(result, model, inputs, target, kwargs, options)
    return result


def with_layers(
    result: ProfileResult,
    model: nn.Module,
    inputs: Inputs,
    device: torch.device,
    kwargs: Mapping[str, Any] | None,
    options: TimingOptions,
) -> ProfileResult:
    """``profile``'s layer pass, after the headline timing and the peaks, as the Hydra job runs it: each module's
    time joined to the count and bounded by the device's roof, the truth check as a note. A compiled model, or a
    model that will not run under global hooks, keeps its figures and gets a note instead."""
    runtime = result.runtime
    if runtime.compile != "off":
        why = f"compile={runtime.compile} runs one graph, whose modules no hook sees"
        return replace(result, run_notes=[*result.run_notes, f"per-layer times skipped: {why}"])
    try:
        timing = measure_layers(
            model, inputs, device, kwargs=kwargs, runtime=runtime, iterations=options.layer_iterations,
            max_time_s=options.max_time_s,
        )  # fmt: skip
    except Exception as error:  # the headline figures stand: a failed extra pass is a note
        why = f"the layer pass failed with {type(error).__name__}: {error}"
        return replace(result, run_notes=[*result.run_notes, f"per-layer times skipped: {why}"])
    timing = replace(timing, notes=[*timing.notes, timing.check_note(result.median_latency_ms)])
    rows, roof = layer_table(result.cost, timing, result.peaks, device, runtime.dtype, result.fingerprint.hardware)
    return replace(result, layer_timing=timing, layer_roof=roof, layer_rows=rows)


def peak_report(
    cost: CountResult,
    timing: TimingResult | None,
    device: torch.device,
    runtime: RuntimeOptions,
    facts: Fingerprint,
    options: PeakOptions | None = None,
) -> PeakReport:
    """The peak step: the device's peaks for the run's dtype and thread count, and notes where one is beaten."""
    achieved = achieved_gflop_per_s(cost.flops, timing.latency.median_ms if timing else None)
    with runtime_context(runtime):  # the CPU estimate and the probes use the run's thread count
        kernel = f"{cost.model_name} ({runtime.dtype})"
        return compare_with_peaks(device, runtime.dtype, facts.hardware, facts.gpu_name, achieved, options, kernel)


def measure_layers(
    model: nn.Module,
    inputs: Inputs,
    device: str | torch.device = "cpu",
    *,
    kwargs: Mapping[str, Any] | None = None,
    runtime: RuntimeOptions | None = None,
    iterations: int = LAYER_ITERATIONS,
    max_time_s: float = LAYER_MAX_TIME_S,
    profiler_forwards: int = 0,
) -> LayerTiming:
    """Each module's inclusive and self time in ``model(*inputs, **kwargs)`` (``timing/layers.py``), in eval mode
    under the runtime options; with ``profiler_forwards`` (3 is enough), also each module's share of the op time
    ``torch.profiler`` records, the cross-check in ``LayerTiming.profiler_gap``. Run it after ``measure``: its hooks
    never touch the headline latency. A compiled model runs as one graph, whose modules no hook sees: ``ValueError``."""
    if on_meta(model):
        raise ValueError(f"{type(model).__name__} cannot be timed: {WEIGHTLESS}")
    runtime = runtime or RuntimeOptions.of_model(model)
    if runtime.compile != "off":
        raise ValueError(f"compile={runtime.compile!r}: per-layer times need compile=off (a graph has no modules)")
    target = resolve_device(device)
    args, kwargs = place(model, inputs, kwargs, target, runtime)
    with runtime_context(runtime):
        forward, args, kwargs = prepare(model, args, kwargs, runtime, target)
        with eval_mode(model):
            return time_layers(
                forward, model, target, iterations=iterations, max_time_s=max_time_s,
                profiler_forwards=profiler_forwards,
            )  # fmt: skip


def layer_table(
    cost: CountResult, timing: LayerTiming | None, peaks: PeakReport | None, device: torch.device, dtype: str,
    label: str,
) -> tuple[list[LayerRow], BoundRoof | None]:  # fmt: skip
    """The layers table with each module's time, bytes and roofline bound on this device (``peaks/bounds.py``)."""
    roof = device_roof(peaks, dtype, on_chip_bytes(device), label) if peaks is not None else None
    return layer_rows(cost.layers, cost.layer_traffic, timing, roof), roof
