"""Backends: NumPy reference models (always available), PyTorch and ONNX Runtime (optional).

``TorchBackend`` and ``OnnxBackend`` are imported lazily on first attribute access, so
``import fisher_ref.backends`` needs only NumPy; constructing one without its framework raises
ImportError naming the extra to install.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from ._numpy_models import LogisticRegressionModel, MLPModel

if TYPE_CHECKING:  # pragma: no cover
    from .onnxruntime import OnnxBackend
    from .torch import TorchBackend

__all__ = ["LogisticRegressionModel", "MLPModel", "TorchBackend", "OnnxBackend"]

_LAZY = {"TorchBackend": ".torch", "OnnxBackend": ".onnxruntime"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
