"""Counting a training step: zero_grad, forward, loss, backward and optimizer step, priced with the same rule table.

The step runs on meta tensors (parameters swapped for meta stand-ins that require grad exactly where the real ones
do; inputs that require no grad, as real data; every module in ``train()``, flags restored after), under the same
dispatch-level counter as the inference count. Each op is filed by *phase* (forward, backward, optimizer) and by
*scope*:

* forward: the innermost module running (module hooks, as for inference); the loss under ``(loss)``;
* backward: autograd runs backward ops outside any module hook, so every autograd node is labelled with the module
  whose forward created it (each module's exit walks the graph back from its outputs and labels the nodes no inner
  module claimed; its entry labels what its caller ran before it), and the counter reads the label of
  ``torch._C._current_autograd_node()`` for each backward op. The per-layer forward and backward columns therefore
  add up to the phase totals. A node with no label (made by the backward itself: reentrant activation checkpointing
  runs its function again inside its node's backward) goes with the last labelled node that ran, the checkpoint's,
  as in the step's layer timing (``timing/step_layers.py``);
* optimizer: ``(optimizer)``, in the phase totals only (the optimizer works per parameter tensor, not per module).

An op with no rule is listed as uncounted, with its phase and scope, never silently 0. If the step cannot run on
meta, it runs for real on a deep copy of the model (the caller's weights and optimizer state are never touched).
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._pytree import tree_leaves, tree_map
from torch.utils.flop_counter import FlopCounterMode

from gflops_track.counting.counting_forward import (
    dynamo_import_deferred,
    fake_tensors,
    meta_tensors,
    on_meta,
    to_meta,
    weightless_failure,
)
from gflops_track.counting.layer_info import ROOT_LABEL
from gflops_track.counting.op_counter import _CountingMode, validate_extra_rules
from gflops_track.counting.rules import Category, Rule
from gflops_track.counting.scope import ScopeTally
from gflops_track.options.training import DEFAULT_LOSS, DEFAULT_OPTIMIZER, training_arg_errors
from gflops_track.results.counting import TrainingCost, TrainingLayerCost

__all__ = [
    "PHASES",
    "TrainingCost",
    "TrainingLayerCost",
    "compute_loss",
    "count_training_cost",
    "make_optimizer",
    "train_mode",
]

PHASES: tuple[str, ...] = ("forward", "backward", "optimizer")
LOSS_ROW = "(loss)"
OPTIMIZER_ROW = "(optimizer)"
SCOPE_KEY = "gflops_track.scope"  # the key of an autograd node's ``metadata`` that names the module it came from
LEARNING_RATE = 1e-3  # any value: FLOPs do not depend on it


class TrainingInputError(ValueError):
    """Bad input found while running the step (e.g. a loss that does not fit the output): no fallback, no run."""


def mark_graph(value: Any, label: str) -> None:
    """Label every autograd node behind ``value`` that has no label yet with ``label`` (walk stops at labelled
    nodes, so each node is visited once over the whole forward)."""
    stack = [leaf.grad_fn for leaf in tree_leaves(value) if isinstance(leaf, torch.Tensor)]
    while stack:
        node = stack.pop()
        if node is None or SCOPE_KEY in node.metadata:
            continue
        node.metadata[SCOPE_KEY] = label
        stack.extend(next_node for next_node, _ in node.next_functions)


class _TrainingMode(_CountingMode):
    """The inference counter, with tallies per phase and backward ops filed under the module that made their node."""

    def __init__(
        self,
        module_names: Mapping[int, str],
        extra_rules: Mapping[Any, Rule] | None = None,
        torch_counter: FlopCounterMode | None = None,
    ) -> None:
        super().__init__(module_names, extra_rules, torch_counter)
        self.phase = "forward"
        self.outside = ""  # the scope of forward ops outside every module: the root, then the loss
        self.tallies: dict[str, dict[str, ScopeTally]] = {phase: {} for phase in PHASES}
        self.backward_scope = ""  # the label of the last labelled autograd node that ran (the loss's are the first)

    def _scope(self, name: str) -> ScopeTally:
        return self.tallies[self.phase].setdefault(name, ScopeTally())

    def _current(self) -> ScopeTally:
        if self.phase == "backward":
            node = torch._C._current_autograd_node()
            if node is None:  # before the first node: the loss's gradient of ones
                return self._scope(LOSS_ROW)
            self.backward_scope = node.metadata.get(SCOPE_KEY, self.backward_scope)
            return self._scope(self.backward_scope)
        if self.phase == "optimizer":
            return self._scope(OPTIMIZER_ROW)
        return self._scope(self._stack[-1] if self._stack else self.outside)

    def _enter_module(self, module: nn.Module, args: Any) -> None:
        if self.phase == "forward":  # what the caller ran before this call is the caller's
            mark_graph(args, self._stack[-1] if self._stack else self.outside)
        super()._enter_module(module, args)

    def _leave_module(self, module: nn.Module, args: Any, output: Any) -> None:
        name = self.module_names.get(id(module))
        if self.phase == "forward" and name is not None and self._stack and self._stack[-1] == name:
            mark_graph(output, name)
        super()._leave_module(module, args, output)


@dataclass
class _StepHooks:
    """What the step tells its counter: the phase it enters, that the loss starts, and the loss value (no-ops for
    FlopCounterMode)."""

    phase: Callable[[str], None] = lambda _phase: None
    loss_start: Callable[[], None] = lambda: None
    loss: Callable[[torch.Tensor], None] = lambda _value: None


def _hooks_for(counter: Any) -> _StepHooks:
    if not isinstance(counter, _TrainingMode):
        return _StepHooks()

    def enter_phase(phase: str) -> None:
        counter.phase = phase

    def start_loss() -> None:
        counter.outside = LOSS_ROW

    def label_loss(value: torch.Tensor) -> None:
        mark_graph(value, LOSS_ROW)

    return _StepHooks(enter_phase, start_loss, label_loss)


def make_optimizer(
    optimizer: str, parameters: list[nn.Parameter], lr: float = LEARNING_RATE
) -> torch.optim.Optimizer | None:
    """The step's optimizer over ``parameters`` (torch's defaults but ``lr``), or None for 'none'."""
    if optimizer == "sgd":
        return torch.optim.SGD(parameters, lr=lr)
    if optimizer == "adamw":
        return torch.optim.AdamW(parameters, lr=lr)
    return None


def _first_tensor(value: Any) -> torch.Tensor:
    return next(leaf for leaf in tree_leaves(value) if isinstance(leaf, torch.Tensor))


def compute_loss(output: Any, loss: str, labels: torch.Tensor | None) -> torch.Tensor:
    """``sum``: the sum of every floating output tensor (needs no labels). ``cross_entropy``: ``F.cross_entropy`` of
    the first output tensor (N, C, ...) against ``labels`` (class indices (N, ...) or probabilities (N, C, ...)),
    made as class 0 everywhere when not given."""
    tensors = [leaf for leaf in tree_leaves(output) if isinstance(leaf, torch.Tensor) and leaf.is_floating_point()]
    if not tensors:
        raise TrainingInputError(
            f"model output {type(output).__name__} is not allowed in a training step: it holds no floating tensor"
        )
    if loss == "sum":
        return sum((tensor.sum() for tensor in tensors[1:]), tensors[0].sum())
    logits = tensors[0]
    if logits.dim() < 2 or logits.shape[1] < 2:
        raise TrainingInputError(
            f"loss='cross_entropy' is not allowed for a model output of shape {list(logits.shape)}: it needs a class "
            "dimension (N, C, ...) with C >= 2; use loss='sum'"
        )
    index_shape = (logits.shape[0], *logits.shape[2:])
    token_shape = tuple(logits.shape[:-1])  # a language model's (N, L, vocabulary): one class index per token
    if labels is None:
        labels = torch.zeros(index_shape, dtype=torch.long, device=logits.device)
    elif tuple(labels.shape) == token_shape and token_shape != index_shape and not labels.is_floating_point():
        return F.cross_entropy(logits.flatten(0, -2), labels.to(logits.device).flatten())  # classes last, as HF's
    elif tuple(labels.shape) not in (index_shape, tuple(logits.shape)):
        raise TrainingInputError(
            f"labels of shape {list(labels.shape)} are not allowed for a model output of shape {list(logits.shape)}: "
            f"give class indices of shape {list(index_shape)} (classes on dim 1), token ids of shape "
            f"{list(token_shape)} (a language model's classes on the last dim) or probabilities of shape "
            f"{list(logits.shape)}"
        )
    return F.cross_entropy(logits, labels.to(logits.device))


@contextmanager
def train_mode(model: nn.Module) -> Iterator[None]:
    """Put every submodule in train mode, then restore each one's own ``training`` flag."""
    flags = {module: module.training for module in model.modules()}
    model.train()
    try:
        yield
    finally:
        for module, training in flags.items():
            module.training = training


