"""What a training step can be asked: its losses and optimizers by name, their defaults, and the check of a choice."""

from __future__ import annotations

from torch import nn

DEFAULT_LOSS = "sum"  # the sum of the outputs: needs no labels
DEFAULT_OPTIMIZER = "sgd"
LOSSES: tuple[str, ...] = (DEFAULT_LOSS, "cross_entropy")
OPTIMIZERS: tuple[str, ...] = (DEFAULT_OPTIMIZER, "adamw", "none")


def training_arg_errors(model: nn.Module, loss: str, optimizer: str) -> list[str]:
    """One line per bad argument (empty when the step can be counted)."""
    errors = []
    if loss not in LOSSES:
        errors.append(f"loss={loss!r} is not allowed: choose one of {', '.join(LOSSES)}")
    if optimizer not in OPTIMIZERS:
        errors.append(f"optimizer={optimizer!r} is not allowed: choose one of {', '.join(OPTIMIZERS)}")
    if not any(parameter.requires_grad for parameter in model.parameters()):
        errors.append(
            f"model={type(model).__name__} is not allowed in a training step: it has no trainable parameters "
            "(none requires grad)"
        )
    return errors
