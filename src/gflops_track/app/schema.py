"""The typed configuration schema and its validation.

Types are enforced by OmegaConf when Hydra composes (``batch.size=abc`` fails there); values are checked by
``validate`` before any model is built or any run is created. Every error is one line that names the key, the value
and what is allowed.
"""

from __future__ import annotations

import difflib
import inspect
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, is_dataclass, make_dataclass
from pathlib import Path
from typing import Any, get_type_hints

from hydra._internal.utils import _locate
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from gflops_track.common.validation import device_problems, integer_problems
from gflops_track.models.construct import DEFAULT_INIT, INIT_CHOICES
from gflops_track.models.named import Library, library_of
from gflops_track.models.residual_block import NORM_CHOICES, residual_block_arg_errors
from gflops_track.options.count import CountOptions
from gflops_track.options.inputs import FLOAT, InputSizes, InputSpec, input_spec
from gflops_track.options.peaks import PeakOptions
from gflops_track.options.runtime import RuntimeOptions
from gflops_track.options.timing import TimingOptions
from gflops_track.options.training import DEFAULT_LOSS, DEFAULT_OPTIMIZER, LOSSES, OPTIMIZERS

SCHEMA_NAME = "gflops_track_schema"
OUR_MODEL_KEYS = ("init",)  # model.* keys the app reads itself (model.init): never passed to the model's constructor
MAX_EXPERIMENT_NAME = 500  # MLflow's limit (mlflow.utils.validation.MAX_EXPERIMENT_NAME_LENGTH)
RESIDUAL_BLOCK_TARGETS = ("gflops_track.models.ResidualBlock", "gflops_track.models.residual_block.ResidualBlock")


def config_node(
    name: str,
    options: type,
    exclude: Sequence[str] = (),
    rename: Mapping[str, str] | None = None,
    extra: Sequence[tuple[str, type, Any]] = (),
    defaults: Mapping[str, Any] | None = None,
) -> type:
    """A mutable config dataclass whose fields, types and defaults are the core options dataclass's own (``rename``:
    option field -> config key; ``extra``: config-only fields first; ``defaults``: where the app deliberately
    differs from the library). The defaults are written once, in the core."""
    hints = get_type_hints(options)
    rename = rename or {}
    defaults = defaults or {}
    node_fields: list[tuple[str, Any, Any]] = [(key, kind, field(default=value)) for key, kind, value in extra]
    for option in fields(options):
        if option.name in exclude:
            continue
        key = rename.get(option.name, option.name)
        node_fields.append((key, hints[option.name], field(default=defaults.get(key, option.default))))
    return make_dataclass(name, node_fields)


TimingConfig = config_node("TimingConfig", TimingOptions, extra=[("enabled", bool, True)])
PRECISION_KEYS = {"dtype": "dtype", "dtype_mode": "mode"}  # RuntimeOptions field -> key under precision.
PrecisionConfig = config_node(
    "PrecisionConfig", RuntimeOptions, exclude=[f.name for f in fields(RuntimeOptions) if f.name not in PRECISION_KEYS],
    rename=PRECISION_KEYS,
)  # fmt: skip
RuntimeConfig = config_node("RuntimeConfig", RuntimeOptions, exclude=list(PRECISION_KEYS))
PeakConfig = config_node("PeakConfig", PeakOptions, defaults={"measure": True})  # the app measures peaks
CountingConfig = config_node("CountingConfig", CountOptions, exclude=["extra_rules"])


@dataclass
class DeviceConfig:
    type: str = "auto"
    index: int | None = None


@dataclass
class BatchConfig:
    size: int = 2
    height: int | None = None  # an image's height: the model's own (torchvision, timm), else 32
    width: int | None = None
    seq_len: int = 128  # token ids per sequence of a model=hf text model


