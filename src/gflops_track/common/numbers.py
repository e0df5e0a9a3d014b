"""How a measured or counted number is printed so that it never rounds to nothing or to something it is not: three
decimals from 0.1 up (``1,234.568``), three significant digits below (``0.000589``, not ``0.001``), trailing zeros
kept (``[0.0520, 0.0601]``, not ``[0.052, 0.0601]``: both bounds equally precise); a rate (GFLOP/s, samples/s) with
one decimal from 1 up (``75.5``) and three significant digits below (``0.0110``, not ``0.0``); a share as a
percentage with two significant digits below 1% (``0.34%``, not ``0%``)."""

from __future__ import annotations

SMALL = 0.1  # below this, three decimals would keep fewer than three significant digits


def three_places(value: float) -> str:
    """``value`` with three decimals and thousands separators, or three significant digits when it is below 0.1
    (and not 0): a tiny model's 0.000589 GMACs reads as such, not as 0.001."""
    return f"{value:,.3f}" if abs(value) >= SMALL or value == 0 else f"{value:#.3g}"


def one_place(value: float) -> str:
    """A rate with one decimal and thousands separators (``11,096.5`` samples/s), or three significant digits when it
    is below 1 (and not 0): a tiny model's 0.0110 GFLOP/s reads as such, not as 0.0."""
    return f"{value:,.1f}" if abs(value) >= 1 or value == 0 else f"{value:#.3g}"


def percent(share: float, decimals: int = 1) -> str:
    """A share as a percentage that never rounds to nothing: ``decimals`` places from 1% up (``31.9%``; a
    utilization column's whole ``87%`` with 0), two significant digits below (``0.02%``, not ``0.0%``)."""
    return f"{share:.{decimals}%}" if share >= 0.01 or share == 0 else f"{share * 100:.2g}%"
