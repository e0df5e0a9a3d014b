"""``python -m gflops_track``: the Hydra app (see conf/ and README.md)."""

from gflops_track.app.main import main

if __name__ == "__main__":
    main()
