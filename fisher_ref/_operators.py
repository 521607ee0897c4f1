"""The input Fisher information matrix, dense and as SciPy linear operators.

For a classifier with class probabilities :math:`p_i(x)` and per-class gradients
:math:`g_i = \\nabla_x(-\\log p_i(x))`, the Fisher information of the input is (paper eq. 4)

.. math:: G_x = \\sum_i p_i\\, g_i g_i^T ,

the Hessian at :math:`\\eta = 0` of :math:`\\mathrm{KL}(p(x) \\| p(x + \\eta))` (eq. 3). Applied to a
block of vectors it never needs the :math:`d \\times d` matrix (eq. 6):
:math:`G_x V = \\sum_i p_i\\, g_i (g_i^T V)`.

Three operators, one per way of applying :math:`G_x`:

* :class:`FisherOperator` - exact, from all C class gradients;
* :class:`SampledFisherOperator` - Monte Carlo over classes drawn with Walker's alias method
  (paper Sec. 3.2), drawn once at construction so that Lanczos sees a fixed matrix;
* :class:`MatrixFreeFisherOperator` - exact, from a backend's Fisher-vector product
  :math:`J^T(\\mathrm{diag}\\,p - pp^T)JV` (one JVP and one VJP per block, whatever C is).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.sparse.linalg import LinearOperator

from ._alias import AliasSampler
from ._backend import as_backend, public_order
from ._validation import (
    as_float_array,
    check_class_gradients,
    check_int,
    check_probabilities,
    check_rng,
    shape_str,
)

__all__ = [
    "fisher_matrix",
    "FisherOperator",
    "SampledFisherOperator",
    "MatrixFreeFisherOperator",
    "SOFTMAX_SUM_RTOL",
]

#: Relative size of ``sum_i p_i g_i`` under which gradients are taken to come from a softmax
#: (then rank(G) <= C - 1, since ``sum_i p_i grad log p_i = grad sum_i p_i = 0``).
SOFTMAX_SUM_RTOL = 1e-6


def _check_pair(probs: Any, grads: Any) -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:
    p = check_probabilities(probs, "probs")
    if p.ndim != 1:
        raise ValueError(f"probs must have shape (n_classes,) for one input, got {shape_str(p.shape)}")
    g = as_float_array(grads, "grads")
    shape = g.shape[1:]
    return p, check_class_gradients(g, p.size, "grads"), shape


def fisher_matrix(probs: Any, grads: Any) -> np.ndarray:
    """Dense input Fisher information matrix (paper eq. 4).

    Parameters
    ----------
    probs : array-like of shape (n_classes,)
        Class probabilities :math:`p_i(x)`.
    grads : array-like of shape (n_classes, *input_shape)
        Per-class gradients :math:`g_i = \\nabla_x(-\\log p_i(x))`.

    Returns
    -------
    G : ndarray of shape (d, d), d = prod(input_shape)
        :math:`G = \\sum_i p_i g_i g_i^T`, symmetric positive semi-definite, float64.

    Notes
    -----
    Forms the d x d matrix: use :class:`FisherOperator` for anything but small d.
    """
    p, g, _ = _check_pair(probs, grads)
    G = g.T @ (p[:, None] * g)
    return (G + G.T) / 2


class _WeightedGradientOperator(LinearOperator):
    """``G = sum_r w_r g_r g_r^T`` over a set of rows ``g_r`` with weights ``w_r >= 0``."""

    def __init__(self, weights: np.ndarray, rows: np.ndarray, input_shape: tuple[int, ...]):
        self.weights = weights
        self.rows = rows
        self.input_shape = input_shape
        super().__init__(dtype=np.dtype(np.float64), shape=(rows.shape[1], rows.shape[1]))

    def _matmat(self, V):
        V = np.asarray(V, dtype=np.float64)
        return self.rows.T @ (self.weights[:, None] * (self.rows @ V))

    def _matvec(self, v):
        return self._matmat(np.asarray(v).reshape(-1, 1)).reshape(-1)

    def _adjoint(self):
        return self

    _transpose = _adjoint

    def factor(self) -> np.ndarray:
        """``F`` of shape ``(r, d)`` with ``G = F^T F`` (rows ``sqrt(w_r) g_r`` of positive weight)."""
        keep = self.weights > 0
        return np.sqrt(self.weights[keep])[:, None] * self.rows[keep]

    def todense(self) -> np.ndarray:
        """The d x d matrix (forms it: small d only)."""
        G = self.rows.T @ (self.weights[:, None] * self.rows)
        return (G + G.T) / 2

    def trace(self) -> float:
        """``trace(G) = sum_r w_r ||g_r||^2`` without forming G."""
        return float(self.weights @ np.einsum("rd,rd->r", self.rows, self.rows))


class FisherOperator(_WeightedGradientOperator):
    """The exact input FIM as a symmetric :class:`scipy.sparse.linalg.LinearOperator` (d, d).

    Parameters
    ----------
    probs : array-like of shape (n_classes,)
        Class probabilities :math:`p_i(x)` (finite, non-negative, summing to 1).
    grads : array-like of shape (n_classes, *input_shape)
        Per-class gradients :math:`g_i = \\nabla_x(-\\log p_i(x))`.

    Attributes
    ----------
    probs : ndarray of shape (n_classes,)
    grads : ndarray of shape (n_classes, d)
    input_shape : tuple of int
    rank_bound : int
        Upper bound on rank(G): the number of classes with p_i > 0, less one when
        :math:`\\sum_i p_i g_i = 0` (true for a softmax classifier).

    Notes
    -----
    ``A @ V`` for a ``(d, k)`` block costs two (C, d) x (d, k) products (paper eq. 6); the d x d
    matrix is never formed. ``dtype`` is float64 so that ARPACK runs in double precision.

    References
    ----------
    Zhao et al., "The Adversarial Attack and Detection under the Fisher Information Metric",
    AAAI 2019, eqs. (4) and (6).

    Examples
    --------
    >>> import numpy as np
    >>> from fisher_ref import FisherOperator
    >>> p = np.array([0.7, 0.2, 0.1]); g = np.arange(12.0).reshape(3, 4)
    >>> A = FisherOperator(p, g)
    >>> A.shape
    (4, 4)
    """

    def __init__(self, probs: Any, grads: Any):
        p, g, shape = _check_pair(probs, grads)
        super().__init__(p, g, shape)
        self.rank_bound = _rank_bound(p, g)

    @property
    def probs(self) -> np.ndarray:
        return self.weights

    @property
    def grads(self) -> np.ndarray:
        return self.rows

    @classmethod
    def from_backend(cls, x: Any, backend: Any) -> "FisherOperator":
        """The exact operator at one input ``x`` from the backend's C class gradients.

        (The order ``from_backend(backend, x)`` of earlier releases works with a FutureWarning.)
        """
        b, xb = _one_input(x, backend, "FisherOperator.from_backend")
        p, g = b.class_gradients(xb)
        return cls(p[0], g[0])

    def __repr__(self) -> str:
        return f"<{self.shape[0]}x{self.shape[1]} FisherOperator over {self.probs.size} classes>"


class SampledFisherOperator(_WeightedGradientOperator):
    """Monte-Carlo estimate of the input FIM over classes drawn with the alias method.

    ``n_samples`` classes :math:`y_1..y_m` are drawn from p(y|x) once, at construction, and

    .. math:: \\hat G = \\frac{1}{m} \\sum_{s=1}^m g_{y_s} g_{y_s}^T ,

    an unbiased estimate of :math:`G_x` (its top eigenvalues are biased upwards: the expectation of
    a maximum exceeds the maximum of the expectation). Fixing the draws gives Lanczos a fixed matrix.

    Parameters
    ----------
    probs : array-like of shape (n_classes,)
    grads : array-like of shape (n_classes, *input_shape)
        All class gradients, or only those of ``classes`` when given.
    n_samples : int, optional
        Number of draws m; default ``max(1, round(n_classes / 5))`` as the paper (Sec. 3.2).
    rng : None, int or numpy.random.Generator
        Randomness for the draws.
    classes : array-like of int, optional
        Use these pre-drawn classes (with repetition) instead of drawing; then ``grads`` may hold
        just the gradients of ``unique(classes)`` in sorted order.

    Attributes
    ----------
    classes : ndarray of shape (n_samples,)
        The drawn classes.
    unique_classes, counts : ndarray
        Distinct drawn classes and how often each was drawn; ``weights = counts / n_samples``.
    rank_bound : int
        Number of distinct drawn classes.

    References
    ----------
    Zhao et al. (2019), Sec. 3.2 and Algorithm 1; Walker's alias method (:class:`AliasSampler`).
    """

    def __init__(self, probs: Any, grads: Any, n_samples: int | None = None, *, rng=None, classes: Any = None):
        p = check_probabilities(probs, "probs")
        if p.ndim != 1:
            raise ValueError(f"probs must have shape (n_classes,), got {shape_str(p.shape)}")
        C = p.size
        if classes is None:
            m = default_n_samples(C) if n_samples is None else _check_n_samples(n_samples)
            classes = AliasSampler(p, rng=check_rng(rng)).sample(m)
        else:
            classes = np.asarray(classes, dtype=np.int64).ravel()
            if classes.size == 0 or classes.min() < 0 or classes.max() >= C:
                raise ValueError(f"classes must be a non-empty array of indices in [0, {C - 1}]")
            if n_samples is not None and n_samples != classes.size:
                raise ValueError(f"n_samples = {n_samples} disagrees with len(classes) = {classes.size}")
        uniq, counts = np.unique(classes, return_counts=True)
        g = as_float_array(grads, "grads")
        if g.ndim >= 2 and g.shape[0] == C:
            rows = g.reshape(C, -1)[uniq]
        elif g.ndim >= 2 and g.shape[0] == uniq.size:
            rows = g.reshape(uniq.size, -1)
        else:
            raise ValueError(f"grads must have shape (n_classes, *input_shape) = ({C}, ...) or one row per "
                             f"distinct drawn class ({uniq.size}, ...), got {shape_str(g.shape)}")
        super().__init__(counts / classes.size, rows, g.shape[1:])
        self.probs = p
        self.classes = classes
        self.unique_classes = uniq
        self.counts = counts
        self.n_samples = int(classes.size)
        self.rank_bound = int(min(uniq.size, rows.shape[1]))

    @classmethod
    def from_backend(cls, x: Any, backend: Any, n_samples: int | None = None, *, rng=None) -> "SampledFisherOperator":
        """Draw classes from the backend's p(y|x) and ask it for the drawn classes' gradients only.

        (The order ``from_backend(backend, x, ...)`` of earlier releases works with a FutureWarning.)
        """
        b, xb = _one_input(x, backend, "SampledFisherOperator.from_backend")
        p = b.probabilities(xb)[0]
        m = default_n_samples(p.size) if n_samples is None else _check_n_samples(n_samples)
        classes = AliasSampler(p, rng=check_rng(rng)).sample(m)
        _, g = b.class_gradients(xb, classes=np.unique(classes))
        return cls(p, g[0], classes=classes)

    def __repr__(self) -> str:
        return (f"<{self.shape[0]}x{self.shape[1]} SampledFisherOperator: {self.n_samples} draws, "
                f"{self.unique_classes.size} distinct of {self.probs.size} classes>")


class MatrixFreeFisherOperator(LinearOperator):
    """The exact input FIM at one input from a backend's Fisher-vector product.

    ``A @ V`` calls ``backend.fisher_vector_product`` once per block: one JVP and one VJP,
    :math:`G V = J^T(\\mathrm{diag}\\,p - pp^T) J V` with J the logit Jacobian, whatever the number
    of classes. Neither the d x d matrix nor the C class gradients are formed.

    Parameters
    ----------
    x : array-like of shape input_shape
        The input.
    backend : Backend
        Must declare the ``"fisher_vector_product"`` capability. (The order
        ``MatrixFreeFisherOperator(backend, x)`` of earlier releases works with a FutureWarning.)

    Attributes
    ----------
    probs : ndarray of shape (n_classes,)
        p(y|x) at the input.
    rank_bound : int
        Number of classes with p_i > 0, less one (rank of diag p - pp^T).
    n_products : int
        Number of vectors the operator has been applied to (for cost accounting).
    """

    def __init__(self, x: Any, backend: Any):
        b, xb = _one_input(x, backend, "MatrixFreeFisherOperator")
        b.require("fisher_vector_product", "MatrixFreeFisherOperator")
        self.backend, self.x, self.input_shape = b, xb, b.input_shape
        self.probs = b.probabilities(xb)[0]
        d = math.prod(self.input_shape)
        self.rank_bound = max(0, min(int(np.count_nonzero(self.probs)) - 1, d))
        self.n_products = 0
        super().__init__(dtype=np.dtype(np.float64), shape=(d, d))

    def _matmat(self, V):
        V = np.asarray(V, dtype=np.float64)
        k = V.shape[1]
        self.n_products += k
        out = self.backend.fisher_vector_product(self.x, V.T.reshape((1, k) + self.input_shape))
        return out.reshape(k, -1).T

    def _matvec(self, v):
        return self._matmat(np.asarray(v).reshape(-1, 1)).reshape(-1)

    def _adjoint(self):
        return self

    _transpose = _adjoint

    def __repr__(self) -> str:
        return f"<{self.shape[0]}x{self.shape[1]} MatrixFreeFisherOperator over {type(self.backend).__name__}>"


def _rank_bound(p: np.ndarray, g: np.ndarray) -> int:
    """Bound on rank(sum_i p_i g_i g_i^T): classes with p_i > 0, less one if sum_i p_i g_i = 0."""
    return int(rank_bounds(p[None], g[None])[0])


def rank_bounds(p: np.ndarray, g: np.ndarray) -> np.ndarray:
    """:func:`_rank_bound` for a batch: ``p`` of shape (n, C), ``g`` of shape (n, C, d); returns (n,) int."""
    nz = np.count_nonzero(p, axis=1)
    resid = np.linalg.norm(np.matmul(p[:, None, :], g)[:, 0], axis=1)  # ||sum_i p_i g_i||
    scale = np.einsum("nc,nc->n", p, np.linalg.norm(g, axis=2))
    softmax = (scale == 0) | (resid <= SOFTMAX_SUM_RTOL * scale)
    return np.clip(nz - softmax, 0, g.shape[2]).astype(np.int64)


def default_n_samples(n_classes: int) -> int:
    """The paper's number of Monte-Carlo draws: about one fifth of the classes (at least 1)."""
    return max(1, int(round(n_classes / 5)))


def _check_n_samples(n: Any) -> int:
    return check_int(n, "n_samples", min_val=1)


def _one_input(x: Any, backend: Any, func: str) -> tuple[Any, np.ndarray]:
    """``(backend, x as a batch of one)`` for the operators built at one input."""
    x, backend = public_order(x, backend, func)
    b = as_backend(backend)
    xb, single = b.as_batch(x)
    if not single and xb.shape[0] != 1:
        raise ValueError(f"x must be one input of shape {b.input_shape}, got a batch of {xb.shape[0]}")
    return b, xb
