"""The pipeline: count -> measure -> peaks as plain functions (inference and training step), and the placement and
runtime every step shares."""
