"""The typed configuration schema and its validation.

Types are enforced by OmegaConf when Hydra composes (``batch.size=abc`` fails there); values are checked by
``validate`` before any model is built or any run is created. Every error is one line that names the key, the value
and what is allowed.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

import torch
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from gflops_track.models.residual_block import NORM_CHOICES, residual_block_arg_errors
from gflops_track.profiler import DEVICE_CHOICES
from gflops_track.runtime import RuntimeOptions
from gflops_track.timing import TimingOptions

SCHEMA_NAME = "gflops_track_schema"
RESIDUAL_BLOCK_TARGETS = ("gflops_track.models.ResidualBlock", "gflops_track.models.residual_block.ResidualBlock")


@dataclass
class NormConfig:
    name: str = "group"


@dataclass
class DeviceConfig:
    type: str = "auto"
    index: int | None = None


@dataclass
class BatchConfig:
    size: int = 2
    height: int = 32
    width: int = 32


@dataclass
class InputConfig:
    shape: list[int] | None = None  # per-sample shape of the first positional input
    args: list[list[int]] = field(default_factory=list)  # per-sample shapes of further positional inputs
    kwargs: dict[str, list[int]] = field(default_factory=dict)  # keyword inputs: name -> per-sample shape


@dataclass
class TimingConfig:
    enabled: bool = True
    warmup: int = 10
    warmup_max_s: float = 5.0
    min_repeats: int = 30
    target_precision: float = 0.01
    max_time_s: float = 10.0
    max_repeats: int = 10_000
    cuda_graph: bool = False
    flush_l2: bool = False

    def options(self) -> TimingOptions:
        """The timing engine's options (every field but ``enabled`` has the same name there)."""
        return TimingOptions(**{f.name: getattr(self, f.name) for f in fields(TimingOptions)})


@dataclass
class PrecisionConfig:
    dtype: str = "fp32"
    mode: str = "autocast"


@dataclass
class RuntimeConfig:
    memory_format: str = "contiguous"
    cudnn_benchmark: bool = False
    threads: int | None = None
    compile: str = "off"


@dataclass
class PeakConfig:
    measure: bool = True
    cache_dir: str | None = None


@dataclass
class CountingConfig:
    meta: bool = True
    thop: bool = True
    torch_check: bool = True


@dataclass
class TrackingConfig:
    enabled: bool = True
    uri: str | None = None
    experiment: str = "gflops-track"
    run_name: str = "{model}-{norm_fn}-b{batch_size}-{device}-{dtype}"


@dataclass
class AppConfig:
    """The whole job configuration, as plain values (what the job functions take)."""

    model: dict[str, Any] = MISSING
    norm_fn: NormConfig = field(default_factory=NormConfig)
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
        return RuntimeOptions(
            dtype=self.precision.dtype,
            dtype_mode=self.precision.mode,
            memory_format=self.runtime.memory_format,
            cudnn_benchmark=self.runtime.cudnn_benchmark,
            threads=self.runtime.threads,
            compile=self.runtime.compile,
        )


RUNTIME_KEYS = {  # RuntimeOptions field -> the config key that sets it
    "dtype": "precision.dtype",
    "dtype_mode": "precision.mode",
    "memory_format": "runtime.memory_format",
    "threads": "runtime.threads",
    "compile": "runtime.compile",
}


def register_schema() -> None:
    ConfigStore.instance().store(name=SCHEMA_NAME, node=AppConfig)


class ConfigError(ValueError):
    """Invalid configuration: the message lists one 'key=value is not allowed: ...' line per problem."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


def _positive(key: str, value: Any, minimum: int = 1) -> list[str]:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        return [f"{key}={value!r} is not allowed: it must be an integer >= {minimum}"]
    return []


def validate(config: AppConfig) -> list[str]:
    """All problems with ``config``, one line each (empty when it is valid)."""
    errors: list[str] = []
    if config.norm_fn.name not in NORM_CHOICES:
        errors.append(f"norm_fn={config.norm_fn.name!r} is not allowed: choose one of {', '.join(NORM_CHOICES)}")
    device = config.device.type
    if device not in DEVICE_CHOICES:
        errors.append(f"device={device!r} is not allowed: choose one of {', '.join(DEVICE_CHOICES)}")
    elif device == "cuda" and not torch.cuda.is_available():
        errors.append("device='cuda' is not allowed on this machine: it has no CUDA device (use device=cpu or auto)")
    elif device == "cuda" and config.device.index is not None and config.device.index >= torch.cuda.device_count():
        errors.append(
            f"device.index={config.device.index!r} is not allowed: this machine has "
            f"{torch.cuda.device_count()} CUDA device(s), indices 0..{torch.cuda.device_count() - 1}"
        )
    errors += _positive("batch.size", config.batch.size)
    errors += _positive("batch.height", config.batch.height)
    errors += _positive("batch.width", config.batch.width)
    if config.input.shape is not None and (
        not config.input.shape
        or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in config.input.shape)
    ):
        errors.append(f"input.shape={config.input.shape!r} is not allowed: it must be a list of integers >= 1")
    errors += [f"timing.{name}{message}" for name, message in config.timing.options().problems()]
    errors += [f"{RUNTIME_KEYS[name]}{message}" for name, message in config.runtime_options().problems()]
    if not config.tracking.experiment.strip():
        errors.append("tracking.experiment='' is not allowed: give the MLflow experiment a name")
    errors += _run_name_errors(config.tracking.run_name)
    errors += _model_errors(config)
    return errors


RUN_NAME_FIELDS = ("model", "norm_fn", "batch_size", "device", "dtype")


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
    if not isinstance(target, str) or not target.strip():
        return [f"model._target_={target!r} is not allowed: it must name an importable nn.Module class"]
    if target in RESIDUAL_BLOCK_TARGETS:
        kwargs = {key: model.get(key) for key in ("in_planes", "planes", "norm_fn", "stride")}
        kwargs["norm_fn"] = kwargs["norm_fn"] if kwargs["norm_fn"] is not None else "group"
        kwargs["stride"] = kwargs["stride"] if kwargs["stride"] is not None else 1
        problems = residual_block_arg_errors(**kwargs)
        if config.norm_fn.name not in NORM_CHOICES:  # already reported under its own key
            problems = [p for p in problems if not p.startswith("norm_fn=")]
        return [f"model.{problem}" for problem in problems]
    if config.input.shape is None and not any(key in model for key in ("in_planes", "in_channels")):
        return [
            f"input.shape=None is not allowed for model._target_={target!r}: give the per-sample input shape, "
            "e.g. input.shape=[128,256] (only models with in_planes/in_channels get an image input by default)"
        ]
    return []


def to_app_config(config: Any) -> AppConfig:
    """Resolve a composed DictConfig into plain values and validate them; raise ``ConfigError`` when invalid."""
    from omegaconf import OmegaConf
    from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

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
