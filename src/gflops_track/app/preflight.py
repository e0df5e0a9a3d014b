"""Check every job of a command line before Hydra starts anything (so a bad value never creates a run).

The overrides are parsed with Hydra's own parser and expanded into jobs with its basic sweeper's rules; each job's
config is composed and validated. Group choices (``norm_fn=foo``) are checked against the options that exist.
Command lines with flags this module does not know (``--help``, ``--cfg``, ...) are left to Hydra.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from hydra import compose, version
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra._internal.hydra import Hydra
from hydra._internal.utils import compute_search_path_dir, create_config_search_path
from hydra.core.config_search_path import SearchPathQuery
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, QuotedString
from hydra.errors import HydraException, MissingConfigException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from gflops_track.app.composition import compose_from_base, group_keys, group_source, searchpath_overrides
from gflops_track.app.job import override_key, training_config_errors
from gflops_track.app.meta_checks import weightless_errors
from gflops_track.app.schema import (
    AppConfig,
    ConfigError,
    model_argument_errors,
    register_schema,
    to_app_config,
    unknown_key_error,
)
from gflops_track.tracking.store import (
    connect,
    launched_by_mlflow,
    launched_run_problems,
    local_artifact_path,
    reachability,
    resolve_tracking_uri,
    store_problems,
)

MULTIRUN_FLAGS = {"-m", "--multirun"}
VALUE_FLAGS = {
    "-cn": "config_name", "--config-name": "config_name", "-cd": "config_dir", "--config-dir": "config_dir",
    "-cp": "config_path", "--config-path": "config_path",
}  # fmt: skip
# The module that declares @hydra.main (cli/run.py's hydra_app): Hydra reads a relative --config-path as a package
# path below that module's package (pkg://gflops_track.cli/<path>), and a pkg:// or absolute one as given
HYDRA_APP_MODULE = "gflops_track.cli.run"


def _split_argv(argv: Sequence[str]) -> tuple[list[str], dict[str, str]] | None:
    """Overrides and the flags we understand; None when another flag is present."""
    overrides: list[str] = []
    flags: dict[str, str] = {}
    items = iter(argv)
    for item in items:
        name, _, inline = item.partition("=")
        if item in MULTIRUN_FLAGS:
            flags["multirun"] = "true"
            continue
        if name in VALUE_FLAGS:
            flags[VALUE_FLAGS[name]] = inline or next(items, "")
        elif item.startswith("-"):
            return None
        else:
            overrides.append(item)
    return overrides, flags


def _yaml_line(error: yaml.YAMLError) -> str:
    """A config file that is not YAML, named with where and what (PyYAML's own text takes four lines): a syntax
    error's file, line and column (1-based, as editors count); a character YAML does not allow, its file and
    character position."""
    mark = getattr(error, "problem_mark", None)
    if isinstance(error, yaml.reader.ReaderError):  # a control character, say: no mark, but a name and a position
        where = f"{error.name}, character {error.position + 1}"
        code = error.character if isinstance(error.character, int) else ord(error.character[:1] or "\0")
        problem = f"unacceptable character #x{code:04x}: {error.reason}"
    else:
        where = f"{mark.name}, line {mark.line + 1}, column {mark.column + 1}" if mark else "a config file"
        problem = getattr(error, "problem", None) or str(error).strip().splitlines()[0]
    return f"{where} is not valid YAML: {problem}; fix the file (or name another config)"


def _cause_line(error: BaseException, job: Sequence[str] = (), given: Sequence[str] = ()) -> str:
    """One line for a composition error (of ``job``'s overrides, if given): a YAML file's, an unknown key's
    (``_unknown_key_line``), else the error's first line, with the next when the first only introduces it (Hydra's
    "... raised while composing config:")."""
    cause = error.__cause__ or error
    if isinstance(cause, yaml.YAMLError):
        return _yaml_line(cause)
    if isinstance(cause, UnicodeDecodeError):  # it names no file: the job's choices say where to look
        reads = f" that {' '.join(job)} reads" if job else ""
        return f"a config file{reads} is not UTF-8 text ({cause}); save it as UTF-8"
    key = getattr(cause, "full_key", None)
    if isinstance(cause, (ConfigAttributeError, ConfigKeyError)) and key and not key.startswith("hydra."):
        parent = getattr(cause, "parent_node", None)  # the composed node the key was looked up in
        unknown = _unknown_key_line(key, parent, given)
        if unknown:
            return unknown
    lines = [line.strip() for line in str(cause).strip().splitlines() if line.strip()] or [type(cause).__name__]
    first = f"{lines[0]} {lines[1]}" if lines[0].endswith(":") and len(lines) > 1 else lines[0]
    return f"{key}: {first}" if key else first


def _unknown_key_line(key: str, parent: Any, given: Sequence[str]) -> str | None:
    """The line for a key the composed config lacks (Hydra's own names neither the known keys nor a close one, nor
    the override that set it): an argument the model's constructor does not take (``parent``: the composed model
    node, with its ``_target_``); else the schema's line (``unknown_key_error``) with the user's override (from
    ``given``, the command's overrides: a sweep's named whole, once) and its ``+`` (``++`` when the command sweeps
    the key's config group: where an option has the key, ``+`` is refused)."""
    parts = key.split(".")
    if parts[0] == "model" and len(parts) > 1 and OmegaConf.is_dict(parent):
        target = OmegaConf.select(parent, "_target_", default=None, throw_on_resolution_failure=False)
        refused = model_argument_errors({"_target_": target, parts[1]: None}) if target else []
        if refused:
            return refused[0]
    present = list(parent.keys()) if OmegaConf.is_dict(parent) else []
    plus = "++" if any(_sweeps(override, parts[0]) for override in given) else "+"
    return unknown_key_error(key, present, _override_setting(key, given), plus)


_ABSENT = object()  # OmegaConf.select's answer for a key the config does not hold (None is a value: null)


_COMPOSITION_ERRORS = (HydraException, OmegaConfBaseException, yaml.YAMLError, UnicodeDecodeError, AssertionError)


def _composed_or_problems(
    job: Sequence[str], compose_job: Callable[[list[str]], DictConfig], flags: dict[str, str], given: Sequence[str]
) -> tuple[AppConfig | None, list[str]]:
    """A job's checked config, or every problem with its overrides: Hydra stops at the first bad key, so the
    overrides a composition error names are set aside and the rest composed again, until the job composes (its
    schema problems join the list) or an error names no override. OmegaConf asserts when a key is set inside a
    null value (``input.shape.x=1``: "Unexpected type for root")."""
    remaining, problems = list(job), []
    while True:
        try:
            config = to_app_config(compose_job(remaining))
            return (None if problems else config), problems
        except ConfigError as error:
            return None, problems + list(error.errors)
        except _COMPOSITION_ERRORS as error:
            inside = _inside_value_lines(remaining, compose_job)
            cause = error.__cause__ or error
            unknown = isinstance(cause, (ConfigAttributeError, ConfigKeyError))
            key = getattr(cause, "full_key", None) if unknown else None
            named = [override for override, _ in inside] or [
                override for override in remaining if key and _sets_key(override.lstrip("+"), key)
            ]
            problems += [line for _, line in inside] or [_failure_line(error, flags, given, remaining)]
            if not named:
                return None, problems
            remaining = [override for override in remaining if override not in named]


def _inside_value_lines(job: Sequence[str], compose_job: Callable[[list[str]], DictConfig]) -> list[tuple[str, str]]:
    """Overrides of a key inside a plain value (``model.planes.foo=1``: ``model.planes`` is 384; Hydra would make
    the value a node, which fails as a type error, or an assertion for a null value), each with its line naming
    that value, as the job's config groups and top-level choices compose it (else, the job composed without that
    override). Empty when there are none, or those compositions fail."""
    top_level = [o for o in job if "." not in o.partition("=")[0]]
    try:
        shared = compose_job(top_level)
    except Exception:
        shared = None
    lines = []
    for override in job:
        key = override_key(override)
        parts = key.split(".")
        if len(parts) < 2:
            continue
        try:
            base = shared if shared is not None else compose_job([o for o in job if o != override])
        except Exception:
            continue
        for depth in range(1, len(parts)):
            above = ".".join(parts[:depth])
            value = OmegaConf.select(base, above, default=_ABSENT, throw_on_resolution_failure=False)
            if value is not _ABSENT and not OmegaConf.is_config(value):
                line = f"{key} is not allowed: {above} is a value ({value!r}), which holds no keys; set {above} itself"
                lines.append((override, line))
                break
    return lines


def _sweeps(override: str, key: str) -> bool:
    """Whether ``override`` sweeps ``key`` (``model=hf,residual_block``)."""
    if override_key(override) != key:
        return False
    with contextlib.suppress(HydraException):
        return OverridesParser.create().parse_override(override).is_sweep_override()
    return False


def _sets_key(override: str, key: str) -> bool:
    """Whether ``override``, as written (a ``+`` or ``~`` makes its key another one), sets ``key`` or a key inside
    it."""
    name, equals, _value = override.partition("=")
    return bool(equals) and (name == key or name.startswith(f"{key}."))


def _override_setting(key: str, overrides: Sequence[str]) -> str:
    """The plain override (``key=value``, no ``+``) that sets ``key`` or a key inside it, as the user wrote it (a
    sweep's values and all); empty when none does (the failure came from a config file)."""
    return next((override for override in overrides if _sets_key(override, key)), "")


def _syntax_errors(overrides: list[str]) -> list[str]:
    """Overrides Hydra's grammar rejects, each named (Hydra's own message does not say which one)."""
    errors = []
    for override in overrides:
        try:
            OverridesParser.create().parse_override(override)
        except HydraException as error:
            lines = [line for line in str(error).splitlines()[1:] if line.strip() and not line.startswith("See ")]
            detail = lines[0] if lines else str(error)
            errors.append(
                f"{override!r} is not a valid override ({detail}); write key=value, and quote values "
                "that hold braces, brackets or commas, e.g. key='{a}-{b}'"
            )
    return errors


def is_hydra_key(override: str) -> bool:
    """Whether an override sets Hydra's own config (``hydra.job.chdir=true``, ``hydra/launcher=joblib``), not ours:
    ``hydrafoo=1`` is ours (and an unknown key)."""
    key = override.lstrip("+~").split("=", 1)[0].split("@", 1)[0]
    return key == "hydra" or key.startswith(("hydra.", "hydra/"))


def _no_jobs_line(parsed: Sequence[Override]) -> str:
    """The line for a sweep that makes no job: the sweeps that expand to no value (``range(5,1)``, a ``glob`` that
    matches nothing), named."""
    empty = [o.input_line for o in parsed if o.is_sweep_override() and not BasicSweeper.split_arguments([o], None)[0]]
    return (
        f"{', '.join(empty or [o.input_line for o in parsed if o.is_sweep_override()])} sweeps no value, so the "
        "sweep has no job: give each sweep at least one (range(1,5) counts up; glob(...) matches a group's options)"
    )


def _parser() -> OverridesParser:
    """Hydra's override parser with the config loader, which ``glob(...)`` sweeps need (inside ``_hydra_for``)."""
    return OverridesParser.create(config_loader=GlobalHydra.instance().config_loader())


def _group_choice_errors(overrides: list[str], source: Any) -> list[str]:
    """``group=value`` choices that the config directories do not hold, named with the options that exist
    (``source``: the sweep's ``group_source``, with those a ``hydra.searchpath`` adds); a group with no option is
    Hydra's to judge."""
    errors = []
    for override in _parser().parse_overrides(overrides):  # no hydra.* but the searchpath: see _check_jobs
        key = override.key_or_group
        if override.package or "." in key or override.is_delete():
            continue
        options = source.get_group_options(key)
        if not options:
            continue
        values = list(override.sweep_iterator()) if override.is_sweep_override() else [override.value()]
        for value in values:
            if isinstance(value, dict):  # group={key: value, ...}: Hydra merges it into the group's chosen config
                continue
            value = value.text if isinstance(value, QuotedString) else value  # -m model="custom",hf
            if str(value) not in options:
                errors.append(f"{key}={value!r} is not allowed: choose one of {', '.join(sorted(options))}")
    return errors


def _failure_line(error: BaseException, flags: dict[str, str], given: Sequence[str], job: Sequence[str] = ()) -> str:
    """``_cause_line`` of a composition error, with ``_relative_config_path_hint`` where it applies."""
    line, hint = _cause_line(error, job, given), _relative_config_path_hint(flags, error)
    return line.rstrip(".") + hint if hint else line


def _relative_config_path_hint(flags: dict[str, str], error: BaseException) -> str:
    """When Hydra found no config under a relative ``--config-path``: what it read the path as, and the path the user
    likely meant; else nothing."""
    path = flags.get("config_path", "")
    if not isinstance(error, MissingConfigException) or not path or path.startswith("pkg://") or os.path.isabs(path):
        return ""
    read_as = compute_search_path_dir(None, HYDRA_APP_MODULE, path)
    return (
        f"; Hydra reads a relative --config-path as a package path below the app ({read_as}), not from the current "
        f"directory: give --config-path {os.path.abspath(path)}"
    )


@contextlib.contextmanager
def _hydra_for(flags: dict[str, str], config_dir: str) -> Iterator[None]:
    """Hydra set up as the command sets it up: the primary config directory (``--config-path`` read as Hydra reads
    it, see ``HYDRA_APP_MODULE``, else ours) and ``--config-dir`` added in front of it, as Hydra's ``run_hydra`` adds
    it (it does not replace ours: a group there adds options to ours)."""
    primary = (
        compute_search_path_dir(None, HYDRA_APP_MODULE, flags["config_path"]) if "config_path" in flags else config_dir
    )
    GlobalHydra.instance().clear()
    version.setbase("1.3")
    search_path = create_config_search_path(search_path_dir=primary)
    if "config_dir" in flags:
        search_path.prepend(
            provider="command-line",
            path=f"file://{os.path.abspath(flags['config_dir'])}",
            anchor=SearchPathQuery(provider="schema"),
        )
    Hydra.create_main_hydra2(task_name="gflops_track", config_search_path=search_path)
    try:
        yield
    finally:
        GlobalHydra.instance().clear()


@dataclass
class Preflight:
    """Problems that stop the command (one line each) and warnings to show before it runs."""

    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def preflight(argv: Sequence[str], config_dir: str, config_name: str = "config") -> Preflight:
    """Check every job the command line would run, then the tracking server the first one would log to."""
    split = _split_argv(argv)
    if split is None:
        return Preflight()
    errors, configs = _check_jobs(split, config_dir, config_name)
    if not errors and configs:
        errors = _hydra_setting_problems(split, config_dir, config_name)  # before anything is written anywhere
    if errors or not configs or not configs[0].tracking.enabled:
        return Preflight(errors)
    tracking = configs[0].tracking
    uri = resolve_tracking_uri(tracking.uri, Path.cwd())
    tracking_errors, warnings = reachability(uri)
    if not tracking_errors and not warnings:  # the store answers (a server out of reach: the runs are spooled)
        tracking_errors = launched_run_problems(uri)
    if not tracking_errors:
        tracking_errors = store_problems(uri, tracking.experiment)
    if not tracking_errors and not warnings:
        tracking_errors = _artifact_problems(uri, tracking.experiment)
    return Preflight(tracking_errors, warnings + _thread_warnings(configs))


def unwritable(directory: Path) -> str | None:
    """Why ``directory`` (made later, with its parents) cannot be made and written, or None when it can: the
    nearest part of it that exists must be a directory in which a directory can be made (tried for real: a
    read-only mount, an immutable directory or missing permissions all refuse it, also to root)."""
    existing = directory.absolute()
    while existing != existing.parent:
        try:
            if os.path.lexists(existing):
                break
        except OSError:
            break
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is not a directory"
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".gflops-track-write-check-", dir=existing))
    except OSError as error:
        return f"nothing can be created in {existing}: {error.strerror or error}"
    return None


