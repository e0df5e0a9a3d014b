"""Models by name, one config group per library (``model=hf``, ``model=torchvision``, ``model=timm``): which builder
each group's ``_target_`` names, the extra that installs the library, what the model is fed, and how its name is
checked before any run."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from gflops_track.models import huggingface, vision
from gflops_track.models.extras import HF, TIMM, TORCHVISION, Extra
from gflops_track.options.inputs import InputSizes, ModelInputs


@dataclass(frozen=True)
class Library:
    """A library's models by name: the extra it needs, the inputs a model of it is fed, its name check, and the
    ``model.*`` keys that build a model for another image size (height, width), where it has them (None: no key
    does, e.g. torchvision's ViT for a non-square image). Its sides are numbers or Hydra interpolations
    (``${batch.height}``), for a sweep over sizes."""

    extra: Extra
    natural_inputs: Callable[[nn.Module, Mapping[str, Any], InputSizes], ModelInputs]
    name_problems: Callable[[Mapping[str, Any], InputSizes], list[str]]
    resized: Callable[[int | str, int | str], dict[str, Any] | None]


def _side_or_pair(height: int | str, width: int | str) -> int | str | list[int | str]:
    return height if height == width else [height, width]


LIBRARIES: dict[str, Library] = {  # the builder a group's _target_ names -> its library
    "gflops_track.models.huggingface.build": Library(
        HF,
        huggingface.natural_inputs,
        lambda model, sizes: huggingface.name_problems(
            str(model["name"]), str(model.get("task", huggingface.DEFAULT_TASK)), model.get("config"), sizes.seq_len
        ),
        lambda height, width: {"config": {"image_size": _side_or_pair(height, width)}},  # ViTConfig takes either
    ),
    "gflops_track.models.vision.torchvision_model": Library(
        TORCHVISION,
        vision.torchvision_inputs,
        lambda model, _: vision.torchvision_name_problems(str(model["name"])),
        lambda height, width: {"image_size": height} if height == width else None,  # its ViT: square images only
    ),
    "gflops_track.models.vision.timm_model": Library(
        TIMM,
        vision.timm_inputs,
        lambda model, _: vision.timm_name_problems(str(model["name"])),
        lambda height, width: {"img_size": _side_or_pair(height, width)},  # create_model(img_size=...)
    ),
}


def library_of(model_config: Mapping[str, Any]) -> Library | None:
    """The library whose builder ``model._target_`` names (None for a class of one's own)."""
    return LIBRARIES.get(str(model_config.get("_target_")))
