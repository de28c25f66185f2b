"""Import shims for third-party packages.

PyPI's torchvision wheels are CUDA builds. Beside the CPU build of torch their compiled
operators fail to register and ``import torchvision`` (and so ``import timm``) stops with
"operator torchvision::nms does not exist". Declaring the two operator schemas that
torchvision's Python side looks up at import time lets its pure-Python parts, and all of
timm, work; only torchvision's compiled ops stay unavailable, and we use none of them.
On machines where torchvision imports normally this does nothing.
"""

from __future__ import annotations

import importlib
import sys

_LIB = None  # the torch.library that holds the declared schemas; must stay alive


def _declare_torchvision_ops() -> None:
    global _LIB
    import torch

    for name in [m for m in sys.modules if m.split(".")[0] in ("torchvision", "timm")]:
        del sys.modules[name]  # forget half-imported modules before the retry
    _LIB = torch.library.Library("torchvision", "DEF")
    _LIB.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _LIB.define("qnms(Tensor qdets, Tensor scores, float iou_threshold) -> Tensor")


def _import(name: str):
    try:
        return importlib.import_module(name)
    except RuntimeError as err:
        if "torchvision::nms" not in str(err) or _LIB is not None:
            raise
    _declare_torchvision_ops()
    return importlib.import_module(name)


def import_torchvision():
    """``import torchvision`` that also works beside the CPU build of torch."""
    return _import("torchvision")


def import_timm():
    """``import timm`` that also works beside the CPU build of torch."""
    return _import("timm")
