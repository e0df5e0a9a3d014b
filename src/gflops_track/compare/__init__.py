"""Comparing runs across hardware and variants: tables, plots, an HTML report and a regression gate."""
