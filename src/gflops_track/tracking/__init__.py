"""MLflow: run records, one run written to the store or the spool, sync of the spool, stores, and reaping dead runs."""
