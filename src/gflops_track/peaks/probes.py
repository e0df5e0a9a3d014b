"""Measured peaks of a device: the roof of the kernels it actually has, and its copy bandwidth, cached per machine.

* compute: GEMM (square matmuls, FLOPs = 2·n³) and 3x3 convolutions (stride 1, padding 1: FLOPs = 2·N·C_out·H·W·C_in·9),
  a few shapes each, in the run's dtype (tf32 = fp32 with TF32 allowed for matmul and cuDNN), cuDNN benchmark on. The
  best rate of all is the roof (``compute_gflop_per_s``, with ``compute_kernel`` naming it); the best GEMM stays
  ``gemm_gflop_per_s``. On an AMD CPU whose BLAS GEMM is slow, a 3x3 convolution can beat every GEMM: a GEMM-only
  "peak" would show runs at 108% of it. Utilization must use ``compute_gflop_per_s``;
* probe timing: back-to-back calls for about ``window_s`` (100 ms), bracketed once — CUDA events on GPU, so launch
  overhead is amortised; perf_counter on CPU — best of ``repeats`` windows; the single call that sizes the window is
  the result only when it alone lasts a window (a lone call on a rested device can beat the rate it sustains);
* bandwidth: a copy of a buffer far larger than the last-level cache (CPU: 4x L3, at least 256 MiB; GPU: 1 GiB, i.e.
  2 GiB with the copy's target), bytes = read + write = 2 x buffer size. On out-of-memory the buffer is halved down
  to ``BANDWIDTH_FLOOR_BYTES``; when nothing fits, the bandwidth is None with a note and the compute roof is kept;
* cache: ``peaks.json``, a JSON object {key: entry}. The key hashes the hardware fingerprint, torch version, thread
  count, dtype, the device (on GPU its UUID, never the CUDA ordinal, which names another board under
  ``CUDA_VISIBLE_DEVICES`` or SLURM) and, on GPU, the power limit and clocks (NVML), and the probe plan when it is not
  the default. Entries older than ``MAX_AGE_DAYS`` are re-measured. Every read-modify-write holds a file lock
  (``peaks.json.lock``), so parallel jobs measure once and never lose each other's entries; the write is atomic
  (temp file + rename). A file or entry of the wrong shape (a list, null, a missing field, a string where a number
  belongs) is re-measured and rewritten, with a note — never an exception;
* a run that beats the roof raises it (``raise_roof``): the cached entry is rewritten with the run's rate and a note
  says so, so utilization vs the measured roof can never exceed 100%.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import filelock
import torch
import torch.nn.functional as F

from gflops_track.common.names import MIB, user_cache_dir
from gflops_track.options.runtime import DTYPES
from gflops_track.results.peaks import MeasuredPeak
from gflops_track.timing.conditions import NvmlDevice

MAX_AGE_DAYS = 30
CACHE_LOCK_TIMEOUT_S = (
    900.0  # a GPU probe of every shape takes well under a minute; a stuck holder is not waited on forever
)
BANDWIDTH_FLOOR_BYTES = 256 * MIB
CACHE_FORMAT = 2


@dataclass(frozen=True)
class ProbePlan:
    """Which shapes the probes run and how long each is timed. ``conv_shapes``: (batch, channels, spatial size,
    memory format) of a C→C 3x3 convolution on a square input. ``bandwidth_bytes``: None = the device's rule."""

    gemm_sizes: tuple[int, ...]
    conv_shapes: tuple[tuple[int, int, int, str], ...]
    bandwidth_bytes: int | None = None
    window_s: float = 0.1
    repeats: int = 3
    bandwidth_floor_bytes: int = BANDWIDTH_FLOOR_BYTES


CPU_PLAN = ProbePlan(
    gemm_sizes=(1024, 2048, 3072),
    conv_shapes=((2, 384, 32, "contiguous"), (2, 384, 32, "channels_last"), (8, 128, 56, "channels_last"),
                 (32, 256, 14, "contiguous")),
)  # fmt: skip
GPU_PLAN = ProbePlan(
    gemm_sizes=(4096, 8192),
    conv_shapes=((32, 256, 56, "channels_last"), (64, 512, 28, "channels_last"), (32, 384, 32, "contiguous")),
)