def _no_grad_inputs(value: Any) -> Any:
    return value.detach() if isinstance(value, torch.Tensor) else value


def _step(
    model: nn.Module,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    counter: AbstractContextManager[Any],
    *,
    loss: str,
    optimizer: str,
    labels: torch.Tensor | None,
) -> None:
    """One step of ``model`` (swapped or copied) inside ``counter``: forward, loss, backward, step. No zero_grad: the
    parameters here are fresh stand-ins, or a deep copy's (which copies no ``.grad``), so the step starts without
    gradients and zero_grad would run no op (set to None or zeroed, it has no arithmetic to count)."""
    hooks = _hooks_for(counter)
    opt = make_optimizer(optimizer, [p for p in model.parameters() if p.requires_grad])
    with counter:
        hooks.phase("forward")
        output = model(*args, **kwargs)
        hooks.loss_start()
        value = compute_loss(output, loss, labels)
        if not value.requires_grad:
            raise TrainingInputError(
                f"model={type(model).__name__} is not allowed in a training step: its output does not depend on any "
                "trainable parameter"
            )
        hooks.loss(value)
        hooks.phase("backward")
        value.backward()
        hooks.phase("optimizer")
        if opt is not None:
            opt.step()


def run_training_step(
    model: nn.Module,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    make_counter: Callable[[nn.Module], Any],
    *,
    loss: str,
    optimizer: str,
    labels: torch.Tensor | None,
    prefer_meta: bool = True,
    device_type: str = "cpu",
) -> tuple[str, str, Any]:
    """Run the step on meta (then, if that fails, for real on a deep copy; a model built without weights on fake
    tensors of ``device_type`` instead). ``make_counter(module)`` makes a fresh counter for the module that runs (the
    copy has modules of its own). Returns (backend, note, counter)."""
    errors = training_arg_errors(model, loss, optimizer)
    if errors:
        raise ValueError("; ".join(errors))
    note = "meta disabled"
    weightless = on_meta(model)  # built without weights: counted on meta, else on fake tensors, never for real
    failures: list[str] = []
    with train_mode(model):
        if prefer_meta or weightless:
            counter = make_counter(model)
            try:
                meta_args, meta_kwargs, meta_labels = tree_map(to_meta, (tuple(args), dict(kwargs), labels))
                with meta_tensors(model, keep_requires_grad=True), dynamo_import_deferred():
                    _step(model, meta_args, meta_kwargs, counter, loss=loss, optimizer=optimizer, labels=meta_labels)
                return "meta", "", counter
            except TrainingInputError:
                raise
            except Exception as error:  # any other failure on meta means: count for real instead
                failures.append(f"meta step failed ({type(error).__name__}: {error})")
                note = f"{failures[0]}; counted with a real step on a copy"
        if weightless:
            counter = make_counter(model)
            values = (tuple(args), dict(kwargs), labels)
            try:
                with (
                    fake_tensors(model, values, device_type, keep_requires_grad=True) as (
                        fake_args,
                        fake_kwargs,
                        fake_labels,
                    ),
                    dynamo_import_deferred(),
                ):
                    _step(model, fake_args, fake_kwargs, counter, loss=loss, optimizer=optimizer, labels=fake_labels)
                return "fake", f"{failures[0]}; counted on fake tensors", counter
            except TrainingInputError:
                raise
            except Exception as error:
                failures.append(f"fake-tensor step failed ({type(error).__name__}: {error})")
                raise weightless_failure(failures) from error
    replica = copy.deepcopy(model)
    replica.train()
    counter = make_counter(replica)
    real_args, real_kwargs = tree_map(_no_grad_inputs, (tuple(args), dict(kwargs)))
    _step(replica, real_args, real_kwargs, counter, loss=loss, optimizer=optimizer, labels=labels)
    return "real", note, counter


