"""The blog post's network: a ResNet-style residual block with a selectable normalisation.

Same structure as the block in the blog post's script (shared/seed/): two 3x3 convs, a norm after each, ReLU, a 1x1
conv + norm downsample when ``stride != 1``, a residual add; minus its prints, and with its arguments checked up front.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
from torch import nn

from gflops_track.common.validation import integer_problems

NormName = Literal["group", "batch", "instance", "none"]
NORM_CHOICES: tuple[str, ...] = get_args(NormName)
CHANNELS_PER_GROUP = 8  # GroupNorm uses planes // 8 groups, i.e. 8 channels a group


def residual_block_arg_errors(in_planes: int, planes: int, norm_fn: str, stride: int) -> list[str]:
    """Return one message per invalid argument (empty when the block can be built)."""
    errors = []
    for key, value in (("in_planes", in_planes), ("planes", planes), ("stride", stride)):
        errors += integer_problems(key, value)
    if norm_fn not in NORM_CHOICES:
        errors.append(f"norm_fn={norm_fn!r} is not allowed: choose one of {', '.join(NORM_CHOICES)}")
    elif norm_fn == "group" and isinstance(planes, int) and planes >= 1 and planes % CHANNELS_PER_GROUP:
        errors.append(
            f"planes={planes!r} is not allowed with norm_fn='group': it must be a multiple of "
            f"{CHANNELS_PER_GROUP} (GroupNorm uses planes//{CHANNELS_PER_GROUP} groups of "
            f"{CHANNELS_PER_GROUP} channels)"
        )
    if not errors and stride == 1 and in_planes != planes:
        errors.append(
            f"in_planes={in_planes} is not allowed with planes={planes} and stride=1: the residual add needs equal "
            "channel counts (stride != 1 adds the 1x1 conv downsample)"
        )
    return errors


def make_norm(norm_fn: str, planes: int) -> nn.Module:
    """One normalisation layer of the kind the block was asked for."""
    if norm_fn == "group":
        return nn.GroupNorm(num_groups=planes // CHANNELS_PER_GROUP, num_channels=planes)
    if norm_fn == "batch":
        return nn.BatchNorm2d(planes)
    if norm_fn == "instance":
        return nn.InstanceNorm2d(planes)
    return nn.Sequential()  # 'none': an identity that keeps the script's module layout


class ResidualBlock(nn.Module):
    """conv3x3 -> norm -> ReLU -> conv3x3 -> norm -> ReLU, plus a (downsampled) skip, then ReLU."""

    def __init__(self, in_planes: int, planes: int, norm_fn: NormName = "group", stride: int = 1) -> None:
        super().__init__()
        errors = residual_block_arg_errors(in_planes, planes, norm_fn, stride)
        if errors:
            raise ValueError("; ".join(errors))
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, padding=1, stride=stride)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.norm1 = make_norm(norm_fn, planes)
        self.norm2 = make_norm(norm_fn, planes)
        self.downsample: nn.Module | None = None
        if stride != 1:
            # As in the blog post: norm3 is registered both as ``norm3`` and inside ``downsample`` (one shared module).
            self.norm3 = make_norm(norm_fn, planes)
            self.downsample = nn.Sequential(nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride), self.norm3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.norm1(self.conv1(x)))
        y = self.relu(self.norm2(self.conv2(y)))
        if self.downsample is not None:
            x = self.downsample(x)
        return self.relu(x + y)
