"""``profile(model, inputs, ...)``: count, cross-check, time and fingerprint one module. No MLflow, no Hydra."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_map

from gflops_track.counting.op_counter import count_cost
from gflops_track.counting.thop_compare import ThopCount, thop_count
from gflops_track.counting.torch_crosscheck import torch_flop_count
from gflops_track.hardware import fingerprint
from gflops_track.result import ProfileResult
from gflops_track.timing import ProgressCallback, measure_latency

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


def profile(
    model: nn.Module,
    inputs: torch.Tensor | Sequence[Any],
    device: str | torch.device = "cpu",
    *,
    kwargs: Mapping[str, Any] | None = None,
    warmup: int = 10,
    repeats: int = 50,
    measure_speed: bool = True,
    compare_thop: bool = True,
    compare_torch: bool = True,
    prefer_meta: bool = True,
    on_progress: ProgressCallback | None = None,
) -> ProfileResult:
    """Profile ``model(*inputs, **kwargs)``; ``model`` and inputs are moved to ``device``.

    Counting runs in eval mode (on meta tensors when possible) and leaves the module's state_dict, hooks and
    train/eval flags as they were. ``flops``/``macs`` are for the whole batch (dim 0 of the first input).
    """
    target = resolve_device(device)
    args = (inputs,) if isinstance(inputs, torch.Tensor) else tuple(inputs)
    kwargs = dict(kwargs or {})
    model.to(target)
    args, kwargs = tree_map(lambda v: v.to(target) if isinstance(v, torch.Tensor) else v, (args, kwargs))
    shapes = _shapes(args, kwargs)
    if not shapes:
        raise ValueError("inputs must contain at least one tensor")
    report = on_progress or (lambda phase, done, total: None)

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
    timing = None
    if measure_speed:
        timing = measure_latency(model, args, kwargs, warmup=warmup, repeats=repeats, on_progress=on_progress)
    return ProfileResult(
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
        fingerprint=fingerprint(target),
        thop=thop,
        torch_count=torch_count,
        timing=timing,
        notes=notes,
    )
