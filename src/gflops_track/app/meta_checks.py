"""What preflight checks on a copy of the model built without weights (on meta), before any run: token ids within
the model's embedding, integer ids (not floats) for a model that looks rows up by its input, and an image size a
model by name takes (with the ``model.*`` key that builds it for another size).

Each check refuses only what the job would fail on: a model that does not build, or whose forward does not run on
meta at its own inputs either, is left to the job, which reports its error as a FAILED run. A model is built here
only when a check applies (the seed block, fed its own image, builds nothing).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from gflops_track.app.building import first_input, input_plan, model_factory
from gflops_track.app.schema import AppConfig
from gflops_track.models.construct import build_weightless
from gflops_track.models.huggingface import input_embedding
from gflops_track.models.named import Library, library_of
from gflops_track.options.inputs import InputSizes, InputSpec, ModelInputs
from gflops_track.pipeline.inputs import random_inputs

META = torch.device("meta")
HEIGHT_REFERENCE, WIDTH_REFERENCE = "${batch.height}", "${batch.width}"  # Hydra interpolations of the batch's sizes


def weightless_errors(config: AppConfig, built: dict[str, nn.Module | None] | None = None) -> list[str]:
    """Every check that applies to ``config``, on one copy of its model built on meta (``built``: the copies made
    for earlier jobs of the sweep, by model config, so a sweep over other keys builds its model once)."""
    first = first_input(config)
    ids = first is not None and first.is_integer and first.high is not None
    not_ids = first is not None and not first.is_integer  # floats or a mask: refused where an embedding reads them
    library = library_of(config.model)
    resized = library is not None and first is None and (config.batch.height or config.batch.width) is not None
    if not (ids or not_ids or resized):
        return []
    model = _weightless_copy(config.model, {} if built is None else built)
    if model is None:
        return []
    errors = []
    if ids and first is not None:
        errors += id_range_errors(first, model)
    if not_ids and first is not None:
        errors += id_dtype_errors(config, first, model)
    if resized and library is not None:
        errors += image_size_errors(config, library, model)
    return errors


def _weightless_copy(model_config: Mapping[str, Any], built: dict[str, nn.Module | None]) -> nn.Module | None:
    """The model built on meta, in eval mode (a batch norm in training mode refuses one value per channel), once per
    model config; None when it does not build (the job reports that)."""
    key = json.dumps(model_config, sort_keys=True, default=repr)
    if key not in built:
        try:
            built[key] = build_weightless(model_factory(model_config)).eval()
        except Exception:
            built[key] = None
    return built[key]


def embedding_rows(model: nn.Module) -> tuple[int, str] | None:
    """How many token ids the model's input embedding holds, and where it says so: ``get_input_embeddings()`` (the
    Hugging Face convention), else its only ``nn.Embedding``; None when it does not say. A model that has no input
    embedding to give (a Hugging Face image model raises ``NotImplementedError``) is searched like any other."""
    embedding = input_embedding(model)
    if isinstance(embedding, nn.Embedding):
        return embedding.num_embeddings, f"{type(model).__name__}.get_input_embeddings()"
    embeddings = [(name, module) for name, module in model.named_modules() if isinstance(module, nn.Embedding)]
    if len(embeddings) == 1:
        name, only = embeddings[0]
        owner = type(model).__name__
        return only.num_embeddings, f"{owner}'s only nn.Embedding ({name})" if name else f"the model ({owner})"
    return None


def id_range_errors(first: InputSpec, model: nn.Module) -> list[str]:
    """input.low below 0 or input.high beyond the rows of the model's embedding, where the model says how many."""
    rows = embedding_rows(model)
    if rows is None or first.high is None:
        return []
    size, where = rows
    low = first.value_range()[0]
    errors = []
    if low < 0:  # an id indexes a row: a negative one is an IndexError in the forward, after the run exists
        errors.append(f"input.low={low} is not allowed: {where} has {size:,} rows, so token ids must be >= 0")
    if first.high > size:
        errors.append(
            f"input.high={first.high} is not allowed: {where} has {size:,} rows, so token ids must be below {size:,} "
            f"(input.high <= {size})"
        )
    return errors


def id_dtype_errors(config: AppConfig, first: InputSpec, model: nn.Module) -> list[str]:
    """Floats or a mask fed to a model that looks up its embedding's rows by that input (the forward's "Expected
    tensor for argument #1 'indices' to have one of the following scalar types: Long, Int")."""
    rows = embedding_rows(model)
    if rows is None:
        return []
    error = meta_forward_error(model, input_plan(config, model), config.batch.size)
    if not isinstance(error, RuntimeError) or "'indices'" not in str(error):
        return []
    size, where = rows
    return [
        f"input.dtype={first.dtype!r} is not allowed: {where} looks up its rows by the input, so it must hold integer "
        f"ids ({_first_line(error)}); set input.dtype=int64 input.high={size}"
    ]


