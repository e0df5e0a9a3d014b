"""``python -m gflops_track``: the Hydra app (see conf/ and README.md)."""

from gflops_track.cli.run import main

if __name__ == "__main__":
    main()
