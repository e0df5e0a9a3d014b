"""``profile(model, inputs, ...)``: count, cross-check, time and fingerprint one module. No MLflow, no Hydra."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_map

from gflops_track.counting.execution import eval_mode
from gflops_track.counting.op_counter import count_cost
from gflops_track.counting.thop_compare import ThopCount, thop_count
from gflops_track.counting.torch_crosscheck import torch_flop_count
from gflops_track.hardware import Fingerprint, fingerprint
from gflops_track.peaks import cpu_peak_estimate, gpu_spec, spec_tflops
from gflops_track.probes import measured_peak
from gflops_track.result import ProfileResult
from gflops_track.runtime import RuntimeOptions, effective_settings, prepare, runtime_context
from gflops_track.timing import ProgressCallback, TimingOptions, measure_latency

DEVICE_CHOICES = ("auto", "cpu", "cuda")


def resolve_device(device: str | torch.device) -> torch.device:
    """'auto' -> cuda when available, else cpu. Asking for CUDA without CUDA is an error, not a silent CPU run."""
    if isinstance(device, torch.device):
        resolved = device
    elif device == "auto":
        resolved = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            resolved = torch.device(device)
        except RuntimeError as error:
            raise ValueError(f"device={device!r} is not allowed: use one of {', '.join(DEVICE_CHOICES)}") from error
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device={str(device)!r} is not allowed here: this machine has no CUDA device (use cpu or auto)"
        )
    if resolved.type not in ("cpu", "cuda"):
        raise ValueError(f"device={str(device)!r} is not allowed: use one of {', '.join(DEVICE_CHOICES)}")
    return resolved


def _shapes(args: Sequence[Any], kwargs: Mapping[str, Any]) -> list[list[int]]:
    return [list(t.shape) for t in (*args, *kwargs.values()) if isinstance(t, torch.Tensor)]


def _thop_notes(thop: ThopCount, macs: int, params: int) -> list[str]:
    """What the console and the run say about thop's figure when it is not ours."""
    if thop.error:
        return [thop.error]
    notes = []
    if thop.macs != macs or thop.raw_macs != macs:
        notes.append(
            f"thop counts {thop.raw_macs:,} MACs as the seed runs it and {thop.macs:,} with our custom_ops; "
            f"gflops-track counts {macs:,} MACs. Why:"
        )
        notes.extend(f"  - {reason}" for reason in thop.reasons or ["(thop with custom_ops agrees with us)"])
    if thop.raw_params != params or thop.params != params:
        notes.append(
            f"thop reports {thop.raw_params:,} params as the seed runs it and {thop.params:,} with our custom_ops; "
            f"the true count (shared tensors once) is {params:,}"
        )
    return notes


def _peaks(
    result: ProfileResult, device: torch.device, runtime: RuntimeOptions, measure_peak: bool, cache_dir: Path | None
) -> ProfileResult:
    """Attach vendor/estimated peaks and (optionally) the measured ones; say when a peak is unknown."""
    notes = list(result.notes)
    spec, spec_tflops_value, cpu_estimate, measured = None, None, None, None
    if device.type == "cuda":
        spec = gpu_spec(result.fingerprint.gpu_name)
        spec_tflops_value = spec_tflops(spec, runtime.dtype) if spec else None
        if spec is None:
            notes.append(f"no vendor peak known for {result.fingerprint.gpu_name!r}: utilization vs spec not reported")
        elif spec_tflops_value is None:
            notes.append(f"{spec.name} has no {runtime.dtype} peak in its datasheet: utilization vs spec not reported")
    else:
        cpu_estimate = cpu_peak_estimate()
    if measure_peak:
        measured = measured_peak(device, runtime.dtype, result.fingerprint.hardware, cache_dir)
    achieved = result.achieved_gflop_per_s
    if achieved and cpu_estimate is not None and achieved > cpu_estimate.gflop_per_s:
        notes.append(
            f"achieved {achieved:,.1f} GFLOP/s exceeds the estimated CPU peak {cpu_estimate.gflop_per_s:,.1f} "
            f"({cpu_estimate.cores} cores x {cpu_estimate.clock_ghz:.2f} GHz x {cpu_estimate.flops_per_cycle}): the "
            "reported clock is likely the base (TSC) rate, not the boost clock; trust the measured peak"
        )
    if achieved and measured is not None and achieved > measured.gemm_gflop_per_s:
        notes.append(
            f"achieved {achieved:,.1f} GFLOP/s exceeds the GEMM probe's {measured.gemm_gflop_per_s:,.1f}: the probe "
            "is a floor of the true peak on this device (its kernels or sizes are not the fastest ones here)"
        )
    return replace(
        result,
        gpu_spec=spec,
        spec_gflop_per_s=spec_tflops_value * 1e3 if spec_tflops_value else None,
        cpu_peak=cpu_estimate,
        measured_peak=measured,
        notes=notes,
    )


