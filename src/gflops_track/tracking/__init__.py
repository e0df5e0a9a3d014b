"""MLflow: run records, one run to the store or the spool, syncing the spool, stores, reaping dead runs."""
