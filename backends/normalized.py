"""A backend seen through the input normalisation ``x -> (x - mean) / std``.

Models are usually trained on normalised inputs, while perturbations, clipping bounds and the
Fisher information are wanted in the space of the pixels ``x`` (typically [0, 1]). The wrapper
lets a model that expects ``(x - mean) / std`` be attacked and measured in ``x``, without
editing the model.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .._backend import Backend, as_backend
from .._validation import shape_str

__all__ = ["NormalizedBackend"]

#: Capabilities that pass through the affine map (gradients by the chain rule, the rest unchanged).
_PASSED = frozenset({"probabilities", "class_gradients", "fisher_vector_product", "loss_gradient", "features",
                     "stochastic_probabilities"})


def _broadcastable(values: Any, input_shape: tuple, name: str) -> np.ndarray:
    try:
        a = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be a number or an array of numbers, got {values!r}") from exc
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} must be finite, got {values!r}")
    try:
        np.broadcast_shapes(a.shape, input_shape)
    except ValueError:
        raise ValueError(f"{name} has shape {shape_str(a.shape)}, which does not broadcast to the input shape "
                         f"{shape_str(input_shape)}; give a scalar or e.g. shape (C, 1, 1) for channel-first "
                         "images") from None
    if np.broadcast_shapes(a.shape, input_shape) != tuple(input_shape):
        raise ValueError(f"{name} has shape {shape_str(a.shape)}, which would enlarge the input shape "
                         f"{shape_str(input_shape)}")
    return a


class NormalizedBackend(Backend):
    """A backend evaluated at ``(x - mean) / std``, with every derivative taken in ``x``.

    Parameters
    ----------
    inner : Backend or callable
        The model, which expects normalised inputs. Its ``input_shape`` must be known.
    mean, std : float or array-like broadcastable to ``inner.input_shape``
        The normalisation, e.g. ``mean=np.reshape([0.49, 0.48, 0.45], (3, 1, 1))`` for
        channel-first images. ``std`` must be positive.

    Notes
    -----
    With :math:`D = \\mathrm{diag}(1 / \\mathrm{std})` and :math:`u = D (x - \\mathrm{mean})`, the
    chain rule gives the class gradients :math:`\\nabla_x (-\\log p_i) = D \\nabla_u (-\\log p_i)`
    and the Fisher information :math:`G_x = D\\, G_u\\, D` (paper eq. 4 in the pixel space), so a
    Fisher-vector product is :math:`G_x v = D\\, G_u (D v)`. Probabilities, features and
    Monte-Carlo dropout predictions are those of the inner backend at :math:`u`. Eigenvalues and
    l2 budgets therefore refer to ``x``: with ``std < 1`` they are larger than in ``u``.
    """

    def __init__(self, inner: Any, mean: Any, std: Any):
        inner = as_backend(inner)
        if inner.input_shape is None:
            raise ValueError("inner.input_shape is not known: construct the inner backend with input_shape=")
        super().__init__(inner.input_shape)
        self.inner = inner
        self.mean = _broadcastable(mean, self.input_shape, "mean")
        self.std = _broadcastable(std, self.input_shape, "std")
        if np.any(self.std <= 0):
            raise ValueError(f"std must be positive, got {self.std.ravel().tolist()}")
        self.capabilities = inner.capabilities & _PASSED
        self.dtype = inner.dtype
        self.n_classes = inner.n_classes
        self.feature_layers = tuple(getattr(inner, "feature_layers", ()))

    def normalize(self, x: np.ndarray) -> np.ndarray:
        """``(x - mean) / std``: what the inner backend sees."""
        return (x - self.mean) / self.std

    def _probabilities(self, x):
        p = self.inner.probabilities(self.normalize(x))
        self.n_classes = self.inner.n_classes
        return p

    def _class_gradients(self, x, classes):
        p, g = self.inner.class_gradients(self.normalize(x), classes)
        return p, g / self.std

    def _loss_gradient(self, x, labels):
        p, g = self.inner.loss_gradient(self.normalize(x), labels)
        return p, g / self.std

    def _fisher_vector_product(self, x, v):
        return self.inner.fisher_vector_product(self.normalize(x), v / self.std) / self.std

    def _features(self, x, layers):
        return self.inner.features(self.normalize(x), layers)

    def _stochastic_probabilities(self, x, n_samples, rng):
        return self.inner.stochastic_probabilities(self.normalize(x), n_samples, rng=rng)

    def __repr__(self) -> str:
        return f"NormalizedBackend({self.inner!r}, mean={self.mean.ravel().tolist()}, std={self.std.ravel().tolist()})"