def profile(
    model: nn.Module,
    inputs: torch.Tensor | Sequence[Any],
    device: str | torch.device = "cpu",
    *,
    kwargs: Mapping[str, Any] | None = None,
    timing: TimingOptions | None = None,
    runtime: RuntimeOptions | None = None,
    measure_speed: bool = True,
    measure_peak: bool = False,
    peak_cache_dir: Path | None = None,
    compare_thop: bool = True,
    compare_torch: bool = True,
    prefer_meta: bool = True,
    on_progress: ProgressCallback | None = None,
    on_cost: Callable[[ProfileResult], None] | None = None,
    facts: Fingerprint | None = None,
) -> ProfileResult:
    """Profile ``model(*inputs, **kwargs)``; ``model`` and inputs are moved to ``device`` (and converted to the
    runtime dtype / memory format when asked).

    Counting runs in eval mode (on meta tensors when possible) and leaves the module's state_dict, hooks and
    train/eval flags as they were. ``flops``/``macs`` are for the whole batch (dim 0 of the first input).
    ``on_cost`` receives the result once counting is done, before timing, so a caller can keep it safe.
    ``measure_peak`` runs the GEMM and bandwidth probes (cached per machine) for utilization vs measured peak.
    ``facts``: the fingerprint, when the caller already took it (under the same runtime options).
    """
    target = resolve_device(device)
    runtime = runtime or RuntimeOptions()
    timing_options = timing or TimingOptions()
    problems = runtime.problems() + timing_options.problems()
    if problems:
        raise ValueError("; ".join(f"{name}{message}" for name, message in problems))
    args = (inputs,) if isinstance(inputs, torch.Tensor) else tuple(inputs)
    kwargs = dict(kwargs or {})
    model.to(target)
    args, kwargs = tree_map(lambda v: v.to(target) if isinstance(v, torch.Tensor) else v, (args, kwargs))
    shapes = _shapes(args, kwargs)
    if not shapes:
        raise ValueError("inputs must contain at least one tensor")
    report = on_progress or (lambda phase, done, total: None)

    with runtime_context(runtime):
        forward, args, kwargs = prepare(model, args, kwargs, runtime, target)
        report("counting", 0, 1)
        cost = count_cost(model, args, kwargs, prefer_meta=prefer_meta)
        notes = [cost.backend_note] if cost.backend_note else []
        if cost.uncounted_ops:
            listed = ", ".join(f"{op} x{calls}" for op, calls in cost.uncounted_ops.items())
            notes.append(f"ops with no counting rule (not included in FLOPs): {listed}")
        torch_count = None
        if compare_torch:
            report("torch FlopCounterMode", 0, 1)
            torch_count = torch_flop_count(model, args, kwargs, cost, prefer_meta=prefer_meta)
            notes.extend(f"counters disagree: {note}" for note in torch_count.notes)
        thop = None
        if compare_thop and kwargs:
            notes.append("thop not run: thop.profile passes positional inputs only")
        elif compare_thop:
            report("thop", 0, 1)
            thop = thop_count(model, args, cost)
            notes.extend(_thop_notes(thop, cost.macs, cost.params))
        if timing_options.flush_l2 and target.type != "cuda":
            notes.append("L2 flushing is GPU-only: CPU timings ran with warm caches")
        result = ProfileResult(
            model_name=type(model).__name__,
            device=str(target),
            input_shapes=shapes,
            batch_size=shapes[0][0] if shapes[0] else 1,
            params=cost.params,
            macs=cost.macs,
            flops=cost.flops,
            flops_by_category=cost.flops_by_category,
            uncounted_ops=cost.uncounted_ops,
            count_backend=cost.backend,
            layers=cost.layers,
            bytes_moved=cost.bytes_moved,
            min_bytes=cost.min_bytes,
            fingerprint=facts or fingerprint(target),
            runtime=runtime,
            settings=effective_settings(),
            thop=thop,
            torch_count=torch_count,
            notes=notes,
        )
        if on_cost is not None:
            on_cost(result)
        if measure_speed:
            with eval_mode(model):
                timed = measure_latency(forward, target, timing_options, on_progress)
            result = replace(result, timing=timed, notes=result.notes + timed.notes)
    if measure_speed or measure_peak:
        report("peak", 0, 1)
        result = _peaks(result, target, runtime, measure_peak, peak_cache_dir)
    return result
