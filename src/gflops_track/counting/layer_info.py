"""The per-layer breakdown: one row per module with its own parameters and the cost of what ran directly in it."""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from dataclasses import asdict, fields
from typing import Any

from torch import nn

from gflops_track.common.names import ROOT_LABEL
from gflops_track.counting.scope import ScopeTally
from gflops_track.results.counting import LayerCost

LAYER_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(LayerCost))


def build_layer_table(model: nn.Module, scopes: Mapping[str, ScopeTally]) -> list[LayerCost]:
    """Rows in ``named_modules`` order (a module shared under several names appears once, under its first name)."""
    total_flops = sum(sum(tally.flops.values()) for tally in scopes.values())
    seen_params: set[int] = set()
    rows = []
    for name, module in model.named_modules():
        own = [p for p in module.parameters(recurse=False) if id(p) not in seen_params]
        seen_params.update(id(p) for p in own)
        tally = scopes.get(name)
        flops = sum(tally.flops.values()) if tally else 0
        rows.append(
            LayerCost(
                name=name or ROOT_LABEL,
                type=type(module).__name__,
                depth=name.count(".") + 1 if name else 0,
                output_shape=tally.output_shape if tally else "",
                params=sum(p.numel() for p in own),
                calls=tally.calls if tally else 0,
                macs=tally.macs if tally else 0,
                flops=flops,
                flops_share=flops / total_flops if total_flops else 0.0,
                ops=", ".join(f"{op.removeprefix('aten.')} x{n}" for op, n in sorted(tally.ops.items()))
                if tally
                else "",
                bytes_moved=tally.bytes_moved if tally else 0,
            )
        )
    return rows


def layers_to_csv(layers: Sequence[Any]) -> str:
    """A per-layer table of dataclass rows (``LayerCost``, or the training step's ``TrainingLayerCost``) as CSV text;
    the header is the dataclass's fields in order."""
    buffer = io.StringIO()
    columns = [column.name for column in fields(layers[0])] if layers else list(LAYER_COLUMNS)
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(asdict(layer) for layer in layers)
    return buffer.getvalue()


def layers_to_columns(layers: list[LayerCost]) -> dict[str, list[Any]]:
    """Column-oriented form (what ``mlflow.log_table`` takes)."""
    return {column: [getattr(layer, column) for layer in layers] for column in LAYER_COLUMNS}


def rows_to_columns(rows: Sequence[Any]) -> dict[str, list[Any]]:
    """Column-oriented form of any per-layer table of dataclass rows (the timed ``LayerRow`` too)."""
    columns = [column.name for column in fields(rows[0])] if rows else list(LAYER_COLUMNS)
    return {column: [getattr(row, column) for row in rows] for column in columns}
