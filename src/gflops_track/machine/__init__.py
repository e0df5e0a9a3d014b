"""Facts about the machine: the hardware fingerprint of a run and the Python environment it ran in."""
