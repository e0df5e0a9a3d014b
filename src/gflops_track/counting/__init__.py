"""Counting: the rules (ATen op -> cost), the dispatch-mode counter, and the other counters (thop, FlopCounterMode)."""
