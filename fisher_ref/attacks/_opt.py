"""The optimisation-based l2 attack ("Opt" in the paper's Tables 4-5) on the backend protocol.

Liu et al. (2016) and Carlini and Wagner (2017) find a small adversarial perturbation by
minimising ``||delta||^2 + c * f(x + delta)`` with a margin loss ``f`` on the logits and a binary
search over the constant ``c``. The backend protocol gives probabilities and gradients of
``-log p_i`` rather than logits, but log-probabilities differ from the logits by a per-input
constant, so the logit margin is a log-probability margin:

.. math::

    f(x') = \\max\\big(\\log p_y(x') - \\max_{j \\ne y} \\log p_j(x'),\\; -\\kappa\\big),
    \\qquad \\nabla f = -g_y + g_{j^*} \\quad (f > -\\kappa),

with ``g_i = grad_x(-log p_i)`` and ``j*`` the most likely wrong class. Both gradients come from
:meth:`Backend.loss_gradient` (one reverse pass each on backends that declare it), batched over
the inputs that are still above the margin.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._validation import check_int, check_real, check_rng
from ._base import AttackResult, finish, flat_norm, prepare

__all__ = ["OptResult", "opt"]

#: Adam's moment decay rates and denominator guard (Kingma and Ba 2015 defaults, as Carlini-Wagner).
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8
#: l2 size of the random start, relative to ``learning_rate``: breaks the symmetry at inputs where
#: the margin gradient vanishes, and is far below any perturbation the attack returns.
RANDOM_START = 1e-6


@dataclass
class OptResult(AttackResult):
    """:class:`~fisher_ref.AttackResult` of :func:`opt`.

    ``epsilon`` is ``nan``: Opt is a minimum-norm attack without a budget; the size of each
    perturbation is ``||eta||_2``.

    Attributes
    ----------
    const : ndarray of float
        The constant ``c`` at which the returned perturbation was found (``nan`` where the attack
        failed; there ``eta`` is zero and ``x_adv`` is ``x``).
    """

    const: np.ndarray = None  # type: ignore[assignment]

    @property
    def l2(self) -> np.ndarray:
        """``||eta||_2`` per input (0 where the attack failed)."""
        e = np.asarray(self.eta)
        return float(np.linalg.norm(e)) if np.ndim(self.const) == 0 else flat_norm(e)


def opt(x: Any, backend: Any, *, labels: Any = None, bounds: tuple[float, float] | None = (0.0, 1.0),
        c: float | None = None, c_range: tuple[float, float] = (1e-2, 1e2), binary_search_steps: int = 6,
        max_iter: int = 100, learning_rate: float = 0.05, confidence: float = 0.0,
        rng: None | int | np.random.Generator = None) -> OptResult:
    """Optimisation-based l2 attack (Liu et al. 2016; Carlini and Wagner 2017).

    For each input, minimise ``||delta||_2^2 + c * f(x + delta)`` over ``delta`` with Adam
    (projected onto ``bounds`` after every step), with the margin loss ``f`` of the module
    docstring, and search ``c`` per input; the smallest successful perturbation seen at any
    iteration and any ``c`` is returned.

    Parameters
    ----------
    x : array-like of shape input_shape or (n, *input_shape)
    backend : Backend or callable
        A backend or ``fn(x) -> (probs, grads)`` (see :func:`~fisher_ref.as_backend`).
    labels : array-like of int, optional
        The labels to move away from (untargeted); default the model's predictions at x.
    bounds : (float, float) or None
        Input domain: every iterate is clipped to it (``x`` must lie inside). None: unbounded.
    c : float, optional
        The first constant tried (default the geometric mean of ``c_range``). With
        ``binary_search_steps=1`` it is the only one.
    c_range : (float, float)
        The search interval of ``c``, ``0 < lo <= hi``. After each run of ``max_iter`` steps the
        bracket of an input shrinks to the side of ``c`` that is consistent with success (success:
        ``c`` becomes the upper end; failure: the lower end) and the next ``c`` is the geometric
        mean of the bracket.
    binary_search_steps : int
        Number of values of ``c`` tried per input.
    max_iter : int
        Adam steps per value of ``c``.
    learning_rate : float
        Adam's step size (in input units; Carlini-Wagner use 1e-2 on [-0.5, 0.5] images).
    confidence : float
        The margin ``kappa >= 0``: success needs ``log p_y - max_{j != y} log p_j < -kappa``.
    rng : None, int or numpy.random.Generator
        Draws a random start ``delta_0`` of l2 norm ``1e-6 * learning_rate`` (symmetry breaking
        where the margin gradient vanishes; negligible otherwise).

    Returns
    -------
    OptResult
        One result (the attack has no budget to sweep): ``success`` where a perturbation fooling
        the model was found, ``eta`` the smallest such perturbation (zero where none was).

    Raises
    ------
    ValueError
        For bad parameters, or ``x`` outside ``bounds``.

    Notes
    -----
    Each Adam step costs one forward pass for the batch and two gradient calls
    (:meth:`~fisher_ref.Backend.loss_gradient` for the label and for ``j*``) for the inputs whose
    margin is still above ``-kappa``; inputs past the margin feel only the ``||delta||^2`` term,
    which pulls them back towards the decision boundary. The cost is
    ``binary_search_steps * max_iter`` such steps.

    References
    ----------
    Liu, Chen, Liu and Song (2016), "Delving into transferable adversarial examples and black-box
    attacks", Section 3 (the optimisation-based approach; the paper's "Opt").
    Carlini and Wagner (2017), "Towards evaluating the robustness of neural networks", the l2
    attack (margin loss f_6, Adam, binary search over c).
    Zhao et al., AAAI 2019, Section 4, Tables 4-5 (Opt adversarials for the detector).
    """
    steps = check_int(binary_search_steps, "binary_search_steps", min_val=1)
    iters = check_int(max_iter, "max_iter", min_val=1)
    lr = check_real(learning_rate, "learning_rate", min_val=0, include_boundaries="neither")
    kappa = check_real(confidence, "confidence", min_val=0)
    try:
        c_lo, c_hi = (float(v) for v in c_range)
    except Exception as exc:
        raise TypeError(f"c_range must be a pair (lo, hi) of numbers, got {c_range!r}") from exc
    if not (math.isfinite(c_lo) and math.isfinite(c_hi) and 0 < c_lo <= c_hi):
        raise ValueError(f"c_range must satisfy 0 < lo <= hi (finite), got ({c_lo:g}, {c_hi:g})")
    if c is None:
        c0 = math.sqrt(c_lo * c_hi)
    else:
        c0 = check_real(c, "c", min_val=0, include_boundaries="neither")
        if not c_lo <= c0 <= c_hi:
            raise ValueError(f"c must lie in c_range = ({c_lo:g}, {c_hi:g}), got {c0:g}")
    gen = check_rng(rng)
    prep = prepare(x, backend, labels, bounds)
    b, xb, bnds, y = prep.backend, prep.x, prep.bounds, prep.labels
    n = xb.shape[0]
    rows = np.arange(n)
    shape = (-1,) + (1,) * (xb.ndim - 1)

    lo_c, hi_c = np.full(n, c_lo), np.full(n, c_hi)
    const = np.full(n, c0)
    best_l2 = np.full(n, np.inf)
    best_eta = np.zeros_like(xb)
    best_c = np.full(n, np.nan)
    beta1, beta2 = ADAM_BETAS
    tiny = np.finfo(np.float64).tiny

    for _ in range(steps):
        delta = gen.standard_normal(xb.shape)
        delta *= (RANDOM_START * lr / np.maximum(flat_norm(delta), tiny)).reshape(shape)
        m1, m2 = np.zeros_like(xb), np.zeros_like(xb)
        succeeded = np.zeros(n, dtype=bool)
        for it in range(iters + 1):
            xa = xb + delta
            if bnds is not None:
                xa = np.clip(xa, bnds[0], bnds[1])
                delta = xa - xb
            p = b.probabilities(xa)
            logp = np.log(np.maximum(p, tiny))
            wrong = logp.copy()
            wrong[rows, y] = -np.inf
            j = wrong.argmax(axis=1)
            margin = logp[rows, y] - logp[rows, j]
            ok = (margin < -kappa) & (p.argmax(axis=1) != y)
            l2 = flat_norm(delta)
            better = ok & (l2 < best_l2)
            best_l2[better], best_eta[better], best_c[better] = l2[better], delta[better], const[better]
            succeeded |= ok
            if it == iters:
                break
            grad = 2.0 * delta
            act = np.flatnonzero(margin > -kappa)
            if act.size:
                _, g_y = b.loss_gradient(xa[act], y[act])
                _, g_j = b.loss_gradient(xa[act], j[act])
                grad[act] += const[act].reshape(shape) * (g_j - g_y)
            t = it + 1
            m1 = beta1 * m1 + (1 - beta1) * grad
            m2 = beta2 * m2 + (1 - beta2) * grad * grad
            step = (m1 / (1 - beta1 ** t)) / (np.sqrt(m2 / (1 - beta2 ** t)) + ADAM_EPS)
            delta = delta - lr * step
        hi_c = np.where(succeeded, np.minimum(hi_c, const), hi_c)
        lo_c = np.where(succeeded, lo_c, np.maximum(lo_c, const))
        const = np.sqrt(lo_c * hi_c)

    return finish(OptResult, prep, best_eta, math.nan, const=best_c)
