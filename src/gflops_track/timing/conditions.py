"""The conditions a measurement ran under, and warnings when they make the numbers suspect.

Shared machines are noisy: another process on the CPU, more threads than cores, steal time on a VM, a throttling GPU.
We record, around the timed loop: load average, our process's CPU-seconds per wall-second, the CPU time the *rest* of
the machine used, VM steal time, the cores this process may run on; on NVIDIA GPUs (nvidia-ml-py) the device's
counters as deltas around the loop — total energy (J, hence average power; only over a loop of 1 s or more, which
the counter's ~100 ms steps can resolve) and the time the clocks were held back by the power and thermal policies
(violation status) — and, sampled while the GPU works through a block (never after the final synchronise, when it is
idle), the SM clock and the clocks-event (throttle) reasons.

A power-capped GPU under sustained load is the normal state, not a suspect run: the software power cap (reason and
power-policy violation time) is recorded but raises no warning; the SM clock is held against the default applications
clock (what the board runs at by design), not the maximum boost clock. On a MIG slice the energy counter is the whole
board's, shared with the other slices' tenants: no energy or power is reported, and a note says so.

The NVML handle is looked up by the CUDA device's UUID, never by its ordinal: under ``CUDA_VISIBLE_DEVICES`` (or
SLURM) CUDA's ordinal 0 can be NVML's GPU 5, and a MIG slice has its own UUID. Every NVML query has its own ``try``:
a GPU or driver that lacks one query still answers the others.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psutil
import torch

from gflops_track.results.timing import Conditions

OTHER_CPU_WARN = 0.25  # other processes busy for a quarter of a core on average
STEAL_WARN = 0.05  # 5% of CPU time stolen by the hypervisor
CLOCK_WARN = 0.9  # SM clock below 90% of its default applications clock while the GPU worked
ENERGY_MIN_WINDOW_S = 1.0  # NVML's energy counter moves about every 100 ms: 10 steps or more keep its error near 10%
VIOLATION_WARN = 0.05  # clocks held back by the thermal policy for 5% of the timed loop
THROTTLE_BITS = {  # NVML clocks-event (throttle) reason bits, as in nvml.h
    0x1: "gpu_idle",
    0x2: "applications_clocks_setting",
    0x4: "sw_power_cap",
    0x8: "hw_slowdown",
    0x10: "sync_boost",
    0x20: "sw_thermal_slowdown",
    0x40: "hw_thermal_slowdown",
    0x80: "hw_power_brake_slowdown",
    0x100: "display_clock_setting",
}
BENIGN_THROTTLE = {"gpu_idle", "applications_clocks_setting", "sw_power_cap", "sync_boost", "display_clock_setting"}
VIOLATION_POLICIES = {"power": 0, "thermal": 1}  # NVML_PERF_POLICY_POWER, NVML_PERF_POLICY_THERMAL
VIOLATION_SUSPECT = ("thermal",)  # held back by the power cap is the normal state under load (see the module docstring)
MIG_ENERGY_NOTE = (
    "no GPU energy or power reported: on a MIG slice NVML's energy counter is the whole board's, shared with the "
    "other slices"
)


def _attempt(query: Callable[[], Any]) -> Any:
    """One NVML query; None when this GPU, driver or slice does not answer it."""
    try:
        return query()
    except Exception:
        return None


class NvmlDevice:
    """NVML for one CUDA device, found by UUID. ``handle`` answers for the slice (MIG) or the GPU; ``board`` is the
    physical GPU (energy, clocks, power and violation counters are per board); ``mig``: the device is a MIG slice."""

    def __init__(self, nvml: Any, handle: Any, board: Any, mig: bool = False) -> None:
        self.nvml, self.handle, self.board, self.mig = nvml, handle, board, mig

    @classmethod
    @contextmanager
    def open(cls, device: torch.device) -> Iterator[NvmlDevice | None]:
        """The device's NVML handles for the duration (None without NVML or a matching UUID)."""
        try:
            import pynvml

            pynvml.nvmlInit()
        except Exception:
            yield None
            return
        try:
            yield cls._lookup(pynvml, device)
        finally:
            with contextlib.suppress(Exception):
                pynvml.nvmlShutdown()

    @classmethod
    def _lookup(cls, nvml: Any, device: torch.device) -> NvmlDevice | None:
        uuid = _attempt(lambda: str(torch.cuda.get_device_properties(device).uuid))
        if not uuid:
            return None
        candidates = [uuid] if uuid.startswith(("GPU-", "MIG-")) else [f"GPU-{uuid}", f"MIG-{uuid}"]
        handle = next(
            (found for name in candidates if (found := _attempt(lambda n=name: nvml.nvmlDeviceGetHandleByUUID(n)))),
            None,
        )
        if handle is None:
            return None
        board = handle
        is_mig = _attempt(lambda: nvml.nvmlDeviceIsMigDeviceHandle(handle))
        mig = bool(getattr(is_mig, "value", is_mig))  # nvidia-ml-py returns the c_uint itself
        if mig:
            board = _attempt(lambda: nvml.nvmlDeviceGetDeviceHandleFromMigDeviceHandle(handle)) or handle
        return cls(nvml, handle, board, mig)

    def name(self) -> str | None:
        name = _attempt(lambda: self.nvml.nvmlDeviceGetName(self.handle))
        return name.decode() if isinstance(name, bytes) else name

    def energy_mj(self) -> int | None:
        """Total energy since the driver loaded, millijoules (Volta and newer)."""
        return _attempt(lambda: int(self.nvml.nvmlDeviceGetTotalEnergyConsumption(self.board)))

    def violation_ns(self, policy: int) -> int | None:
        """Cumulative time the clocks were held back by ``policy``, nanoseconds."""
        status = _attempt(lambda: self.nvml.nvmlDeviceGetViolationStatus(self.board, policy))
        return int(status.violationTime) if status is not None else None

    def sm_clock_mhz(self) -> float | None:
        return _attempt(lambda: float(self.nvml.nvmlDeviceGetClockInfo(self.board, self.nvml.NVML_CLOCK_SM)))

    def sm_clock_max_mhz(self) -> float | None:
        return _attempt(lambda: float(self.nvml.nvmlDeviceGetMaxClockInfo(self.board, self.nvml.NVML_CLOCK_SM)))

    def sm_clock_reference_mhz(self) -> float | None:
        """The SM clock the board should hold under load: its default applications clock, else the applications
        clock (both unsupported on some GPUs), else the maximum clock."""
        nvml, sm = self.nvml, self.nvml.NVML_CLOCK_SM
        clock = _attempt(lambda: float(nvml.nvmlDeviceGetDefaultApplicationsClock(self.board, sm)))
        if not clock:
            clock = _attempt(lambda: float(nvml.nvmlDeviceGetApplicationsClock(self.board, sm)))
        return clock or self.sm_clock_max_mhz()

    def power_limit_w(self) -> float | None:
        """The enforced power limit (W), else the management limit."""
        limit = _attempt(lambda: self.nvml.nvmlDeviceGetEnforcedPowerLimit(self.board))
        if limit is None:
            limit = _attempt(lambda: self.nvml.nvmlDeviceGetPowerManagementLimit(self.board))
        return limit / 1000.0 if limit is not None else None

    def temperature_c(self) -> float | None:
        return _attempt(lambda: float(self.nvml.nvmlDeviceGetTemperature(self.board, self.nvml.NVML_TEMPERATURE_GPU)))

    def clock_reasons(self) -> list[str] | None:
        """Active clocks-event reasons: the current call, else the deprecated throttle-reasons call."""
        mask = _attempt(lambda: self.nvml.nvmlDeviceGetCurrentClocksEventReasons(self.board))
        if mask is None:
            mask = _attempt(lambda: self.nvml.nvmlDeviceGetCurrentClocksThrottleReasons(self.board))
        return None if mask is None else [name for bit, name in THROTTLE_BITS.items() if mask & bit]


