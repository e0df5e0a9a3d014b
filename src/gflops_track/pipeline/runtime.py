"""How the module runs while it is measured: dtype, precision flags, memory format, threads, torch.compile.

``runtime_context`` applies the options and restores every global flag it touched on exit; ``prepare`` returns the
module and inputs in the requested dtype and memory format and the forward callable to time.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_map

from gflops_track.options.runtime import RuntimeOptions


def effective_settings() -> dict[str, str]:
    """The global precision and threading settings in force now (logged with every run)."""
    return {
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "cuda_matmul_allow_tf32": str(torch.backends.cuda.matmul.allow_tf32).lower(),
        "cudnn_allow_tf32": str(torch.backends.cudnn.allow_tf32).lower(),
        "cudnn_benchmark": str(torch.backends.cudnn.benchmark).lower(),
        "torch_num_threads": str(torch.get_num_threads()),
    }


@contextlib.contextmanager
def runtime_context(options: RuntimeOptions) -> Iterator[None]:
    """Set TF32, cuDNN benchmark and thread count for the duration; restore them after."""
    saved = (
        torch.get_float32_matmul_precision(),
        torch.backends.cudnn.allow_tf32,
        torch.backends.cudnn.benchmark,
        torch.get_num_threads(),
    )
    tf32 = options.dtype == "tf32"
    torch.set_float32_matmul_precision("high" if tf32 else "highest")
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cudnn.benchmark = options.cudnn_benchmark
    if options.threads is not None:
        torch.set_num_threads(options.threads)
    try:
        yield
    finally:
        precision, allow_tf32, benchmark, threads = saved
        torch.set_float32_matmul_precision(precision)
        torch.backends.cudnn.allow_tf32 = allow_tf32
        torch.backends.cudnn.benchmark = benchmark
        torch.set_num_threads(threads)


def _convert_tensor(value: Any, options: RuntimeOptions) -> Any:
    """A floating tensor in the run's dtype and memory format; integer ids and boolean masks stay as they are."""
    if not isinstance(value, torch.Tensor) or not value.is_floating_point():
        return value
    if options.converts:
        value = value.to(options.torch_dtype)
    if options.memory_format == "channels_last" and value.dim() == 4:
        value = value.contiguous(memory_format=torch.channels_last)
    return value


def convert_inputs(
    args: Sequence[Any], kwargs: Mapping[str, Any], options: RuntimeOptions
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Inputs in the run's dtype (``convert`` mode) and memory format; a tensor already so is returned as it is."""
    return tree_map(lambda v: _convert_tensor(v, options), (tuple(args), dict(kwargs)))


def prepare(
    model: nn.Module, args: Sequence[Any], kwargs: Mapping[str, Any], options: RuntimeOptions, device: torch.device
) -> tuple[Callable[[], Any], tuple[Any, ...], dict[str, Any]]:
    """Convert module (in place) and inputs as asked; return (forward to time, args, kwargs)."""
    if options.converts:
        model.to(options.torch_dtype)
    if options.memory_format == "channels_last":
        model.to(memory_format=torch.channels_last)
    args, kwargs = convert_inputs(args, kwargs, options)
    target: Callable[..., Any] = model
    if options.compile != "off":
        target = torch.compile(model, mode=None if options.compile == "default" else options.compile)

    def forward() -> Any:
        if options.autocasts:
            with torch.autocast(device_type=device.type, dtype=options.torch_dtype):
                return target(*args, **kwargs)
        return target(*args, **kwargs)

    return forward, args, kwargs