def _hydra_setting_problems(split: tuple[list[str], dict[str, str]], config_dir: str, config_name: str) -> list[str]:
    """A sweep of values needs ``-m`` (Hydra refuses it after the store exists, with a traceback); Hydra's output
    directory for this command (``hydra.sweep.dir`` in a sweep, else ``hydra.run.dir``, as the first job resolves
    it) must be writable: Hydra makes it after the sweep's run exists, and fails with a traceback when it cannot.
    Left to Hydra when the first job does not resolve here."""
    overrides, flags = split
    try:
        with _hydra_for(flags, config_dir):
            parsed = _parser().parse_overrides(overrides)
            first = BasicSweeper.split_arguments(parsed, None)[0][0]
            config = compose(flags.get("config_name", config_name), overrides=first, return_hydra_config=True)
            multirun = "multirun" in flags or OmegaConf.select(config, "hydra.mode") == RunMode.MULTIRUN
            key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
            directory = str(OmegaConf.select(config, key))
    except Exception:
        return []
    sweeps = [override.input_line for override in parsed if override.is_sweep_override()]
    if sweeps and not multirun:
        return [
            f"{', '.join(sweeps)} sweeps several values, which needs -m: python -m gflops_track -m "
            f"{' '.join(overrides)}"
        ]
    reason = unwritable(Path(directory))
    if reason is None:
        return []
    return [
        f"{key}={directory!r} cannot be written ({reason}): Hydra keeps the jobs' outputs there; run from a "
        f"writable directory or set {key} to one"
    ]


