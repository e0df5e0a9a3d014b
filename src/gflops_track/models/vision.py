"""torchvision and timm models by name, with random weights (no download), and the image each is fed.

``torchvision_model("resnet50")`` is ``torchvision.models.get_model("resnet50", weights=None)``; its input is
(3, 224, 224) unless the model's weights document another crop (inception_v3: 299). ``timm_model("convnext_tiny")``
is ``timm.create_model(name, pretrained=False)``; its input size comes from the model's pretrained config. Both
libraries come with the ``vision`` extra and are imported by these functions only.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

from torch import nn

from gflops_track.models.extras import TIMM, TORCHVISION, require
from gflops_track.options.inputs import InputSizes, InputSpec, ModelInputs

IMAGE_CHANNELS = 3
DEFAULT_SIDE = 224  # torchvision's classification crop, where a model's weights document no other


def torchvision_model(name: str, **kwargs: Any) -> nn.Module:
    """torchvision's model ``name`` with random weights; ``kwargs`` go to its builder (e.g. ``num_classes``)."""
    return require(TORCHVISION).models.get_model(name, weights=None, **kwargs)


def torchvision_side(name: str) -> int:
    """The square crop the model's weights were trained at, from their documented transforms (224 otherwise)."""
    torchvision = require(TORCHVISION)
    try:
        weights = list(torchvision.models.get_model_weights(name))
    except (ValueError, KeyError):
        return DEFAULT_SIDE
    transforms = getattr(weights[0], "transforms", None) if weights else None
    crop = getattr(transforms, "keywords", {}).get("crop_size") if transforms is not None else None
    if isinstance(crop, (list, tuple)):
        crop = crop[0]
    return int(crop) if isinstance(crop, int) else DEFAULT_SIDE


def timm_model(name: str, **kwargs: Any) -> nn.Module:
    """timm's model ``name`` with random weights (``pretrained=False``); ``kwargs`` go to ``create_model``."""
    return require(TIMM).create_model(name, pretrained=False, **kwargs)


def image_input(channels: int, height: int, width: int, sizes: InputSizes) -> ModelInputs:
    """One image batch (channels, height, width); ``batch.height``/``batch.width`` replace the model's own."""
    return ModelInputs(args=(InputSpec((channels, sizes.height or height, sizes.width or width)),))


def torchvision_inputs(model: nn.Module, model_config: Mapping[str, Any], sizes: InputSizes) -> ModelInputs:
    """An RGB image at the size the model was built for (a ViT's ``image_size``: ``+model.image_size=384``), else at
    the crop its weights document (vit_h_14's SWAG weights say 518, but the model is built for 224 unless asked)."""
    side = getattr(model, "image_size", None)
    side = side if isinstance(side, int) else torchvision_side(str(model_config["name"]))
    return image_input(IMAGE_CHANNELS, side, side, sizes)


def timm_inputs(model: nn.Module, model_config: Mapping[str, Any], sizes: InputSizes) -> ModelInputs:
    """An image at the size the model was built for (``+model.img_size=[h,w]`` sets its patch embedding's, which
    timm's resolution from the pretrained config does not follow), else at that resolution."""
    timm = require(TIMM)
    channels, height, width = timm.data.resolve_model_data_config(model)["input_size"]
    height, width = built_image_size(model) or (height, width)
    return image_input(channels, height, width, sizes)


def built_image_size(model: nn.Module) -> tuple[int, int] | None:
    """The (height, width) a timm model's patch embedding (ViTs; an MLP-Mixer's ``stem``) was built for, if it has
    one."""
    for part in ("patch_embed", "stem"):
        size = getattr(getattr(model, part, None), "img_size", None)
        if isinstance(size, (tuple, list)) and len(size) == 2 and all(isinstance(side, int) for side in size):
            return int(size[0]), int(size[1])
    return None


def torchvision_name_problems(name: str) -> list[str]:
    known = require(TORCHVISION).models.list_models()
    return _name_problem("torchvision", name, known)


def timm_name_problems(name: str) -> list[str]:
    timm = require(TIMM)
    return [] if timm.is_model(name) else _name_problem("timm", name, timm.list_models())


def _name_problem(library: str, name: str, known: list[str]) -> list[str]:
    if name in known:
        return []
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"did you mean {close[0]}?" if close else f"{library} has {len(known)} models"
    return [f"model.name={name!r} is not allowed: {library} has no model of that name ({hint})"]
