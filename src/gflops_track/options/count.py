"""What a count runs (``CountOptions``): meta tensors or a real forward, thop beside ours, the FlopCounterMode check."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class CountOptions:
    """``meta``: count on meta tensors (no memory, fast), falling back to a real forward when meta fails;
    ``thop``: run thop on a copy and explain where it differs; ``torch_check``: cross-check the dense FLOPs with
    ``torch.utils.flop_counter.FlopCounterMode``; ``extra_rules``: counting rules for your own ops, ``{op: rule}``
    (see ``counting/rules.py``), for this call only."""

    meta: bool = True
    thop: bool = True
    torch_check: bool = True
    extra_rules: Mapping[Any, Any] = field(default_factory=dict)
