"""Building a model with its weights, or on the meta device without them (``model.init``: auto, meta, real).

A model built on meta holds shapes and dtypes only: it is counted (params, MACs, FLOPs, the per-layer table, the
training step) with no memory for its weights, but it cannot be run, so it is not timed. ``auto`` builds on meta
first, which costs no memory, weighs the parameters and buffers, and builds for real only when they fit.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.modules.module import (
    register_module_buffer_registration_hook,
    register_module_parameter_registration_hook,
)

from gflops_track.machine.hardware import free_memory

INIT_CHOICES = ("auto", "meta", "real")
DEFAULT_INIT = "auto"  # model.init when a model's config does not set it
HEADROOM = 0.9  # auto builds for real only when the weights take at most this share of the free memory
GB = 1e9  # bytes per GB, the unit of the notes


@dataclass(frozen=True)
class Built:
    """The model, and why it has no weights when it was built on meta ('' when it has them)."""

    module: nn.Module
    weightless_reason: str = ""


def weight_bytes(model: nn.Module) -> int:
    """Bytes of every parameter and buffer, a tensor shared by several modules once; a lazy module's (``nn.LazyLinear``)
    count none, as their shapes are known only after the first forward."""
    tensors = {id(t): t for t in (*model.parameters(), *model.buffers()) if not nn.parameter.is_lazy(t)}
    return sum(t.numel() * t.element_size() for t in tensors.values())


def build_weightless(factory: Callable[[], nn.Module]) -> nn.Module:
    """``factory()`` with its parameters and buffers on meta: every tensor made on meta (no memory, no init compute)
    or, when the constructor computes with tensors of its own and so fails there (RegNet derives its widths with
    ``torch.arange(...).tolist()``: "Cannot copy out of meta tensor"; others call ``.item()``), its weights moved to
    meta as each module registers them, each allocated for a moment (one layer's worth)."""
    try:
        with torch.device("meta"):
            return factory()
    except (NotImplementedError, RuntimeError) as error:
        if "meta" not in str(error):
            raise
    with weights_on_meta():
        return factory()


@contextlib.contextmanager
def weights_on_meta() -> Iterator[None]:
    """Parameters and buffers go to meta as a module registers them, through torch's global registration hooks
    (removed on exit); other tensors, a constructor's own arithmetic, stay where they are made. A tensor registered
    twice (tied weights) becomes one meta tensor; a parameter keeps its class; a lazy one stays lazy."""
    on_meta: dict[int, torch.Tensor] = {}  # id of the tensor registered -> its meta copy (kept alive by `kept`)
    kept: list[torch.Tensor] = []

    def moved(tensor: torch.Tensor, make: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        if id(tensor) not in on_meta:
            kept.append(tensor)
            on_meta[id(tensor)] = make(tensor)
        return on_meta[id(tensor)]

    def parameter_to_meta(module: nn.Module, name: str, parameter: nn.Parameter | None) -> nn.Parameter | None:
        if parameter is None or parameter.is_meta:
            return None  # None keeps what is registered
        return moved(parameter, _meta_parameter)  # type: ignore[return-value]

    def buffer_to_meta(module: nn.Module, name: str, buffer: torch.Tensor | None) -> torch.Tensor | None:
        if buffer is None or buffer.is_meta:
            return None
        if isinstance(buffer, nn.parameter.UninitializedBuffer):  # lazy: materialised on meta by its first forward
            return moved(buffer, lambda lazy: nn.parameter.UninitializedBuffer(device="meta", dtype=lazy.dtype))
        return moved(buffer, lambda tensor: tensor.to("meta"))

    handles = [
        register_module_parameter_registration_hook(parameter_to_meta),
        register_module_buffer_registration_hook(buffer_to_meta),
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _meta_parameter(parameter: torch.Tensor) -> torch.Tensor:
    """A parameter's meta copy, of its own class where that class is built as ``nn.Parameter`` is; a lazy one stays
    lazy, to be materialised on meta by the first forward."""
    if isinstance(parameter, nn.parameter.UninitializedParameter):
        return nn.parameter.UninitializedParameter(parameter.requires_grad, device="meta", dtype=parameter.dtype)
    data = parameter.detach().to("meta")
    try:
        return type(parameter)(data, requires_grad=parameter.requires_grad)
    except TypeError:
        return nn.Parameter(data, requires_grad=parameter.requires_grad)


def construct(factory: Callable[[], nn.Module], init: str, device: torch.device) -> Built:
    """``factory()`` with weights (``real``), on meta (``meta``), or (``auto``) on meta when the weights would not
    fit the memory free for ``device`` (see ``HEADROOM``). A factory that cannot build on meta is built for real
    under ``auto``."""
    if init not in INIT_CHOICES:
        raise ValueError(f"init={init!r} is not allowed: choose one of {', '.join(INIT_CHOICES)}")
    if init == "real":
        return Built(factory())
    try:
        weightless = build_weightless(factory)
    except Exception:
        if init == "meta":
            raise
        return Built(factory())
    if init == "meta":
        return Built(weightless, "model.init=meta built it without weights")
    need = weight_bytes(weightless)
    free, where = free_memory(device)
    if need <= HEADROOM * free:
        del weightless
        return Built(factory())
    return Built(weightless, f"weights need {need / GB:.1f} GB, {free / GB:.1f} GB {where} (model.init=auto)")
