"""thop's figure beside ours, and why the two differ.

thop (``thop.profile``) is the number users of the seed document know. It counts per *module type* with forward
hooks, so it misses functional ops, has no rule for some modules (GroupNorm: 0 MACs and its parameters dropped),
counts a module shared under two names twice, and leaves hooks and buffers behind. We therefore run it on deep
copies only (the user's module is never touched), twice:

* ``raw``: plain thop, exactly as the seed document calls it;
* ``patched``: with our ``custom_ops`` for the module types it has no rule for (GroupNorm / RMSNorm priced by thop's
  own norm rule; any other parametrised module type gets its parameters counted).

The explanation compares thop's per-module figure with our MACs for the same module and names the reason.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from gflops_track.counting.layer_info import LayerCost
from gflops_track.counting.op_counter import CostReport

NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.GroupNorm,
    *(getattr(nn, name) for name in ("RMSNorm",) if hasattr(nn, name)),
)


def _count_nothing(module: nn.Module, _inputs: Any, _output: Any) -> None:
    """Registering any rule makes thop count the module's parameters; the ops stay at thop's default, zero."""
    module.total_ops += 0


@dataclass(frozen=True)
class ThopCount:
    """thop's MACs and params: ``raw_*`` as the seed ran it, the others with our custom_ops; why they differ."""

    raw_macs: int
    raw_params: int
    macs: int
    params: int
    unruled_types: list[str] = field(default_factory=list)  # module types thop has no rule for
    reasons: list[str] = field(default_factory=list)
    error: str = ""


def _custom_ops(model: nn.Module) -> dict[type[nn.Module], Any]:
    from thop.profile import register_hooks
    from thop.vision.basic_hooks import count_normalization

    custom: dict[type[nn.Module], Any] = {}
    for module in model.modules():
        kind = type(module)
        if kind in register_hooks or kind in custom:
            continue
        if isinstance(module, NORM_TYPES):
            custom[kind] = count_normalization  # thop's own norm rule: 2 per element, doubled when affine
        elif next(module.children(), None) is None and next(module.parameters(recurse=False), None) is not None:
            custom[kind] = _count_nothing
    return custom


def _flatten(layer_info: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """thop's nested ``{name: (ops, params, children)}`` as ``{dotted name: ops}`` for the modules it priced."""
    flat: dict[str, float] = {}
    for name, (ops, _params, children) in layer_info.items():
        dotted = f"{prefix}{name}"
        if children:
            flat.update(_flatten(children, f"{dotted}."))
        else:
            flat[dotted] = ops
    return flat


def _run_thop(model: nn.Module, args: Sequence[Any], custom_ops: dict[Any, Any]) -> tuple[int, int, dict[str, float]]:
    from thop import profile as thop_profile

    clone = copy.deepcopy(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        macs, params, layer_info = thop_profile(
            clone, inputs=tuple(args), custom_ops=custom_ops, verbose=False, ret_layer_info=True
        )
    return int(macs), int(params), _flatten(layer_info)


def _shared_module_names(model: nn.Module) -> dict[str, list[str]]:
    names: dict[int, list[str]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        names.setdefault(id(module), []).append(name)
    return {aliases[0]: aliases for aliases in names.values() if len(aliases) > 1}


def explain_difference(
    ours: CostReport, thop_layers: dict[str, float], thop_macs: int, model: nn.Module, unruled: list[str]
) -> list[str]:
    """One line per reason thop's MACs differ from ours, each with the MACs it accounts for."""
    if thop_macs == ours.macs:
        return []
    by_name = {layer.name: layer for layer in ours.layers}
    reasons = []
    explained = 0
    grouped: dict[str, list[tuple[LayerCost, float]]] = {}
    for name, thop_ops in thop_layers.items():
        layer = by_name.get(name)
        if layer is not None and round(thop_ops) != layer.macs:
            grouped.setdefault(layer.type, []).append((layer, thop_ops))
    for layer_type, pairs in grouped.items():
        delta = round(sum(thop_ops - layer.macs for layer, thop_ops in pairs))
        explained += delta
        names = ", ".join(layer.name for layer, _ in pairs)
        if all(layer.macs == 0 for layer, _ in pairs):
            why = "thop counts this work as MACs; we count it as FLOPs in its category (no multiply-accumulate)"
        elif "Conv" in layer_type or "Linear" in layer_type:
            why = "thop counts each bias add as one MAC; we count bias adds as FLOPs (category 'bias')"
        else:
            why = "thop's formula for this module type differs from ours"
        reasons.append(f"{layer_type} ({names}): thop {delta:+,} MACs vs ours; {why}")
    for layer in ours.layers:
        if layer.name not in thop_layers and layer.macs:
            explained -= layer.macs
            reasons.append(
                f"{layer.name} ({layer.type}): {-layer.macs:+,} MACs in ops thop cannot see ({layer.ops}); "
                "thop counts modules of known types only, never functional ops"
            )
    residual = thop_macs - ours.macs - explained
    shared = [", ".join(aliases) for aliases in _shared_module_names(model).values()]
    if shared:
        reasons.append(
            f"module shared under several names ({'; '.join(shared)}): thop hooks and counts it once per name "
            f"({residual:+,} MACs)"
        )
    elif residual:
        reasons.append(f"thop's total holds {residual:+,} MACs that it attributes to no module")
    if unruled:
        reasons.append(f"thop has no rule for {', '.join(unruled)} (raw thop counts 0 MACs and drops their parameters)")
    return reasons


def thop_count(model: nn.Module, args: Sequence[Any], ours: CostReport) -> ThopCount:
    """Run thop raw and patched on deep copies of ``model`` (which stays untouched) and explain the difference."""
    try:
        custom = _custom_ops(model)
        raw_macs, raw_params, _ = _run_thop(model, args, {})
        macs, params, layers = _run_thop(model, args, custom)
    except Exception as error:  # thop is a reference figure: its failure must not cost the user's measurement
        return ThopCount(0, 0, 0, 0, error=f"thop failed: {type(error).__name__}: {error}")
    unruled = sorted({kind.__name__ for kind in custom})
    return ThopCount(
        raw_macs=raw_macs,
        raw_params=raw_params,
        macs=macs,
        params=params,
        unruled_types=unruled,
        reasons=explain_difference(ours, layers, macs, model, unruled),
    )


def thop_notes(thop: ThopCount, macs: int, params: int) -> list[str]:
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