def _busy_seconds(times: psutil._common.scputimes) -> float:  # type: ignore[name-defined]
    return sum(getattr(times, name, 0.0) for name in ("user", "nice", "system", "irq", "softirq", "guest"))


def available_cpus() -> int:
    """Logical CPUs this process may run on (its affinity mask where the OS has one)."""
    with contextlib.suppress(AttributeError, OSError):
        return len(os.sched_getaffinity(0))
    return psutil.cpu_count(logical=True) or 1


def _gpu_counters(gpu: NvmlDevice) -> dict[str, int | None]:
    return {
        "energy_mj": gpu.energy_mj(),
        **{f"{name}_ns": gpu.violation_ns(policy) for name, policy in VIOLATION_POLICIES.items()},
    }


def energy_metrics(start_mj: int | None, end_mj: int | None, wall_s: float) -> dict[str, float]:
    """Energy (J) and average power (W) over a window, from NVML's total-energy counter read at its ends; none when
    the counter is missing, did not move, or the window is under ``ENERGY_MIN_WINDOW_S``: the counter moves in steps
    about every 100 ms, so a short window reads 0 or a whole step (on an H200 a 20 ms loop of the seed block read
    0.45 J a forward, over 800 W on a 700 W board)."""
    if start_mj is None or end_mj is None or end_mj <= start_mj or wall_s < ENERGY_MIN_WINDOW_S:
        return {}
    joules = (end_mj - start_mj) / 1e3
    return {"gpu_energy_j": joules, "gpu_power_w": joules / wall_s}  # the average over the loop, not one reading


