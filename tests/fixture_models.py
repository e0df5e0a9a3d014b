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
    interrupt tests). A busy wait, not time.sleep: sleeps on VMs overshoot by whole milliseconds of timer slack. It
    waits until its thread has used ``ms`` of CPU time, as a compute-bound model does: a wall-clock deadline also
    runs out while the thread is descheduled, so on a busy machine a 4 ms Sleeper came closer to a 2 ms one."""

    def __init__(self, in_channels: int, ms: float) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 2, kernel_size=1)
        self.ms = ms

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "meta":
            until = time.thread_time() + self.ms / 1e3
            while time.thread_time() < until:
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
    """Built with its weights after its run exists (and has its first files): puts a regular file where the
    experiment's artifact directory ``location`` was, so every later file of every run fails to be written there (also
    for root). A copy built without weights (preflight's checks, ``model.init=auto`` weighing it) leaves it alone."""

    def __init__(self, in_channels: int, location: str) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 4, kernel_size=1)
        if self.conv.weight.is_meta:
            return
        shutil.rmtree(location, ignore_errors=True)
        Path(location).write_text("a file in the way of the artifact directory")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class CountsBuilds(nn.Module):
    """A Linear(in_features, 2) that counts how often it is built (``builds``, per process)."""

    builds = 0

    def __init__(self, in_features: int) -> None:
        super().__init__()
        type(self).builds += 1
        self.linear = nn.Linear(in_features, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


class TinyLM(nn.Module):
    """A small language model: token embedding, a post-norm Transformer encoder, a vocabulary head; fed token ids.
    Dense MACs per forward of (batch, seq) ids, T = batch * seq tokens, per layer: QKV T*d*3d, output projection T*d*d,
    scores and weighted sum 2 * batch * seq^2 * d, feed-forward 2 * T*d*ff; then the head T*d*vocab."""

    def __init__(self, vocab: int = 1000, width: int = 64, layers: int = 2, heads: int = 4, ff: int = 256) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        layer = nn.TransformerEncoderLayer(width, heads, dim_feedforward=ff, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(width, vocab)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        hidden = self.encoder(self.embed(ids), src_key_padding_mask=None if mask is None else ~mask)
        return self.head(hidden)


def tiny_lm_macs(batch: int, seq: int, vocab: int = 1000, width: int = 64, layers: int = 2, ff: int = 256) -> int:
    """TinyLM's dense MACs by formula (see its docstring)."""
    tokens = batch * seq
    per_layer = tokens * width * 3 * width + tokens * width * width + 2 * batch * seq * seq * width
    per_layer += 2 * tokens * width * ff
    return layers * per_layer + tokens * width * vocab


def tiny_lm_params(vocab: int = 1000, width: int = 64, layers: int = 2, ff: int = 256) -> int:
    """Embedding, per layer (QKV and output projections with biases, two feed-forward linears, two LayerNorms), head."""
    per_layer = (3 * width * width + 3 * width) + (width * width + width) + (width * ff + ff) + (ff * width + width)
    per_layer += 2 * 2 * width
    return vocab * width + layers * per_layer + (width * vocab + vocab)


class Conv1D(nn.Module):
    """A linear layer as Hugging Face's GPT-2 writes it (``x @ weight + bias``, weight (in, out)): a module type thop
    has no rule for. MACs: rows * n_in * n_out."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_in, n_out))
        self.bias = nn.Parameter(torch.zeros(n_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight + self.bias


class Conv1DStack(nn.Module):
    """``count`` Conv1D layers of width ``width`` in a row."""

    def __init__(self, width: int, count: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(*(Conv1D(width, width) for _ in range(count)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class HookShy(nn.Module):
    """Runs as usual, but refuses to run under the layer pass's global forward hooks (a model that breaks under
    hooks the counter's own hooks do not disturb)."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 4, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from gflops_track.timing.module_hooks import Recorder  # the layer passes' hooks are its methods

        hooks = nn.modules.module._global_forward_pre_hooks.values()
        if any(isinstance(getattr(hook, "__self__", None), Recorder) for hook in hooks):
            raise RuntimeError("this model refuses global hooks")
        return self.conv(x)


class ThreadSpy(nn.Module):
    """A linear layer that notes, on every real (not meta) forward, which other Python threads are alive: what a
    test reads to see that nothing runs beside the timed forward."""

    seen: list[list[str]] = []  # noqa: RUF012 (one list per process: the test reads it after the job)

    def __init__(self, features: int) -> None:
        super().__init__()
        self.linear = nn.Linear(features, features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not x.is_meta:
            import threading

            ThreadSpy.seen.append(sorted(t.name for t in threading.enumerate() if t is not threading.main_thread()))
        return self.linear(x)


class StarredBlocks(nn.Module):
    """Blocks passed positionally (``*blocks``) and a keyword width: only ``width`` can be set as ``model.width``."""

    def __init__(self, *blocks: nn.Module, width: int = 8) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*blocks, nn.Linear(width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)
