"""Models: the blog post's block, models by name (hf, torchvision, timm), and building with or without weights."""

from gflops_track.models.residual_block import NORM_CHOICES, ResidualBlock, residual_block_arg_errors

__all__ = ["NORM_CHOICES", "ResidualBlock", "residual_block_arg_errors"]
