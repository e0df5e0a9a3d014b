"""The counting forward pass: one forward of the user's module under a counter, without touching the module.

Counting runs on the ``meta`` device when it can: parameters, buffers and inputs are swapped for meta tensors for the
duration of the pass and the original objects put back after (no copy of the model, no memory for activations, ~14x
faster than a real forward on this machine). The swap is our own: ``torch.func.functional_call`` leaves a module
shared under two names (the blog post's block registers ``norm3`` twice) with meta parameters after the call.

Under autocast the pass uses fake tensors instead: meta tensors carry no device, so ``torch.autocast`` (which acts
per device type) never casts them, and fp16/bf16 runs would be priced at 4 bytes per element. Fake tensors
(``FakeTensorMode``) keep the device of the tensors they stand for (cpu or cuda), go through autocast like the real
ones and still allocate nothing.

If the model cannot run on meta (an op without a meta kernel, data-dependent control flow), counting falls back to a
real forward on the model's own device, and says so.

torch wraps every ``TorchDispatchMode.__torch_dispatch__`` (ours and FlopCounterMode's) and its Python meta kernels
(``torch._refs``: the norms' mean and variance, ...) in ``torch._disable_dynamo``, whose first call imports
``torch._dynamo``: 1-4 s, against milliseconds for the count itself. While ``torch._dynamo`` is not loaded nothing can
be compiled, so disabling it is a no-op; ``dynamo_import_deferred`` makes those wrappers skip the import for the
duration of a pass, and leaves them exactly as they were after it. ``torch._check``, which the meta kernels call,
imports ``torch.fx.experimental.symbolic_shapes`` (and sympy) on its first call: this module imports it itself, so a
first count costs what the next ones do.
"""

from __future__ import annotations

import functools
import gc
import sys
import types
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import torch
import torch.fx.experimental.symbolic_shapes  # torch._check's own import, done here (see above)
from torch import nn
from torch.utils._pytree import tree_map

CounterT = TypeVar("CounterT", bound=AbstractContextManager[Any])
ValuesT = TypeVar("ValuesT")


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


def on_meta(model: nn.Module) -> bool:
    """Whether any of the model's parameters or buffers is on the meta device (built without weights): it can be
    counted, never run."""
    return any(tensor.is_meta for tensor in (*model.parameters(), *model.buffers()))


@contextmanager
def restored_buffers(model: nn.Module) -> Iterator[None]:
    """A real forward may update buffers in place (a running count, a cache): put back the values of every buffer it
    changed (by torch's version counter), so that counting leaves the ``state_dict`` as it found it. The copies are
    of the buffers only (parameters are rarely written by a forward: ``nn.Embedding(max_norm=...)`` renormalises
    its rows in place, and is left so; the training step works on a copy of the model)."""
    # inference tensors (a model built under torch.inference_mode) keep no version and cannot be written outside it
    # a lazy module's buffer has no value until its first forward makes one
    kept = [buffer for buffer in model.buffers() if not nn.parameter.is_lazy(buffer)]
    buffers = {id(buffer): buffer for buffer in kept if not buffer.is_inference()}
    saved = {key: (buffer._version, buffer.detach().clone()) for key, buffer in buffers.items()}
    try:
        yield
    finally:
        with torch.no_grad():
            for key, (version, value) in saved.items():
                if buffers[key]._version != version:
                    buffers[key].copy_(value)


def to_meta(value: Any) -> Any:
    """A tensor's meta twin (same shape, dtype and strides, no storage); any other value as it is."""
    return torch.empty_like(value, device="meta") if isinstance(value, torch.Tensor) else value