def image_size_errors(config: AppConfig, library: Library, model: nn.Module) -> list[str]:
    """batch.height / batch.width that a model by name refuses (a ViT is built for one image size), with the
    ``model.*`` key that builds it for that size where one does (checked by building and running it so)."""
    sizes = InputSizes(config.batch.seq_len, config.batch.height, config.batch.width)
    try:
        own = library.natural_inputs(model, config.model, InputSizes(config.batch.seq_len))
        asked = library.natural_inputs(model, config.model, sizes)
    except Exception:  # a model fed what we cannot make (Whisper's input_features): the job says so
        return []
    if own == asked:  # the image's own size, or no image at all: a text model's token ids have no height
        return [] if _image(asked) is not None else _ignored_size_errors(config, sizes, asked)
    if meta_forward_error(model, own, config.batch.size) is not None:  # meta cannot tell: the job will
        return []
    refusal = meta_forward_error(model, asked, config.batch.size)
    if refusal is None:
        return []
    image = _image(asked)
    if image is None:
        return []
    height, width = image.shape[-2:]
    asked_sides = (("height", sizes.height), ("width", sizes.width))
    given = ", ".join(f"batch.{key}={value}" for key, value in asked_sides if value)
    line = (
        f"{given} is not allowed for model.name={config.model['name']!r}: it refuses a {height}x{width} image "
        f"({_first_line(refusal)})"
    )
    override = _resized_override(config, library, sizes, height, width)
    if override is None:
        return [f"{line}; choose a size it takes"]
    return [f"{line}; build it for that size with {override}{_sweep_form(config, library, sizes)}"]


def _sweep_form(config: AppConfig, library: Library, sizes: InputSizes) -> str:
    """The same key following ``batch.height``/``batch.width``, for a sweep over sizes (each job's own value would
    only move the refusal to the next job), where the library's key takes both sides."""
    if sizes.height is None or sizes.width is None:
        return ""
    keys = library.resized(HEIGHT_REFERENCE, WIDTH_REFERENCE)
    if keys is None:
        return ""
    return f" (over a sweep of sizes: {' '.join(repr(line) for line in _overrides(config.model, keys, 'model.'))})"


def _resized_override(config: AppConfig, library: Library, sizes: InputSizes, height: int, width: int) -> str | None:
    """The override (``+model.img_size=[64,80]``) that builds the model for a (height, width) image, if one does:
    the library's key, merged into ``model.*``, built on meta and run at that size."""
    keys = library.resized(height, width)
    if keys is None:
        return None
    resized_config = _merged(config.model, keys)
    try:
        resized = build_weightless(model_factory(resized_config)).eval()
        inputs = library.natural_inputs(resized, resized_config, sizes)
    except Exception:
        return None
    if meta_forward_error(resized, inputs, config.batch.size) is not None:
        return None
    return " ".join(_overrides(config.model, keys, "model."))


def meta_forward_error(model: nn.Module, inputs: ModelInputs, batch_size: int) -> Exception | None:
    """What a forward of ``model`` (on meta) raises on ``inputs`` on meta, None when it runs. It runs on a copy: a
    forward may change its model (Hugging Face's Swin shrinks its window to the image it was last fed), and the next
    check must see the model as it was built."""
    try:
        runner = copy.deepcopy(model)
    except Exception:  # a model that does not copy: one forward on it, as the job would run it
        runner = model
    try:
        args, kwargs = random_inputs(inputs, batch_size, META)
        with torch.no_grad():
            runner(*args, **kwargs)
    except Exception as error:
        return error
    return None


def _ignored_size_errors(config: AppConfig, sizes: InputSizes, inputs: ModelInputs) -> list[str]:
    """batch.height / batch.width given to a model by name fed no image: ignored, they would name runs by sizes
    never used (a sweep over them, runs that differ in name only)."""
    fed = ", ".join(f"{name} of {list(spec.shape)}" for name, spec in inputs.kwargs.items()) or "no image"
    return [
        f"batch.{key}={value} is not allowed for model.name={config.model['name']!r}: it is fed {fed} per sample, no "
        "image, so the size would be ignored (batch.seq_len sets a text model's length)"
        for key, value in (("height", sizes.height), ("width", sizes.width))
        if value is not None
    ]


def _image(inputs: ModelInputs) -> InputSpec | None:
    """The image (channels, height, width) in a call's inputs, None when it holds none (token ids)."""
    return next((spec for spec in (*inputs.args, *inputs.kwargs.values()) if len(spec.shape) == 3), None)


def _merged(base: Mapping[str, Any], keys: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in keys.items():
        inner = merged.get(key)
        merged[key] = _merged(inner, value) if isinstance(value, Mapping) and isinstance(inner, Mapping) else value
    return merged


def _overrides(base: Mapping[str, Any], keys: Mapping[str, Any], prefix: str) -> list[str]:
    """Hydra overrides setting ``keys`` below ``prefix``: ``+`` for a key ``base`` does not hold."""
    lines = []
    for key, value in keys.items():
        inner = base.get(key) if isinstance(base, Mapping) else None
        if isinstance(value, Mapping):
            lines += _overrides(inner if isinstance(inner, Mapping) else {}, value, f"{prefix}{key}.")
            continue
        text = f"[{','.join(map(str, value))}]" if isinstance(value, list) else str(value)
        plus = "" if isinstance(base, Mapping) and key in base else "+"
        lines.append(f"{plus}{prefix}{key}={text}")
    return lines


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0].rstrip('.')}" if lines else type(error).__name__
