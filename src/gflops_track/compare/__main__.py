"""``python -m gflops_track.compare``: see ``gflops_track.compare.cli``."""

import sys

from gflops_track.compare.cli import main

if __name__ == "__main__":
    sys.exit(main())
