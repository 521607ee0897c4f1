"""The least l2 perturbation that fools the model (paper Table 2, Figure 3): grid scan, then bisection."""

from __future__ import annotations

import warnings
from typing import Any, Callable

import numpy as np

from .._validation import check_int, check_real
from ._base import AttackResult, Prepared, clip, finish, per_input, predictions, prepare
from ._directions import ONE_STEP

__all__ = ["least_perturbation"]

#: Default number of grid budgets scanned before the bisection, for one-step and other attacks.
N_SCAN_ONE_STEP = 24
N_SCAN_OTHER = 1


def least_perturbation(x: Any, backend: Any = None, attack: str | Callable = "ossa", *, labels: Any = None,
                       lo: float = 0.0, hi: float = 6.0, tol: float = 1e-3,
                       bounds: tuple[float, float] | None = (0.0, 1.0), n_scan: int | None = None,
                       rng: None | int | np.random.Generator = None, direction: Any = None,
                       return_result: bool = False, **attack_kwargs):
    """Smallest l2 budget in ``[lo, hi]`` at which ``attack`` fools the model, by scan and bisection.

    Parameters
    ----------
    x : array-like of shape input_shape or (n, *input_shape)
    backend : Backend, callable, torch.nn.Module or ONNX model
    attack : {"ossa", "fgm", "otcm", "bim", "iterative_ossa"}, one of those functions, or a callable
        For the one-step attacks the direction (eigenvector, gradient) is computed once for the
        batch, or taken from ``direction``, and then only forward passes are made (see Notes for
        how many). Another callable is called as ``attack(x, backend, epsilon=e, labels=y,
        bounds=bounds, **attack_kwargs)`` with scalar ``e`` on the inputs still being searched,
        and must return an object with a boolean ``success`` array (an
        :class:`~fisher_ref.AttackResult`).
    labels : array-like of int, optional
        Default: the model's predictions at x.
    lo, hi : float
        Search interval (the paper uses [0, 6]).
    tol : float
        Stop when the bracket is narrower than ``tol``; the upper end is returned.
    bounds : (float, float) or None
        Input domain, as for the attacks.
    n_scan : int, optional
        Budgets ``lo + (hi - lo) i / n_scan``, ``i = 1 .. n_scan``, are tried in turn before the
        bisection, which then brackets each input's first successful one. Default 24 for the
        one-step attacks (a forward pass per budget) and 1 for the others (each try is a whole
        attack); ``n_scan=1`` is the plain binary search on ``[lo, hi]``.
    rng : None, int or numpy.random.Generator
        For the eigensolver (OSSA) or the targets (OTCM).
    direction : optional
        For a one-step attack, its direction at these inputs, as the attack's ``direction=``
        accepts it (e.g. the ``(w, V)`` of :func:`~fisher_ref.fisher_spectrum` for OSSA).
    return_result : bool
        Also return the adversarial examples at the budgets found, as an
        :class:`~fisher_ref.AttackResult` (``epsilon`` nan; ``eta`` zero where nothing was
        found or ``lo = 0`` already fools). No backend call for one-step attacks (the search
        evaluated them); another run of the attack per distinct budget for the others.
    **attack_kwargs
        Further options of the attack (``method``, ``operator`` for OSSA, ``targets`` for OTCM,
        ``n_steps``, ``step_size`` for the iterative ones, anything for a callable).

    Returns
    -------
    ndarray of shape (n,) (or a float for one input)
        The least successful budget found, ``inf`` where ``attack`` does not succeed at ``hi``, and
        ``lo`` where it already succeeds there.
    AttackResult
        Only with ``return_result=True``.

    Notes
    -----
    Success need not be monotone in epsilon: along a fixed direction, clipped to the bounds, an
    input can be misclassified at small budgets and classified correctly again at large ones
    (seen on a CIFAR-10 VGG: a third of the inputs OSSA fools at 0.5 are classified correctly at 6).
    A plain binary search on ``[lo, hi]`` tests ``hi`` first and reports such inputs as never
    fooled; the scan finds the first successful budget on its grid and bisects below it. The value
    returned always fools the model (it was evaluated); between two grid points success is still
    assumed monotone, so it may not be the least such value.

    Cost of a one-step attack over N inputs: one direction for the batch (OSSA: one batched
    Jacobian, or the matrix-free eigensolves, which also give p(x); FGM / OTCM: one batched loss
    gradient, after one forward pass for the labels when none are given), nothing for ``lo = 0``
    (the prediction at x is known from that gradient call; one forward pass at x when
    ``direction`` is given), then per budget tried one batched forward pass over the
    inputs still searched: one forward pass per input and budget for FGM and OTCM. OSSA's sign
    test (Algorithm 1, line 8) evaluates the loss at the unclipped ``x + e v``; where the sign is
    +1 and that point lies inside the bounds it is the adversarial example itself, so that
    forward pass is the success test too (one per input and budget: always so with
    ``bounds=None`` and a loss that rises along +v); elsewhere (the sign is -1, or clipping moves
    the point) a second forward pass, over those inputs only, predicts at the clipped or flipped
    point - at most two per input and budget, as many as Algorithm 1 needs there. The budgets
    tried per input are the grid points up to its first success (all ``n_scan`` where none
    fools) and ``ceil(log2((hi - lo) / (n_scan tol)))`` bisection steps.

    The order ``least_perturbation(attack, x, backend)`` of earlier releases still works and
    issues a FutureWarning.
    """
    x, backend, attack = _public_order(x, backend, attack)
    lo = check_real(lo, "lo", min_val=0)
    hi = check_real(hi, "hi", min_val=0)
    if not lo < hi:
        raise ValueError(f"lo and hi must satisfy 0 <= lo < hi, got lo = {lo}, hi = {hi}")
    tol = check_real(tol, "tol", min_val=0, include_boundaries="neither")
    prep = prepare(x, backend, labels, bounds)
    fools, perturb, one_step = _success_test(attack, prep, bounds, rng, direction, attack_kwargs)
    m = check_int((N_SCAN_ONE_STEP if one_step else N_SCAN_OTHER) if n_scan is None else n_scan, "n_scan", min_val=1)
    least, found = _search(fools, prep, lo, hi, tol, m)
    out = float(least[0]) if prep.single else least
    if not return_result:
        return out
    sel = np.flatnonzero(np.isfinite(least) & (least > 0))
    if perturb is None:  # one-step: the examples were evaluated at the budgets found
        eta = np.zeros_like(prep.x) if found.eta is None else found.eta
        pred = prep.probs.argmax(axis=1)  # where eta = 0 the example is x itself
        if sel.size:
            pred[sel] = found.pred[sel]
        return out, finish(AttackResult, prep, eta, np.nan, pred=pred)
    eta = np.zeros_like(prep.x)
    if sel.size:
        eta[sel] = perturb(least[sel], sel)
    return out, finish(AttackResult, prep, eta, np.nan)


