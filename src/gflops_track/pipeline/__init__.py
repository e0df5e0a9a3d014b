"""The steps as plain functions (count, measure, peak report, training step) and the placement they share."""