def _artifact_problems(uri: str, experiment: str) -> list[str]:
    """The experiment's local artifact location (where every run's files go; under ``mlflow run``, that run's
    experiment's) must be writable: else each job's files fail after its run exists."""
    try:
        client = connect(uri)
        launched = launched_by_mlflow()
        found = (
            client.get_experiment(client.get_run(launched).info.experiment_id)
            if launched
            else client.get_experiment_by_name(experiment)
        )
    except Exception:  # the store's own checks speak for it
        return []
    path = local_artifact_path(found.artifact_location) if found is not None else None
    reason = unwritable(path) if path is not None else None
    if found is None or reason is None:
        return []
    return [
        f"tracking.experiment={found.name!r} cannot be used: its artifact location {found.artifact_location} cannot "
        f"be written ({reason}), and every run's files go there; make it writable or name another experiment"
    ]


def _thread_warnings(configs: Sequence[AppConfig]) -> list[str]:
    """runtime.threads above the CPUs this process may use: the threads share cores and the timings say little."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    asked = sorted({c.runtime.threads for c in configs if c.runtime.threads and c.runtime.threads > cpus})
    return [
        f"runtime.threads={threads} is more than the {cpus} CPU(s) this process may use: threads will share cores, "
        "and latency will measure the oversubscription (the runs are flagged timing_suspect)"
        for threads in asked
    ]


def _check_jobs(
    split: tuple[list[str], dict[str, str]], config_dir: str, config_name: str
) -> tuple[list[str], list[AppConfig]]:
    """Problems with any job (one line each), and the valid jobs' configs."""
    overrides, flags = split
    # Hydra's own settings are Hydra's to check, but for the search path, which decides what the groups hold
    searchpath = searchpath_overrides(overrides)
    checked = [o for o in overrides if not is_hydra_key(o) or o in searchpath]
    register_schema()
    configs: list[AppConfig] = []
    errors = _syntax_errors(checked)
    if errors:
        return errors, configs
    name = flags.get("config_name", config_name)
    with _hydra_for(flags, config_dir):
        try:
            source = group_source(GlobalHydra.instance().config_loader(), name, searchpath)
            errors = _group_choice_errors(checked, source)
            if errors:
                return errors, configs
            parsed = _parser().parse_overrides(checked)
            jobs = [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]
            if not jobs:  # Hydra would launch none, under a sweep run of its own
                return [_no_jobs_line(parsed)], configs
            groups = group_keys(source, parsed, {})
        except (HydraException, OmegaConfBaseException, ValueError, yaml.YAMLError) as error:
            return [_failure_line(error, flags, checked)], configs
        bases: dict[tuple[str, ...], DictConfig] = {}  # one composition per choice of config groups

        def compose_job(shaping: list[str]) -> DictConfig:
            return compose(name, overrides=shaping)

        for job_overrides in jobs:
            config, problems = _composed_or_problems(
                job_overrides, lambda kept: compose_from_base(kept, groups, bases, compose_job)[0], flags, checked
            )
            configs += [config] if config is not None else []
            errors += [problem for problem in problems if problem not in errors]
    built: dict[str, Any] = {}  # each model config's copy without weights, built once for every job that has it
    for config in configs:  # built without weights here: the inputs it takes (meta_checks); train: a step that runs
        errors += [e for e in weightless_errors(config, built) + training_config_errors(config) if e not in errors]
    return errors, configs
