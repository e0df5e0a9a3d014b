"""Helpers every layer may import, and which import nothing of ours: metric, tag and artifact names, value checks,
credential masking."""
