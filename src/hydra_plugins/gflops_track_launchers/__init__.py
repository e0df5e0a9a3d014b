"""gflops-track's Hydra launchers and sweeper (Hydra instantiates them only from the ``hydra_plugins`` package)."""
