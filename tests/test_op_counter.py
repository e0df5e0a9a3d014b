"""Counts on real architectures: a ConvNeXt block and a Swin block, built here, against formulas; nothing uncounted."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gflops_track import CountOptions, count
from gflops_track.counting.op_counter import count_cost
from gflops_track.counting.torch_crosscheck import report_agreement


class ConvNeXtBlock(nn.Module):
    """ConvNeXt block (Liu et al. 2022) and a classifier head: 7x7 depthwise conv, LayerNorm channels-last, Linear MLP
    with GELU, layer scale, residual; then adaptive average pool to 1x1 and a Linear."""

    def __init__(self, dim: int, classes: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(1e-6 * torch.ones(dim))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.dwconv(x).permute(0, 2, 3, 1)  # (N, H, W, C)
        x = self.pwconv2(self.act(self.pwconv1(self.norm(x))))
        x = shortcut + (self.gamma * x).permute(0, 3, 1, 2)  # channels-last strides: the pool restrides
        return self.head(torch.flatten(self.pool(x), 1))


def window_partition(x: torch.Tensor, ws: int) -> torch.Tensor:
    """(B, H, W, C) -> (B * windows, ws * ws, C)."""
    b, h, w, c = x.shape
    x = x.view(b, h // ws, ws, w // ws, ws, c)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, ws * ws, c)


def window_reverse(windows: torch.Tensor, ws: int, h: int, w: int) -> torch.Tensor:
    c = windows.shape[-1]
    x = windows.view(-1, h // ws, w // ws, ws, ws, c)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, h, w, c)


class SwinBlock(nn.Module):
    """Swin Transformer block (Liu et al. 2021), shifted windows: LayerNorm, roll, window partition, windowed
    multi-head attention with the shifted-window mask (built with eq/ne/masked_fill as the reference code does),
    reverse, roll back, residual; LayerNorm, MLP with GELU, residual."""

    def __init__(self, dim: int, heads: int, size: int, window: int, shift: int, sdpa: bool) -> None:
        super().__init__()
        self.dim, self.heads, self.size, self.window, self.shift, self.sdpa = dim, heads, size, window, shift, sdpa
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(4 * dim, dim)

    def shifted_window_mask(self, device: torch.device) -> torch.Tensor:
        """(windows, ws*ws, ws*ws): 0 within a region, -100 across regions."""
        regions = torch.zeros(1, self.size, self.size, 1, device=device)
        slices = (slice(0, -self.window), slice(-self.window, -self.shift), slice(-self.shift, None))
        for label, (rows, cols) in enumerate((r, c) for r in slices for c in slices):
            regions[:, rows, cols, :] = label
        windows = window_partition(regions, self.window).squeeze(-1)
        mask = windows.unsqueeze(1) - windows.unsqueeze(2)
        return mask.masked_fill(mask != 0, -100.0).masked_fill(mask == 0, 0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, tokens, c = x.shape
        shortcut = x
        x = self.norm1(x).view(b, self.size, self.size, c)
        x = torch.roll(x, shifts=(-self.shift, -self.shift), dims=(1, 2))
        windows = window_partition(x, self.window)
        bw, n, _ = windows.shape
        qkv = self.qkv(windows).reshape(bw, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        mask = self.shifted_window_mask(x.device)
        nw = mask.shape[0]
        if self.sdpa:
            shape = (b, nw, self.heads, n, c // self.heads)
            out = F.scaled_dot_product_attention(
                q.reshape(shape), k.reshape(shape), v.reshape(shape), attn_mask=mask.unsqueeze(1).unsqueeze(0)
            ).view(bw, self.heads, n, -1)
        else:
            attn = (q * (c // self.heads) ** -0.5) @ k.transpose(-2, -1)
            attn = attn.view(b, nw, self.heads, n, n) + mask.unsqueeze(1).unsqueeze(0)
            out = attn.view(-1, self.heads, n, n).softmax(dim=-1) @ v
        out = self.proj(out.transpose(1, 2).reshape(bw, n, c))
        x = torch.roll(window_reverse(out, self.window, self.size, self.size), (self.shift, self.shift), (1, 2))
        x = shortcut + x.reshape(b, tokens, c)
        return x + self.fc2(self.act(self.fc1(self.norm2(x))))


@pytest.mark.parametrize("meta", [True, False], ids=["meta", "real"])
def test_convnext_block_counts(meta: bool) -> None:
    n, c, h, w, classes = 2, 16, 14, 14, 10
    e = n * c * h * w  # 6,272 elements of one activation map
    block = ConvNeXtBlock(c, classes)
    x = torch.randn(n, c, h, w)
    report = count_cost(block, (x,), prefer_meta=meta, torch_check=True)
    dwconv = n * c * h * w * 1 * 7 * 7  # C_in/groups = 1
    pwconv1 = n * h * w * c * 4 * c
    pwconv2 = n * h * w * 4 * c * c
    head = n * c * classes
    assert report.macs == dwconv + pwconv1 + pwconv2 + head == 1_110_464
    assert report.flops_by_category == {
        "conv_matmul": 2 * report.macs,
        "bias": e + 4 * e + e + n * classes,  # dwconv, pwconv1 (4C wide), pwconv2, head
        "norm": (4 + 2 + 2) * e,  # LayerNorm: statistics, normalise, affine
        "activation": 5 * 4 * e,  # exact GELU on the 4C-wide hidden layer
        "elementwise": e + e,  # layer scale (gamma * x) and the residual add
        "pool_resample": e,  # adaptive average pool to 1x1: one per input element, not "elementwise"
    }
    assert report.uncounted_ops == {}
    assert report.params == sum(p.numel() for p in block.parameters())
    rows = {layer.name: layer for layer in report.layers}
    assert rows["pool"].ops == "adaptive_avg_pool2d x1" and rows["pool"].flops == e
    assert report_agreement(report).agrees


@pytest.mark.parametrize("sdpa", [False, True], ids=["softmax", "sdpa"])
@pytest.mark.parametrize("meta", [True, False], ids=["meta", "real"])
def test_swin_block_counts(meta: bool, sdpa: bool) -> None:
    b, size, c, heads, window, shift = 2, 8, 16, 2, 4, 2
    tokens, n = size * size, window * window  # 64 tokens, 16 per window
    nw = (size // window) ** 2  # 4 windows per image
    scores = b * nw * heads * n * n  # 4,096 attention scores
    e = b * tokens * c  # 2,048 elements of the token map
    block = SwinBlock(c, heads, size, window, shift, sdpa)
    x = torch.randn(b, tokens, c)
    report = count_cost(block, (x,), prefer_meta=meta, torch_check=True)
    linear_macs = b * tokens * c * (3 * c + c + 4 * c + 4 * c)  # qkv, proj, fc1, fc2
    attention_macs = 2 * scores * (c // heads)  # Q K^T and P V
    assert report.macs == linear_macs + attention_macs == 458_752
    mask = 5 * nw * n * n  # sub, ne, masked_fill, eq, masked_fill on (windows, n, n)
    # SDPA: scale 1 per score and the additive mask 1 per score; by hand: q * scale on (b*nw, heads, n, d) = e, and
    # + mask on the scores
    attention_elementwise = scores + scores if sdpa else e + scores
    assert report.flops_by_category == {
        "conv_matmul": 2 * report.macs,
        "bias": b * tokens * (3 * c + c + 4 * c + c),
        "norm": 2 * (4 + 2 + 2) * e,
        "activation": 5 * 4 * e + 5 * scores,  # GELU on the 4C hidden layer, softmax on the scores
        "elementwise": mask + attention_elementwise + 2 * e,  # ... and two residual adds
        "pool_resample": 0,
    }
    assert report.uncounted_ops == {}
    ops = next(layer.ops for layer in report.layers if layer.name == "(root)")
    for op in ("roll x2", "eq x1", "ne x1", "masked_fill x2"):
        assert op in ops
    assert report_agreement(report).agrees


@pytest.mark.parametrize("meta", [True, False], ids=["meta", "real"])
def test_transformer_layer_counts_the_same_on_meta_and_for_real(meta: bool) -> None:
    """nn.TransformerEncoderLayer (d=16, 2 heads, ff=32) on (2, 5, 16). Its attention runs inside
    F.multi_head_attention_forward, a Python function of torch.nn.functional: the TorchFunctionMode sees the SDPA call
    in it (priced as a whole, one scale per score on meta too, where the math fallback scales q and k), the packed
    in-projection's bias is a bias (ATen runs it as mm + add on a non-contiguous view), and FlopCounterMode, counting
    the same pass, sees the ops we see: for a real forward not the fused inference path (one
    aten._transformer_encoder_layer_fwd, which it has no formula for: 0 FLOPs and a false disagreement)."""
    b, length, d, heads, ff = 2, 5, 16, 2, 32
    layer = nn.TransformerEncoderLayer(d, heads, ff, batch_first=True)
    report = count_cost(layer, (torch.randn(b, length, d),), prefer_meta=meta, torch_check=True)
    tokens, scores = b * length, b * heads * length * length  # 10 tokens, 100 scores
    # in-projection (q, k, v), Q K^T and P V, out-projection, the two FF linears
    macs = tokens * d * 3 * d + scores * (d // heads) * 2 + tokens * d * d + 2 * tokens * d * ff
    assert report.macs == macs == 22_080
    assert report.flops_by_category == {
        "conv_matmul": 2 * macs,
        "bias": tokens * (3 * d + d + ff + d),  # in-projection, out-projection, FF up, FF down
        "norm": 2 * (4 + 2 + 2) * tokens * d,  # two LayerNorms: statistics, normalise, affine
        "activation": 5 * scores + tokens * ff,  # softmax on the scores, ReLU
        "elementwise": scores + 2 * tokens * d,  # the scale, once per score; two residual adds
        "pool_resample": 0,
    }
    assert report.uncounted_ops == {}
    check = report_agreement(report)
    assert check.agrees and check.flops > 0 and check.notes == []


def test_flop_counter_agrees_under_autocast() -> None:
    """Under bf16 autocast the count runs on fake tensors; FlopCounterMode counts the same pass, so an attention
    gives no false disagreement (it once ran apart, on meta, where another kernel ran)."""

    class Attention(nn.Module):
        def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)

    q, k, v = (torch.randn(2, 3, 8, 16) for _ in range(3))
    report = count_cost(Attention(), (q, k, v), autocast_dtype=torch.bfloat16, torch_check=True)
    assert report.backend == "fake" and report.macs == 2 * 3 * 8 * 8 * (16 + 16)  # B*H*L*S*(E + Ev)
    check = report_agreement(report)
    assert check.agrees and check.notes == []


def test_interpolate_area_is_an_adaptive_pool() -> None:
    """F.interpolate(mode='area') calls adaptive_avg_pool2d from inside torch.nn.functional; to size 1 ATen runs it
    as mean: still one FLOP per input element in pool_resample, as when the pool is called directly."""

    class Area(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.interpolate(x, size=1, mode="area")

    report = count_cost(Area(), (torch.randn(2, 3, 8, 8),))
    assert {k: v for k, v in report.flops_by_category.items() if v} == {"pool_resample": 2 * 3 * 8 * 8}


def test_complex_tensors_are_priced_as_real_ones_and_said_so() -> None:
    """A complex (8, 8) @ (8, 8): 512 complex MACs as counted (FlopCounterMode counts the same), whose real
    arithmetic is 4 real multiplies and 4 real adds each; the count says so instead of passing it silently."""

    class ComplexMatmul(nn.Module):
        def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return torch.view_as_real(a @ b)

    a = torch.randn(8, 8, dtype=torch.cfloat)
    assert count_cost(ComplexMatmul(), (a, a)).complex_op_calls == 1
    result = count(ComplexMatmul(), (a, a), options=CountOptions(thop=False))
    assert result.macs == 8 * 8 * 8
    assert any(note.startswith("1 priced op call(s) ran on complex tensors") for note in result.notes)
    assert count_cost(nn.Linear(4, 4), (torch.randn(2, 4),)).complex_op_calls == 0