@dataclass
class InputConfig:
    """The inputs when the model's own will not do. The first positional input: ``shape`` (per sample), ``dtype``,
    and for integers and masks the range ``[low, high)``; further inputs as a shape (float) or a mapping
    ``{shape, dtype, low, high}`` (``options/inputs.py``)."""

    shape: list[int] | None = None  # per-sample shape of the first positional input
    dtype: str = FLOAT  # float (the run's precision), int64 / int32 (ids in [low, high)), bool (a mask)
    low: int | None = None  # integers: 0 by default; a mask: 1 (all true), 0 for random true and false
    high: int | None = None  # integers: the exclusive upper bound, e.g. the vocabulary size (required)
    args: list[Any] = field(default_factory=list)  # further positional inputs: [64] or {shape: [64], dtype: ...}
    kwargs: dict[str, Any] = field(default_factory=dict)  # keyword inputs: name -> as args


@dataclass
class TrainConfig:
    """The training step of ``mode=train`` (see ``gflops_track.pipeline.training_step``)."""

    loss: str = DEFAULT_LOSS  # sum (needs no labels) or cross_entropy (labels: class 0, shaped to the output)
    optimizer: str = DEFAULT_OPTIMIZER  # sgd, adamw, or none (forward + backward only)


DEFAULT_RUN_NAME = "{model}-{norm_fn}-b{batch_size}-{device}-{dtype}"


@dataclass
class TrackingConfig:
    enabled: bool = True
    uri: str | None = None
    experiment: str = "gflops-track"
    run_name: str = DEFAULT_RUN_NAME  # in a sweep, the default name starts with the variant (job.run_name_for)


