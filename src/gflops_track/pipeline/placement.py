"""Where a step runs, and on what: the device resolved, the fingerprint and flags in force there, and the model and its
inputs placed on the device as one call. Every step (count, measure, the training step) starts here."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn.parameter import is_lazy
from torch.utils._pytree import tree_leaves, tree_map

from gflops_track.common.validation import device_problems
from gflops_track.counting.counting_forward import eval_mode, on_meta, restored_buffers, to_meta
from gflops_track.machine.hardware import fingerprint
from gflops_track.options.runtime import RuntimeOptions
from gflops_track.pipeline.runtime import effective_settings, runtime_context
from gflops_track.results.fingerprint import Fingerprint

Inputs = torch.Tensor | Sequence[Any]


def resolve_device(device: str | torch.device) -> torch.device:
    """'auto' -> cuda when available, else cpu. Asking for CUDA without CUDA is an error, not a silent CPU run."""
    if isinstance(device, torch.device):
        kind, index = device.type, device.index
    else:
        kind, _, index_text = str(device).partition(":")
        index = int(index_text) if index_text.isdigit() else None
        if index_text and index is None:
            kind = str(device)
    problems = device_problems(kind, index, key="device")
    if problems:
        raise ValueError("; ".join(problems))
    if kind == "auto":
        kind = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(kind, index) if index is not None and kind == "cuda" else torch.device(kind)


def as_call(inputs: Inputs, kwargs: Mapping[str, Any] | None) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """A lone tensor is one positional argument; a sequence is the positional arguments."""
    return ((inputs,) if isinstance(inputs, torch.Tensor) else tuple(inputs)), dict(kwargs or {})


def input_shapes(args: Sequence[Any], kwargs: Mapping[str, Any]) -> list[list[int]]:
    """Shapes of every tensor in the call, nested lists, tuples and dicts included (pytree order)."""
    return [list(leaf.shape) for leaf in tree_leaves((tuple(args), dict(kwargs))) if isinstance(leaf, torch.Tensor)]


def batch_size_of(shapes: Sequence[Sequence[int]]) -> int:
    """The batch: the first dimension of the first input (1 for a call without tensors or with a 0-d one)."""
    return shapes[0][0] if shapes and shapes[0] else 1


def where_it_runs(device: torch.device, runtime: RuntimeOptions) -> tuple[Fingerprint, dict[str, str]]:
    """The fingerprint and the effective flags, taken under the run's runtime options (its thread count)."""
    with runtime_context(runtime):
        return fingerprint(device), effective_settings()


def place(
    model: nn.Module, inputs: Inputs, kwargs: Mapping[str, Any] | None, device: torch.device, runtime: RuntimeOptions
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Model and inputs on ``device``, converted to the runtime's dtype and memory format (the model in place), lazy
    modules given their first forward (``initialize_lazy``). A model built on meta (no weights) stays there: counting
    needs none, and there are none to move."""
    problems = runtime.problems()
    if problems:
        raise ValueError("; ".join(f"{name}{message}" for name, message in problems))
    args, kwargs = as_call(inputs, kwargs)
    if not on_meta(model):
        model.to(device)
    args, kwargs = tree_map(lambda v: v.to(device) if isinstance(v, torch.Tensor) else v, (args, kwargs))
    if not input_shapes(args, kwargs):
        raise ValueError("inputs must contain at least one tensor")
    initialize_lazy(model, args, kwargs)
    return args, kwargs


def initialize_lazy(model: nn.Module, args: Sequence[Any], kwargs: Mapping[str, Any]) -> None:
    """Lazy modules (``nn.LazyLinear``, ``nn.LazyConv2d``, ...) learn their weights' shapes from their first forward,
    and until then no step can size them: give them that forward, once, in eval mode, without grad and with the
    buffers it changes put back (as torch's docs say to: "call forward with a dummy batch"), on meta twins of the
    inputs for a model built on meta. The inputs go as they are; if that forward fails, floating ones go again in
    the lazy weights' dtype (a bf16 run's inputs into fp32 lazy weights: the run converts the model after this).
    The model keeps its weights, as after any first call. A lazy module that forward does not reach (a train-only
    branch) is refused by name; a model with nothing lazy is left alone."""
    lazy = [tensor for tensor in (*model.parameters(), *model.buffers()) if is_lazy(tensor)]
    if not lazy:
        return
    if on_meta(model):
        args, kwargs = tree_map(to_meta, (tuple(args), dict(kwargs)))
    floating = next((tensor.dtype for tensor in lazy if tensor.dtype.is_floating_point), None)
    try:
        _first_forward(model, args, kwargs)
    except Exception as error:
        if floating is None:
            raise
        try:
            _first_forward(model, *tree_map(lambda v: _as_floating(v, floating), (tuple(args), dict(kwargs))))
        except Exception:
            raise error from None  # the model's own failure, not the retry's
    unreached = [name for name, tensor in (*model.named_parameters(), *model.named_buffers()) if is_lazy(tensor)]
    if unreached:
        raise ValueError(
            f"{', '.join(unreached)} belong to lazy modules that the model's first forward in eval mode did not "
            "reach, so their shapes are unknown: initialise them before profiling (call the model once in the mode "
            "that reaches them, e.g. model.train(); model(x)), or build those layers with their input sizes"
        )


def _first_forward(model: nn.Module, args: Sequence[Any], kwargs: Mapping[str, Any]) -> None:
    with torch.no_grad(), eval_mode(model), restored_buffers(model):
        model(*args, **kwargs)


def _as_floating(value: Any, dtype: torch.dtype) -> Any:
    return value.to(dtype) if isinstance(value, torch.Tensor) and value.is_floating_point() else value