def short_energy_window_note(wall_s: float, median_ms: float) -> str:
    """Why a GPU run has no energy: its timed loop was shorter than the counter resolves; and how many iterations
    of ``median_ms`` would fill ``ENERGY_MIN_WINDOW_S``, with the options that let the loop run them."""
    needed = math.ceil(ENERGY_MIN_WINDOW_S * 1e3 / median_ms) if median_ms > 0 else 0
    return (
        f"no GPU energy or power reported: the timed loop lasted {wall_s:.3f} s, under the {ENERGY_MIN_WINDOW_S:g} s "
        f"NVML's energy counter needs (it moves in steps about every 100 ms); {needed:,} iterations of "
        f"{median_ms:.3g} ms fill it: set timing.min_repeats={needed} and timing.max_repeats to at least that, with a "
        "timing.max_time_s that leaves room for warm-up too"
    )


def _gpu_metrics(gpu: NvmlDevice, before: dict[str, int | None], wall: float, clocks: list[float]) -> dict[str, float]:
    """Deltas of the counters over the loop, plus the clocks sampled while busy and the board's facts. No energy or
    power on a MIG slice (the board's counter covers every slice)."""
    after = _gpu_counters(gpu)
    metrics: dict[str, float] = {}
    if not gpu.mig:
        metrics.update(energy_metrics(before["energy_mj"], after["energy_mj"], wall))
    for name in VIOLATION_POLICIES:
        start, end = before[f"{name}_ns"], after[f"{name}_ns"]
        if start is not None and end is not None:
            metrics[f"gpu_{name}_violation_fraction"] = max(0, end - start) / 1e9 / wall
    if clocks:
        ordered = sorted(clocks)
        metrics["gpu_sm_clock_mhz"] = ordered[len(ordered) // 2]  # median of the busy samples
        metrics["gpu_sm_clock_min_mhz"] = ordered[0]
    for key, value in (
        ("gpu_sm_clock_max_mhz", gpu.sm_clock_max_mhz()),
        ("gpu_sm_clock_reference_mhz", gpu.sm_clock_reference_mhz()),
        ("gpu_temperature_c", gpu.temperature_c()),
        ("gpu_power_limit_w", gpu.power_limit_w()),
    ):
        if value is not None:
            metrics[key] = value
    return metrics


@contextmanager
def watch_conditions(device: torch.device, threads: int) -> Iterator[Conditions]:
    """Measure the conditions around the block; the yielded object is filled in on exit."""
    with contextlib.ExitStack() as stack:
        gpu = stack.enter_context(NvmlDevice.open(device)) if device.type == "cuda" else None
        conditions = Conditions(_gpu=gpu)
        process = psutil.Process()
        load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        gpu_before = _gpu_counters(gpu) if gpu is not None else {}
        cpu_before, system_before, wall_before = process.cpu_times(), psutil.cpu_times(), time.perf_counter()
        try:
            yield conditions
        finally:
            wall = max(time.perf_counter() - wall_before, 1e-9)
            cpu_after, system_after = process.cpu_times(), psutil.cpu_times()
            ours = (cpu_after.user + cpu_after.system) - (cpu_before.user + cpu_before.system)
            everyone = _busy_seconds(system_after) - _busy_seconds(system_before)
            steal = getattr(system_after, "steal", 0.0) - getattr(system_before, "steal", 0.0)
            total = sum(system_after) - sum(system_before)
            metrics = {
                "threads": float(threads),
                "cpus_available": float(available_cpus()),
                "load_avg_1m_before": load_before,
                "load_avg_1m_after": os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan"),
                "process_cpu_per_wall": ours / wall,
                "other_processes_cpu_per_wall": max(0.0, everyone - ours) / wall,
                "cpu_steal_fraction": steal / total if total > 0 else 0.0,
            }
            if gpu is not None:
                metrics.update(_gpu_metrics(gpu, gpu_before, wall, conditions._clocks))
            conditions.metrics = metrics
            conditions.warnings = suspicions(metrics, conditions.throttle_reasons)
            if gpu is not None and gpu.mig:
                conditions.notes.append(MIG_ENERGY_NOTE)
            elif gpu is not None and gpu_before.get("energy_mj") is not None and wall < ENERGY_MIN_WINDOW_S:
                conditions.short_energy_window_s = wall  # the engine says what would resolve it
            conditions._gpu = None  # NVML is shut down on exit


def suspicions(metrics: dict[str, float], throttle_reasons: list[str]) -> list[str]:
    """Plain-language warnings for conditions that make latency numbers suspect."""
    warnings = []
    other = metrics.get("other_processes_cpu_per_wall", 0.0)
    if other > OTHER_CPU_WARN:
        warnings.append(
            f"other processes used {other:.2f} CPU-seconds per second while we timed: the CPU was shared, latency "
            "may be inflated"
        )
    threads, cpus = metrics.get("threads", 0.0), metrics.get("cpus_available", 0.0)
    if cpus and threads > cpus:
        warnings.append(
            f"{threads:.0f} threads on {cpus:.0f} available CPUs: the threads share cores, latency may be inflated"
        )
    steal = metrics.get("cpu_steal_fraction", 0.0)
    if steal > STEAL_WARN:
        warnings.append(f"the hypervisor stole {steal:.0%} of CPU time while we timed: latency may be inflated")
    clock, reference = metrics.get("gpu_sm_clock_mhz"), metrics.get("gpu_sm_clock_reference_mhz")
    if clock and reference and clock < CLOCK_WARN * reference:
        warnings.append(
            f"the GPU's SM clock was {clock:.0f} MHz while it worked, below {CLOCK_WARN:.0%} of its default "
            f"{reference:.0f} MHz: latency may be inflated"
        )
    for name in VIOLATION_SUSPECT:
        fraction = metrics.get(f"gpu_{name}_violation_fraction", 0.0)
        if fraction > VIOLATION_WARN:
            warnings.append(
                f"the GPU's clocks were held back by its {name} limit for {fraction:.0%} of the timed loop: latency "
                "may be inflated"
            )
    active = [reason for reason in throttle_reasons if reason not in BENIGN_THROTTLE]
    if active:
        warnings.append(f"the GPU was throttling ({', '.join(active)}): latency may be inflated")
    return warnings
