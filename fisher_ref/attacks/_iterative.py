"""The iterative attacks: BIM (repeated FGM steps) and iterative OSSA, in l2, batched over inputs."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from .._spectrum import fisher_spectrum
from .._validation import check_epsilon, check_int, check_real
from ._base import (AttackResult, IterativeAttackResult, Prepared, clip, finish, flat_norm, per_epsilon, per_input,
                    predictions, prepare)
from ._directions import _top_pair, ossa_signs, unit

__all__ = ["bim", "iterative_ossa"]

#: ``direction(x_rows, rows) -> (unit directions (m, *input_shape), p(x_rows) (m, C))``: the step
#: of an iterative attack at the current iterates of the inputs ``rows``, with the class
#: probabilities there that its gradient call computed on the way.
Direction = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


def _iterate(prep: Prepared, eps: float, step_size: float, n_steps: int, direction: Direction,
             early_stop: bool) -> IterativeAttackResult:
    """x_{t+1} = clip(Proj_{||x' - x|| <= eps}(x_t + step * direction(x_t))).

    The success after step t is read from the probabilities that step t + 1's gradient call
    computed at x_{t+1} (no forward pass of its own); only the last step's needs one, at the end,
    for the inputs whose prediction is not known yet. With ``early_stop`` an input
    leaves the loop at its first adversarial iterate (x itself when it is misclassified already).
    """
    xb = prep.x
    xt = xb.copy()
    n = xb.shape[0]
    hist = np.zeros((n_steps, n), dtype=bool)
    pred = np.full(n, -1, dtype=np.int64)  # known predictions at the final iterates
    rows = np.arange(n)  # the inputs still stepping
    for s in range(n_steps):
        u, p = direction(xt[rows], rows)
        fooled = p.argmax(axis=1) != prep.labels[rows]  # at x_s, the iterate after step s - 1
        if s:
            hist[s - 1, rows] = fooled
        if early_stop and fooled.any():
            pred[rows[fooled]] = p[fooled].argmax(axis=1)
            hist[max(s - 1, 0):, rows[fooled]] = True
            rows, u = rows[~fooled], u[~fooled]
            if not rows.size:
                break
        delta = xt[rows] + step_size * u - xb[rows]
        nrm = flat_norm(delta)
        scale = np.where(nrm > eps, eps / np.where(nrm > 0, nrm, 1.0), 1.0)
        xt[rows] = clip(xb[rows] + delta * per_input(scale, xb.ndim), prep.bounds)
    pred = predictions(prep.backend, xt, pred)  # one forward pass, over the inputs that took the last step
    hist[n_steps - 1, rows] = pred[rows] != prep.labels[rows]
    return finish(IterativeAttackResult, prep, xt - xb, eps, pred=pred, adv=xt, success_history=hist)


def _iterative(x: Any, backend: Any, epsilon: Any, step_size: Any, n_steps: Any, labels: Any, bounds: Any,
               early_stop: Any, make_direction: Callable[[Prepared], Direction]):
    n_steps = check_int(n_steps, "n_steps", min_val=1)
    step_size = check_real(step_size, "step_size", min_val=0, include_boundaries="neither")
    if not isinstance(early_stop, (bool, np.bool_)):
        raise TypeError(f"early_stop must be True or False, got {type(early_stop).__name__}")
    prep = prepare(x, backend, labels, bounds)
    check_epsilon(epsilon)
    direction = make_direction(prep)
    return per_epsilon(lambda e: _iterate(prep, e, step_size, n_steps, direction, bool(early_stop)), epsilon)


def bim(x: Any, backend: Any, *, epsilon: float | Sequence[float], step_size: float = 0.05, n_steps: int = 10,
        labels: Any = None, bounds: tuple[float, float] | None = (0.0, 1.0),
        early_stop: bool = False) -> AttackResult | list[AttackResult]:
    """Basic iterative method in l2: repeated FGM steps of size ``step_size``, projected onto the
    l2 ball of radius ``epsilon`` around x and clipped to ``bounds``.

    Parameters
    ----------
    x, backend, epsilon, labels, bounds
        As :func:`~fisher_ref.fgm`.
    step_size : float
        l2 size of each step (before the projection).
    n_steps : int
        Number of steps.
    early_stop : bool
        False (default): every input takes all ``n_steps`` steps. True: each input stops at its
        first success - no further steps, the result is the first adversarial iterate (``x``
        itself, unchanged, where the model misclassifies it already); ``success_history`` stays
        True after that step.

    Returns
    -------
    IterativeAttackResult or list of IterativeAttackResult
        One per epsilon, with ``success_history`` (steps x inputs).

    Notes
    -----
    Each step costs one loss gradient for the inputs still stepping (one reverse pass on backends
    that declare ``loss_gradient``), whose forward pass also gives the success of the previous
    step; one forward pass at the end gives the last step's (plus one at ``x`` for the labels
    when none are given).

    Recipes (the published settings are l-infinity; their l2 transcriptions, for inputs in
    [0, 1] with d = prod(input_shape)):

    * Kurakin, Goodfellow and Bengio (2016a), "BIM": a step of one intensity level per pixel,
      ``step_size = sqrt(d) / 255``, and ``n_steps = min(ceil(epsilon / step_size) + 4,
      ceil(1.25 * epsilon / step_size))`` (their ``min(eps + 4, 1.25 eps)`` in intensity
      levels), ``early_stop=False``.
    * Feinman, Curtin, Shintre and Gardner (2017), BIM-A / BIM-B: ``n_steps=50``,
      ``step_size = epsilon / 30`` on MNIST (their eps_iter / eps = 0.010 / 0.300; CIFAR-10:
      ``epsilon / 10``, 0.005 / 0.050); BIM-A is ``early_stop=True`` (stop at the first
      misclassified iterate), BIM-B ``early_stop=False`` (all steps).

    References
    ----------
    Kurakin, Goodfellow and Bengio (2016a), "Adversarial examples in the physical world".
    Feinman, Curtin, Shintre and Gardner (2017), "Detecting adversarial samples from artifacts".
    """
    def make_direction(prep: Prepared) -> Direction:
        def step(xr: np.ndarray, rows: np.ndarray):
            p, g = prep.backend.loss_gradient(xr, prep.labels[rows])
            return unit(g, "the loss gradient"), p
        return step
    return _iterative(x, backend, epsilon, step_size, n_steps, labels, bounds, early_stop, make_direction)


def iterative_ossa(x: Any, backend: Any, *, epsilon: float | Sequence[float], step_size: float = 0.05,
                   n_steps: int = 10, labels: Any = None, bounds: tuple[float, float] | None = (0.0, 1.0),
                   method: str = "auto", operator: str = "auto", rng: None | int | np.random.Generator = None,
                   early_stop: bool = False) -> AttackResult | list[AttackResult]:
    """Iterative OSSA: at each step the top eigenvector of G at the current point, signed as in
    Algorithm 1 (loss of the original label must increase), a step of l2 size ``step_size``,
    projection onto the l2 ball of radius ``epsilon`` (the total budget) and clipping.

    ``early_stop`` as :func:`bim`. Each step costs one eigensolve (whose Jacobian also gives p at
    the current point, hence the previous step's success) and the sign test's forward pass.
    Returns an :class:`~fisher_ref.IterativeAttackResult` (per epsilon) with ``success_history``.
    """
    def make_direction(prep: Prepared) -> Direction:
        def step(xr: np.ndarray, rows: np.ndarray):
            b = prep.backend
            w, V, info = fisher_spectrum(xr, b, k=1, method=method, operator=operator, rng=rng, return_info=True)
            p = info.extra["probabilities"]
            _, v = _top_pair((w, V))
            here = Prepared(b, xr, False, prep.bounds, labels=prep.labels[rows], probs=p)
            idx = np.arange(xr.shape[0])
            return per_input(ossa_signs(here, v, np.full(idx.size, step_size), idx).signs, xr.ndim) * v, p
        return step
    return _iterative(x, backend, epsilon, step_size, n_steps, labels, bounds, early_stop, make_direction)
