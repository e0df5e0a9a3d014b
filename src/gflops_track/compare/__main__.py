"""``python -m gflops_track.compare``: see ``gflops_track.compare.cli``."""

import sys

from gflops_track.compare.cli import main
from gflops_track.redact import install_console_masking

if __name__ == "__main__":
    install_console_masking()
    sys.exit(main())
