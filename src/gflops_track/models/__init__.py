"""Example networks that ship with gflops-track."""

from gflops_track.models.residual_block import NORM_CHOICES, ResidualBlock, residual_block_arg_errors

__all__ = ["NORM_CHOICES", "ResidualBlock", "residual_block_arg_errors"]
