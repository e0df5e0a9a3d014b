"""Hugging Face transformers models by name, built from their config alone: random weights, no download, offline.

``build("gpt2")`` is ``AutoModelForCausalLM.from_config(AutoConfig.for_model("gpt2"))``; ``name`` may also be a local
``config.json`` or a folder holding one, ``config`` overrides its keys (``num_hidden_layers=2``) and ``task`` picks
the head. ``natural_inputs`` is what such a model is fed: token ids of (batch, seq_len) in [0, vocab_size) and an
all-ones attention mask where its forward takes one (images of its own size for a vision model). transformers is
imported by these functions only (the ``hf`` extra); the module itself imports nothing of it.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gflops_track.models.extras import HF, require
from gflops_track.options.inputs import InputSizes, InputSpec, ModelInputs

TASKS: dict[str, str] = {  # model.task -> the transformers auto class that builds it
    "causal_lm": "AutoModelForCausalLM",
    "masked_lm": "AutoModelForMaskedLM",
    "seq2seq_lm": "AutoModelForSeq2SeqLM",
    "base": "AutoModel",
    "sequence_classification": "AutoModelForSequenceClassification",
    "token_classification": "AutoModelForTokenClassification",
    "question_answering": "AutoModelForQuestionAnswering",
    "image_classification": "AutoModelForImageClassification",
}
DEFAULT_TASK = "causal_lm"
CONFIG_FILE = "config.json"


def _local_config(name: str) -> Path | None:
    """The config.json ``name`` points at (the file, or a folder holding one), if any."""
    path = Path(name).expanduser()
    if path.is_dir() and (path / CONFIG_FILE).is_file():
        return path / CONFIG_FILE
    return path if path.is_file() else None


def model_config(name: str, overrides: Mapping[str, Any] | None = None) -> Any:
    """The transformers config of a model type (``gpt2``, ``llama``, ...) or of a local config.json, with
    ``overrides`` applied: no download."""
    transformers = require(HF)
    local = _local_config(name)
    if local is not None:
        return transformers.AutoConfig.from_pretrained(str(local), local_files_only=True, **dict(overrides or {}))
    return transformers.AutoConfig.for_model(name, **dict(overrides or {}))


def build(name: str, task: str = DEFAULT_TASK, config: Mapping[str, Any] | None = None) -> nn.Module:
    """The model of ``name`` for ``task`` with random weights (``from_config``). Under ``torch.device("meta")`` it
    is built without weights (what ``model.init=meta`` does)."""
    transformers = require(HF)
    if task not in TASKS:
        raise ValueError(f"task={task!r} is not allowed: choose one of {', '.join(TASKS)}")
    auto_class = getattr(transformers, TASKS[task])
    built_config = model_config(name, config)
    if task == "sequence_classification" and getattr(built_config, "pad_token_id", 0) is None:
        # the head pools each row's last non-padding token and refuses batches > 1 without a padding id (GPT-2,
        # Llama have none); our attention mask is all ones, so any id will do: the end-of-sequence id, else 0
        eos = getattr(built_config, "eos_token_id", None)
        built_config.pad_token_id = eos if isinstance(eos, int) else 0
    return auto_class.from_config(built_config)


def name_problems(
    name: str, task: str, config: Mapping[str, Any] | None = None, seq_len: int | None = None
) -> list[str]:
    """``model.name`` and ``model.task`` checked before any run: a known model type or a local config, a task
    transformers has a head for with that model, config keys it has, and a ``seq_len`` its learned position table
    holds (one line each)."""
    transformers = require(HF)
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    if task not in TASKS:
        return [f"model.task={task!r} is not allowed: choose one of {', '.join(TASKS)}"]
    if _local_config(name) is None and name not in CONFIG_MAPPING:
        close = difflib.get_close_matches(name, list(CONFIG_MAPPING.keys()), n=1)
        hint = f"did you mean {close[0]}?" if close else "e.g. gpt2, llama, bert"
        return [
            f"model.name={name!r} is not allowed: it is neither a transformers model type ({hint}) nor a local "
            f"{CONFIG_FILE} or folder holding one"
        ]
    try:
        base = model_config(name)
        kind = type(model_config(name, config))
    except Exception as error:  # a bad override or an unreadable config.json: its message on one line
        message = " ".join(line.strip() for line in str(error).strip().splitlines() if line.strip())
        return [f"model.config: {type(error).__name__}: {message}"]
    accepted = inspect.signature(type(base).__init__).parameters
    # a key the config has, one its constructor takes, or one it keeps privately (attn_implementation)
    unknown = [key for key in config or {} if not (hasattr(base, key) or hasattr(base, f"_{key}") or key in accepted)]
    if unknown:  # transformers would keep a misspelt key as a new attribute and build the full-size model
        known = sorted({*base.to_dict(), *getattr(base, "attribute_map", {})})
        return [
            f"model.config.{key}={config[key]!r} is not allowed: {kind.__name__} has no key {key!r} "  # type: ignore[index]
            f"({_did_you_mean(key, known)})"
            for key in unknown
        ]
    heads = [key for key, auto in TASKS.items() if kind in getattr(transformers, auto)._model_mapping]
    if task not in heads:
        return [f"model.task={task!r} is not allowed for model.name={name!r}: choose one of {', '.join(heads)}"]
    return _position_problems(name, task, config, seq_len) if seq_len is not None else []


def position_table(model: nn.Module) -> tuple[int, str] | None:
    """The positions a token model's learned absolute position embedding holds (GPT-2's ``wpe``, BERT's
    ``position_embeddings``; BART's less its offset of 2) and its name; None for a model not fed token ids (a vision
    model's patch positions are not ``seq_len``'s) and for positions that are computed (rotary: Llama; relative: T5),
    which take any length. A two-tower model's image side is left out (CLIP's vision_model)."""
    if getattr(model, "main_input_name", "input_ids") != "input_ids":
        return None
    for name, module in model.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if "vision" in name or not isinstance(module, nn.Embedding) or not (leaf == "wpe" or "position" in leaf):
            continue
        return module.num_embeddings - int(getattr(module, "offset", 0)), name
    return None


def _position_problems(name: str, task: str, config: Mapping[str, Any] | None, seq_len: int) -> list[str]:
    """``batch.seq_len`` beyond the model's position table fails inside the forward with an IndexError (GPT-2) or a
    size mismatch (BERT): refused here, on a copy built without weights. A model that does not build is left to the
    job, which reports it."""
    try:
        with torch.device("meta"):
            table = position_table(build(name, task, config))
    except Exception:
        return []
    if table is None or seq_len <= table[0]:
        return []
    rows, where = table
    return [
        f"batch.seq_len={seq_len} is not allowed for model.name={name!r}: its learned position table ({where}) holds "
        f"{rows:,} positions; use batch.seq_len<={rows}"
    ]


def _did_you_mean(key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key, known, n=3)
    return f"did you mean {' or '.join(close)}?" if close else "see the model's config.json for its keys"


def input_embedding(model: nn.Module) -> nn.Module | None:
    """The model's ``get_input_embeddings()`` (the Hugging Face convention), None where it has none to give: no such
    method, or one that raises (a model of two towers, CLIP; an image model, ResNet: ``NotImplementedError``)."""
    get_embeddings = getattr(model, "get_input_embeddings", None)
    if not callable(get_embeddings):
        return None
    try:
        return get_embeddings()
    except (NotImplementedError, AttributeError):
        return None


def vocabulary_size(model: nn.Module) -> int | None:
    """Rows of the model's input embedding (its vocabulary), as the model itself reports it."""
    size = getattr(getattr(model, "config", None), "vocab_size", None)
    if isinstance(size, int):
        return size
    embeddings = input_embedding(model)
    return embeddings.num_embeddings if isinstance(embeddings, nn.Embedding) else None


