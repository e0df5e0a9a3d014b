"""``python -m gflops_track.compare``: see ``gflops_track.cli.compare``."""

import sys

from gflops_track.cli.compare import main

if __name__ == "__main__":
    sys.exit(main())
