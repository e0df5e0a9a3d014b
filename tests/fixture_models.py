"""Small modules the CLI tests instantiate through ``model._target_`` (importable because tests/ is on PYTHONPATH)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

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


class Sleeper(nn.Module):
    """A 1x1 conv plus a fixed busy wait: a module whose latency a test sets (for the regression gate and the
    interrupt tests). A busy wait, not time.sleep: sleeps on VMs overshoot by whole milliseconds of timer slack."""

    def __init__(self, in_channels: int, ms: float) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 2, kernel_size=1)
        self.ms = ms

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "meta":
            until = time.perf_counter() + self.ms / 1e3
            while time.perf_counter() < until:
                pass
        return self.conv(x)


class TwoInputsDictOutput(nn.Module):
    """Two positional inputs and a keyword input; returns a dict holding a tensor and a tuple."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.linear = nn.Linear(features, features)

    def forward(self, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None = None) -> dict:
        out = self.linear(x) + y
        return {"out": out * mask if mask is not None else out, "parts": (x, y)}


class WrongChannels(nn.Module):
    """Expects one channel more than it is given: torch itself rejects the input shape."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels + 1, 4, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Raises(nn.Module):
    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 4, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("forward exploded on purpose")


class SoftmaxOnly(nn.Module):
    """No parameters at all: profiled like any module (params = 0)."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.in_channels = in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(x, dim=1)


class ExitsInForward(nn.Module):
    """A forward that calls ``sys.exit`` for one batch size: user code ending the process must fail only its job."""

    def __init__(self, in_channels: int, exit_on: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 4, kernel_size=1)
        self.exit_on = exit_on

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] == self.exit_on and x.device.type != "meta":  # counting (on meta) succeeds first
            raise SystemExit(3)
        return self.conv(x)


class RaisesMarkup(nn.Module):
    """A forward whose error text looks like rich markup, raised on one kind of device (``fail_on``: "meta" -> the
    counting pass falls back to a real forward and says why in a note; "cpu" -> the timed forward fails the job).
    Either text must be printed as text, never parsed."""

    def __init__(self, in_channels: int, fail_on: str) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 4, kernel_size=1)
        self.fail_on = fail_on

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == self.fail_on:
            raise RuntimeError("cannot load [/opt/ext/op.so] ([bold]missing[/bold])")
        return self.conv(x)


class Hangs(nn.Module):
    """A forward that never returns for one batch size (``time.sleep(10**6)`` in the main thread): a job only
    ``timeout_s`` can end."""

    def __init__(self, in_channels: int, hang_on: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 4, kernel_size=1)
        self.hang_on = hang_on

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] == self.hang_on and x.device.type != "meta":
            time.sleep(10**6)
        return self.conv(x)


class BreaksArtifactLocation(nn.Module):
    """Built after its run exists (and has its first files): puts a regular file where the experiment's artifact
    directory ``location`` was, so every later file of every run fails to be written there (also for root)."""

    def __init__(self, in_channels: int, location: str) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 4, kernel_size=1)
        shutil.rmtree(location, ignore_errors=True)
        Path(location).write_text("a file in the way of the artifact directory")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)
