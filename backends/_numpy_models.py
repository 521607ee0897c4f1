"""NumPy reference models with analytic input gradients, JVP and VJP.

They make the whole core testable in float64 without any framework:
:class:`LogisticRegressionModel` (multinomial logistic regression) and :class:`MLPModel`
(fully connected, ``tanh`` or ``elu`` hidden layers), both softmax classifiers on the flattened
input. Weights follow ``torch.nn.Linear``: ``W`` has shape ``(out_features, in_features)`` and a
layer computes ``h = a @ W.T + b``, so weights copy over from a torch model unchanged.
"""

from __future__ import annotations

import math
import os
from typing import Any, Sequence

import numpy as np

from .._backend import Backend
from .._softmax import fisher_weights, log_softmax, softmax_seeds
from .._validation import as_float_array, check_rng, shape_str

__all__ = ["MLPModel", "LogisticRegressionModel"]

_ACTIVATIONS = ("tanh", "elu")


class MLPModel(Backend):
    """Fully connected softmax classifier in NumPy, a reference backend.

    Parameters
    ----------
    layers : sequence of (W, b)
        ``W`` of shape ``(out, in)`` and ``b`` of shape ``(out,)`` per layer (``torch.nn.Linear``
        convention). The first ``in`` is ``prod(input_shape)``; the last ``out`` is the number of
        classes C >= 2.
    activation : {"tanh", "elu"}
        Nonlinearity after every layer but the last.
    input_shape : tuple of int, optional
        Shape of one input (flattened internally); default ``(in,)`` of the first layer.
    dropout : float, optional
        Dropout rate of the hidden layers, used only by :meth:`stochastic_probabilities`
        (Monte-Carlo dropout for the BU detector); the deterministic model is unaffected.

    Notes
    -----
    With logits :math:`z(x)` and logit Jacobian :math:`J = \\partial z / \\partial x`, the class
    gradients are :math:`g_i = \\nabla_x(-\\log p_i) = J^T (p - e_i)` and the Fisher-vector
    product is :math:`G v = J^T(\\mathrm{diag}\\, p - p p^T) J v` (one JVP and one VJP), all in
    float64 closed form.
    """

    capabilities = frozenset({"probabilities", "class_gradients", "fisher_vector_product", "loss_gradient",
                              "features"})
    dtype = np.dtype(np.float64)

    def __init__(self, layers: Sequence[tuple[Any, Any]], activation: str = "tanh",
                 input_shape: Sequence[int] | None = None, dropout: float = 0.0):
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {_ACTIVATIONS}, got {activation!r}")
        if len(layers) == 0:
            raise ValueError("layers must hold at least one (W, b) pair")
        ws, bs = [], []
        for i, layer in enumerate(layers):
            try:
                w, b = layer
            except Exception as exc:
                raise TypeError(f"layers[{i}] must be a pair (W, b)") from exc
            w = as_float_array(w, f"layers[{i}][0] (W)")
            b = as_float_array(b, f"layers[{i}][1] (b)")
            if w.ndim != 2 or b.shape != (w.shape[0],):
                raise ValueError(f"layers[{i}] must be W of shape (out, in) and b of shape (out,), "
                                 f"got W {shape_str(w.shape)} and b {shape_str(b.shape)}")
            if ws and w.shape[1] != ws[-1].shape[0]:
                raise ValueError(f"layers[{i}] W has {w.shape[1]} inputs but layers[{i-1}] has "
                                 f"{ws[-1].shape[0]} outputs")
            ws.append(w)
            bs.append(b)
        if ws[-1].shape[0] < 2:
            raise ValueError(f"the last layer must have n_classes >= 2 outputs, got {ws[-1].shape[0]}")
        d = ws[0].shape[1]
        if input_shape is None:
            input_shape = (d,)
        super().__init__(input_shape)
        if math.prod(self.input_shape) != d:
            raise ValueError(f"input_shape {self.input_shape} has {math.prod(self.input_shape)} features, "
                             f"the first layer expects {d}")
        self.weights, self.biases, self.activation = ws, bs, activation
        self.n_classes = int(ws[-1].shape[0])
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        self.dropout = float(dropout)
        self.feature_layers = tuple(f"hidden{i}" for i in range(len(ws) - 1))
        caps = set(type(self).capabilities)
        if not self.feature_layers:
            caps.discard("features")
        if self.dropout > 0 and self.feature_layers:
            caps.add("stochastic_probabilities")
        self.capabilities = frozenset(caps)

    # ------------------------------------------------------------------ construction helpers
    @classmethod
    def random(cls, input_shape: Sequence[int], n_classes: int, hidden: Sequence[int] = (16,), *,
               activation: str = "tanh", scale: float = 1.0, rng=None) -> "MLPModel":
        """A model with Gaussian weights of std ``scale / sqrt(fan_in)`` (for tests)."""
        rng = check_rng(rng)
        sizes = [math.prod(input_shape), *hidden, n_classes]
        layers = [(rng.normal(0, scale / math.sqrt(i), (o, i)), rng.normal(0, 0.1 * scale, o))
                  for i, o in zip(sizes[:-1], sizes[1:])]
        return cls(layers, activation=activation, input_shape=input_shape)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "MLPModel":
        """Load weights saved as ``W0, b0, W1, b1, ...`` (plus ``activation``, ``input_shape``) in .npz."""
        with np.load(path, allow_pickle=False) as f:
            n = sum(1 for k in f.files if k.startswith("W"))
            if n == 0:
                raise ValueError(f"{os.fspath(path)} holds no weights W0, b0, ...: keys {f.files}")
            layers = [(f[f"W{i}"].astype(np.float64), f[f"b{i}"].astype(np.float64)) for i in range(n)]
            act = str(f["activation"]) if "activation" in f.files else "tanh"
            shape = tuple(int(s) for s in f["input_shape"]) if "input_shape" in f.files else None
        return cls(layers, activation=act, input_shape=shape)

    # ------------------------------------------------------------------ forward and derivatives
    def _act(self, h):
        return np.tanh(h) if self.activation == "tanh" else np.where(h > 0, h, np.expm1(np.minimum(h, 0)))

    def _dact(self, h, a):
        return 1.0 - a * a if self.activation == "tanh" else np.where(h > 0, 1.0, a + 1.0)

    def _forward(self, x: np.ndarray, rng: np.random.Generator | None = None):
        """Logits (n, C), derivatives of the hidden activations and the activations themselves.

        With ``rng``, inverted dropout at rate ``self.dropout`` follows every hidden layer.
        """
        a = x.reshape(x.shape[0], -1)
        slopes, hidden = [], []
        for w, b in zip(self.weights[:-1], self.biases[:-1]):
            h = a @ w.T + b
            a = self._act(h)
            slopes.append(self._dact(h, a))
            hidden.append(a)
            if rng is not None and self.dropout > 0:
                a = a * (rng.random(a.shape) >= self.dropout) / (1.0 - self.dropout)
        return a @ self.weights[-1].T + self.biases[-1], slopes, hidden

    def _vjp(self, seeds: np.ndarray, slopes) -> np.ndarray:
        """J^T s for seeds (n, m, C) -> (n, m, d)."""
        delta = seeds
        for w, s in zip(self.weights[:0:-1], slopes[::-1]):
            delta = (delta @ w) * s[:, None, :]
        return delta @ self.weights[0]

    def _jvp(self, v: np.ndarray, slopes) -> np.ndarray:
        """J v for tangents (n, k, d) -> (n, k, C)."""
        t = v @ self.weights[0].T
        for w, s in zip(self.weights[1:], slopes):
            t = (t * s[:, None, :]) @ w.T
        return t

    def logits(self, x: Any) -> np.ndarray:
        """Logits ``(n, C)`` of a batch."""
        xb, _ = self.as_batch(x)
        return self._forward(xb)[0]

    def _probabilities(self, x):
        return np.exp(log_softmax(self._forward(x)[0]))

    def _class_gradients(self, x, classes):
        z, slopes, _ = self._forward(x)
        logp = log_softmax(z)
        seeds = softmax_seeds(logp, np.arange(self.n_classes) if classes is None else classes)
        g = self._vjp(seeds, slopes)
        return np.exp(logp), g.reshape((x.shape[0], seeds.shape[1]) + self.input_shape)

    def _fisher_vector_product(self, x, v):
        n, k = v.shape[:2]
        z, slopes, _ = self._forward(x)
        w = fisher_weights(log_softmax(z), self._jvp(v.reshape(n, k, -1), slopes))
        return self._vjp(w, slopes).reshape(v.shape)

    def _loss_gradient(self, x, labels):
        z, slopes, _ = self._forward(x)
        logp = log_softmax(z)
        seeds = softmax_seeds(logp, labels[:, None])
        return np.exp(logp), self._vjp(seeds, slopes)[:, 0].reshape(x.shape)

    def _features(self, x, layers):
        hidden = self._forward(x)[2]
        return {name: hidden[int(name[len("hidden"):])] for name in layers}

    def _stochastic_probabilities(self, x, n_samples, rng):
        return np.stack([np.exp(log_softmax(self._forward(x, rng)[0])) for _ in range(n_samples)])

    def __repr__(self) -> str:
        sizes = [self.weights[0].shape[1]] + [w.shape[0] for w in self.weights]
        return (f"{type(self).__name__}(sizes={sizes}, activation={self.activation!r}, "
                f"input_shape={self.input_shape})")


