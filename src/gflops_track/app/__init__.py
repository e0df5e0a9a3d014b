"""The Hydra app: the config schema, preflight, one job (count -> log -> time -> log), the sweep callback and the
channels between the command's processes."""
