"""The one-step spectral attack (OSSA, Algorithm 1) and the baseline attacks.

All attacks are backend-agnostic (they need only probabilities and gradients), batched over
inputs (one backend call per step for the whole batch), measure perturbations in l2 and follow
Foolbox's shape: configuration keyword-only; a scalar ``epsilon`` gives one result, a sequence
one result per epsilon; a result carries the raw perturbed input, the input clipped to
``bounds``, and whether the attack succeeded (the prediction at the clipped input differs from
the label).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from ._backend import as_backend
from ._spectrum import fisher_spectrum
from ._validation import check_bounds, check_epsilon, check_labels, check_rng

__all__ = [
    "AttackResult",
    "OSSAResult",
    "DegenerateSpectrumWarning",
    "ossa",
    "iterative_ossa",
    "fgm",
    "otcm",
    "bim",
    "least_perturbation",
]


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


# ---------------------------------------------------------------------------------------------
# shared machinery


def _prepare(x, backend, labels, bounds):
    b = as_backend(backend)
    xb, single = b.as_batch(x)
    bnds = check_bounds(bounds, xb)
    p = b.probabilities(xb)
    y = p.argmax(axis=1) if labels is None else check_labels(labels, xb.shape[0], p.shape[1])
    return b, xb, single, bnds, p, y


def _clip(x, bounds):
    return x if bounds is None else np.clip(x, bounds[0], bounds[1])


def _flat_norm(a: np.ndarray) -> np.ndarray:
    return np.linalg.norm(a.reshape(a.shape[0], -1), axis=1)


def _unit(a: np.ndarray, what: str) -> np.ndarray:
    """Normalise each row to unit l2 norm; zero rows stay zero with a warning."""
    nrm = _flat_norm(a)
    zero = nrm == 0
    if np.any(zero):
        warnings.warn(f"{what} is zero at inputs {np.flatnonzero(zero).tolist()}: no direction, "
                      "perturbation set to zero there", DegenerateSpectrumWarning, stacklevel=4)
    return a / np.where(zero, 1.0, nrm).reshape((-1,) + (1,) * (a.ndim - 1))


def _bcast(e: np.ndarray, ndim: int) -> np.ndarray:
    return np.asarray(e, dtype=np.float64).reshape((-1,) + (1,) * (ndim - 1))


def _loss(p: np.ndarray, y: np.ndarray) -> np.ndarray:
    """-log p_y (clamped at the smallest positive double so that p_y = 0 gives a finite value)."""
    return -np.log(np.maximum(p[np.arange(p.shape[0]), y], np.finfo(np.float64).tiny))


def _finish(cls, b, xb, single, bnds, y, eta, epsilon, **extra):
    raw = xb + eta
    adv = _clip(raw, bnds)
    pred = b.probabilities(adv).argmax(axis=1)
    fields = dict(x_adv=adv, x_adv_raw=raw, eta=eta, success=pred != y, labels=y, predictions=pred)
    fields.update(extra)
    if single:
        fields = {k: (v[0] if isinstance(v, np.ndarray) and v.ndim and k != "success_history" else
                      (v[:, 0] if k == "success_history" else v)) for k, v in fields.items()}
    return cls(epsilon=float(epsilon), **fields)


def _per_epsilon(make: Callable[[float], AttackResult], epsilon) -> AttackResult | list[AttackResult]:
    eps, scalar = check_epsilon(epsilon)
    out = [make(float(e)) for e in eps]
    return out[0] if scalar else out


# ---------------------------------------------------------------------------------------------
# directions of the one-step attacks (shared by the attacks and least_perturbation)


def _ossa_direction(b, xb, method, operator, rng):
    w, V = fisher_spectrum(b, xb, k=1, method=method, operator=operator, rng=rng)
    lam, v = w[:, 0], V[:, 0]
    zero = lam == 0
    if np.any(zero):
        warnings.warn(f"the Fisher matrix is zero at inputs {np.flatnonzero(zero).tolist()} (saturated "
                      "prediction): OSSA has no direction there and leaves them unchanged",
                      DegenerateSpectrumWarning, stacklevel=4)
        v = v.copy()
        v[zero] = 0.0
    return lam, v


def _ossa_signed(b, xb, y, p, v, eps):
    """Algorithm 1, lines 8-10: eta = eps v, flipped when J(x + eta) <= J(x)."""
    sign = _ossa_sign(b, xb, y, p, v, eps)
    return _bcast(eps * sign, xb.ndim) * v


def _ossa_sign(b, xb, y, p, v, eps):
    """+1 where J(x + eps v) > J(x), else -1 (Algorithm 1, line 8)."""
    flip = _loss(b.probabilities(xb + _bcast(eps, xb.ndim) * v), y) <= _loss(p, y)
    return np.where(flip, -1.0, 1.0)


def _fgm_direction(b, xb, y):
    _, g = b.loss_gradient(xb, y)
    return _unit(g, "the loss gradient")


def _otcm_direction(b, xb, t):
    _, g = b.loss_gradient(xb, t)
    return -_unit(g, "the target-class gradient")


def _random_targets(y, n_classes, rng):
    rng = check_rng(rng)
    t = rng.integers(0, n_classes - 1, size=y.shape[0])
    return t + (t >= y)  # uniform over the incorrect classes


# ---------------------------------------------------------------------------------------------
# public attacks


def ossa(x: Any, backend: Any, *, epsilon: float | Sequence[float], labels: Any = None,
         bounds: tuple[float, float] | None = (0.0, 1.0), method: str = "auto", operator: str = "auto",
         rng: None | int | np.random.Generator = None) -> OSSAResult | list[OSSAResult]:
    """One-step spectral attack (paper Algorithm 1): perturb along the top Fisher eigenvector.

    Parameters
    ----------
    x : array-like of shape input_shape or (n, *input_shape)
    backend : Backend or callable
        A backend or ``fn(x) -> (probs, grads)`` (see :func:`as_backend`).
    epsilon : float or sequence of float
        l2 size of the perturbation: ``||eta||_2 = epsilon``. A sequence gives one result each.
    labels : array-like of int, optional
        Labels whose loss the attack increases; default the model's predictions at x.
    bounds : (float, float) or None
        Input domain; the result is clipped to it (``x`` must lie inside). None: no clipping.
    method, operator : str
        How the top eigenpair is computed (see :func:`fisher_spectrum`).
    rng : None, int or numpy.random.Generator
        For the iterative / sampled eigensolvers.

    Returns
    -------
    OSSAResult or list of OSSAResult

    Notes
    -----
    The paper's eq. (2) writes the constraint as :math:`\\|\\eta\\|_2^2 = \\epsilon`, but its
    experiments report :math:`\\|\\eta\\|_2`; we follow the experiments: ``eta = epsilon * v1``
    with unit ``v1``. Since both :math:`\\pm v_1` are eigenvectors, the sign follows Algorithm 1
    (line 8): ``eta = epsilon v1``, replaced by ``-eta`` when the loss
    :math:`J(x + \\eta) = -\\log p_y(x + \\eta)` does not exceed :math:`J(x)`. The loss is compared
    at the unclipped ``x + eta`` as in the algorithm. When the loss increases in both directions
    (or in neither), the rule keeps the starting sign: fisher_ref starts from the eigenvector whose
    largest-magnitude entry is positive, so the result is deterministic. Where G is zero (a saturated prediction)
    there is no direction: eta is zero there and a :class:`DegenerateSpectrumWarning` is issued.

    References
    ----------
    Zhao et al., AAAI 2019, eqs. (2)-(5) and Algorithm 1.
    """
    b, xb, single, bnds, p, y = _prepare(x, backend, labels, bounds)
    check_epsilon(epsilon)
    lam, v = _ossa_direction(b, xb, method, operator, rng)

    def make(e):
        sign = _ossa_sign(b, xb, y, p, v, np.full(xb.shape[0], e))
        vs = _bcast(sign, xb.ndim) * v
        return _finish(OSSAResult, b, xb, single, bnds, y, e * vs, e, eigenvalue=lam, eigenvector=vs)

    return _per_epsilon(make, epsilon)


def fgm(x: Any, backend: Any, *, epsilon: float | Sequence[float], labels: Any = None,
        bounds: tuple[float, float] | None = (0.0, 1.0)) -> AttackResult | list[AttackResult]:
    """Fast gradient method in l2: ``eta = epsilon * grad J / ||grad J||``, J = -log p_label.

    Parameters and returns as :func:`ossa`.

    References
    ----------
    Kurakin, Goodfellow and Bengio (2016b), the l2 variant of FGSM (Goodfellow et al. 2014).
    """
    b, xb, single, bnds, p, y = _prepare(x, backend, labels, bounds)
    check_epsilon(epsilon)
    u = _fgm_direction(b, xb, y)
    return _per_epsilon(lambda e: _finish(AttackResult, b, xb, single, bnds, y, e * u, e), epsilon)


def otcm(x: Any, backend: Any, *, epsilon: float | Sequence[float], labels: Any = None,
         targets: Any = None, bounds: tuple[float, float] | None = (0.0, 1.0),
         rng: None | int | np.random.Generator = None) -> AttackResult | list[AttackResult]:
    """One-step target class method: descend ``-log p_target`` with l2 step ``epsilon``.

    ``eta = -epsilon * grad(-log p_t) / ||grad(-log p_t)||`` for a target ``t`` drawn uniformly
    from the incorrect classes (``rng``) unless ``targets`` is given. ``success`` is the
    untargeted criterion (prediction differs from the label), as the paper's fooling rates.

    References
    ----------
    Kurakin, Goodfellow and Bengio (2016b).
    """
    b, xb, single, bnds, p, y = _prepare(x, backend, labels, bounds)
    check_epsilon(epsilon)
    t = _random_targets(y, p.shape[1], rng) if targets is None else check_labels(targets, xb.shape[0], p.shape[1], "targets")
    if np.any(t == y):
        raise ValueError("targets must differ from labels (OTCM aims at an incorrect class)")
    u = _otcm_direction(b, xb, t)
    return _per_epsilon(lambda e: _finish(AttackResult, b, xb, single, bnds, y, e * u, e), epsilon)


def _iterate(b, xb, single, bnds, y, eps, step_size, n_steps, direction):
    """x_{t+1} = clip(Proj_{||x' - x|| <= eps}(x_t + step * direction(x_t)))."""
    if not (isinstance(n_steps, (int, np.integer)) and n_steps >= 1):
        raise ValueError(f"n_steps must be a positive int, got {n_steps!r}")
    if not (np.isfinite(step_size) and step_size > 0):
        raise ValueError(f"step_size must be a positive number, got {step_size!r}")
    xt = xb.copy()
    hist = np.zeros((n_steps, xb.shape[0]), dtype=bool)
    for s in range(n_steps):
        xt = xt + step_size * direction(xt)
        delta = xt - xb
        nrm = _flat_norm(delta)
        scale = np.where(nrm > eps, eps / np.where(nrm > 0, nrm, 1.0), 1.0)
        xt = _clip(xb + delta * _bcast(scale, xb.ndim), bnds)
        hist[s] = b.probabilities(xt).argmax(axis=1) != y
    eta = xt - xb
    return _finish(IterativeAttackResult, b, xb, single, bnds, y, eta, eps, success_history=hist)


def bim(x: Any, backend: Any, *, epsilon: float | Sequence[float], step_size: float = 0.05, n_steps: int = 10,
        labels: Any = None, bounds: tuple[float, float] | None = (0.0, 1.0)) -> AttackResult | list[AttackResult]:
    """Basic iterative method in l2: repeated FGM steps of size ``step_size``, projected onto the
    l2 ball of radius ``epsilon`` around x and clipped to ``bounds``.

    Returns an :class:`IterativeAttackResult` (per epsilon) with ``success_history``.

    References
    ----------
    Kurakin, Goodfellow and Bengio (2016a).
    """
    b, xb, single, bnds, p, y = _prepare(x, backend, labels, bounds)
    check_epsilon(epsilon)
    return _per_epsilon(lambda e: _iterate(b, xb, single, bnds, y, e, step_size, n_steps,
                                           lambda xt: _fgm_direction(b, xt, y)), epsilon)


def iterative_ossa(x: Any, backend: Any, *, epsilon: float | Sequence[float], step_size: float = 0.05,
                   n_steps: int = 10, labels: Any = None, bounds: tuple[float, float] | None = (0.0, 1.0),
                   method: str = "auto", operator: str = "auto",
                   rng: None | int | np.random.Generator = None) -> AttackResult | list[AttackResult]:
    """Iterative OSSA: at each step the top eigenvector of G at the current point, signed as in
    Algorithm 1 (loss of the original label must increase), a step of l2 size ``step_size``,
    projection onto the l2 ball of radius ``epsilon`` (the total budget) and clipping.

    Returns an :class:`IterativeAttackResult` (per epsilon) with ``success_history``.
    """
    b, xb, single, bnds, p, y = _prepare(x, backend, labels, bounds)
    check_epsilon(epsilon)

    def direction(xt):
        _, v = _ossa_direction(b, xt, method, operator, rng)
        return _ossa_signed(b, xt, y, b.probabilities(xt), v, np.full(xt.shape[0], step_size)) / step_size

    return _per_epsilon(lambda e: _iterate(b, xb, single, bnds, y, e, step_size, n_steps, direction), epsilon)


# ---------------------------------------------------------------------------------------------
# least perturbation (paper Table 2, Figure 3)


def least_perturbation(attack: str | Callable, x: Any, backend: Any, *, labels: Any = None, lo: float = 0.0,
                       hi: float = 6.0, tol: float = 1e-3, bounds: tuple[float, float] | None = (0.0, 1.0),
                       n_scan: int | None = None, rng: None | int | np.random.Generator = None,
                       **attack_kwargs) -> np.ndarray:
    """Smallest l2 budget in ``[lo, hi]`` at which ``attack`` fools the model, by binary search.

    Parameters
    ----------
    attack : {"ossa", "fgm", "otcm", "bim", "iterative_ossa"} or one of those functions or a callable
        For the one-step attacks the direction (eigenvector, gradient) is computed once and the
        search costs one or two forward passes per bisection step for the whole batch. Another
        callable is called as ``attack(x, backend, epsilon=e, labels=y, bounds=bounds,
        **attack_kwargs)`` with scalar ``e`` on the inputs still being searched, and must return
        an object with a boolean ``success`` array.
    x : array-like of shape input_shape or (n, *input_shape)
    backend : Backend or callable
    labels : array-like of int, optional
        Default: the model's predictions at x.
    lo, hi : float
        Search interval (the paper uses [0, 6]).
    tol : float
        Stop when the bracket is narrower than ``tol``; the upper end is returned.
    n_scan : int, optional
        Budgets ``lo + (hi - lo) i / n_scan``, ``i = 1 .. n_scan``, are tried in turn before the
        bisection, which then brackets each input's first successful one. Default 24 for the
        one-step attacks (a forward pass per budget) and 1 for the others (each try is a whole
        attack); ``n_scan=1`` is the plain binary search on ``[lo, hi]``.

    Returns
    -------
    ndarray of shape (n,) (or a float for one input)
        The least successful budget found, ``inf`` where ``attack`` does not succeed at ``hi``, and
        ``lo`` where it already succeeds there.

    Notes
    -----
    Success need not be monotone in epsilon: along a fixed direction, clipped to the bounds, an
    input can be misclassified at small budgets and classified correctly again at large ones
    (seen on a CIFAR-10 VGG: a third of the inputs OSSA fools at 0.5 are classified correctly at 6).
    A plain binary search on ``[lo, hi]`` tests ``hi`` first and reports such inputs as never
    fooled; the scan finds the first successful budget on its grid and bisects below it. The value
    returned always fools the model (it was evaluated); between two grid points success is still
    assumed monotone, so it may not be the least such value.
    """
    if not (np.isfinite(lo) and np.isfinite(hi) and 0 <= lo < hi):
        raise ValueError(f"lo and hi must satisfy 0 <= lo < hi, got lo = {lo}, hi = {hi}")
    if not (np.isfinite(tol) and tol > 0):
        raise ValueError(f"tol must be a positive number, got {tol!r}")
    name = attack if isinstance(attack, str) else getattr(attack, "__name__", None)
    if isinstance(attack, str) and attack not in _ATTACKS:
        raise ValueError(f"attack must be one of {sorted(_ATTACKS)} or a callable, got {attack!r}")
    if not isinstance(attack, str) and not callable(attack):
        raise TypeError(f"attack must be a name or a callable, got {type(attack).__name__}")
    b, xb, single, bnds, p, y = _prepare(x, backend, labels, bounds)
    n = xb.shape[0]

    one_step = name in ("ossa", "fgm", "otcm") and (isinstance(attack, str) or attack is _ATTACKS[name])
    if one_step:
        if name == "ossa":
            _, v = _ossa_direction(b, xb, attack_kwargs.pop("method", "auto"), attack_kwargs.pop("operator", "auto"), rng)
            perturb = lambda e, idx: _ossa_signed(b, xb[idx], y[idx], p[idx], v[idx], e)
        else:
            if name == "fgm":
                u = _fgm_direction(b, xb, y)
            else:
                t = attack_kwargs.pop("targets", None)
                t = _random_targets(y, p.shape[1], rng) if t is None else check_labels(t, n, p.shape[1], "targets")
                u = _otcm_direction(b, xb, t)
            perturb = lambda e, idx: _bcast(e, xb.ndim) * u[idx]
        if attack_kwargs:
            raise TypeError(f"unexpected arguments for {name}: {sorted(attack_kwargs)}")

        def fools(e, idx):
            return b.probabilities(_clip(xb[idx] + perturb(e, idx), bnds)).argmax(axis=1) != y[idx]
    else:
        fn = _ATTACKS[name] if isinstance(attack, str) else attack

        def fools(e, idx):
            out = np.zeros(idx.size, dtype=bool)
            for val in np.unique(e):  # group inputs that share a budget
                sel = e == val
                r = fn(xb[idx[sel]], b, epsilon=float(val), labels=y[idx[sel]], bounds=bounds, **attack_kwargs)
                out[sel] = np.atleast_1d(r.success)
            return out

    m = (24 if one_step else 1) if n_scan is None else n_scan
    if not isinstance(m, (int, np.integer)) or isinstance(m, bool) or m < 1:
        raise ValueError(f"n_scan must be a positive int, got {n_scan!r}")
    all_idx = np.arange(n)
    result = np.full(n, np.inf)
    ok_lo = fools(np.full(n, lo), all_idx) if lo > 0 else (b.probabilities(_clip(xb, bnds)).argmax(axis=1) != y)
    result[ok_lo] = lo
    grid = lo + (hi - lo) * np.arange(1, m + 1) / m
    grid[-1] = hi
    first = np.full(n, -1)
    remaining = np.flatnonzero(~ok_lo)
    for gi, e in enumerate(grid):  # the first successful grid budget of each input
        if not remaining.size:
            break
        ok = fools(np.full(remaining.size, e), remaining)
        first[remaining[ok]] = gi
        remaining = remaining[~ok]
    active = np.flatnonzero(first >= 0)
    fa = first[active]
    lo_a = np.where(fa > 0, grid[np.maximum(fa - 1, 0)], lo)
    hi_a = grid[fa]
    while active.size and np.any(hi_a - lo_a > tol):
        mid = (lo_a + hi_a) / 2
        ok = fools(mid, active)
        hi_a = np.where(ok, mid, hi_a)
        lo_a = np.where(ok, lo_a, mid)
    result[active] = hi_a
    return float(result[0]) if single else result


_ATTACKS: dict[str, Callable] = {"ossa": ossa, "fgm": fgm, "otcm": otcm, "bim": bim, "iterative_ossa": iterative_ossa}