def _ops_text(tally: ScopeTally | None) -> str:
    if tally is None:
        return ""
    return ", ".join(f"{op.removeprefix('aten.')} x{n}" for op, n in sorted(tally.ops.items()))


def _layer_rows(
    model: nn.Module, loss: str, tallies: Mapping[str, Mapping[str, ScopeTally]]
) -> list[TrainingLayerCost]:
    forward, backward = tallies["forward"], tallies["backward"]
    seen: set[int] = set()
    rows = []
    entries: list[tuple[str, str, int, int]] = []
    for name, module in model.named_modules():
        own = [p for p in module.parameters(recurse=False) if p.requires_grad and id(p) not in seen]
        seen.update(id(p) for p in own)
        entries.append((name, type(module).__name__, name.count(".") + 1 if name else 0, sum(p.numel() for p in own)))
    entries.append((LOSS_ROW, f"loss:{loss}", 0, 0))
    for name, kind, depth, params in entries:
        ahead, behind = forward.get(name), backward.get(name)
        rows.append(
            TrainingLayerCost(
                name=name or ROOT_LABEL,
                type=kind,
                depth=depth,
                params=params,
                forward_macs=ahead.macs if ahead else 0,
                forward_flops=sum(ahead.flops.values()) if ahead else 0,
                backward_macs=behind.macs if behind else 0,
                backward_flops=sum(behind.flops.values()) if behind else 0,
                forward_ops=_ops_text(ahead),
                backward_ops=_ops_text(behind),
            )
        )
    return rows


