"""``python -m gflops_track.cli``: the ``gflops-track`` command (see ``main``)."""

from gflops_track.cli.main import main

if __name__ == "__main__":
    main()
