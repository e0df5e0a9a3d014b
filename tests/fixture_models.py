"""Small modules the CLI tests instantiate through ``model._target_`` (importable because tests/ is on PYTHONPATH)."""

from __future__ import annotations

import torch
from torch import nn


class FailsOnBatchSize(nn.Module):
    """A 1x1 conv whose forward raises for one batch size: a job that fails after its run was created."""

    def __init__(self, in_channels: int, fail_on: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 4, kernel_size=1)
        self.fail_on = fail_on

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] == self.fail_on:
            raise RuntimeError(f"planted failure for batch size {self.fail_on}")
        return self.conv(x)