def _public_order(x: Any, backend: Any, attack: Any) -> tuple[Any, Any, Any]:
    """``(x, backend, attack)``, accepting the earlier order ``(attack, x, backend)`` with a FutureWarning."""
    if isinstance(x, str) or (callable(x) and not hasattr(x, "__array__")):
        warnings.warn("least_perturbation(attack, x, backend) is the order of earlier releases; use "
                      "least_perturbation(x, backend, attack=...)", FutureWarning, stacklevel=3)
        return backend, attack, x
    if backend is None:
        raise TypeError("least_perturbation() missing the argument backend")
    return x, backend, attack


def _resolve(attack: Any) -> tuple[str | None, Callable]:
    """``(registry name or None, attack function)`` of a name, a library attack or another callable."""
    from . import _ATTACKS  # the public attack functions, by name

    if isinstance(attack, str):
        if attack not in _ATTACKS:
            raise ValueError(f"attack must be one of {sorted(_ATTACKS)} or a callable, got {attack!r}")
        return attack, _ATTACKS[attack]
    if not callable(attack):
        raise TypeError(f"attack must be a name or a callable, got {type(attack).__name__}")
    name = next((n for n, fn in _ATTACKS.items() if fn is attack), None)
    return name, attack


def _success_test(attack: Any, prep: Prepared, bounds: Any, rng: Any, direction: Any, options: dict):
    """``(fools, perturb, one_step)`` for the attack: ``fools(eps (m,), idx (m,)) -> (bool (m,), found)``
    and ``perturb(eps (m,), idx (m,)) -> eta (m, *input_shape)``, for the inputs ``idx`` at budgets
    ``eps``. ``found`` is ``(eta, predictions)`` at those budgets for a one-step attack (the search
    keeps them at the least budgets: ``return_result`` then needs no more backend calls), else None."""
    name, fn = _resolve(attack)
    if name in ONE_STEP:
        one = ONE_STEP[name]
        opts = dict(options, rng=rng)
        d = one.direction(prep, direction, opts)
        opts.pop("rng", None)
        if opts:
            raise TypeError(f"unexpected arguments for {name}: {sorted(opts)}")

        def fools(e, idx):
            u, known = one.unit(prep, d, e, idx)
            eta = per_input(e, prep.x.ndim) * u
            pred = predictions(prep.backend, clip(prep.x[idx] + eta, prep.bounds), known)
            return pred != prep.labels[idx], (eta, pred)
        return fools, None, True
    if direction is not None:
        raise TypeError(f"direction= applies to the one-step attacks {sorted(ONE_STEP)}, not to {attack!r}")

    def run(e, idx, field):
        out = None
        for val in np.unique(e):  # group inputs that share a budget
            sel = e == val
            r = fn(prep.x[idx[sel]], prep.backend, epsilon=float(val), labels=prep.labels[idx[sel]],
                   bounds=bounds, **options)
            got = _success_of(r, fn, int(sel.sum())) if field == "success" else _eta_of(r, fn, prep.x[idx[sel]].shape)
            if out is None:
                out = np.zeros((idx.size,) + got.shape[1:], dtype=got.dtype)
            out[sel] = got
        return out
    return (lambda e, idx: (run(e, idx, "success"), None)), (lambda e, idx: run(e, idx, "eta")), False


