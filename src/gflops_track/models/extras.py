"""The optional libraries that build models by name, each installed by an extra of gflops-track (``hf``, ``vision``).

``require`` imports one and, when it is not installed, raises ``MissingExtra``: one line naming the ``pip install``
to run. A library that is installed but fails to import (a wheel built for another torch) raises its own error.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from types import ModuleType


@dataclass(frozen=True)
class Extra:
    """A library a model group needs: the module it imports and the extra of gflops-track that installs it."""

    group: str  # the config group: model=hf, model=torchvision, model=timm
    module: str
    extra: str

    @property
    def install(self) -> str:
        return f"pip install 'gflops-track[{self.extra}]'"

    def missing(self) -> str:
        """One line when the library is not installed, else ''."""
        if importlib.util.find_spec(self.module) is not None:
            return ""
        return f"model={self.group} needs {self.module}, which is not installed: {self.install}"


HF = Extra("hf", "transformers", "hf")
TORCHVISION = Extra("torchvision", "torchvision", "vision")
TIMM = Extra("timm", "timm", "vision")


class MissingExtra(ImportError):
    """A model library that is not installed; the message names the ``pip install`` that brings it."""


def require(extra: Extra) -> ModuleType:
    """The library's module, imported; ``MissingExtra`` when it is not installed."""
    line = extra.missing()
    if line:
        raise MissingExtra(line)
    return importlib.import_module(extra.module)
