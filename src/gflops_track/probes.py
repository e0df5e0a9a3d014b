"""Measured peaks of the current device: a GEMM probe per dtype and a memory-bandwidth probe, cached per machine.

* GEMM: square matmuls (FLOPs = 2*M*N*K), a few sizes, the best achieved rate kept;
* bandwidth: a copy of a buffer far larger than the last-level cache (CPU: 4x L3, at least 256 MiB; GPU: 1 GiB),
  bytes = read + write = 2 x buffer size;
* cached in a JSON file keyed by the hardware fingerprint, torch version, thread count and dtype, so a sweep measures
  once per machine.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from gflops_track.runtime import DTYPES

MIB = 2**20
CPU_GEMM_SIZES = (1024, 2048, 3072)
GPU_GEMM_SIZES = (4096, 8192)
PROBE_REPEATS = 5


@dataclass(frozen=True)
class MeasuredPeak:
    gemm_gflop_per_s: float
    gemm_size: int
    bandwidth_gb_s: float
    bandwidth_buffer_mib: float
    dtype: str
    cached: bool = False


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "gflops-track"


def _best_seconds(fn: Callable[[], Any], device: torch.device, repeats: int = PROBE_REPEATS) -> float:
    fn()  # warm-up (allocation, kernel selection)
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best


def _llc_bytes() -> int:
    """Size of the largest CPU cache level (Linux sysfs), 32 MiB when unknown."""
    sizes = []
    for path in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        text = path.read_text().strip().upper()
        scale = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:], 1)
        digits = text.rstrip("KMG")
        if digits.isdigit():
            sizes.append(int(digits) * scale)
    return max(sizes, default=32 * MIB)


def gemm_peak(device: torch.device, dtype: str) -> tuple[float, int]:
    """Best GFLOP/s of square matmuls in ``dtype`` (tf32 = fp32 with TF32 allowed) and the size that reached it."""
    torch_dtype = DTYPES[dtype]
    sizes = GPU_GEMM_SIZES if device.type == "cuda" else CPU_GEMM_SIZES
    saved = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high" if dtype == "tf32" else "highest")
    try:
        best = (0.0, 0)
        for n in sizes:
            a = torch.randn(n, n, device=device, dtype=torch_dtype)
            b = torch.randn(n, n, device=device, dtype=torch_dtype)
            seconds = _best_seconds(lambda a=a, b=b: torch.mm(a, b), device)
            best = max(best, (2 * n**3 / seconds / 1e9, n))
        return best
    finally:
        torch.set_float32_matmul_precision(saved)


def bandwidth_peak(device: torch.device) -> tuple[float, float]:
    """Copy bandwidth in GB/s (read + write) and the buffer size in MiB."""
    size = 2**30 if device.type == "cuda" else max(256 * MIB, 4 * _llc_bytes())
    source = torch.empty(size // 4, dtype=torch.float32, device=device).fill_(1.0)
    target = torch.empty_like(source)
    seconds = _best_seconds(lambda: target.copy_(source), device)
    return 2 * size / seconds / 1e9, size / MIB


def _cache_key(hardware: str, dtype: str) -> str:
    text = f"{hardware}|torch {torch.__version__}|threads {torch.get_num_threads()}|{dtype}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def measured_peak(device: torch.device, dtype: str, hardware: str, cache_dir: Path | None = None) -> MeasuredPeak:
    """The probes' results for this machine and dtype: from the cache when present, else measured and cached."""
    cache_file = (cache_dir or default_cache_dir()) / "peaks.json"
    key = _cache_key(hardware, dtype)
    try:
        cache = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        cache = {}
    if key in cache:
        entry = {name: value for name, value in cache[key].items() if name in MeasuredPeak.__dataclass_fields__}
        return MeasuredPeak(**{**entry, "cached": True})
    gflops, size = gemm_peak(device, dtype)
    bandwidth, buffer_mib = bandwidth_peak(device)
    peak = MeasuredPeak(gflops, size, bandwidth, buffer_mib, dtype)
    cache[key] = {k: v for k, v in asdict(peak).items() if k != "cached"} | {"hardware": hardware}
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cache, indent=2))
        tmp.replace(cache_file)  # atomic: parallel jobs never read a half-written cache
    except OSError:
        pass  # an unwritable cache only costs a re-measure next time
    return peak