def _success_of(result: Any, fn: Callable, n: int) -> np.ndarray:
    """The boolean ``success`` of an attack's result, checked."""
    what = getattr(fn, "__name__", repr(fn))
    s = getattr(result, "success", None)
    if s is None:
        raise TypeError(f"the attack {what} returned {type(result).__name__}; least_perturbation needs an object "
                        "with a boolean `success` array (one per input), such as a fisher_ref AttackResult")
    s = np.atleast_1d(np.asarray(s))
    if s.dtype != bool or s.shape != (n,):
        raise TypeError(f"the attack {what} returned success of dtype {s.dtype} and shape {s.shape}; "
                        f"least_perturbation needs a boolean array of shape ({n},), one per input")
    return s


def _eta_of(result: Any, fn: Callable, shape: tuple) -> np.ndarray:
    """The perturbation ``eta`` of an attack's result (for ``return_result=True``), checked."""
    eta = getattr(result, "eta", None)
    if eta is None or np.shape(eta) != shape:
        what = getattr(fn, "__name__", repr(fn))
        raise TypeError(f"the attack {what} returned {type(result).__name__} without an `eta` of shape {shape}; "
                        "return_result=True needs the perturbations (a fisher_ref AttackResult has them)")
    return np.asarray(eta, dtype=np.float64)


class _Found:
    """The perturbations and predictions at each input's latest successful budget (one-step attacks)."""

    def __init__(self, prep: Prepared):
        self.prep = prep
        self.eta: np.ndarray | None = None
        self.pred: np.ndarray | None = None

    def fools(self, fools: Callable, e: np.ndarray, idx: np.ndarray) -> np.ndarray:
        ok, found = fools(e, idx)
        if found is not None and ok.any():
            if self.eta is None:
                self.eta = np.zeros_like(self.prep.x)
                self.pred = np.full(self.prep.x.shape[0], -1, dtype=np.int64)
            self.eta[idx[ok]], self.pred[idx[ok]] = found[0][ok], found[1][ok]
        return ok


def _search(fools: Callable, prep: Prepared, lo: float, hi: float, tol: float, m: int) -> tuple[np.ndarray, _Found]:
    """Each input's first successful budget on the grid, then bisection below it.

    Returns the least budgets and what was found there (:class:`_Found`). At ``lo = 0`` the test
    is the prediction at x itself (inside the bounds, so unclipped), known from p(x).
    """
    n = prep.x.shape[0]
    all_idx = np.arange(n)
    result = np.full(n, np.inf)
    found = _Found(prep)
    if lo > 0:
        ok_lo = found.fools(fools, np.full(n, lo), all_idx)
    else:
        ok_lo = prep.probs.argmax(axis=1) != prep.labels
    result[ok_lo] = lo
    grid = lo + (hi - lo) * np.arange(1, m + 1) / m
    grid[-1] = hi
    first = np.full(n, -1)
    remaining = np.flatnonzero(~ok_lo)
    for gi, e in enumerate(grid):  # the first successful grid budget of each input
        if not remaining.size:
            break
        ok = found.fools(fools, np.full(remaining.size, e), remaining)
        first[remaining[ok]] = gi
        remaining = remaining[~ok]
    active = np.flatnonzero(first >= 0)
    fa = first[active]
    lo_a = np.where(fa > 0, grid[np.maximum(fa - 1, 0)], lo)
    hi_a = grid[fa]
    while active.size and np.any(hi_a - lo_a > tol):
        mid = (lo_a + hi_a) / 2
        ok = found.fools(fools, mid, active)
        hi_a = np.where(ok, mid, hi_a)
        lo_a = np.where(ok, lo_a, mid)
    result[active] = hi_a
    return result, found
