"""Entry points for ``mlflow run`` (see MLproject).

Two traps of ``mlflow run`` (mlflow#4390) are undone here rather than passed on to Hydra, which rejects both:
a declared parameter is shell-quoted into *one* argument (``-P overrides="norm_fn=batch batch.size=8"`` arrives as the
single word ``norm_fn=batch batch.size=8``), and an undeclared ``-P key=value`` arrives as ``--key value``.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Sequence

USAGE = "usage: python -m gflops_track.app.mlproject {main,sweep,compare} [overrides ...]"


def split_overrides(words: Sequence[str]) -> list[str]:
    """Hydra overrides from mlflow's arguments: each word shell-split, ``--key value`` turned into ``key=value``."""
    tokens = [token for word in words for token in shlex.split(word)]
    overrides: list[str] = []
    index = 0
    while index < len(tokens):
        token = tokens[index]
        if token.startswith("--") and "=" not in token and index + 1 < len(tokens):
            overrides.append(f"{token[2:]}={tokens[index + 1]}")
            index += 2
        else:
            overrides.append(token)
            index += 1
    return overrides


def main(argv: Sequence[str] | None = None) -> None:
    words = list(sys.argv[1:] if argv is None else argv)
    if not words or words[0] not in ("main", "sweep", "compare"):
        sys.stderr.write(USAGE + "\n")
        sys.exit(2)
    entry, rest = words[0], words[1:]
    if entry == "compare":
        from gflops_track.compare.cli import main as compare_main

        sys.exit(compare_main([token for word in rest for token in shlex.split(word)]))
    from gflops_track.app.main import main as app_main

    sys.argv = ["gflops_track", *(["-m"] if entry == "sweep" else []), *split_overrides(rest)]
    app_main()


if __name__ == "__main__":
    main()
