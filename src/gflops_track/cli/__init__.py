"""Every command-line entry: the gflops-track command (run, compare, sync, reap) and mlflow run's entry points."""
