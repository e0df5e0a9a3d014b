"""Timing: the adaptive latency engine and the machine conditions it records while it times."""