def default_plan(device: torch.device) -> ProbePlan:
    return GPU_PLAN if device.type == "cuda" else CPU_PLAN


_STORED = ("gemm_gflop_per_s", "gemm_size", "bandwidth_gb_s", "bandwidth_buffer_mib", "dtype",
           "compute_gflop_per_s", "compute_kernel", "measured_at")  # fmt: skip


def default_cache_dir() -> Path:
    return user_cache_dir()


@contextlib.contextmanager
def _probe_flags(dtype: str) -> Iterator[None]:
    """TF32 for tf32 only (matmul and cuDNN), cuDNN benchmark on; restored after."""
    saved = (torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark)
    torch.set_float32_matmul_precision("high" if dtype == "tf32" else "highest")
    torch.backends.cudnn.allow_tf32 = dtype == "tf32"
    torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(saved[0])
        torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark = saved[1], saved[2]


def _window_seconds(fn: Callable[[], Any], device: torch.device, calls: int) -> float:
    """Seconds per call over ``calls`` back-to-back calls: CUDA events around the window, perf_counter on CPU."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        end.record()  # an event is created on its first record: here, not between the window's two records
        start.record()
        for _ in range(calls):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3 / calls
    began = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - began) / calls


def seconds_per_call(fn: Callable[[], Any], device: torch.device, plan: ProbePlan) -> float:
    """Best seconds per call: one warm-up call, one call to size the window, then the best of ``repeats`` windows
    of ~window_s. The sizing call is the answer only when it alone lasts a window (then no window is run)."""
    fn()  # warm-up: allocation, kernel selection (cuDNN benchmark)
    first = _window_seconds(fn, device, 1)
    if first >= plan.window_s:
        return first
    calls = max(1, math.ceil(plan.window_s / max(first, 1e-9)))
    return min(_window_seconds(fn, device, calls) for _ in range(max(1, plan.repeats)))


def gemm_flops(n: int) -> int:
    """FLOPs of an n x n by n x n matmul: n^2 outputs, n multiply-adds each, 2 FLOPs per multiply-add."""
    return 2 * n**3


def conv3x3_flops(batch: int, channels: int, size: int) -> int:
    """FLOPs of a C->C 3x3 convolution, stride 1, padding 1, on (batch, C, size, size): 2*N*C*H*W*C*9."""
    return 2 * batch * channels * size * size * channels * 9


def _is_oom(error: BaseException) -> bool:
    return (
        isinstance(error, MemoryError | torch.cuda.OutOfMemoryError)
        or "out of memory" in str(error).lower()
        or ("can't allocate memory" in str(error))
    )


def _release(device: torch.device) -> None:
    """Give back what a probe held: the cache's blocks and cuBLAS's workspace, which a GEMM probe makes cuBLAS
    allocate through PyTorch's allocator (32 MiB on an H200) and which otherwise stays allocated, so the memory
    baseline of every later job of a sweep counted it (the seed block: 13.1 MiB in the first job, 45.1 MiB after)."""
    if device.type == "cuda":
        clear_workspaces = getattr(torch._C, "_cuda_clearCublasWorkspaces", None)  # private; in torch since 1.13
        if clear_workspaces is not None:
            clear_workspaces()
        torch.cuda.empty_cache()


def compute_probes(device: torch.device, dtype: str, plan: ProbePlan) -> tuple[list[tuple[str, float, int]], list[str]]:
    """(kernel name, GFLOP/s, GEMM size or 0) per probe that ran, and a note per probe that failed."""
    torch_dtype = DTYPES[dtype]
    found: list[tuple[str, float, int]] = []
    notes: list[str] = []
    with _probe_flags(dtype):
        for n in plan.gemm_sizes:
            name = f"gemm {n}x{n}x{n}"
            try:
                a = torch.randn(n, n, device=device, dtype=torch_dtype)
                b = torch.randn(n, n, device=device, dtype=torch_dtype)
                seconds = seconds_per_call(lambda a=a, b=b: torch.mm(a, b), device, plan)
                found.append((name, gemm_flops(n) / seconds / 1e9, n))
            except (RuntimeError, MemoryError) as error:
                notes.append(f"peak probe {name} ({dtype}) failed: {type(error).__name__}: {str(error)[:200]}")
            finally:
                a = b = None  # type: ignore[assignment]
                _release(device)
        for batch, channels, size, memory_format in plan.conv_shapes:
            name = f"conv3x3 {batch}x{channels}x{size}x{size} {memory_format}"
            try:
                fmt = torch.channels_last if memory_format == "channels_last" else torch.contiguous_format
                x = torch.randn(batch, channels, size, size, device=device, dtype=torch_dtype)
                w = torch.randn(channels, channels, 3, 3, device=device, dtype=torch_dtype)
                x, w = x.contiguous(memory_format=fmt), w.contiguous(memory_format=fmt)
                with torch.inference_mode():
                    seconds = seconds_per_call(lambda x=x, w=w: F.conv2d(x, w, padding=1), device, plan)
                found.append((name, conv3x3_flops(batch, channels, size) / seconds / 1e9, 0))
            except (RuntimeError, MemoryError, NotImplementedError) as error:
                notes.append(f"peak probe {name} ({dtype}) failed: {type(error).__name__}: {str(error)[:200]}")
            finally:
                x = w = None  # type: ignore[assignment]
                _release(device)
    return found, notes


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


def bandwidth_probe(device: torch.device, plan: ProbePlan) -> tuple[float | None, float | None, list[str]]:
    """Copy bandwidth in GB/s (read + write) and the buffer size in MiB; halves the buffer on out-of-memory down to
    BANDWIDTH_FLOOR_BYTES (still far above any cache). (None, None, notes) when no buffer fits."""
    size = plan.bandwidth_bytes or (2**30 if device.type == "cuda" else max(256 * MIB, 4 * _llc_bytes()))
    floor = min(size, plan.bandwidth_floor_bytes)
    notes: list[str] = []
    while size >= floor:
        source = target = None
        try:
            source = torch.empty(size // 4, dtype=torch.float32, device=device).fill_(1.0)
            target = torch.empty_like(source)
            seconds = seconds_per_call(lambda s=source, t=target: t.copy_(s), device, plan)
            return 2 * size / seconds / 1e9, size / MIB, notes
        except (RuntimeError, MemoryError) as error:
            if not _is_oom(error):
                notes.append(f"bandwidth probe failed: {type(error).__name__}: {str(error)[:200]}")
                return None, None, notes
            notes.append(f"bandwidth probe: {2 * size / MIB:,.0f} MiB (buffer and copy) did not fit in memory")
        finally:
            source = target = None
            _release(device)
        size //= 2
    notes.append("bandwidth probe: no buffer fitted; measured bandwidth unknown (the compute roof is kept)")
    return None, None, notes


def measure(device: torch.device, dtype: str, plan: ProbePlan | None = None) -> MeasuredPeak:
    """Run every probe now (inside ``torch.cuda.device(device)`` on GPU). Raises only when no compute probe ran."""
    plan = plan or default_plan(device)
    scope = torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()
    with scope:
        kernels, notes = compute_probes(device, dtype, plan)
        gemms = [k for k in kernels if k[2]]
        if not kernels:
            raise RuntimeError(f"no peak probe ran on {device} in {dtype}: " + "; ".join(notes))
        bandwidth, buffer_mib, bandwidth_notes = bandwidth_probe(device, plan)
    best_name, best_rate, _ = max(kernels, key=lambda k: k[1])
    gemm_rate, gemm_size = max(((k[1], k[2]) for k in gemms), default=(0.0, 0))
    return MeasuredPeak(
        gemm_gflop_per_s=gemm_rate,
        gemm_size=gemm_size,
        bandwidth_gb_s=bandwidth,
        bandwidth_buffer_mib=buffer_mib,
        dtype=dtype,
        compute_gflop_per_s=best_rate,
        compute_kernel=best_name,
        measured_at=time.time(),
        notes=tuple(notes + bandwidth_notes),
    )


def device_facts(device: torch.device) -> str:
    """What besides the fingerprint changes a peak: the GPU (its UUID: the CUDA ordinal names another board under
    ``CUDA_VISIBLE_DEVICES`` or SLURM), and on NVIDIA GPUs the power limit and clocks."""
    if device.type != "cuda":
        return "cpu"
    index = device.index if device.index is not None else torch.cuda.current_device()
    parts = [f"cuda {torch.cuda.get_device_properties(index).uuid}"]
    with NvmlDevice.open(torch.device("cuda", index)) as gpu:
        if gpu is not None:
            nvml = gpu.nvml
            facts = {
                "power_limit_w": gpu.power_limit_w(),
                "sm_clock_max_mhz": gpu.sm_clock_max_mhz(),
                "mem_clock_max_mhz": _maybe(lambda: nvml.nvmlDeviceGetMaxClockInfo(gpu.board, nvml.NVML_CLOCK_MEM)),
                "sm_app_clock_mhz": _maybe(lambda: nvml.nvmlDeviceGetApplicationsClock(gpu.board, nvml.NVML_CLOCK_SM)),
            }
            parts += [f"{name} {value:g}" for name, value in facts.items() if value is not None]
    return "|".join(parts)


def _maybe(query: Callable[[], Any]) -> float | None:
    try:
        return float(query())
    except Exception:
        return None


def cache_key(hardware: str, dtype: str, device: torch.device, plan: ProbePlan | None = None) -> tuple[str, str]:
    """(hash, readable text) of everything a cached peak depends on."""
    text = f"{hardware}|torch {torch.__version__}|threads {torch.get_num_threads()}|{dtype}|{device_facts(device)}"
    if plan is not None and plan != default_plan(device):
        text += f"|plan {plan}"
    return hashlib.sha256(text.encode()).hexdigest()[:16], text


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def entry_problem(entry: Any, dtype: str) -> str | None:
    """Why a cached entry cannot be used (None when it can)."""
    if not isinstance(entry, dict):
        return f"the entry is a {type(entry).__name__}, not an object"
    for name in _STORED:
        if name not in entry:
            return f"field {name!r} is missing"
    for name in ("gemm_gflop_per_s", "compute_gflop_per_s", "measured_at"):
        if not _number(entry[name]) or entry[name] < 0:
            return f"field {name!r} is {entry[name]!r}, not a number >= 0"
    if not _number(entry["gemm_size"]) or entry["gemm_size"] < 0:
        return f"field 'gemm_size' is {entry['gemm_size']!r}, not a size"
    for name in ("bandwidth_gb_s", "bandwidth_buffer_mib"):
        if entry[name] is not None and (not _number(entry[name]) or entry[name] <= 0):
            return f"field {name!r} is {entry[name]!r}, not a number > 0 or null"
    if entry["compute_gflop_per_s"] <= 0 and entry["gemm_gflop_per_s"] <= 0:
        return "no compute rate > 0"
    if entry["dtype"] != dtype or not isinstance(entry["compute_kernel"], str):
        return f"field 'dtype' is {entry['dtype']!r}, not {dtype!r}, or 'compute_kernel' is not a string"
    age_days = (time.time() - entry["measured_at"]) / 86400
    if age_days > MAX_AGE_DAYS:
        return f"it was measured {age_days:.0f} days ago (entries older than {MAX_AGE_DAYS} days are re-measured)"
    return None


def _peak_from(entry: dict[str, Any]) -> MeasuredPeak:
    return MeasuredPeak(**{name: entry[name] for name in _STORED}, cached=True)


def _entry(peak: MeasuredPeak, hardware: str, key_text: str) -> dict[str, Any]:
    stored = {name: value for name, value in asdict(peak).items() if name in _STORED}
    return stored | {"hardware": hardware, "key": key_text}


def _read_cache(cache_file: Path) -> tuple[dict[str, Any], list[str]]:
    """The cache's entries, and a note when the file exists but is not a JSON object (it will be rewritten)."""
    try:
        content = cache_file.read_bytes()
    except FileNotFoundError:
        return {}, []
    except OSError as error:
        return {}, [f"peaks cache {cache_file} unreadable ({error.strerror}): peaks re-measured"]
    try:
        cache = json.loads(content)
    except ValueError:  # UnicodeDecodeError included: binary bytes are not JSON either
        return {}, [f"peaks cache {cache_file} is not valid JSON: re-measured and rewritten"]
    if not isinstance(cache, dict):
        kind = type(cache).__name__
        return {}, [f"peaks cache {cache_file} holds a JSON {kind}, not an object: re-measured and rewritten"]
    return cache, []