@contextmanager
def swapped_tensors(
    model: nn.Module, convert: Callable[[torch.Tensor], torch.Tensor], *, keep_requires_grad: bool = False
) -> Iterator[None]:
    """Swap every parameter and buffer for ``convert(tensor)`` (a tensor shared by several modules gets one shared
    replacement), then put the very same original objects back. The stand-in parameters do not require grad, unless
    ``keep_requires_grad`` (a counted training step): then each requires grad exactly where the original does."""
    originals: list[tuple[dict[str, Any], str, Any]] = []
    replacements: dict[int, Any] = {}
    try:  # a convert that fails part-way puts back what it had swapped
        for module in model.modules():
            for slots in (module._parameters, module._buffers):
                for name, tensor in list(slots.items()):
                    if tensor is None:
                        continue
                    if id(tensor) not in replacements:
                        stand_in = convert(tensor)
                        replacements[id(tensor)] = (
                            nn.Parameter(stand_in, requires_grad=keep_requires_grad and tensor.requires_grad)
                            if slots is module._parameters
                            else stand_in
                        )
                    originals.append((slots, name, tensor))
                    slots[name] = replacements[id(tensor)]
        yield
    finally:
        for slots, name, tensor in originals:
            slots[name] = tensor


def meta_tensors(model: nn.Module, *, keep_requires_grad: bool = False) -> AbstractContextManager[None]:
    """Swap every parameter and buffer for a meta tensor of the same shape and dtype (see ``swapped_tensors``)."""
    return swapped_tensors(model, to_meta, keep_requires_grad=keep_requires_grad)


_DYNAMO_DISABLED = "__dynamo_disable"  # the attribute where torch._disable_dynamo caches the disabled function


@functools.cache
def _disable_dynamo_targets() -> tuple[Callable[..., Any], ...]:
    """The functions behind torch's ``torch._disable_dynamo`` wrappers (its Python references and decompositions,
    every dispatch mode's ``__torch_dispatch__``): found once per process as the referrers of the wrapper's code
    object, each function read from its closure (``__wrapped__`` is not reliable: torch re-``wraps`` some)."""
    wrapper_code = torch._disable_dynamo(lambda: None).__code__
    if "fn" not in wrapper_code.co_freevars:  # a torch whose wrapper looks different: leave it alone
        return ()
    slot = wrapper_code.co_freevars.index("fn")
    wrappers = [obj for obj in gc.get_referrers(wrapper_code) if type(obj) is types.FunctionType and obj.__closure__]
    return tuple(wrapper.__closure__[slot].cell_contents for wrapper in wrappers)


@contextmanager
def dynamo_import_deferred() -> Iterator[None]:
    """While ``torch._dynamo`` is not loaded, let torch's ``torch._disable_dynamo`` wrappers call their function
    directly instead of importing ``torch._dynamo`` to disable a compiler that cannot be running; then remove exactly
    the markers this set. With ``torch._dynamo`` loaded (a compiled model), it changes nothing. (A forward that
    itself imports ``torch._dynamo`` and compiles, mid-pass, compiles with these functions not disabled until the
    pass ends.)"""
    if "torch._dynamo" in sys.modules:
        yield
        return
    marked: list[Callable[..., Any]] = []
    for target in _disable_dynamo_targets():
        if getattr(target, _DYNAMO_DISABLED, None) is None:
            setattr(target, _DYNAMO_DISABLED, target)  # what the wrapper calls once it has disabled dynamo
            marked.append(target)
    try:
        yield
    finally:
        for target in marked:
            if getattr(target, _DYNAMO_DISABLED, None) is target:
                delattr(target, _DYNAMO_DISABLED)


@dataclass(frozen=True)
class CountingPass(Generic[CounterT]):
    """How the counting forward ran: ``backend`` is 'meta', 'fake' (autocast, or a model without weights that meta
    could not run) or 'real'; ``note`` says why meta was not used; ``counter`` is the counter of the attempt that
    succeeded."""

    backend: str
    note: str = ""
    counter: CounterT | None = None


def _autocast(autocast_dtype: torch.dtype | None, device_type: str) -> AbstractContextManager[Any]:
    return torch.autocast(device_type, dtype=autocast_dtype) if autocast_dtype is not None else nullcontext()


