"""A list of names in one line that stays a line: the first few, then how many more."""

from __future__ import annotations

from collections.abc import Sequence

NAMES_SHOWN = 3  # names a note lists before "(+N more)"; where every one matters, an artifact lists them all


def named(names: Sequence[str], shown: int | None = NAMES_SHOWN) -> str:
    """'a, b, c (+4 more)': the first ``shown`` names (every one when ``shown`` is None), then how many are left."""
    if shown is None or len(names) <= shown:
        return ", ".join(names)
    return f"{', '.join(names[:shown])} (+{len(names) - shown} more)"
