"""Helpers any layer may import (they import nothing of ours): metric and tag names, value checks, masking."""