def counting_attempts(prefer_meta: bool, autocast: bool, weightless: bool) -> tuple[str, ...]:
    """The backends a counting pass tries, in order. Meta first (fake tensors under autocast, which meta tensors
    would escape); then a real forward, or, for a model built without weights, fake tensors (libraries that read a
    tensor's values, such as a mask's "all ones" check, skip the read on fake tensors: they know it is a trace)."""
    if weightless:
        return ("fake",) if autocast else ("meta", "fake")
    first = ("fake",) if autocast else ("meta",)
    return (*first, "real") if prefer_meta else ("real",)


def weightless_failure(failures: Sequence[str]) -> RuntimeError:
    """Why a model built without weights could not be counted: every attempt's error, and what would help."""
    return RuntimeError(
        f"the model's weights are on the meta device and it could not be counted without them ({'; '.join(failures)});"
        " build it with its weights"
    )


def run_counting_forward(
    model: nn.Module,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    make_counter: Callable[[], CounterT],
    prefer_meta: bool = True,
    *,
    autocast_dtype: torch.dtype | None = None,
    device_type: str = "cpu",
) -> CountingPass[CounterT]:
    """Run ``model(*args, **kwargs)`` in eval mode, without grad and under ``torch.autocast(device_type,
    autocast_dtype)`` when a dtype is given, inside a fresh ``make_counter()`` per attempt, trying the backends of
    ``counting_attempts`` in order. Returns how it ran and the counter that saw the whole pass. A model whose
    weights are on meta is never run for real: there is nothing to run."""
    weightless = on_meta(model)
    failures: list[str] = []
    with eval_mode(model), torch.no_grad(), dynamo_import_deferred():
        for backend in counting_attempts(prefer_meta, autocast_dtype is not None, weightless):
            counter = make_counter()
            if backend == "real":
                with restored_buffers(model), _autocast(autocast_dtype, device_type), counter:
                    model(*args, **kwargs)
                note = "; ".join([*failures, "counted with a real forward"]) if failures else "meta disabled"
                return CountingPass("real", note, counter)
            try:
                if backend == "meta":
                    meta_args, meta_kwargs = tree_map(to_meta, (tuple(args), dict(kwargs)))
                    with meta_tensors(model), counter:
                        model(*meta_args, **meta_kwargs)
                else:
                    with (
                        fake_tensors(model, (tuple(args), dict(kwargs)), device_type) as (fake_args, fake_kwargs),
                        _autocast(autocast_dtype, device_type),
                        counter,
                    ):
                        model(*fake_args, **fake_kwargs)
            except Exception as error:  # try the next backend
                kind = "meta" if backend == "meta" else "fake-tensor"
                failures.append(f"{kind} forward failed ({type(error).__name__}: {error})")
                continue
            return CountingPass(
                backend, "; ".join([*failures, f"counted on {backend} tensors"]) if failures else "", counter
            )
    raise weightless_failure(failures)


@contextmanager
def fake_tensors(
    model: nn.Module, values: ValuesT, device_type: str, *, keep_requires_grad: bool = False
) -> Iterator[ValuesT]:
    """Inside a ``FakeTensorMode``: fake stand-ins (same device, shape, dtype and strides, no storage) for the model's
    parameters and buffers (see ``swapped_tensors``) and for every tensor in ``values`` (the inputs), which come back
    as fakes. A meta tensor (a model built without weights) gets a fake one on ``device_type``, where the run would
    hold it, so autocast casts it as it would the real one."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    fake_mode = FakeTensorMode(allow_non_fake_inputs=False)

    def to_fake(value: Any) -> Any:
        if not isinstance(value, torch.Tensor):
            return value
        if value.is_meta:
            with fake_mode:
                return torch.empty_strided(value.shape, value.stride(), dtype=value.dtype, device=device_type)
        return fake_mode.from_tensor(value)

    with ExitStack() as stack:
        fake_values = tree_map(to_fake, values)
        stack.enter_context(swapped_tensors(model, to_fake, keep_requires_grad=keep_requires_grad))
        stack.enter_context(fake_mode)
        yield fake_values
