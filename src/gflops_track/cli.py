"""The ``gflops-track`` console command: ``run`` (the Hydra app) and ``compare``."""

from __future__ import annotations

import sys

USAGE = """usage: gflops-track {run,compare} ...

  run [hydra overrides]   profile and track, e.g. gflops-track run -m norm_fn=group,batch,instance
  compare [options]       compare runs, write reports, gate on regressions (gflops-track compare --help)
"""


def main() -> None:
    command, rest = (sys.argv[1], sys.argv[2:]) if len(sys.argv) > 1 else ("", [])
    if command == "run":
        from gflops_track.app.main import main as run_main

        sys.argv = [f"{sys.argv[0]} run", *rest]
        run_main()
    elif command == "compare":
        from gflops_track.compare.cli import main as compare_main

        sys.exit(compare_main(rest))
    else:
        sys.stderr.write(USAGE)
        sys.exit(0 if command in ("-h", "--help") else 2)