def _write_cache(cache_file: Path, cache: dict[str, Any]) -> str | None:
    """Atomic write (temp file + rename); a note when it failed (an unwritable cache only costs a re-measure)."""
    tmp = cache_file.with_suffix(f".{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(cache, indent=2))
        tmp.replace(cache_file)
    except OSError as error:
        with contextlib.suppress(OSError):
            tmp.unlink()
        return f"peaks cache {cache_file} not written ({error.strerror}): the next run measures again"
    return None


@contextlib.contextmanager
def _locked(cache_file: Path) -> Iterator[str | None]:
    """Hold the cache's file lock; yields None when held, else a note (unwritable directory, lock timeout)."""
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        lock = filelock.FileLock(str(cache_file) + ".lock", timeout=CACHE_LOCK_TIMEOUT_S)
        lock.acquire()
    except (OSError, filelock.Timeout) as error:
        yield f"peaks cache {cache_file} not locked ({type(error).__name__}: {error}): measured without the cache"
        return
    try:
        yield None
    finally:
        lock.release()


def update_cache(cache_file: Path, update: Callable[[dict[str, Any]], list[str]]) -> list[str]:
    """Read-modify-write the cache under its lock: ``update`` edits the entries in place and returns notes; the result
    is written back atomically. Notes say what was wrong with the file and what could not be written."""
    with _locked(cache_file) as lock_note:
        if lock_note is not None:
            return [lock_note, *update({})]
        cache, notes = _read_cache(cache_file)
        notes += update(cache)
        write_note = _write_cache(cache_file, cache)
    return notes + ([write_note] if write_note else [])


def _peak(
    device: torch.device,
    dtype: str,
    hardware: str,
    cache_dir: Path | None,
    plan: ProbePlan | None,
    achieved: float | None,
    kernel: str,
) -> tuple[MeasuredPeak, str | None]:
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    cache_file = (cache_dir or default_cache_dir()) / "peaks.json"
    key, key_text = cache_key(hardware, dtype, device, plan)
    found: dict[str, Any] = {}

    def update(cache: dict[str, Any]) -> list[str]:
        notes = []
        entry = cache.get(key)
        problem = entry_problem(entry, dtype) if key in cache else "absent"
        if problem is None:
            peak = _peak_from(entry)
        else:
            if problem != "absent":
                notes.append(
                    f"peaks cache entry for {hardware} {dtype} unusable ({problem}): re-measured and rewritten"
                )
            peak = measure(device, dtype, plan)
            cache[key] = _entry(peak, hardware, key_text)
        if achieved is not None and achieved > peak.roof_gflop_per_s:
            found["raised"] = (
                f"achieved {achieved:,.1f} GFLOP/s beats the measured roof {peak.roof_gflop_per_s:,.1f} GFLOP/s "
                f"({peak.compute_kernel or 'gemm'}): the roof for {dtype} on this machine is raised to it ({kernel})"
            )
            peak = replace(peak, compute_gflop_per_s=achieved, compute_kernel=f"run: {kernel}")
            cache[key] = _entry(peak, hardware, key_text) | {"raised_at": time.time()}
        found["peak"] = peak
        return notes

    notes = update_cache(cache_file, update)
    peak: MeasuredPeak = found["peak"]
    return replace(peak, notes=tuple(notes) + peak.notes), found.get("raised")


def measured_peak(
    device: torch.device, dtype: str, hardware: str, cache_dir: Path | None = None, plan: ProbePlan | None = None
) -> MeasuredPeak:
    """The probes' results for this machine and dtype: from the cache when present and sound, else measured and
    cached. ``notes`` say what was repaired or could not be measured."""
    return _peak(device, dtype, hardware, cache_dir, plan, None, "")[0]


def raise_roof(
    device: torch.device,
    dtype: str,
    hardware: str,
    achieved_gflop_per_s: float,
    cache_dir: Path | None = None,
    plan: ProbePlan | None = None,
    kernel: str = "a profiled run",
) -> tuple[MeasuredPeak, str | None]:
    """The measured peak, with its roof raised to ``achieved_gflop_per_s`` (and the cache rewritten) when a run beat
    it; the note says so (None when the roof held). Measures first when nothing is cached."""
    return _peak(device, dtype, hardware, cache_dir, plan, achieved_gflop_per_s, kernel)
