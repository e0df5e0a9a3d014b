"""What a model is fed (``InputSpec``, one per input; ``ModelInputs``, a whole call): shape, dtype and value range.

Floats are drawn from a normal distribution and follow the run's precision; integers (token ids, class ids) are drawn
uniformly from ``[low, high)``; boolean masks are all true unless ``low=0`` asks for random ones. Integer and boolean
inputs are never converted by the run's dtype or memory format.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gflops_track.common.validation import integer_problem

FLOAT = "float"
INPUT_DTYPES = (FLOAT, "int64", "int32", "bool")
INTEGER_DTYPES = ("int64", "int32")
SPEC_KEYS = ("shape", "dtype", "low", "high")  # what an input written as a mapping may hold


@dataclass(frozen=True)
class InputSpec:
    """One input, per sample (the batch dimension comes first, from the batch size). ``low``/``high``: the range
    ``[low, high)`` of an integer input (``high`` required, ``low`` 0 by default) or of a mask (0 or 1: ``low=1``,
    the default, gives all true)."""

    shape: tuple[int, ...]
    dtype: str = FLOAT
    low: int | None = None
    high: int | None = None

    @property
    def is_integer(self) -> bool:
        return self.dtype in INTEGER_DTYPES

    def value_range(self) -> tuple[int, int]:
        """``[low, high)`` with the dtype's defaults filled in (a mask: [1, 2), all true)."""
        if self.dtype == "bool":
            return (1 if self.low is None else self.low), (2 if self.high is None else self.high)
        return (0 if self.low is None else self.low), (self.high if self.high is not None else 0)

    def problems(self, key: str) -> list[str]:
        """One line per problem, each naming the key (``key`` is where the input is set, e.g. ``input``)."""
        prefix = "" if key == "input" else f"{key}."
        shape_key = "input.shape" if key == "input" else f"{key}.shape"
        errors = []
        if any(integer_problem(d) for d in self.shape):  # [] is one number per sample: a timestep, a class label
            errors.append(
                f"{shape_key}={list(self.shape)!r} is not allowed: it must be a list of integers >= 1 ([] for one "
                "number per sample)"
            )
        if self.dtype not in INPUT_DTYPES:
            return [*errors, f"{key}.dtype={self.dtype!r} is not allowed: choose one of {', '.join(INPUT_DTYPES)}"]
        bounds = {"low": self.low, "high": self.high}
        for name, value in bounds.items():
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                errors.append(f"{key}.{name}={value!r} is not allowed: it must be an integer")
        if errors:
            return errors
        if self.dtype == FLOAT:
            errors += [
                f"{key}.{name}={value!r} is not allowed for {key}.dtype='float': float inputs are drawn from a "
                "normal distribution (low and high bound integer ids and masks)"
                for name, value in bounds.items()
                if value is not None
            ]
        elif self.is_integer and self.high is None:
            errors.append(
                f"{key}.high=None is not allowed for {key}.dtype={self.dtype!r}: give the exclusive upper bound of "
                f"the values, e.g. {prefix or 'input.'}high=32000 for token ids of a 32,000-token vocabulary"
            )
        else:
            low, high = self.value_range()
            if self.dtype == "bool" and not 0 <= low < high <= 2:
                errors.append(
                    f"{key}.low={low!r}, {key}.high={high!r} are not allowed for a bool mask: use low=1 (all true, the "
                    "default) or low=0 (random true and false), with high=2"
                )
            elif low >= high:
                errors.append(f"{key}.low={low!r} is not allowed: it must be below {key}.high={high!r}")
        return errors


def input_spec(value: Any, key: str) -> tuple[InputSpec | None, list[str]]:
    """An input as the config writes it, a shape list (float) or ``{shape, dtype, low, high}``, as an ``InputSpec``;
    ``(None, problems)`` when it is neither."""
    if isinstance(value, Mapping):
        unknown = sorted(str(name) for name in value if name not in SPEC_KEYS)
        if unknown:
            return None, [f"{key}.{name} is not allowed: an input takes {', '.join(SPEC_KEYS)}" for name in unknown]
        shape = value.get("shape")
        if not isinstance(shape, (list, tuple)):
            return None, [
                f"{key}.shape={shape!r} is not allowed: it must be a list of integers >= 1 ([] for one number per "
                "sample)"
            ]
        spec = InputSpec(tuple(shape), str(value.get("dtype", FLOAT)), value.get("low"), value.get("high"))
    elif isinstance(value, (list, tuple)):
        spec = InputSpec(tuple(value))
    else:
        return None, [
            f"{key}={value!r} is not allowed: give a per-sample shape such as [64], or {{shape: [64], dtype: int64, "
            "high: 1000}"
        ]
    problems = spec.problems(key)
    return (None if problems else spec), problems


@dataclass(frozen=True)
class InputSizes:
    """The sizes a model's natural input takes from the config: the sequence length of token ids, and an image's
    height and width (None: the model's own)."""

    seq_len: int
    height: int | None = None
    width: int | None = None


@dataclass(frozen=True)
class ModelInputs:
    """A whole call's inputs: positional, then keyword (``model(*args, **kwargs)``)."""

    args: tuple[InputSpec, ...] = ()
    kwargs: Mapping[str, InputSpec] = field(default_factory=dict)
