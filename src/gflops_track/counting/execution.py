"""Running a counting forward pass without touching the user's module.

Counting runs on the ``meta`` device when it can: parameters, buffers and inputs are swapped for meta tensors for the
duration of the pass and the original objects put back after (no copy of the model, no memory for activations, ~14x
faster than a real forward on this machine). The swap is our own: ``torch.func.functional_call`` leaves a module
shared under two names (the seed's ``norm3``) with meta parameters after the call.

If the model cannot run on meta (an op without a meta kernel, data-dependent control flow), counting falls back to a
real forward on the model's own device, and says so.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_map


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Put every submodule in eval mode, then restore each one's own ``training`` flag."""
    flags = {module: module.training for module in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for module, training in flags.items():
            module.training = training


def _to_meta(value: Any) -> Any:
    return torch.empty_like(value, device="meta") if isinstance(value, torch.Tensor) else value


@contextmanager
def meta_tensors(model: nn.Module) -> Iterator[None]:
    """Swap every parameter and buffer for a meta tensor of the same shape (a tensor shared by several modules gets
    one shared meta tensor), then put the very same original objects back."""
    originals: list[tuple[dict[str, Any], str, Any]] = []
    replacements: dict[int, Any] = {}
    for module in model.modules():
        for slots in (module._parameters, module._buffers):
            for name, tensor in list(slots.items()):
                if tensor is None:
                    continue
                if id(tensor) not in replacements:
                    meta = _to_meta(tensor)
                    replacements[id(tensor)] = (
                        nn.Parameter(meta, requires_grad=False) if slots is module._parameters else meta
                    )
                originals.append((slots, name, tensor))
                slots[name] = replacements[id(tensor)]
    try:
        yield
    finally:
        for slots, name, tensor in originals:
            slots[name] = tensor


@dataclass(frozen=True)
class CountingPass:
    """How the counting forward ran: ``backend`` is 'meta' or 'real'; ``note`` says why meta was not used."""

    backend: str
    note: str = ""


def run_counting_forward(
    model: nn.Module,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    context: Callable[[], Any],
    prefer_meta: bool = True,
) -> CountingPass:
    """Run ``model(*args, **kwargs)`` in eval mode and without grad inside ``context()`` (a fresh context manager per
    attempt, e.g. a counting dispatch mode), on meta first and for real if that fails."""
    note = "meta disabled"
    with eval_mode(model), torch.no_grad():
        if prefer_meta:
            meta_args, meta_kwargs = tree_map(_to_meta, (tuple(args), dict(kwargs)))
            try:
                with meta_tensors(model), context():
                    model(*meta_args, **meta_kwargs)
                return CountingPass("meta")
            except Exception as error:  # any failure on meta means: count for real instead
                note = f"meta forward failed ({type(error).__name__}: {error}); counted with a real forward"
        with context():
            model(*args, **kwargs)
    return CountingPass("real", note)