def natural_inputs(model: nn.Module, model_config: Mapping[str, Any], sizes: InputSizes) -> ModelInputs:
    """What the model is fed, by keyword: ``input_ids`` (seq_len) in [0, vocab_size), an all-ones
    ``attention_mask`` (and ``decoder_input_ids`` for an encoder-decoder) where its forward takes them; or
    ``pixel_values`` (channels, height, width) at the config's image size for a vision model."""
    config = getattr(model, "config", None)
    accepted = inspect.signature(model.forward).parameters
    main = getattr(model, "main_input_name", "input_ids")
    if main == "input_ids":
        vocabulary = vocabulary_size(model)
        if vocabulary is None:
            raise ValueError(f"{type(model).__name__} does not say its vocabulary size: give input.* yourself")
        ids = InputSpec((sizes.seq_len,), "int64", 0, vocabulary)
        kwargs = {"input_ids": ids}
        if "attention_mask" in accepted:
            kwargs["attention_mask"] = InputSpec((sizes.seq_len,), "int64", 1, 2)  # all ones: no padding
        if getattr(config, "is_encoder_decoder", False) and "decoder_input_ids" in accepted:
            kwargs["decoder_input_ids"] = ids
        return ModelInputs(kwargs=kwargs)
    if main == "pixel_values":
        side = getattr(config, "image_size", 224)
        height, width = side if isinstance(side, (list, tuple)) else (side, side)
        shape = (getattr(config, "num_channels", 3), sizes.height or height, sizes.width or width)
        return ModelInputs(kwargs={"pixel_values": InputSpec(shape)})
    raise ValueError(f"{type(model).__name__} is fed {main!r}, which gflops-track cannot make: give input.* yourself")
