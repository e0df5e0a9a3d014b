"""Random inputs made from their specs (``options/inputs.py``), directly on the device the step runs on."""

from __future__ import annotations

from typing import Any

import torch

from gflops_track.options.inputs import FLOAT, InputSpec, ModelInputs

INTEGER_TORCH_DTYPES = {"int64": torch.int64, "int32": torch.int32}


def random_input(spec: InputSpec, batch_size: int, device: torch.device) -> torch.Tensor:
    """A tensor of shape (batch_size, *spec.shape): normal floats (fp32: the run's precision converts them later),
    integers uniform in [low, high), a mask of [low, high) in {0, 1} as bool."""
    shape = [batch_size, *spec.shape]
    if spec.dtype == FLOAT:
        return torch.randn(shape, device=device)
    low, high = spec.value_range()
    values = torch.randint(low, high, shape, device=device, dtype=INTEGER_TORCH_DTYPES.get(spec.dtype, torch.int64))
    return values.bool() if spec.dtype == "bool" else values


def random_inputs(
    inputs: ModelInputs, batch_size: int, device: torch.device
) -> tuple[tuple[torch.Tensor, ...], dict[str, Any]]:
    """Every input of the call, as ``(args, kwargs)``."""
    args = tuple(random_input(spec, batch_size, device) for spec in inputs.args)
    kwargs = {name: random_input(spec, batch_size, device) for name, spec in inputs.kwargs.items()}
    return args, kwargs
