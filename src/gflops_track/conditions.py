"""The conditions a measurement ran under, and warnings when they make the numbers suspect.

Shared machines are noisy: another process on the CPU, steal time on a VM, a throttling GPU. We record, around the
timed loop: load average, our process's CPU-seconds per wall-second, the CPU time the *rest* of the machine used,
VM steal time; on NVIDIA GPUs (nvidia-ml-py) SM clock vs its maximum, power, temperature and throttle reasons.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import psutil
import torch

OTHER_CPU_WARN = 0.25  # other processes busy for a quarter of a core on average
STEAL_WARN = 0.05  # 5% of CPU time stolen by the hypervisor
CLOCK_WARN = 0.9  # SM clock below 90% of its maximum at the end of timing
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
BENIGN_THROTTLE = {"gpu_idle", "applications_clocks_setting", "sync_boost", "display_clock_setting"}


@dataclass
class Conditions:
    """What the machine was doing while we timed (metrics) and what that means (warnings)."""

    metrics: dict[str, float] = field(default_factory=dict)
    throttle_reasons: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _busy_seconds(times: psutil._common.scputimes) -> float:  # type: ignore[name-defined]
    return sum(getattr(times, name, 0.0) for name in ("user", "nice", "system", "irq", "softirq", "guest"))


def _gpu_facts(device: torch.device) -> tuple[dict[str, float], list[str]]:
    """SM clock (MHz), its max, power (W), temperature (C) and active throttle reasons, via NVML."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:
        return {}, []
    try:
        index = device.index if device.index is not None else torch.cuda.current_device()
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        facts = {
            "gpu_sm_clock_mhz": float(pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_SM)),
            "gpu_sm_clock_max_mhz": float(pynvml.nvmlDeviceGetMaxClockInfo(handle, pynvml.NVML_CLOCK_SM)),
            "gpu_power_w": pynvml.nvmlDeviceGetPowerUsage(handle) / 1000.0,
            "gpu_temperature_c": float(pynvml.nvmlDeviceGetTemperature(handle, pynvml.NVML_TEMPERATURE_GPU)),
        }
        mask = pynvml.nvmlDeviceGetCurrentClocksThrottleReasons(handle)
        return facts, [name for bit, name in THROTTLE_BITS.items() if mask & bit]
    except Exception:
        return {}, []
    finally:
        pynvml.nvmlShutdown()


@contextmanager
def watch_conditions(device: torch.device, threads: int) -> Iterator[Conditions]:
    """Measure the conditions around the block; the yielded object is filled in on exit."""
    conditions = Conditions()
    process = psutil.Process()
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
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
            "load_avg_1m_before": load_before,
            "load_avg_1m_after": os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan"),
            "process_cpu_per_wall": ours / wall,
            "other_processes_cpu_per_wall": max(0.0, everyone - ours) / wall,
            "cpu_steal_fraction": steal / total if total > 0 else 0.0,
        }
        if device.type == "cuda":
            gpu, conditions.throttle_reasons = _gpu_facts(device)
            metrics.update(gpu)
        conditions.metrics = metrics
        conditions.warnings = suspicions(metrics, conditions.throttle_reasons)


def suspicions(metrics: dict[str, float], throttle_reasons: list[str]) -> list[str]:
    """Plain-language warnings for conditions that make latency numbers suspect."""
    warnings = []
    other = metrics.get("other_processes_cpu_per_wall", 0.0)
    if other > OTHER_CPU_WARN:
        warnings.append(
            f"other processes used {other:.2f} CPU-seconds per second while we timed: the CPU was shared, latency "
            "may be inflated"
        )
    steal = metrics.get("cpu_steal_fraction", 0.0)
    if steal > STEAL_WARN:
        warnings.append(f"the hypervisor stole {steal:.0%} of CPU time while we timed: latency may be inflated")
    clock, clock_max = metrics.get("gpu_sm_clock_mhz"), metrics.get("gpu_sm_clock_max_mhz")
    if clock and clock_max and clock < CLOCK_WARN * clock_max:
        warnings.append(f"the GPU's SM clock was {clock:.0f} MHz of {clock_max:.0f} MHz at the end of timing")
    active = [reason for reason in throttle_reasons if reason not in BENIGN_THROTTLE]
    if active:
        warnings.append(f"the GPU was throttling ({', '.join(active)}): latency may be inflated")
    return warnings