@dataclass
class AppConfig:
    """The whole job configuration, as plain values (what the job functions take)."""

    model: dict[str, Any] = MISSING
    norm_fn: str = "group"  # the residual block's norm (model.norm_fn: ${norm_fn}); -m norm_fn=group,batch sweeps it
    mode: str = "inference"  # inference (one forward) or train (a whole step: train.*); -m mode=inference,train
    timeout_s: float | None = 3600.0  # bound on one job (build, count, time, peaks); past it FAILED; null: no bound
    train: TrainConfig = field(default_factory=TrainConfig)
    device: DeviceConfig = field(default_factory=DeviceConfig)
    batch: BatchConfig = field(default_factory=BatchConfig)
    input: InputConfig = field(default_factory=InputConfig)
    precision: PrecisionConfig = field(default_factory=PrecisionConfig)
    timing: TimingConfig = field(default_factory=TimingConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    peak: PeakConfig = field(default_factory=PeakConfig)
    counting: CountingConfig = field(default_factory=CountingConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def runtime_options(self) -> RuntimeOptions:
        precision = {field_name: getattr(self.precision, key) for field_name, key in PRECISION_KEYS.items()}
        return RuntimeOptions(**precision, **_values(self.runtime))

    def timing_options(self) -> TimingOptions:
        return TimingOptions(**_values(self.timing, exclude=("enabled",)))

    def count_options(self) -> CountOptions:
        return CountOptions(**_values(self.counting))

    def peak_options(self) -> PeakOptions:
        cache_dir = self.peak.cache_dir
        return PeakOptions(measure=self.peak.measure, cache_dir=Path(cache_dir) if cache_dir else None)

    def train_options(self) -> dict[str, str]:
        """``loss`` and ``optimizer`` as the training-step functions take them."""
        return {"loss": self.train.loss, "optimizer": self.train.optimizer}

    def uses_norm_fn(self) -> bool:
        """Whether the model takes the top-level ``norm_fn`` (the residual block does; a custom model need not)."""
        return self.model.get("norm_fn") == self.norm_fn and self.model.get("_target_") in RESIDUAL_BLOCK_TARGETS


def _values(node: Any, exclude: Sequence[str] = ()) -> dict[str, Any]:
    return {f.name: getattr(node, f.name) for f in fields(node) if f.name not in exclude}


def option_key(node: str, option: str) -> str:
    """The config key that sets a core option field, e.g. ('runtime', 'dtype') -> 'precision.dtype'."""
    if node == "runtime" and option in PRECISION_KEYS:
        return f"precision.{PRECISION_KEYS[option]}"
    return f"{node}.{option}"


def register_schema() -> None:
    ConfigStore.instance().store(name=SCHEMA_NAME, node=AppConfig)


class ConfigError(ValueError):
    """Invalid configuration: the message lists one 'key=value is not allowed: ...' line per problem."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


def validate(config: AppConfig) -> list[str]:
    """All problems with ``config``, one line each (empty when it is valid)."""
    errors = device_problems(config.device.type, config.device.index)
    if config.device.type == "cpu" and config.device.index is not None:
        errors.append(
            f"device.index={config.device.index!r} is not allowed with device=cpu: it picks a CUDA device "
            "(device=cuda or auto); leave it null"
        )
    errors += integer_problems("batch.size", config.batch.size)
    for key in ("height", "width"):
        if getattr(config.batch, key) is not None:
            errors += integer_problems(f"batch.{key}", getattr(config.batch, key))
    errors += integer_problems("batch.seq_len", config.batch.seq_len)
    errors += input_errors(config.input)
    errors += _image_size_errors(config.batch, config.input.shape)
    errors += [f"{option_key('timing', name)}{message}" for name, message in config.timing_options().problems()]
    errors += [f"{option_key('runtime', name)}{message}" for name, message in config.runtime_options().problems()]
    if not config.tracking.experiment.strip():
        errors.append("tracking.experiment='' is not allowed: give the MLflow experiment a name")
    elif len(config.tracking.experiment) > MAX_EXPERIMENT_NAME:
        errors.append(
            f"tracking.experiment={config.tracking.experiment[:40]!r}... ({len(config.tracking.experiment)} characters)"
            f" is not allowed: MLflow takes experiment names of at most {MAX_EXPERIMENT_NAME} characters"
        )
    errors += _run_name_errors(config.tracking.run_name)
    if config.timeout_s is not None and not (math.isfinite(config.timeout_s) and config.timeout_s > 0):
        errors.append(
            f"timeout_s={config.timeout_s!r} is not allowed: it must be a number of seconds > 0, or null for no bound"
        )
    errors += _choice_errors("mode", config.mode, MODES)
    errors += _choice_errors("train.loss", config.train.loss, LOSSES)
    errors += _choice_errors("train.optimizer", config.train.optimizer, OPTIMIZERS)
    errors += _model_errors(config)
    return errors


def _image_size_errors(batch: BatchConfig, shape: list[int] | None) -> list[str]:
    """``input.shape`` is the whole per-sample shape: a ``batch.height``/``batch.width`` it does not hold would be
    ignored, and a sweep over it would log runs named by sizes never used."""
    if shape is None:
        return []
    errors = []
    for key, axis in (("height", -2), ("width", -1)):
        value = getattr(batch, key)
        if value is None or (len(shape) >= 2 and shape[axis] == value):
            continue
        fixed = [*shape[:-2], value, shape[-1]] if key == "height" else [*shape[:-1], value]
        held = f"its {key} is {shape[axis]}" if len(shape) >= 2 else "it has no image dimensions"
        errors.append(
            f"batch.{key}={value!r} is not allowed with input.shape={list(shape)}: input.shape is the whole per-sample "
            f"shape ({held}); give the size there"
            + (f", e.g. input.shape=[{','.join(map(str, fixed))}]" if len(shape) >= 2 else "")
        )
    return errors


def input_errors(inputs: InputConfig) -> list[str]:
    """The inputs as ``input.*`` writes them: each one a valid spec; the first one's dtype and range only with its
    shape (without ``input.shape`` the first input is the model's own)."""
    if inputs.shape is not None:
        first = InputSpec(tuple(inputs.shape), inputs.dtype, inputs.low, inputs.high)
        errors = first.problems("input")
    else:
        errors = [
            f"input.{key}={value!r} is not allowed without input.shape: it describes the first input, which "
            "input.shape sets (the model's own input is used without it)"
            for key, value in (("dtype", inputs.dtype), ("low", inputs.low), ("high", inputs.high))
            if value != getattr(InputConfig, key)
        ]
    for index, value in enumerate(inputs.args):
        errors += input_spec(value, f"input.args[{index}]")[1]
    for name, value in inputs.kwargs.items():
        errors += input_spec(value, f"input.kwargs.{name}")[1]
    return errors


RUN_NAME_FIELDS = ("model", "norm_fn", "batch_size", "device", "dtype", "mode")
MODES = ("inference", "train")


def _choice_errors(key: str, value: str, allowed: Sequence[str]) -> list[str]:
    if value in allowed:
        return []
    return [f"{key}={value!r} is not allowed: choose one of {', '.join(allowed)}"]


def _run_name_errors(template: str) -> list[str]:
    try:
        template.format(**dict.fromkeys(RUN_NAME_FIELDS, "x"))
    except (KeyError, IndexError, ValueError):
        return [
            f"tracking.run_name={template!r} is not allowed: use only the fields "
            + ", ".join(f"{{{name}}}" for name in RUN_NAME_FIELDS)
        ]
    return []


def _model_errors(config: AppConfig) -> list[str]:
    model = config.model
    target = model.get("_target_")
    if not isinstance(target, str) or not re.fullmatch(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*", target):
        return [
            f"model._target_={target!r} is not allowed: it must name an importable nn.Module class by its dotted "
            "path, e.g. torch.nn.Linear"
        ]
    if model.get("init", DEFAULT_INIT) not in INIT_CHOICES:
        return [f"model.init={model.get('init')!r} is not allowed: choose one of {', '.join(INIT_CHOICES)}"]
    library = library_of(model)
    if library is not None:
        sizes = InputSizes(config.batch.seq_len, config.batch.height, config.batch.width)
        return _named_model_errors(model, library, sizes)
    unknown = model_argument_errors(model)
    if unknown:
        return unknown
    if target in RESIDUAL_BLOCK_TARGETS:
        kwargs = {key: model.get(key) for key in ("in_planes", "planes", "norm_fn", "stride")}
        kwargs["norm_fn"] = kwargs["norm_fn"] if kwargs["norm_fn"] is not None else "group"
        kwargs["stride"] = kwargs["stride"] if kwargs["stride"] is not None else 1
        problems = [f"model.{problem}" for problem in residual_block_arg_errors(**kwargs)]
        if config.uses_norm_fn() and config.norm_fn not in NORM_CHOICES:  # name the key the user typed
            problems = [p for p in problems if not p.startswith("model.norm_fn=")]
            problems.insert(
                0, f"norm_fn={config.norm_fn!r} is not allowed: choose one of {', '.join(sorted(NORM_CHOICES))}"
            )
        return problems
    given = config.input.args or config.input.kwargs  # a forward fed only these (keyword-only inputs)
    if config.input.shape is None and not given and not any(key in model for key in ("in_planes", "in_channels")):
        return [
            f"input.shape=None is not allowed for model._target_={target!r}: give the per-sample input shape, "
            "e.g. input.shape=[128,256], or the inputs by keyword (+input.kwargs.x=[16]) (only models with "
            "in_planes/in_channels get an image input by default)"
        ]
    return []


def _named_model_errors(model: Mapping[str, Any], library: Library, sizes: InputSizes) -> list[str]:
    """A model by name: its library installed (else the ``pip install`` to run) and the name known to it. A library
    that is installed but does not import is left to the job, which reports its error as a FAILED run."""
    missing = library.extra.missing()
    if missing:
        return [missing]
    unknown = model_argument_errors(model)
    if unknown:
        return unknown
    try:
        return library.name_problems(model, sizes)
    except Exception:
        return []


def unknown_keys(node: Any, schema: type, prefix: str = "") -> list[str]:
    """Keys added with ``+`` that the schema does not have (they would be silently ignored), one line each with the
    closest known key. ``model.*`` is free-form (a custom model's arguments): see ``model_argument_errors``."""
    known = {f.name: f for f in fields(schema)}
    hints = get_type_hints(schema)
    errors = []
    for key in node:
        dotted = f"{prefix}{key}"
        if key == "hydra" and not prefix:
            continue
        if key not in known:
            errors.append(f"{not_a_known_key(dotted, known)}; unknown keys would be ignored, so they are refused")
            continue
        kind = hints[key]
        if is_dataclass(kind) and OmegaConf.is_dict(node[key]):
            errors += unknown_keys(node[key], kind, f"{dotted}.")
    return errors


def not_a_known_key(dotted: str, known: Sequence[str]) -> str:
    """'a.b is not a known key (did you mean a.c?)', or with the known keys at that level when none is close."""
    prefix, _, key = dotted.rpartition(".")
    prefix = f"{prefix}." if prefix else ""
    close = difflib.get_close_matches(key, list(known), n=1)
    hint = f"did you mean {prefix}{close[0]}?" if close else f"known keys: {', '.join(sorted(known))}"
    return f"{dotted} is not a known key ({hint})"


def unknown_key_error(dotted: str, present: Sequence[str] = (), override: str = "", plus: str = "+") -> str | None:
    """The line for an override of a key the config does not have (Hydra's own says only "Key 'foo' not in
    'AppConfig'"): named with the close or known keys of the schema; a free-form node (``model``,
    ``input.kwargs``) takes new keys with ``+``, and a key close to one it holds (``present``: the composed node's
    keys) is named first, since a typo is likelier than a new argument. ``override``: the user's ``key=value`` that
    set ``dotted`` or a key inside it (``model.config.n_layer=2`` when ``model.config`` is missing), given back with
    its ``plus`` (``++`` where some configs of a sweep have the key and ``+`` would be refused there). None when the
    schema does have the key."""
    schema: Any = AppConfig
    parts = dotted.split(".")
    for depth, part in enumerate(parts):
        if not is_dataclass(schema):
            close = difflib.get_close_matches(parts[-1], [str(key) for key in present], n=1)
            prefix = dotted.rpartition(".")[0]
            typo = f" (did you mean {prefix}.{close[0]}?)" if close else ""
            added = f"{plus}{override or f'{dotted}=<value>'}"
            return f"{dotted} is not in the config{typo}: a new key is added with {added}"
        known = {f.name: f for f in fields(schema)}
        if part not in known:
            return not_a_known_key(".".join(parts[: depth + 1]), list(known))
        schema = get_type_hints(schema)[part]
    return None


def model_argument_errors(model: Mapping[str, Any]) -> list[str]:
    """``model.*`` keys that the model class's constructor does not take (checked when the class imports and has
    no ``**kwargs``; an import failure is the job's to report, as a FAILED run)."""
    target = model.get("_target_")
    try:
        signature = inspect.signature(_locate(str(target)))
    except Exception:
        return []
    parameters = signature.parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return []
    by_keyword = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)  # what model.* can set
    accepted = sorted(p.name for p in parameters if p.kind in by_keyword)
    takes = ", ".join(accepted) or "no arguments"
    errors = []
    for key in model:
        if not str(key).startswith("_") and key not in accepted and key not in OUR_MODEL_KEYS:
            close = difflib.get_close_matches(str(key), accepted, n=1)
            typo = f" (did you mean model.{close[0]}?)" if close else ""
            errors.append(f"model.{key} is not allowed{typo}: {target} takes {takes}")
    return errors


def to_app_config(config: Any) -> AppConfig:
    """Resolve a composed DictConfig into plain values and validate them; raise ``ConfigError`` when invalid."""
    from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

    unknown = unknown_keys(config, AppConfig)
    if unknown:
        raise ConfigError(unknown)
    try:
        app_config = OmegaConf.to_object(config)
    except MissingMandatoryValue as error:
        raise ConfigError([f"{error.full_key}=??? is not allowed: this key must be set"]) from error
    except OmegaConfBaseException as error:
        raise ConfigError([f"{error.full_key or 'config'}: {str(error).splitlines()[0]}"]) from error
    assert isinstance(app_config, AppConfig)
    errors = validate(app_config)
    if errors:
        raise ConfigError(errors)
    return app_config
