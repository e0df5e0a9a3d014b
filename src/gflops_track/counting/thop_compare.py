"""thop's figure beside ours, and why the two differ.

thop (``thop.profile``) is the number readers of the blog post (shared/seed/) know. It counts per *module type*
with forward hooks, so it misses functional ops, has no rule for some modules (GroupNorm: 0 MACs and its parameters
dropped), counts a module shared under two names twice, and leaves hooks and buffers behind. We therefore run it on
deep copies only (the user's module is never touched; the copies hold meta tensors when the model runs on meta, since
thop's rules read shapes only), twice (once when there are no custom ops):

* ``raw``: plain thop, exactly as the blog post's script calls it;
* ``patched``: with our ``custom_ops`` for the module types it has no rule for (GroupNorm / RMSNorm priced by thop's
  own norm rule; any other parametrised module type gets its parameters counted).

The explanation compares thop's per-module figure with our MACs for the same module and names the reason; its
parameter figure is explained by walking the model as thop adds parameters up (``explain_params``).

Two distributions install the same ``thop`` module: the original ``thop`` (0.1.1) and the maintained
``ultralytics-thop`` (2.x). The latter looks rules up along the class hierarchy (``BatchNorm2d`` through
``_NormBase``), has rules for GroupNorm and RMSNorm, counts parameters of the whole model once each (shared tensors
and rule-less modules included), counts a shared module once, and adds functional matmul/linear/einsum/attention
run outside rule-bearing modules to its total without naming a module. ``thop_distribution`` says which one is
installed, and the explanations follow it.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import importlib.metadata
import importlib.util
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn
from torch.nn.modules.module import register_module_forward_hook
from torch.utils._pytree import tree_map

from gflops_track.results.counting import ORIGINAL_THOP, ULTRALYTICS_THOP, ThopCount

# thop's import (0.2 s: it imports distutils, i.e. setuptools) happens with this module, not in the first count; a
# broken thop must not stop counting (thop is a reference figure: thop_count reports its failure)
with contextlib.suppress(Exception):
    import thop.profile  # noqa: F401

from gflops_track.common.listing import NAMES_SHOWN, named
from gflops_track.counting.counting_forward import dynamo_import_deferred, meta_tensors, to_meta
from gflops_track.counting.layer_info import ROOT_LABEL
from gflops_track.counting.op_counter import CostReport
from gflops_track.results.counting import LayerCost

NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.GroupNorm,
    *(getattr(nn, name) for name in ("RMSNorm",) if hasattr(nn, name)),
)


def _thop_owners() -> Iterator[str]:
    """Names of the distributions that may own the ``thop`` module: the two known ones, then (only if needed: a scan
    of every installed distribution's files, seconds) any other."""
    known = (ULTRALYTICS_THOP, ORIGINAL_THOP)
    yield from known
    yield from (name for name in importlib.metadata.packages_distributions().get("thop", []) if name not in known)


@functools.cache
def thop_distribution() -> tuple[str, str]:
    """(distribution name, version) of what ``import thop`` loads: ``("thop", "0.1.1.post2209072238")`` or
    ``("ultralytics-thop", "2.2.3")``; ``("", "")`` when no thop is importable. Both install a ``thop`` module, so
    the one that owns the file Python would import is the answer. The two known names are asked first (a full scan of
    every installed distribution's files takes seconds); the answer is kept for the process."""
    spec = importlib.util.find_spec("thop")
    if spec is None or spec.origin is None:
        return "", ""
    origin = Path(spec.origin).resolve()
    for name in _thop_owners():
        for dist in importlib.metadata.distributions(name=name):
            if any(Path(str(dist.locate_file(file))).resolve() == origin for file in dist.files or []):
                return str(dist.metadata["Name"]).lower(), dist.version
    return "", ""


def thop_version_label() -> str:
    """What the ``thop_version`` tag should say: 'thop 0.1.1.post2209072238', 'ultralytics-thop 2.2.3', or ''."""
    return " ".join(part for part in thop_distribution() if part)


def thop_has_rule(kind: type[nn.Module], register_hooks: Mapping[Any, Any], distribution: str) -> bool:
    """Whether thop prices ``kind`` by itself: the original thop looks the exact type up; ultralytics-thop walks the
    class hierarchy (``BatchNorm2d`` is priced through ``_NormBase``)."""
    if distribution == ULTRALYTICS_THOP:
        return any(base in register_hooks for base in kind.__mro__)
    return kind in register_hooks


def _count_nothing(module: nn.Module, _inputs: Any, _output: Any) -> None:
    """Registering any rule makes thop count the module's parameters; the ops stay at thop's default, zero."""
    module.total_ops += 0


def _custom_ops(model: nn.Module, distribution: str) -> dict[type[nn.Module], Any]:
    from thop.profile import register_hooks
    from thop.vision.basic_hooks import count_normalization

    custom: dict[type[nn.Module], Any] = {}
    for module in model.modules():
        kind = type(module)
        if thop_has_rule(kind, register_hooks, distribution) or kind in custom:
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


class _KeywordCall(nn.Module):
    """``thop.profile`` calls ``model(*inputs)``: this holds the keyword inputs and makes the call whole. The model is
    its only child, so thop's per-module figures are the model's own under the prefix ``model.``."""

    def __init__(self, model: nn.Module, kwargs: Mapping[str, Any]) -> None:
        super().__init__()
        self.model = model
        self.kwargs = dict(kwargs)

    def forward(self, *args: Any) -> Any:
        return self.model(*args, **self.kwargs)


ThopRun = tuple[int, int, dict[str, float], frozenset[str]]  # MACs, params, MACs per module, modules called


def _run_thop(
    model: nn.Module, args: Sequence[Any], kwargs: Mapping[str, Any], custom_ops: dict[Any, Any], meta: bool
) -> ThopRun:
    """thop on a deep copy of ``model``; with ``meta`` the copy holds meta tensors (copied without their data) and
    the inputs are meta too: thop's rules read shapes only, so the figures are those of a real forward. Also the
    names of the modules the forward called (thop's hooks, parameters included, see only those)."""
    from thop import profile as thop_profile

    if meta:
        with meta_tensors(model):  # the copy takes the stand-ins (shared tensors stay shared); the originals return
            clone = copy.deepcopy(model)
        args, kwargs = tree_map(to_meta, (tuple(args), dict(kwargs)))
    else:
        clone = copy.deepcopy(model)
    called: set[int] = set()
    recording = register_module_forward_hook(lambda module, _inputs, _output: called.add(id(module)))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            macs, params, layer_info = thop_profile(
                _KeywordCall(clone, kwargs) if kwargs else clone,
                inputs=tuple(args),
                custom_ops=custom_ops,
                verbose=False,
                ret_layer_info=True,
            )
    finally:
        recording.remove()
    if kwargs:  # the model's own figures, without the wrapper's level
        layer_info = layer_info["model"][2]
    names = frozenset(name for name, module in clone.named_modules(remove_duplicate=False) if id(module) in called)
    return int(macs), int(params), _flatten(layer_info), names


def _run_thop_twice(
    model: nn.Module, args: Sequence[Any], kwargs: Mapping[str, Any], custom_ops: dict[Any, Any], meta: bool
) -> tuple[ThopRun, ThopRun]:
    """thop raw and with ``custom_ops``; one run serves for both when there are no custom ops (the calls are equal)."""
    raw = _run_thop(model, args, kwargs, {}, meta)
    return raw, (_run_thop(model, args, kwargs, custom_ops, meta) if custom_ops else raw)


def _shared_module_names(model: nn.Module) -> dict[str, list[str]]:
    names: dict[int, list[str]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        names.setdefault(id(module), []).append(name)
    return {aliases[0]: aliases for aliases in names.values() if len(aliases) > 1}


def _why(
    layer_type: str, pairs: Sequence[tuple[LayerCost, float]], delta: int, unruled: Sequence[str], shared: set[str]
) -> str:
    """Why thop's figure for these modules of one type is not ours, found from the figures, not assumed."""
    bias_elements = sum(layer.flops - 2 * layer.macs for layer, _ in pairs)  # a conv's or linear's other FLOPs
    if layer_type in unruled and all(thop_ops == 0 for _, thop_ops in pairs):
        return f"thop has no rule for {layer_type} and counts 0 for it"
    if all(layer.macs == 0 for layer, _ in pairs):
        return "thop counts this work as MACs; we count it as FLOPs in its category (no multiply-accumulate)"
    if any(layer.name in shared for layer, _ in pairs):
        return "the module has several names, and thop hooks it once per name: each call is counted once per name"
    if "ConvTranspose" in layer_type:
        return (
            "thop prices a transposed conv per output position (output elements x C_in/groups x kernel); we price "
            "the products it does, per input position (input elements x C_out/groups x kernel)"
        )
    if ("Conv" in layer_type or "Linear" in layer_type) and delta == bias_elements:
        return "thop counts each bias add as one MAC; we count bias adds as FLOPs (category 'bias')"
    return "thop's formula for this module type differs from ours"


def explain_difference(
    ours: CostReport,
    thop_layers: dict[str, float],
    thop_macs: int,
    model: nn.Module,
    unruled: list[str],
    distribution: str = ORIGINAL_THOP,
    shown: int | None = NAMES_SHOWN,
) -> list[str]:
    """One line per reason thop's MACs differ from ours, each with the MACs it accounts for; modules of one type
    share a line, which names ``shown`` of them (None: every one) and how many more."""
    ultralytics = distribution == ULTRALYTICS_THOP
    if thop_macs == ours.macs:
        return []
    by_name = {layer.name: layer for layer in ours.layers}
    aliases = _shared_module_names(model)
    if not ultralytics and not aliases and ROOT_LABEL in by_name and ROOT_LABEL not in thop_layers:
        own = thop_macs - round(sum(thop_layers.values()))  # thop's total is its modules' sum: the rest is the root's
        if own:  # a model that is one module thop has a rule for (nn.LSTM): its rule, not ops it cannot see
            thop_layers = {**thop_layers, ROOT_LABEL: own}
    shared = {name for names_of_one in aliases.values() for name in names_of_one}
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
        names = named([layer.name for layer, _ in pairs], shown)
        reasons.append(
            f"{layer_type} ({names}): thop {delta:+,} MACs vs ours; {_why(layer_type, pairs, delta, unruled, shared)}"
        )
    unseen: dict[str, list[LayerCost]] = {}
    for layer in ours.layers:
        if layer.name not in thop_layers and layer.macs:
            explained -= layer.macs
            unseen.setdefault(layer.type, []).append(layer)
    for layer_type, layers in unseen.items():
        why = (
            "ultralytics-thop adds functional matmul, linear, einsum and attention outside modules it has a rule "
            "for to its total without naming a module, and never sees other functional ops"
            if ultralytics
            else "thop counts modules of known types only, never functional ops"
        )
        ops = "; ".join(dict.fromkeys(layer.ops for layer in layers))
        macs = -sum(layer.macs for layer in layers)
        names = named([layer.name for layer in layers], shown)
        reasons.append(f"{layer_type} ({names}): {macs:+,} MACs in ops thop cannot see ({ops}); {why}")
    residual = thop_macs - ours.macs - explained
    shared = [", ".join(aliases) for aliases in _shared_module_names(model).values()]
    if shared and not ultralytics:
        groups = "; ".join(shared) if shown is None or len(shared) <= shown else named(shared, shown)
        reasons.append(
            f"module shared under several names ({groups}): thop hooks and counts it once per name ({residual:+,} MACs)"
        )
    elif residual:
        where = " (functional products ultralytics-thop counts outside any module)" if ultralytics else ""
        reasons.append(f"thop's total holds {residual:+,} MACs that it attributes to no module{where}")
    if unruled:
        dropped = "" if ultralytics else " and drops their parameters"
        reasons.append(f"thop has no rule for {named(unruled, shown)} (raw thop counts 0 MACs{dropped})")
    return reasons


@dataclass
class _ParamsWalk:
    """thop's parameter total taken apart: each tensor's size and how many times thop adds it (by id), and the
    tensors it never adds, by why and module type: {(why, type): [(module name, ids)]}; why is 'root' (the model's
    own), 'own' (a module thop has no rule for holds them itself) or 'uncalled' (a module with a rule never called)."""

    numel: dict[int, int] = field(default_factory=dict)
    times: dict[int, int] = field(default_factory=dict)
    skipped: dict[tuple[str, str], list[tuple[str, list[int]]]] = field(default_factory=dict)

    def skip(self, why: str, module: nn.Module, name: str, parameters: Sequence[nn.Parameter]) -> None:
        self.numel.update((id(p), p.numel()) for p in parameters)
        if parameters:
            self.skipped.setdefault((why, type(module).__name__), []).append((name, [id(p) for p in parameters]))

    def add(self, module: nn.Module) -> None:
        for parameter in module.parameters():
            self.numel[id(parameter)] = parameter.numel()
            self.times[id(parameter)] = self.times.get(id(parameter), 0) + 1

    @property
    def total(self) -> int:
        return sum(self.numel[key] * count for key, count in self.times.items())


def _thop_params_seen(
    model: nn.Module, ruled: Callable[[type[nn.Module]], bool], wrapped: bool, called: frozenset[str]
) -> _ParamsWalk:
    """The parameters as the original thop's ``dfs_count`` adds them up: it walks the children of the module it was
    given; a child whose type has a rule (never a Sequential or ModuleList) adds all of its parameters, each tensor
    once per such module, if it was called (the hook that counts them runs on a call; ``called``: module names);
    any other child is walked in turn. A walked module's own parameters (the model's itself, or a rule-less
    module's not in a submodule) are not added by it. ``wrapped``: the model is the child of our keyword wrapper."""
    seen = _ParamsWalk()

    def priced(module: nn.Module) -> bool:
        return ruled(type(module)) and not isinstance(module, (nn.Sequential, nn.ModuleList))

    def visit(module: nn.Module, name: str) -> None:
        if not priced(module):
            seen.skip("own", module, name or ROOT_LABEL, list(module.parameters(recurse=False)))
            walk(module, name)
        elif name in called:
            seen.add(module)
        else:
            seen.skip("uncalled", module, name, list(module.parameters()))

    def walk(module: nn.Module, name: str) -> None:
        for child_name, child in module.named_children():
            visit(child, f"{name}.{child_name}" if name else child_name)

    if wrapped:
        visit(model, "")
    else:
        seen.skip("root", model, ROOT_LABEL, list(model.parameters(recurse=False)))
        walk(model, "")
    return seen


def _params_reasons(seen: _ParamsWalk, shown: int | None) -> list[str]:
    """Why a walk's total (``_thop_params_seen``) is not the true count, one line per reason with its parameters:
    thop - true = each tensor's additions beyond the first - the tensors it never adds."""
    reasons, never_added = [], set()
    for (why, kind), modules in seen.skipped.items():
        lost_by_module = {}
        for name, ids in modules:
            ids = [key for key in ids if key not in seen.times and key not in never_added]  # tied to one added: kept
            never_added.update(ids)
            lost_by_module[name] = sum(seen.numel[key] for key in ids)
        lost = -sum(lost_by_module.values())
        names = named([name for name, n in lost_by_module.items() if n], shown).replace(ROOT_LABEL, "the model itself")
        if not lost:
            continue
        if why == "root":
            reasons.append(f"{kind} (the model itself): {lost:+,} params; thop adds up its submodules' parameters, "
                           "never the model's own")  # fmt: skip
        elif why == "own":
            reasons.append(f"{kind} ({names}): {lost:+,} params; thop has no rule for {kind} and never adds the "
                           "parameters it holds itself")  # fmt: skip
        else:
            reasons.append(f"{kind} ({names}): {lost:+,} params; thop adds a module's parameters when it is called, "
                           "and this forward never calls these (a parent may read their weights itself, as "
                           "MultiheadAttention does its out_proj's)")  # fmt: skip
    repeats = sum(seen.numel[key] * (count - 1) for key, count in seen.times.items())
    if repeats:
        reasons.append(f"{repeats:+,} params: thop adds a tensor again for each other module holding it, and a "
                       "module again under each further parent (tied weights, shared modules)")  # fmt: skip
    return reasons


def explain_params(
    model: nn.Module,
    wrapped: bool,
    custom: Mapping[type[nn.Module], Any],
    figures: tuple[int, int],
    called: frozenset[str],
    distribution: str = ORIGINAL_THOP,
    shown: int | None = NAMES_SHOWN,
) -> list[str]:
    """One line per reason the original thop's parameter counts (``figures``: raw, as the blog post runs it, and
    with our custom_ops) are not the true one, each with the parameters it accounts for, found by walking the model
    as thop does (``called``: the modules its forward called). A reason of one figure only says which; whatever the
    walk does not account for in either figure has a line of its own, so no difference goes unsaid.
    ultralytics-thop counts its own way: one line with its figures."""
    raw, patched = figures
    if distribution != ORIGINAL_THOP:
        return [f"{distribution} counts parameters its own way ({raw:,} raw, {patched:,} with our custom_ops)"]
    from thop.profile import register_hooks

    def has_rule(kind: type[nn.Module]) -> bool:
        return thop_has_rule(kind, register_hooks, distribution)

    raw_walk = _thop_params_seen(model, has_rule, wrapped, called)
    patched_walk = _thop_params_seen(model, lambda kind: has_rule(kind) or kind in custom, wrapped, called)
    raw_reasons, patched_reasons = _params_reasons(raw_walk, shown), _params_reasons(patched_walk, shown)
    reasons = [
        *(reason if reason in patched_reasons else f"as the blog post runs it: {reason}" for reason in raw_reasons),
        *(f"with our custom_ops: {reason}" for reason in patched_reasons if reason not in raw_reasons),
    ]
    reasons += [
        f"thop's {label} figure holds {figure - walked:+,} params that the lines above do not account for"
        for label, figure, walked in (("raw", raw, raw_walk.total), ("custom_ops", patched, patched_walk.total))
        if figure != walked
    ]
    return reasons


def thop_count(
    model: nn.Module, args: Sequence[Any], ours: CostReport, kwargs: Mapping[str, Any] | None = None
) -> ThopCount:
    """Run thop raw and patched on deep copies of ``model`` (which stays untouched) and explain the difference: on
    meta tensors (no data copied, no arithmetic), for real when the model cannot run on meta. Keyword inputs are
    passed through a wrapper (``thop.profile`` takes positional inputs only)."""
    distribution, _version = thop_distribution()
    kwargs = dict(kwargs or {})
    try:
        custom = _custom_ops(model, distribution)
        try:
            with dynamo_import_deferred():
                (raw_macs, raw_params, _, called), (macs, params, layers, _) = _run_thop_twice(
                    model, args, kwargs, custom, meta=True
                )
        except Exception:  # a model that cannot run on meta (data-dependent code, CPU tensors made inside): for real
            (raw_macs, raw_params, _, called), (macs, params, layers, _) = _run_thop_twice(
                model, args, kwargs, custom, meta=False
            )
    except Exception as error:  # thop is a reference figure: its failure must not cost the user's measurement
        return ThopCount(0, 0, 0, 0, error=f"thop failed: {type(error).__name__}: {error}", distribution=distribution)
    unruled = sorted({kind.__name__ for kind in custom})
    return ThopCount(
        raw_macs=raw_macs,
        raw_params=raw_params,
        macs=macs,
        params=params,
        unruled_types=unruled,
        reasons=explain_difference(ours, layers, macs, model, unruled, distribution),
        distribution=distribution,
        every_module=explain_difference(ours, layers, macs, model, unruled, distribution, shown=None),
        params_reasons=explain_params(model, bool(kwargs), custom, (raw_params, params), called, distribution),
        params_every_module=explain_params(
            model, bool(kwargs), custom, (raw_params, params), called, distribution, shown=None
        ),
    )


def thop_notes(thop: ThopCount, macs: int, params: int, every_module: bool = False) -> list[str]:
    """What the console and the run say about thop's figure when it is not ours (``every_module``: each reason
    names every module it concerns, as the run's thop artifact does, not the first few)."""
    if thop.error:
        return [thop.error]
    notes = []
    if thop.macs != macs or thop.raw_macs != macs:
        notes.append(
            f"thop counts {thop.raw_macs:,} MACs as the blog post runs it and {thop.macs:,} with our custom_ops; "
            f"gflops-track counts {macs:,} MACs. Why:"
        )
        reasons = thop.every_module if every_module else thop.reasons
        notes.extend(f"  - {reason}" for reason in reasons or ["(thop with custom_ops agrees with us)"])
    if thop.raw_params != params or thop.params != params:
        notes.append(
            f"thop reports {thop.raw_params:,} params as the blog post runs it and {thop.params:,} with our "
            f"custom_ops; the true count (shared tensors once) is {params:,}. Why:"
        )
        reasons = thop.params_every_module if every_module else thop.params_reasons
        notes.extend(f"  - {reason}" for reason in reasons)
    return notes
