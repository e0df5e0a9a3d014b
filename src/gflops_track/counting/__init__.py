"""Counting: the rules (ATen op -> cost), the dispatch-mode counter, and thop and FlopCounterMode beside it."""