def count_training_cost(
    model: nn.Module,
    args: Sequence[Any],
    kwargs: Mapping[str, Any] | None = None,
    *,
    loss: str = DEFAULT_LOSS,
    optimizer: str = DEFAULT_OPTIMIZER,
    labels: torch.Tensor | None = None,
    prefer_meta: bool = True,
    extra_rules: Mapping[Any, Rule] | None = None,
    device_type: str = "cpu",
    torch_counter: FlopCounterMode | None = None,
) -> TrainingCost:
    """Count MACs and FLOPs of one training step of ``model(*args, **kwargs)`` by phase, category and layer
    (``device_type``: where a model built without weights would run, for its fake tensors). ``torch_counter`` counts
    the same step, below ours, so both see the very same ops (``torch_crosscheck.counter_agreement`` compares
    them)."""
    rules = validate_extra_rules(extra_rules)
    backend, note, counter = run_training_step(
        model,
        args,
        kwargs or {},
        lambda module: _TrainingMode({id(inner): name for name, inner in module.named_modules()}, rules, torch_counter),
        loss=loss,
        optimizer=optimizer,
        labels=labels,
        prefer_meta=prefer_meta,
        device_type=device_type,
    )
    by_phase_category: dict[str, dict[str, int]] = {}
    by_category: Counter[str] = Counter()  # every category's key comes with the first phase's
    dense_by_op: Counter[str] = Counter()
    uncounted: dict[str, int] = {}
    macs_by_phase: dict[str, int] = {}
    for phase in PHASES:
        phase_categories: Counter[str] = Counter({str(category): 0 for category in Category})
        scopes = counter.tallies[phase]
        for scope_name, tally in scopes.items():
            phase_categories.update(tally.flops)
            dense_by_op.update(tally.dense_flops_by_op)
            for op_name, calls in tally.uncounted.items():
                uncounted[f"{op_name} ({phase}, in {scope_name or type(model).__name__})"] = calls
        by_phase_category[phase] = dict(phase_categories)
        by_category.update(phase_categories)
        macs_by_phase[phase] = sum(tally.macs for tally in scopes.values())
    return TrainingCost(
        params=sum(parameter.numel() for parameter in model.parameters()),
        trainable_params=sum(parameter.numel() for parameter in model.parameters() if parameter.requires_grad),
        loss=loss,
        optimizer=optimizer,
        macs_by_phase=macs_by_phase,
        flops_by_phase={phase: sum(categories.values()) for phase, categories in by_phase_category.items()},
        flops_by_category=dict(by_category),
        flops_by_phase_category=by_phase_category,
        layers=_layer_rows(model, loss, counter.tallies),
        uncounted_ops=uncounted,
        dense_flops_by_op={op: flops for op, flops in dense_by_op.items() if flops},
        backend=backend,
        backend_note=note,
    )
