"""The training step as a first-class workload: ``count_training_step`` (forward, loss, backward and optimizer step
counted on meta tensors with the same rule table, by phase, category and layer), ``measure_training_step`` (the
whole step timed with the same engine) and ``profile_training_step`` (both, set against the device's peaks: MFU).
Built on the inference steps in ``steps.py``.

MFU (model FLOPs utilization) = counted FLOPs of one step / median step time / peak FLOP/s, against the datasheet
peak on a GPU that has one for the run's dtype, else the measured roof (``ProfileResult.mfu`` names which)."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import asdict, replace
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_map
from torch.utils.flop_counter import FlopCounterMode

from gflops_track.counting.counting_forward import on_meta
from gflops_track.counting.torch_crosscheck import counter_agreement
from gflops_track.counting.training import (
    TrainingInputError,
    compute_loss,
    count_training_cost,
    make_optimizer,
    train_mode,
)
from gflops_track.options.count import CountOptions
from gflops_track.options.peaks import PeakOptions
from gflops_track.options.runtime import RuntimeOptions
from gflops_track.options.timing import ProgressCallback, TimingOptions
from gflops_track.options.training import DEFAULT_LOSS, DEFAULT_OPTIMIZER, training_arg_errors
from gflops_track.pipeline.placement import (
    Inputs,
    as_call,
    batch_size_of,
    input_shapes,
    place,
    resolve_device,
    where_it_runs,
)
from gflops_track.pipeline.runtime import prepare, runtime_context
from gflops_track.pipeline.steps import (
    WEIGHTLESS,
    count,
    counting_notes,
    peak_report,
    timing_options,
    timing_skipped_note,
)
from gflops_track.results.counting import TrainingCost
from gflops_track.results.layers import StepLayerRow, StepLayerTiming
from gflops_track.results.profile import ProfileResult
from gflops_track.results.training import TrainingCountResult, TrainingStep, TrainingTimingResult
from gflops_track.timing.engine import measure_latency
from gflops_track.timing.layers import DEFAULT_ITERATIONS as LAYER_ITERATIONS
from gflops_track.timing.layers import DEFAULT_MAX_TIME_S as LAYER_MAX_TIME_S
from gflops_track.timing.step_layers import OPTIMIZER_ROW, ZERO_GRAD_ROW, time_step_layers


def count_training_step(
    model: nn.Module,
    inputs: Inputs,
    device: str | torch.device = "cpu",
    *,
    loss: str = DEFAULT_LOSS,
    optimizer: str = DEFAULT_OPTIMIZER,
    labels: torch.Tensor | None = None,
    kwargs: Mapping[str, Any] | None = None,
    runtime: RuntimeOptions | None = None,
    options: CountOptions | None = None,
) -> TrainingCountResult:
    """MACs and FLOPs of one training step of ``model(*inputs, **kwargs)``: zero_grad, forward, ``loss`` ('sum', or
    'cross_entropy' against ``labels``, class 0 when not given), backward and ``optimizer`` step ('sgd', 'adamw', or
    'none' for forward + backward only). Inputs need no grad, the module runs in train mode on meta tensors (flags,
    weights and state_dict left as they were); ``options.torch_check`` adds FlopCounterMode over the same step.
    Bad arguments raise a one-line ``ValueError``."""
    target = resolve_device(device)
    runtime = runtime or RuntimeOptions.of_model(model)
    options = options or CountOptions()
    args, kwargs = place(model, inputs, kwargs, target, runtime)
    args, kwargs = tree_map(lambda leaf: leaf.detach() if isinstance(leaf, torch.Tensor) else leaf, (args, kwargs))
    torch_counter = FlopCounterMode(display=False) if options.torch_check else None
    with runtime_context(runtime):
        cost = count_training_cost(
            model,
            args,
            kwargs,
            loss=loss,
            optimizer=optimizer,
            labels=labels,
            prefer_meta=options.meta,
            extra_rules=options.extra_rules,
            device_type=target.type,
            torch_counter=torch_counter,
        )
    notes = counting_notes(cost.backend_note, cost.uncounted_ops)
    torch_count = None if torch_counter is None else counter_agreement(torch_counter, cost.dense_flops_by_op)
    notes.extend(f"counters disagree: {note}" for note in torch_count.notes if torch_count is not None)
    shapes = input_shapes(args, kwargs)
    return TrainingCountResult(
        model_name=type(model).__name__,
        device=str(target),
        input_shapes=shapes,
        batch_size=batch_size_of(shapes),
        cost=cost,
        torch_count=torch_count,
        notes=notes,
    )


def measure_training_step(
    model: nn.Module,
    inputs: Inputs,
    device: str | torch.device = "cpu",
    *,
    loss: str = DEFAULT_LOSS,
    optimizer: str = DEFAULT_OPTIMIZER,
    labels: torch.Tensor | None = None,
    kwargs: Mapping[str, Any] | None = None,
    runtime: RuntimeOptions | None = None,
    options: TimingOptions | None = None,
    on_progress: ProgressCallback | None = None,
) -> TrainingTimingResult:
    """Time one training step of ``model(*inputs, **kwargs)`` (same steps as ``count_training_step``) with the
    adaptive engine of ``measure``, then the forward + loss alone.

    State stays identical across iterations: the step runs on a deep copy of the (placed) module in train mode, with
    the same inputs, and the optimizer's learning rate is 0, so every kernel of the step runs (SGD's ``add_``, AdamW's
    decay, moments and ``addcdiv_``) but the weights never drift. Your module's weights, ``.grad`` and flags are left
    as they were (it is moved to ``device`` and converted as ``measure`` does)."""
    if on_meta(model):
        raise ValueError(f"{type(model).__name__}'s training step cannot be timed: {WEIGHTLESS}")
    errors = training_arg_errors(model, loss, optimizer)
    target = resolve_device(device)
    runtime = runtime or RuntimeOptions.of_model(model)
    options = options or TimingOptions()
    errors += [f"{name}{message}" for name, message in options.problems()]
    if errors:
        raise ValueError("; ".join(errors))
    args, kwargs = place(model, inputs, kwargs, target, runtime)
    args, kwargs = tree_map(lambda leaf: leaf.detach() if isinstance(leaf, torch.Tensor) else leaf, (args, kwargs))
    target_labels = labels.to(target) if labels is not None else None
    replica = copy.deepcopy(model)
    with runtime_context(runtime):
        forward, args, kwargs = prepare(replica, args, kwargs, runtime, target)
        opt = make_optimizer(optimizer, [p for p in replica.parameters() if p.requires_grad], lr=0.0)

        def forward_and_loss() -> torch.Tensor:
            with torch.inference_mode(False), torch.enable_grad():  # the timing engine runs under inference_mode
                return compute_loss(forward(), loss, target_labels)

        def step() -> None:
            with torch.inference_mode(False), torch.enable_grad():
                forward_and_loss().backward()
                if opt is not None:
                    opt.step()
                replica.zero_grad(set_to_none=True)  # last: the memory window opens between steps with no gradient

        with train_mode(replica):
            step_timing = measure_latency(step, target, options, on_progress)
            forward_timing = measure_latency(forward_and_loss, target, options, on_progress)
    shapes = input_shapes(args, kwargs)
    return TrainingTimingResult(step=step_timing, forward=forward_timing, batch_size=batch_size_of(shapes))


def measure_step_layers(
    model: nn.Module,
    inputs: Inputs,
    device: str | torch.device = "cpu",
    *,
    loss: str = DEFAULT_LOSS,
    optimizer: str = DEFAULT_OPTIMIZER,
    labels: torch.Tensor | None = None,
    kwargs: Mapping[str, Any] | None = None,
    runtime: RuntimeOptions | None = None,
    iterations: int = LAYER_ITERATIONS,
    max_time_s: float = LAYER_MAX_TIME_S,
) -> StepLayerTiming:
    """Each module's forward and backward time in a training step (``timing/step_layers.py``), the loss, the
    optimizer's step and zero_grad as rows of their own. Run it after ``measure_training_step``: its hooks never
    touch the step's headline timing. Like that timing, it steps a deep copy with lr 0: your module's weights,
    ``.grad`` and flags are left as they were. A compiled model runs as one graph, whose modules no hook sees:
    ``ValueError``."""
    if on_meta(model):
        raise ValueError(f"{type(model).__name__}'s training step cannot be timed: {WEIGHTLESS}")
    runtime = runtime or RuntimeOptions.of_model(model)
    if runtime.compile != "off":
        raise ValueError(f"compile={runtime.compile!r}: per-layer times need compile=off (a graph has no modules)")
    errors = training_arg_errors(model, loss, optimizer)
    if errors:
        raise ValueError("; ".join(errors))
    target = resolve_device(device)
    args, kwargs = place(model, inputs, kwargs, target, runtime)
    args, kwargs = tree_map(lambda leaf: leaf.detach() if isinstance(leaf, torch.Tensor) else leaf, (args, kwargs))
    target_labels = labels.to(target) if labels is not None else None
    replica = copy.deepcopy(model)
    with runtime_context(runtime):
        forward, args, kwargs = prepare(replica, args, kwargs, runtime, target)
        opt = make_optimizer(optimizer, [p for p in replica.parameters() if p.requires_grad], lr=0.0)
        with train_mode(replica):
            return time_step_layers(
                replica, forward, lambda output: compute_loss(output, loss, target_labels), opt, target,
                iterations=iterations, max_time_s=max_time_s,
            )  # fmt: skip


def step_layer_table(cost: TrainingCost, timing: StepLayerTiming) -> list[StepLayerRow]:
    """``step_layers.csv`` with the pass's times joined to the count's rows by name, and rows for the optimizer's
    step (with its FLOPs) and zero_grad; achieved GFLOP/s per direction where both FLOPs and time exist."""
    times = {module.name: module for module in timing.modules}
    total = timing.self_sum_ms
    rows = []

    def rate(flops: int, ms: float | None) -> float | None:
        return flops / ms / 1e6 if flops and ms else None

    for layer in cost.layers:
        values = asdict(layer)
        spent = times.get(layer.name)
        if spent is not None:
            values |= {
                "forward_self_ms": spent.forward_self_ms,
                "forward_self_iqr_ms": spent.forward_self_iqr_ms,
                "forward_inclusive_ms": spent.forward_inclusive_ms,
                "backward_self_ms": spent.backward_self_ms,
                "backward_self_iqr_ms": spent.backward_self_iqr_ms,
                "backward_inclusive_ms": spent.backward_inclusive_ms,
                "time_share": spent.self_ms / total if total else None,
                "forward_gflop_per_s": rate(layer.forward_flops, spent.forward_self_ms),
                "backward_gflop_per_s": rate(layer.backward_flops, spent.backward_self_ms),
            }
        rows.append(StepLayerRow(**values))
    for name, kind, flops in (
        (OPTIMIZER_ROW, f"optimizer:{cost.optimizer}", cost.flops_by_phase.get("optimizer", 0)),
        (ZERO_GRAD_ROW, "zero_grad", 0),
    ):
        spent = times.get(name)
        if spent is None:
            continue
        rows.append(
            StepLayerRow(
                name=name, type=kind, depth=0, params=0, forward_macs=0, forward_flops=0, backward_macs=0,
                backward_flops=0, forward_ops="", backward_ops="", optimizer_flops=flops,
                optimizer_ms=spent.optimizer_ms, time_share=spent.self_ms / total if total else None,
                optimizer_gflop_per_s=rate(flops, spent.optimizer_ms),
            )
        )  # fmt: skip
    return rows


def training_input_errors(
    model: nn.Module,
    inputs: Inputs,
    *,
    loss: str = DEFAULT_LOSS,
    optimizer: str = DEFAULT_OPTIMIZER,
    kwargs: Mapping[str, Any] | None = None,
) -> list[str]:
    """One line per reason a training step of ``model`` cannot run, found before anything is measured: the loss
    and optimizer names, no trainable parameter, and a loss that does not fit the output (checked by a forward on
    meta copies: no memory, no compute). A model that does not run on meta tensors is left to the step itself."""
    errors = training_arg_errors(model, loss, optimizer)
    if errors or loss == "sum":
        return errors
    args, call_kwargs = as_call(inputs, kwargs)
    try:
        replica = copy.deepcopy(model).to("meta")
        meta_args, meta_kwargs = tree_map(
            lambda leaf: leaf.detach().to("meta") if isinstance(leaf, torch.Tensor) else leaf, (args, call_kwargs)
        )
        with torch.no_grad():
            output = replica(*meta_args, **meta_kwargs)
    except Exception:
        return []
    try:
        compute_loss(output, loss, None)
    except TrainingInputError as error:
        return [str(error)]
    return []


def profile_training_step(
    model: nn.Module,
    inputs: Inputs,
    device: str | torch.device = "cpu",
    *,
    loss: str = DEFAULT_LOSS,
    optimizer: str = DEFAULT_OPTIMIZER,
    labels: torch.Tensor | None = None,
    kwargs: Mapping[str, Any] | None = None,
    runtime: RuntimeOptions | None = None,
    counting: CountOptions | None = None,
    timing: TimingOptions | bool = True,
    peak: PeakOptions | None = None,
    on_progress: ProgressCallback | None = None,
) -> ProfileResult:
    """``profile`` for a training step: the forward counted as for inference (params, per-layer table, thop), the
    whole step counted and timed (``timing=False`` skips timing), each layer's forward and backward timed in a pass
    of its own (``TimingOptions.layers``: ``result.training.layer_rows``), and the device's peaks, so
    ``result.mfu`` is known.
    ``result.training`` holds the step; ``result.timing`` stays None (no inference forward is timed)."""
    runtime = runtime or RuntimeOptions.of_model(model)
    counting = counting or CountOptions()
    peak = peak or PeakOptions()
    target = resolve_device(device)
    errors = training_input_errors(model, inputs, loss=loss, optimizer=optimizer, kwargs=kwargs)
    if errors:
        raise ValueError("; ".join(errors))
    cost = count(model, inputs, target, kwargs=kwargs, runtime=runtime, options=counting, on_progress=on_progress)
    step = count_training_step(
        model, inputs, target, loss=loss, optimizer=optimizer, labels=labels, kwargs=kwargs, runtime=runtime,
        options=counting,
    )  # fmt: skip
    facts, settings = where_it_runs(target, runtime)
    if on_meta(model):
        notes = [timing_skipped_note()] if timing is not False else []
        return ProfileResult(cost, facts, runtime, settings, training=TrainingStep(step), run_notes=notes)
    timed = None
    if (options := timing_options(timing)) is not None:
        timed = measure_training_step(
            model, inputs, target, loss=loss, optimizer=optimizer, labels=labels, kwargs=kwargs, runtime=runtime,
            options=options, on_progress=on_progress,
        )  # fmt: skip
    peaks = peak_report(cost, None, target, runtime, facts, peak) if timed is not None or peak.measure else None
    training = TrainingStep(step, timed)
    notes: list[str] = []
    if options is not None and timed is not None and options.layers:
        if runtime.compile != "off":
            notes.append(f"per-layer step times skipped: compile={runtime.compile} runs one graph")
        else:
            layers = measure_step_layers(
                model, inputs, target, loss=loss, optimizer=optimizer, labels=labels, kwargs=kwargs, runtime=runtime,
                iterations=options.layer_iterations, max_time_s=options.max_time_s,
            )  # fmt: skip
            layers = replace(layers, notes=[*layers.notes, layers.check_note(timed.step_ms)])
            training = replace(training, layer_timing=layers, layer_rows=step_layer_table(step.cost, layers))
    return ProfileResult(cost, facts, runtime, settings, peaks=peaks, training=training, run_notes=notes)
