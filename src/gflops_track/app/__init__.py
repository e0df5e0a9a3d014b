"""The Hydra app: config schema, preflight, one job, the sweep callback and the channels between processes."""
