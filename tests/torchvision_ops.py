"""Imported before torchvision by the tests that use it: declares the two torchvision ops whose compiled kernels did not
load, so that ``import torchvision`` goes through. A property of this test environment, not of gflops-track.

The torchvision wheel on this environment's package index is built against PyPI's CUDA build of torch, while the
tests run torch's CPU build; its ``_C.so`` then fails to load (pytorch/vision#9085), torchvision goes on without its
compiled ops, and its ``_meta_registrations`` registers fake kernels for ``torchvision::nms`` and ``torchvision::qnms``,
ops that were never defined: ``RuntimeError: operator torchvision::nms does not exist``. Declaring their schemas with
``torch.library`` lets the import finish; the models the tests build (classification networks) never call them.
Where torchvision's compiled ops do load, this declares nothing.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

MISSING_OPS = ("nms", "qnms")  # the ops torchvision/_meta_registrations.py registers fake kernels for
SCHEMA = "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor"  # torchvision's own, csrc/ops/nms.cpp


def torchvision_ops_load() -> bool:
    """Whether torchvision's compiled ops load beside this torch (False: none installed, or a mismatched build)."""
    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        return False
    library = next(Path(spec.origin).parent.glob("_C*.so"), None)
    if library is None:
        return False
    try:
        torch.ops.load_library(str(library))
    except OSError:
        return False
    return True


if importlib.util.find_spec("torchvision") is not None and not torchvision_ops_load():
    for op in MISSING_OPS:
        torch.library.define(f"torchvision::{op}", SCHEMA)
