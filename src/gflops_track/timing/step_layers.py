"""The training step's per-layer pass: each module's forward and backward timed in a pass of its own, after the
step's headline timing (``latency/*`` and ``step/*`` never see its hooks).

* Forward: the inference pass's global forward pre/post hooks (``timing/layers.py``): spans, self and inclusive.
* Backward: autograd runs a module's backward outside its hooks, so every autograd node is labelled with the module
  whose forward made it, as the step's count labels them (``counting/training.py``: a module's exit claims the nodes
  behind its outputs that no inner module claimed; its entry gives what its caller ran before it to the caller), and
  a pre-hook on each node marks the moment it starts. The time from one node's start to the next one's is the first
  node's module's: the node's kernels and the engine's own work after it, so the backward's self times add up to the
  whole backward with no gap (the first stretch, before the loss's node, is the loss's). A module's backward
  inclusive time is its self time plus its submodules' (by name: ``a.b`` is inside ``a``).
* The loss, ``optimizer.step()`` and ``zero_grad`` are rows of their own: nothing of the step is lost.
* CPU: ``time.perf_counter`` in each hook. CUDA: an event recorded on the current stream in each hook (events from
  a pool the warm-up step sizes; the backward's hooks run on autograd's device thread, on the stream its kernels
  are queued on) and one synchronise after each step, never inside it.

The node labels and pre-hooks are set between the loss and the backward, a pause whose time is in no row and no
total. Node pre-hooks are removed after each step (even when it raises), the forward hooks after each forward.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_leaves

from gflops_track.common.names import ROOT_LABEL
from gflops_track.counting.training import LOSS_ROW, OPTIMIZER_ROW
from gflops_track.results.layers import StepLayerTiming, StepModuleTime
from gflops_track.timing.module_hooks import (
    MIN_ITERATIONS,
    Marks,
    Recorder,
    Unhooked,
    forward_hooks,
    iqr,
    unhooked_call,
    unhooked_summary,
)

ZERO_GRAD_ROW = "(zero_grad)"
STEP_CPU_METHOD = (
    "perf_counter in forward pre/post hooks and autograd node pre-hooks (CPU), after the step's headline timing"
)
STEP_CUDA_METHOD = (
    "CUDA events in forward pre/post hooks and autograd node pre-hooks, one synchronise per step, after the step's "
    "headline timing"
)


def _grad_nodes(value: Any) -> list[Any]:
    """The autograd nodes behind ``value``'s tensors now (read at once: an in-place op later changes a tensor's)."""
    return [leaf.grad_fn for leaf in tree_leaves(value) if isinstance(leaf, torch.Tensor) and leaf.grad_fn is not None]


class _StepRecorder(Recorder):
    """The forward spans, plus what labels the backward: in call order, (label, nodes) for each module's inputs
    (its caller's) and outputs (its own)."""

    def __init__(self, names: dict[int, str], marks: Marks) -> None:
        super().__init__(names, marks)
        self.claims: list[tuple[str, list[Any]]] = []

    def pre(self, module: nn.Module, args: Any) -> None:
        if id(module) in self.names:
            self.claims.append((self.spans[self.stack[-1]].name if self.stack else ROOT_LABEL, _grad_nodes(args)))
        super().pre(module, args)

    def post(self, module: nn.Module, args: Any, output: Any) -> None:
        super().post(module, args, output)
        name = self.names.get(id(module))
        if name is not None:
            self.claims.append((name, _grad_nodes(output)))

    def reset(self) -> None:
        super().reset()
        self.claims = []


@dataclass
class _Backward:
    """The backward's marks: (label, start, end) per stretch, from one node's start to the next one's."""

    marks: Marks
    label: str = LOSS_ROW
    last: Any = None
    stretches: list[tuple[str, Any, Any]] = field(default_factory=list)
    handles: list[Any] = field(default_factory=list)
    nodes: list[Any] = field(default_factory=list)  # kept alive (and their ids unique) while the step runs

    def enter(self, label: str, _grad_outputs: Any) -> None:
        now = self.marks.mark()
        self.stretches.append((self.label, self.last, now))
        self.label, self.last = label, now

    def claim(self, claims: list[tuple[str, list[Any]]], loss: torch.Tensor) -> None:
        """Label every node of the step's graph in call order (each node once, by the first claim that reaches
        it; the loss's nodes last) and give each a pre-hook that starts its stretch."""
        seen: set[int] = set()
        for label, nodes in [*claims, (LOSS_ROW, _grad_nodes(loss))]:
            stack = list(nodes)
            while stack:
                node = stack.pop()
                if node is None or id(node) in seen:
                    continue
                seen.add(id(node))
                self.nodes.append(node)
                self.handles.append(node.register_prehook(lambda grads, label=label: self.enter(label, grads)))
                stack.extend(next_node for next_node, _ in node.next_functions)

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles, self.nodes = [], []


@dataclass
class _StepTimes:
    """One step's times per row (ms) and its total."""

    forward_self: dict[str, float]
    forward_inclusive: dict[str, float]
    calls: dict[str, int]
    backward_self: dict[str, float]
    optimizer: dict[str, float]
    total_ms: float


def _step_times(
    recorder: _StepRecorder, backward: _Backward, marks: Marks, points: list[Any], labels: list[str]
) -> _StepTimes:
    """After the step (and on CUDA its synchronise): the rows' times from the marks. ``points``: before and after
    the forward, after the loss, before and after the backward, after the optimizer's step, after zero_grad."""
    before, after_forward, after_loss, backward_start, backward_end, after_step, after_zero = points
    inclusive, own, calls = recorder.forward_times()
    outside = marks.elapsed_ms(before, after_forward) - inclusive.get(ROOT_LABEL, 0.0)
    own[ROOT_LABEL] += outside  # the forward's wrapper (autocast, the placed call) is the model's own code
    inclusive[ROOT_LABEL] += outside
    calls[ROOT_LABEL] = max(calls[ROOT_LABEL], 1)
    loss_ms = marks.elapsed_ms(after_forward, after_loss)
    own[LOSS_ROW], inclusive[LOSS_ROW], calls[LOSS_ROW] = loss_ms, loss_ms, 1
    spent: dict[str, float] = defaultdict(float)
    backward.stretches.append((backward.label, backward.last, backward_end))
    for label, start, end in backward.stretches:
        spent[label] += marks.elapsed_ms(start, end)
    backward_self = {label: spent.get(label, 0.0) for label in labels}
    optimizer = {
        OPTIMIZER_ROW: marks.elapsed_ms(backward_end, after_step),
        ZERO_GRAD_ROW: marks.elapsed_ms(after_step, after_zero),
    }
    total = (
        marks.elapsed_ms(before, after_loss) + marks.elapsed_ms(backward_start, backward_end) + sum(optimizer.values())
    )
    return _StepTimes(dict(own), dict(inclusive), dict(calls), backward_self, optimizer, total)


def time_step_layers(
    model: nn.Module,
    forward: Callable[[], Any],
    loss_of: Callable[[Any], torch.Tensor],
    optimizer: torch.optim.Optimizer | None,
    device: torch.device,
    *,
    iterations: int,
    max_time_s: float,
) -> StepLayerTiming:
    """Time every named module of ``model`` in a training step: ``forward()``, ``loss_of(output)``, backward,
    ``optimizer.step()`` (when there is one) and ``model.zero_grad(set_to_none=True)``, as the step's timing runs
    it. One warm-up step, then up to ``iterations`` timed steps (at least ``MIN_ITERATIONS``, fewer once
    ``max_time_s`` has passed), each preceded by one with no hooks (the side-by-side reference). The caller puts
    ``model`` (a copy: its weights and gradients are the pass's) in train mode, with an optimizer that does not move
    the weights (lr 0)."""
    if iterations < 1:
        raise ValueError(f"iterations={iterations} is not allowed: use 1 or more")
    names = {id(module): name or ROOT_LABEL for name, module in model.named_modules()}
    order = list(dict.fromkeys(names.values()))
    labels = [*order, LOSS_ROW]
    marks = Marks(device)
    recorder = _StepRecorder(names, marks)

    def plain_step() -> None:
        loss_of(forward()).backward()
        if optimizer is not None:
            optimizer.step()
        model.zero_grad(set_to_none=True)

    def hooked_step() -> _StepTimes:
        recorder.reset()
        marks.used = 0
        backward = _Backward(marks)
        try:
            before = marks.mark()
            with forward_hooks(recorder):
                output = forward()
            after_forward = marks.mark()
            loss = loss_of(output)
            after_loss = marks.mark()
            backward.claim(recorder.claims, loss)  # the pause: in no row, no total
            backward.last = backward_start = marks.mark()
            loss.backward()
            backward_end = marks.mark()
            if optimizer is not None:
                optimizer.step()
            after_step = marks.mark()
            model.zero_grad(set_to_none=True)
            after_zero = marks.mark()
            if marks.cuda:
                torch.cuda.synchronize(device)
            points = [before, after_forward, after_loss, backward_start, backward_end, after_step, after_zero]
            return _step_times(recorder, backward, marks, points, labels)
        finally:
            backward.remove()
            recorder.claims = []

    steps: list[_StepTimes] = []
    plain: list[Unhooked] = []
    started = time.perf_counter()
    with (
        torch.inference_mode(False),
        torch.enable_grad(),
        torch.cuda.device(device) if marks.cuda else contextlib.nullcontext(),
    ):
        for index in range(iterations + 1):
            if index > 0:
                plain.append(unhooked_call(plain_step, device, marks.cuda))
            timed = hooked_step()
            if index > 0:  # the first step warms up (and sizes the CUDA event pool)
                steps.append(timed)
            if index >= MIN_ITERATIONS and time.perf_counter() - started > max_time_s:
                break
    return StepLayerTiming(
        STEP_CUDA_METHOD if marks.cuda else STEP_CPU_METHOD,
        len(steps),
        statistics.median(step.total_ms for step in steps),
        _summarise(steps, order, optimizer is not None),
        **unhooked_summary(plain),
        total_s=time.perf_counter() - started,
    )


def _inside(name: str, outer: str) -> bool:
    """``name`` is ``outer`` or one of its submodules (every module is inside the root)."""
    return outer == ROOT_LABEL or name == outer or name.startswith(f"{outer}.")


def _summarise(steps: list[_StepTimes], order: list[str], has_optimizer: bool) -> list[StepModuleTime]:
    """Medians over the steps, modules in ``named_modules`` order, then the loss, the optimizer and zero_grad rows;
    a module that never ran forward is left out."""
    ran = [name for name in order if any(name in step.calls for step in steps)]
    rows = []
    for name in [*ran, LOSS_ROW]:
        forward_own = [step.forward_self.get(name, 0.0) for step in steps]
        backward_own = [step.backward_self.get(name, 0.0) for step in steps]
        inner = [other for other in ran if _inside(other, name)] if name != LOSS_ROW else [LOSS_ROW]
        rows.append(
            StepModuleTime(
                name=name,
                calls=max(step.calls.get(name, 0) for step in steps),
                forward_self_ms=statistics.median(forward_own),
                forward_inclusive_ms=statistics.median(step.forward_inclusive.get(name, 0.0) for step in steps),
                forward_self_iqr_ms=iqr(forward_own),
                backward_self_ms=statistics.median(backward_own),
                backward_inclusive_ms=statistics.median(
                    sum(step.backward_self.get(other, 0.0) for other in inner) for step in steps
                ),
                backward_self_iqr_ms=iqr(backward_own),
                self_min_ms=min(f + b for f, b in zip(forward_own, backward_own, strict=True)),
            )
        )
    for name in (OPTIMIZER_ROW, ZERO_GRAD_ROW) if has_optimizer else (ZERO_GRAD_ROW,):
        spent = [step.optimizer[name] for step in steps]
        rows.append(
            StepModuleTime(
                name, 1, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, optimizer_ms=statistics.median(spent), self_min_ms=min(spent)
            )
        )
    return rows
