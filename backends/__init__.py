"""Backends: NumPy reference models (always available), PyTorch and ONNX Runtime (optional).

``TorchBackend``, ``OnnxBackend`` and ``export_onnx`` (a torch model to an ONNX file that
``OnnxBackend`` and ``fisher-ref audit`` read) are imported lazily on first attribute access, so
``import fisher_ref.backends`` needs only NumPy; constructing one without its framework raises
ImportError naming the extra to install.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from ._numpy_models import LogisticRegressionModel, MLPModel
from .normalized import NormalizedBackend

if TYPE_CHECKING:  # pragma: no cover
    from .onnxruntime import OnnxBackend
    from .torch import TorchBackend, export_onnx

__all__ = ["LogisticRegressionModel", "MLPModel", "NormalizedBackend", "TorchBackend", "OnnxBackend", "export_onnx",
           "bundled_path", "bundled_mnist_mlp"]

BUNDLED = ("mnist_mlp_tanh.npz", "mnist_mlp_tanh.onnx", "mnist_lenet.onnx", "mnist_lenet.pt", "mnist_sample.npz")


def bundled_path(name: str):
    """Path of a file bundled in ``fisher_ref/data`` (models the project trained; see its README.md).

    ``name`` is one of ``mnist_mlp_tanh.npz`` (784-100-10 tanh MLP, NumPy weights),
    ``mnist_mlp_tanh.onnx`` (the same MLP), ``mnist_lenet.onnx`` and ``mnist_lenet.pt`` (LeNet-5 with
    dropout, ONNX and torch state dict) or ``mnist_sample.npz`` (500 MNIST test images).
    """
    from importlib import resources
    from pathlib import Path

    if name not in BUNDLED:
        raise ValueError(f"name must be one of {BUNDLED}, got {name!r}")
    return Path(str(resources.files("fisher_ref") / "data" / name))


def bundled_mnist_mlp() -> MLPModel:
    """The bundled MNIST MLP (784-100-10, tanh, 97.4% test accuracy) as a NumPy reference backend."""
    return MLPModel.load(bundled_path("mnist_mlp_tanh.npz"))

_LAZY = {"TorchBackend": ".torch", "OnnxBackend": ".onnxruntime", "export_onnx": ".torch"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
