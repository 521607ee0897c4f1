"""The iterative attacks: BIM (repeated FGM steps) and iterative OSSA, in l2, batched over inputs."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable, Sequence

import numpy as np

from .._spectrum import fisher_spectrum
from .._validation import check_epsilon, check_int, check_real
from ._base import AttackResult, IterativeAttackResult, Prepared, clip, finish, flat_norm, per_epsilon, per_input, prepare, predictions
from ._directions import _top_pair, ossa_signs, unit

__all__ = ["bim", "iterative_ossa"]


def _iterate(prep: Prepared, eps: float, step_size: float, n_steps: int,
             direction: Callable[[np.ndarray], np.ndarray]) -> IterativeAttackResult:
    """x_{t+1} = clip(Proj_{||x' - x|| <= eps}(x_t + step * direction(x_t)))."""
    xb = prep.x
    xt = xb.copy()
    hist = np.zeros((n_steps, xb.shape[0]), dtype=bool)
    for s in range(n_steps):
        xt = xt + step_size * direction(xt)
        delta = xt - xb
        nrm = flat_norm(delta)
        scale = np.where(nrm > eps, eps / np.where(nrm > 0, nrm, 1.0), 1.0)
        xt = clip(xb + delta * per_input(scale, xb.ndim), prep.bounds)
        hist[s] = predictions(prep.backend, xt) != prep.labels
    return finish(IterativeAttackResult, prep, xt - xb, eps, success_history=hist)


def _iterative(x: Any, backend: Any, epsilon: Any, step_size: Any, n_steps: Any, labels: Any, bounds: Any,
               make_direction: Callable[[Prepared], Callable[[np.ndarray], np.ndarray]]):
    n_steps = check_int(n_steps, "n_steps", min_val=1)
    step_size = check_real(step_size, "step_size", min_val=0, include_boundaries="neither")
    prep = prepare(x, backend, labels, bounds)
    check_epsilon(epsilon)
    direction = make_direction(prep)
    return per_epsilon(lambda e: _iterate(prep, e, step_size, n_steps, direction), epsilon)


def bim(x: Any, backend: Any, *, epsilon: float | Sequence[float], step_size: float = 0.05, n_steps: int = 10,
        labels: Any = None, bounds: tuple[float, float] | None = (0.0, 1.0)) -> AttackResult | list[AttackResult]:
    """Basic iterative method in l2: repeated FGM steps of size ``step_size``, projected onto the
    l2 ball of radius ``epsilon`` around x and clipped to ``bounds``.

    Each step costs one loss gradient (one reverse pass on backends that declare
    ``loss_gradient``) and one forward pass for the batch. Returns an
    :class:`~fisher_ref.IterativeAttackResult` (per epsilon) with ``success_history``.

    References
    ----------
    Kurakin, Goodfellow and Bengio (2016a).
    """
    def make_direction(prep: Prepared):
        def step(xt):
            return unit(prep.backend.loss_gradient(xt, prep.labels)[1], "the loss gradient")
        return step
    return _iterative(x, backend, epsilon, step_size, n_steps, labels, bounds, make_direction)


def iterative_ossa(x: Any, backend: Any, *, epsilon: float | Sequence[float], step_size: float = 0.05,
                   n_steps: int = 10, labels: Any = None, bounds: tuple[float, float] | None = (0.0, 1.0),
                   method: str = "auto", operator: str = "auto",
                   rng: None | int | np.random.Generator = None) -> AttackResult | list[AttackResult]:
    """Iterative OSSA: at each step the top eigenvector of G at the current point, signed as in
    Algorithm 1 (loss of the original label must increase), a step of l2 size ``step_size``,
    projection onto the l2 ball of radius ``epsilon`` (the total budget) and clipping.

    Returns an :class:`~fisher_ref.IterativeAttackResult` (per epsilon) with ``success_history``.
    """
    def make_direction(prep: Prepared):
        def step(xt):
            b = prep.backend
            _, v = _top_pair(fisher_spectrum(xt, b, k=1, method=method, operator=operator, rng=rng))
            here = replace(prep, x=xt, probs=b.probabilities(xt))
            idx = np.arange(xt.shape[0])
            return per_input(ossa_signs(here, v, np.full(idx.size, step_size), idx), xt.ndim) * v
        return step
    return _iterative(x, backend, epsilon, step_size, n_steps, labels, bounds, make_direction)