class LogisticRegressionModel(MLPModel):
    """Multinomial logistic regression ``p = softmax(W x + b)``, a reference backend.

    Parameters
    ----------
    W : array-like of shape (n_classes, n_features)
    b : array-like of shape (n_classes,)
    input_shape : tuple of int, optional
        Shape of one input, flattened to ``n_features``; default ``(n_features,)``.

    Notes
    -----
    The logit Jacobian is ``W`` itself, so :math:`G = W^T(\\mathrm{diag}\\, p - pp^T)W` in closed form.
    """

    def __init__(self, W: Any, b: Any, input_shape: Sequence[int] | None = None):
        super().__init__([(W, b)], activation="tanh", input_shape=input_shape)

    @classmethod
    def random(cls, input_shape: Sequence[int], n_classes: int, *, scale: float = 1.0,
               rng=None) -> "LogisticRegressionModel":
        """A model with Gaussian weights of std ``scale / sqrt(n_features)`` (for tests)."""
        rng = check_rng(rng)
        d = math.prod(input_shape)
        return cls(rng.normal(0, scale / math.sqrt(d), (n_classes, d)), rng.normal(0, 0.1 * scale, n_classes),
                   input_shape=input_shape)

    def __repr__(self) -> str:
        return (f"LogisticRegressionModel(n_classes={self.n_classes}, n_features={self.weights[0].shape[1]}, "
                f"input_shape={self.input_shape})")
