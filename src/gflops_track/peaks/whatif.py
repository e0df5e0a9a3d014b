"""What the same forward would do on other hardware: each layer of a run bounded by another device's roofs
(``bounds.py``'s rules, the datasheet's figures). Pure: rows and traffic in, a ``WhatIf`` out; reading and logging
runs is ``cli/whatif.py``'s."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from gflops_track.peaks.bounds import layer_bound, spec_roof
from gflops_track.peaks.table import GPU_SPECS
from gflops_track.results.layers import BoundRoof, LayerRow, WhatIf, WhatIfLayer
from gflops_track.results.peaks import GpuSpec


def datasheet_names() -> list[str]:
    """Every card the peak table has figures for, by its datasheet name (what ``--hardware`` takes)."""
    return list(dict.fromkeys(spec.name for _, spec in GPU_SPECS if spec is not None))


def find_spec(name: str) -> GpuSpec:
    """The datasheet card called ``name`` (case and spacing aside); ``ValueError`` listing the names there are."""
    wanted = re.sub(r"\s+", " ", name).strip().lower()
    for _, spec in GPU_SPECS:
        if spec is not None and spec.name.lower() == wanted:
            return spec
    raise ValueError(f"--hardware {name!r} is not allowed: use one of {', '.join(datasheet_names())}, or here")


def hardware_slug(name: str) -> str:
    """A metric-name segment for a device: 'H100 SXM' -> 'h100_sxm'."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


ELEMENT_BYTES = {"fp32": 4, "tf32": 4, "fp16": 2, "bf16": 2}


def byte_scale(run_dtype: str, dtype: str) -> float:
    """What the run's bytes become in ``dtype``: the element-size ratio where it is smaller (bf16 from an fp32 run:
    0.5), else 1. Integer tensors do not shrink, so scaling every byte errs low: the bound stays a bound."""
    here, there = ELEMENT_BYTES.get(run_dtype), ELEMENT_BYTES.get(dtype)
    return min(1.0, there / here) if here and there else 1.0


def what_if(
    rows: Sequence[LayerRow],
    traffic: Mapping[str, Sequence[Sequence[int]]],
    there: BoundRoof,
    dtype: str,
    measured_forward_ms: float | None = None,
    scale: float = 1.0,
) -> WhatIf:
    """Each row bounded on ``there``, beside its time and bound here (the run's own columns); ``scale`` multiplies
    the run's bytes (``byte_scale``)."""
    layers = []
    for row in rows:
        scaled = [(int(inputs * scale), int(outputs * scale)) for inputs, outputs in traffic.get(row.name, ())]
        bound = layer_bound(row.flops, scaled, there)
        layers.append(
            WhatIfLayer(
                name=row.name,
                flops=row.flops,
                measured_ms=row.self_ms,
                bound_here_ms=row.bound_ms,
                limit_here=row.bound,
                bound_there_ms=bound.bound_ms,
                limit_there=bound.limit,
            )
        )
    flops = sum(row.flops for row in rows)
    rule = there.rule + (f"; the run's bytes x {scale:g} for {dtype}" if scale != 1.0 else "")
    return WhatIf(there.label, dtype, rule, layers, flops, measured_forward_ms)


def datasheet_what_if(
    rows: Sequence[LayerRow],
    traffic: Mapping[str, Sequence[Sequence[int]]],
    hardware: str,
    dtype: str,
    run_dtype: str,
    measured_forward_ms: float | None = None,
) -> WhatIf:
    """``what_if`` on a datasheet card named ``hardware`` in ``dtype``, the bytes of a ``run_dtype`` run scaled."""
    roof = spec_roof(find_spec(hardware), dtype)
    return what_if(rows, traffic, roof, dtype, measured_forward_ms, byte_scale(run_dtype, dtype))
