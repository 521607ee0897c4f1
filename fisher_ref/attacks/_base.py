"""Shared machinery of the attacks: results, input preparation, clipping, the per-epsilon sweep.

Every attack follows Foolbox's shape: configuration keyword-only; a scalar ``epsilon`` gives one
result, a sequence one result per epsilon; a result carries the raw perturbed input, the input
clipped to ``bounds``, and whether the attack succeeded (the prediction at the clipped input
differs from the label). Perturbations are measured in l2.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from .._backend import Backend, as_backend
from .._validation import check_bounds, check_epsilon, check_labels

__all__ = ["AttackResult", "OSSAResult", "IterativeAttackResult", "DegenerateSpectrumWarning"]


class DegenerateSpectrumWarning(UserWarning):
    """The Fisher matrix at an input is zero (saturated prediction): no spectral direction exists."""


@dataclass
class AttackResult:
    """Outcome of an attack at one epsilon.

    Arrays have a leading batch axis when the attack was given a batch, none for one input.

    Attributes
    ----------
    x_adv : ndarray
        The adversarial input, ``x + eta`` clipped to ``bounds``.
    x_adv_raw : ndarray
        ``x + eta`` before clipping.
    eta : ndarray
        The perturbation before clipping; ``||eta||_2 = epsilon`` for the one-step attacks.
    success : ndarray of bool
        Whether the prediction at ``x_adv`` differs from the label.
    labels : ndarray of int
        The labels attacked (given, or the model's predictions at x).
    predictions : ndarray of int
        The model's predictions at ``x_adv``.
    epsilon : float
        The l2 budget.
    """

    x_adv: np.ndarray
    x_adv_raw: np.ndarray
    eta: np.ndarray
    success: np.ndarray
    labels: np.ndarray
    predictions: np.ndarray
    epsilon: float

    @property
    def fooling_rate(self) -> float:
        """Fraction of inputs whose prediction changed."""
        return float(np.mean(self.success))


@dataclass
class OSSAResult(AttackResult):
    """:class:`AttackResult` of OSSA, with the spectral quantities.

    Attributes
    ----------
    eigenvalue : ndarray of float
        The top eigenvalue lambda_1 of G_x (paper Algorithm 1, line 7).
    eigenvector : ndarray
        The unit top eigenvector v_1, shaped like the input, sign as in the result (eta = epsilon * v).
    """

    eigenvalue: np.ndarray = None  # type: ignore[assignment]
    eigenvector: np.ndarray = None  # type: ignore[assignment]


@dataclass
class IterativeAttackResult(AttackResult):
    """:class:`AttackResult` of an iterative attack, with the success after each step.

    Attributes
    ----------
    success_history : ndarray of bool of shape (n_steps, n) (or (n_steps,) for one input)
        Whether the prediction differs from the label after step t (Figure 2b of the paper).
    """

    success_history: np.ndarray = None  # type: ignore[assignment]


class Prepared:
    """An attack's validated inputs: the backend, the batch, the bounds, the labels and p(x).

    ``probs`` (p(x), shape (n, C)) is computed by one forward pass on first use, unless a
    gradient call at ``x`` has already returned it (:meth:`learn`: the Jacobian of OSSA's
    eigensolve and the loss gradient of FGM / OTCM give it for free). ``labels`` default to the
    predictions ``argmax p(x)``.
    """

    __slots__ = ("backend", "x", "single", "bounds", "_labels", "_probs")

    def __init__(self, backend: Backend, x: np.ndarray, single: bool, bounds: tuple[float, float] | None,
                 labels: np.ndarray | None = None, probs: np.ndarray | None = None):
        self.backend, self.x, self.single, self.bounds = backend, x, single, bounds
        self._labels, self._probs = labels, probs

    @property
    def probs(self) -> np.ndarray:
        if self._probs is None:
            self._probs = self.backend.probabilities(self.x)
        return self._probs

    @property
    def labels(self) -> np.ndarray:
        if self._labels is None:
            self._labels = self.probs.argmax(axis=1)
        return self._labels

    @property
    def knows_probs(self) -> bool:
        return self._probs is not None

    def learn(self, probs: np.ndarray) -> None:
        """Keep p(x) that a gradient call at ``x`` returned (no forward pass needed for it later)."""
        if self._probs is None:
            self._probs = probs


def prepare(x: Any, backend: Any, labels: Any, bounds: Any) -> Prepared:
    """Validate an attack's inputs once: backend, batch, bounds (x inside), labels (default: predictions).

    No forward pass over the batch: p(x) waits for its first use (see :class:`Prepared`).
    """
    b = as_backend(backend)
    xb, single = b.as_batch(x)
    bnds = check_bounds(bounds, xb)
    if labels is None:
        return Prepared(b, xb, single, bnds)
    if b.n_classes is None:
        b.probabilities(xb[:1])  # the number of classes, to check the labels against
    return Prepared(b, xb, single, bnds, labels=check_labels(labels, xb.shape[0], b.n_classes))


def clip(x: np.ndarray, bounds: tuple[float, float] | None) -> np.ndarray:
    return x if bounds is None else np.clip(x, bounds[0], bounds[1])


def flat_norm(a: np.ndarray) -> np.ndarray:
    """l2 norm of each row of a batch ``(n, ...)``."""
    return np.linalg.norm(a.reshape(a.shape[0], -1), axis=1)


def per_input(e: Any, ndim: int) -> np.ndarray:
    """Scalars per input ``(n,)`` shaped to broadcast against a batch of ``ndim`` dimensions."""
    return np.asarray(e, dtype=np.float64).reshape((-1,) + (1,) * (ndim - 1))


def unit(a: np.ndarray, what: str) -> np.ndarray:
    """Normalise each row to unit l2 norm; zero rows stay zero with a warning."""
    nrm = flat_norm(a)
    zero = nrm == 0
    if np.any(zero):
        warnings.warn(f"{what} is zero at inputs {np.flatnonzero(zero).tolist()}: no direction, "
                      "perturbation set to zero there", DegenerateSpectrumWarning, stacklevel=4)
    return a / per_input(np.where(zero, 1.0, nrm), a.ndim)


def loss(p: np.ndarray, y: np.ndarray) -> np.ndarray:
    """-log p_y (clamped at the smallest positive double so that p_y = 0 gives a finite value)."""
    return -np.log(np.maximum(p[np.arange(p.shape[0]), y], np.finfo(np.float64).tiny))


def predictions(b: Backend, x: np.ndarray, known: np.ndarray | None = None) -> np.ndarray:
    """The model's predictions at ``x`` (n,): ``known`` ones (>= 0) are kept, one forward pass
    (over the rest only) gives the others."""
    if known is None:
        return b.probabilities(x).argmax(axis=1)
    todo = np.flatnonzero(known < 0)
    out = known.copy()
    if todo.size:
        out[todo] = b.probabilities(x[todo]).argmax(axis=1)
    return out


def finish(cls: type, prep: Prepared, eta: np.ndarray, epsilon: float, *, pred: np.ndarray | None = None,
           adv: np.ndarray | None = None, **extra) -> AttackResult:
    """The result of perturbing ``prep.x`` by ``eta``: clip, predict, drop the batch axis of one input.

    ``pred`` gives the predictions already known at the result (-1 where not: one forward pass
    over those); ``adv`` is the adversarial input itself when the attack produced it (an
    iterate), else ``clip(x + eta)``.
    """
    raw = prep.x + eta if adv is None else adv
    adv = clip(raw, prep.bounds) if adv is None else adv
    pred = predictions(prep.backend, adv, pred)
    fields = dict(x_adv=adv, x_adv_raw=raw, eta=eta, success=pred != prep.labels, labels=prep.labels,
                  predictions=pred)
    fields.update(extra)
    if prep.single:
        fields = {k: _first_input(k, v) for k, v in fields.items()}
    return cls(epsilon=float(epsilon), **fields)


def _first_input(key: str, value: Any) -> Any:
    if key == "success_history":
        return value[:, 0]
    return value[0] if isinstance(value, np.ndarray) and value.ndim else value


def per_epsilon(make: Callable[[float], AttackResult], epsilon: Any) -> AttackResult | list[AttackResult]:
    """``make(e)`` for a scalar epsilon (one result) or each of a sequence (a list)."""
    eps, scalar = check_epsilon(epsilon)
    out = [make(float(e)) for e in eps]
    return out[0] if scalar else out
