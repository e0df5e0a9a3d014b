"""What a job builds from its config: the model (with its weights or without them: ``model.init``) and its inputs.

The model is ``model._target_`` instantiated with the other ``model.*`` keys (``model.init`` is ours, never passed
on). A failure to import or construct it is reported as its innermost exception (``ModuleNotFoundError: No module
named 'foo'``), never as Hydra's wrapper. The inputs are, in order of precedence: ``input.shape`` (with
``input.dtype``, ``input.low``, ``input.high``), the model's natural input when it is built by name (``model=hf``,
``model=torchvision``, ``model=timm``), or an image of ``in_planes``/``in_channels`` channels; then ``input.args``
and ``input.kwargs``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from torch import nn

from gflops_track.app.schema import OUR_MODEL_KEYS, AppConfig
from gflops_track.models.construct import DEFAULT_INIT, Built, construct
from gflops_track.models.named import library_of
from gflops_track.options.inputs import InputSizes, InputSpec, ModelInputs, input_spec
from gflops_track.pipeline.inputs import random_inputs
from gflops_track.pipeline.runtime import convert_inputs

DEFAULT_IMAGE_SIDE = 32  # an image model's input height and width when batch.height / batch.width are not set


def innermost(error: BaseException) -> BaseException:
    """The exception at the bottom of an explicit chain (``raise ... from``): what went wrong, under Hydra's
    ``InstantiationException`` and its "Error locating target" wrapper."""
    while error.__cause__ is not None:
        error = error.__cause__
    return error


def model_factory(model_config: Mapping[str, Any]) -> Callable[[], nn.Module]:
    """A function that instantiates ``model._target_`` with the other keys as kwargs (this imports and runs that
    code); a failure raises the innermost exception."""
    kwargs = {key: value for key, value in model_config.items() if key not in OUR_MODEL_KEYS}

    def factory() -> nn.Module:
        try:
            model = instantiate(kwargs, _convert_="all")
        except Exception as error:
            raise innermost(error) from None
        if not isinstance(model, nn.Module):
            raise TypeError(f"model._target_={kwargs['_target_']!r} built a {type(model).__name__}, not an nn.Module")
        return model

    return factory


def build_model(model_config: Mapping[str, Any]) -> nn.Module:
    """The model with its weights."""
    return model_factory(model_config)()


def build_job_model(config: AppConfig, device: torch.device) -> Built:
    """The model as ``model.init`` asks: with its weights, on meta, or (auto) on meta when they do not fit."""
    return construct(model_factory(config.model), str(config.model.get("init", DEFAULT_INIT)), device)


def _spec(value: Any, key: str) -> InputSpec:
    spec, problems = input_spec(value, key)
    if spec is None:  # validate() refuses these before any run; here for configs made another way
        raise ValueError("; ".join(problems))
    return spec


def first_input(config: AppConfig) -> InputSpec | None:
    """The first positional input as ``input.*`` sets it (None: the model's own)."""
    if config.input.shape is None:
        return None
    return InputSpec(tuple(config.input.shape), config.input.dtype, config.input.low, config.input.high)


def input_plan(config: AppConfig, model: nn.Module | None = None) -> ModelInputs:
    """Every input of the job's call, as specs (see the module docstring for the order of precedence)."""
    args = [_spec(value, f"input.args[{index}]") for index, value in enumerate(config.input.args)]
    kwargs = {name: _spec(value, f"input.kwargs.{name}") for name, value in config.input.kwargs.items()}
    first = first_input(config)
    if first is not None:
        return ModelInputs((first, *args), kwargs)
    library = library_of(config.model)
    if library is not None and model is not None:
        sizes = InputSizes(config.batch.seq_len, config.batch.height, config.batch.width)
        natural = library.natural_inputs(model, config.model, sizes)
        return ModelInputs((*natural.args, *args), {**natural.kwargs, **kwargs})
    channels = config.model.get("in_planes", config.model.get("in_channels"))
    if channels is None:  # no image input of its own: the call is the inputs given (keyword-only, say)
        return ModelInputs(tuple(args), kwargs)
    side = (config.batch.height or DEFAULT_IMAGE_SIDE, config.batch.width or DEFAULT_IMAGE_SIDE)
    return ModelInputs((InputSpec((int(channels), *side)), *args), kwargs)


def build_inputs(
    config: AppConfig, device: torch.device, model: nn.Module | None = None
) -> tuple[tuple[torch.Tensor, ...], dict[str, torch.Tensor]]:
    """Random inputs created directly on ``device``, each (batch.size, *per-sample shape). A size that cannot be
    allocated fails here, inside the job, as a FAILED run. In ``convert`` mode and with channels_last the floating
    ones are made in the run's dtype and memory format, so the timing holds no second copy."""
    args, kwargs = random_inputs(input_plan(config, model), config.batch.size, device)
    return convert_inputs(args, kwargs, config.runtime_options())


def model_label(config: AppConfig) -> str:
    """The model in a run's name: a named model's ``model.name`` (a local config's folder), else the class name in
    lower case, words kept apart (``ResidualBlock`` -> ``residual_block``, ``TinyLM`` -> ``tinylm``)."""
    if library_of(config.model) is not None:
        path = Path(str(config.model["name"]))
        label = path.parent.name if path.suffix == ".json" else path.name
        return re.sub(r"[^\w.]+", "_", label).lower()
    class_name = str(config.model["_target_"]).rsplit(".", 1)[-1]
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z][a-z])", "_", class_name).lower()


def model_tag(config: AppConfig) -> str:
    """The ``model`` tag before the model is built: the class a target names, or a named model's name (the count
    then sets it to the class that was built)."""
    if library_of(config.model) is not None:
        return str(config.model["name"])
    return str(config.model["_target_"]).rsplit(".", 1)[-1]
