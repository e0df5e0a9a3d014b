"""Value checks shared by the core, the models and the config schema: each problem is one line that names the key,
the value and what is allowed."""

from __future__ import annotations

from typing import Any

import torch

DEVICE_CHOICES = ("auto", "cpu", "cuda")


def integer_problem(value: Any, minimum: int = 1) -> str | None:
    """``"=value is not allowed: ..."`` when ``value`` is not an integer (a bool is not one) of at least ``minimum``;
    callers put the key in front."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        return f"={value!r} is not allowed: it must be an integer >= {minimum}"
    return None


def integer_problems(key: str, value: Any, minimum: int = 1) -> list[str]:
    """``key=value`` must be an integer (not a bool) of at least ``minimum``: the problem as a one-line list."""
    problem = integer_problem(value, minimum)
    return [f"{key}{problem}"] if problem else []


def device_problems(kind: str, index: int | None = None, key: str = "device") -> list[str]:
    """A device type from ``DEVICE_CHOICES`` and, for CUDA, one this machine has (``index`` within its count)."""
    if kind not in DEVICE_CHOICES:
        return [f"{key}={kind!r} is not allowed: choose one of {', '.join(DEVICE_CHOICES)}"]
    if kind != "cuda":
        return []
    if not torch.cuda.is_available():
        return [f"{key}='cuda' is not allowed on this machine: it has no CUDA device (use {key}=cpu or auto)"]
    count = torch.cuda.device_count()
    if index is not None and not 0 <= index < count:
        return [
            f"{key}.index={index!r} is not allowed: this machine has {count} CUDA device(s), indices 0..{count - 1}"
        ]
    return []
