"""A sweep's jobs composed from one Hydra composition per choice of config groups, not one composition a job.

Hydra composes a job in two steps: the defaults list (which config of each group, ``model=custom``, ``+group=x``,
``key@package=...``) is built and merged, then the other overrides (``norm_fn=batch``, ``batch.size=4``, ``+a.b=1``,
``~key``) are applied to the merged config, in their order, by ``ConfigLoaderImpl._apply_overrides_to_config``. Jobs
that differ only in the second kind share the first step, which is nearly all of a composition's cost (a tenth of a
second a job here): it is done once per distinct set of defaults-shaping overrides, and each job applies its own
overrides to a copy with Hydra's own function. Preflight checks every job this way (``compose_from_base``); the
in-process launcher of a sweep run by ``python -m gflops_track`` launches them this way (``SharedDefaultsLoader``).
Both give the config Hydra gives (tests/test_preflight_compose.py compares them, key for key, hydra node included).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from hydra._internal.config_loader_impl import ConfigLoaderImpl, get_overrides_dirname
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

SEARCHPATH = "hydra.searchpath"  # Hydra reads it from the command line before the defaults list: it adds groups


def shapes_defaults(override: Override, groups: frozenset[str]) -> bool:
    """Whether Hydra reads ``override`` while it builds the defaults list (a config group's choice, ``+group=...``,
    ``~group``, ``key@package=...``, and ``hydra.searchpath=[...]``, which adds config groups; ``groups``: the
    overridden keys that name a config group) rather than applying it to the composed config (``key=value``,
    ``+key=value``, ``++key=value``, ``~key``, ``a.b=value``)."""
    key = override.key_or_group
    return override.package is not None or "/" in key or key in groups or key == SEARCHPATH


def group_source(loader: Any, config_name: str | None, searchpath: Sequence[str]) -> Any:
    """The config repository Hydra composes ``config_name`` from: the loader's search path with the directories a
    ``hydra.searchpath`` adds, the primary config's or the command line's (``searchpath``: that override, if given);
    without them a group found only there (``norm_fn/`` beside a key of ours) reads as no group. Made as Hydra's
    ``get_group_options`` makes it, but once a sweep: making one reads the primary config and copies the loader's
    repository (8 ms on this VM); asking it for a group's options (``get_group_options(group)``) is cheap."""
    _, repository = loader._parse_overrides_and_create_caching_repo(config_name, list(searchpath))
    return repository


def searchpath_overrides(overrides: Iterable[str]) -> list[str]:
    """The ``hydra.searchpath=[...]`` overrides among ``overrides``, as Hydra reads them (no ``+``/``~``; the
    first counts)."""
    return [override for override in overrides if override.startswith(f"{SEARCHPATH}=")]


def group_keys(source: Any, overrides: Iterable[Override], known: dict[str, bool]) -> frozenset[str]:
    """The keys of ``known`` and ``overrides`` that name a config group of ``source`` (``group_source``): as for
    Hydra, any directory of that name, even one with no config in it (Hydra then refuses ``norm_fn=batch`` as a
    group choice, where a value would pass); each key is asked once and the answer kept in ``known``."""
    for override in overrides:
        if override.key_or_group not in known:
            known[override.key_or_group] = source.group_exists(override.key_or_group)
    return frozenset(key for key, is_group in known.items() if is_group)


def compose_from_base(
    overrides: Sequence[str],
    groups: frozenset[str],
    bases: dict[tuple[str, ...], DictConfig],
    compose_base: Callable[[list[str]], DictConfig],
) -> tuple[DictConfig, list[Override]]:
    """The config of a job with ``overrides``: a copy of the base composed (by ``compose_base``) from its
    defaults-shaping overrides, kept in ``bases`` for the next job, with the job's other overrides applied in their
    order, as Hydra applies them; and every override, parsed. A job with an override of a key the base does not hold
    (``+extra=fast``, ``extra=fast``), or one whose overrides fail, is composed whole by ``compose_base``: Hydra's
    own composition then gives its config (``+extra=fast`` appends a group's config) or names the failure."""
    parsed = OverridesParser.create().parse_overrides(list(overrides))
    shaping = tuple(o.input_line for o in parsed if shapes_defaults(o, groups))
    values = [o for o in parsed if not shapes_defaults(o, groups)]
    try:
        if shaping not in bases:
            bases[shaping] = compose_base(list(shaping))
        config = copy.deepcopy(bases[shaping])
        if all(o.key_or_group.split(".")[0] in config for o in values):
            ConfigLoaderImpl._apply_overrides_to_config(values, config)
            return config, parsed
    except (HydraException, OmegaConfBaseException):
        pass  # Hydra's own composition of the job, below, gives its config or its own error
    return compose_base(list(overrides)), parsed


class SharedDefaultsLoader:
    """Hydra's config loader, but ``load_sweep_config`` composes each distinct set of a sweep's defaults-shaping
    overrides once (see the module's docstring). The job's hydra node is Hydra's: its task overrides are the job's
    and ``override_dirname`` is made from them by Hydra's own function; everything else a job's hydra node holds
    (choices, sources, runtime) follows from the defaults list, which is the same. Any other call goes to the
    loader."""

    def __init__(self, loader: Any) -> None:
        self.loader = loader
        self.bases: dict[tuple[str, ...], DictConfig] = {}
        self.is_group: dict[str, bool] = {}  # key -> whether it names a config group
        self.source: Any = None  # the sweep's group_source, made with its first job

    def __getattr__(self, name: str) -> Any:
        return getattr(self.loader, name)

    def load_sweep_config(self, master_config: DictConfig, sweep_overrides: list[str]) -> DictConfig:
        if self.source is None:
            searchpath = searchpath_overrides(master_config.hydra.overrides.hydra)  # the command line's, if any
            self.source = group_source(self.loader, master_config.hydra.job.config_name, searchpath)
        config, parsed = compose_from_base(
            sweep_overrides,
            group_keys(self.source, OverridesParser.create().parse_overrides(sweep_overrides), self.is_group),
            self.bases,
            lambda shaping: self.loader.load_sweep_config(master_config, shaping),
        )
        hydra = config.hydra
        with open_dict(hydra):
            hydra.overrides.task = [o.input_line for o in parsed]  # a sweep's jobs carry no hydra.* override
            hydra.job.override_dirname = get_overrides_dirname(
                overrides=parsed,
                kv_sep=hydra.job.config.override_dirname.kv_sep,
                item_sep=hydra.job.config.override_dirname.item_sep,
                exclude_keys=list(hydra.job.config.override_dirname.exclude_keys),
            )
        OmegaConf.copy_cache(from_config=master_config, to_config=config)
        return config
