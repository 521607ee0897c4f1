"""Attack directions as first-class values, and the registry of one-step attacks.

A one-step attack is a unit direction per input and a rule that turns it into a perturbation of
l2 size epsilon. Computing the direction is the expensive part (an eigensolve, a gradient); trying
a budget is a forward pass. So the direction is a value of its own: computed once by
:func:`ossa_direction`, :func:`fgm_direction` or :func:`otcm_direction` (or taken from a spectrum
already computed), then passed as ``direction=`` to the attack and to
:func:`~fisher_ref.least_perturbation`, which reuse it at every budget.

The sign rule of OSSA (Algorithm 1, line 8) lives in :func:`ossa_signs` and nowhere else.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

import numpy as np

from .._spectrum import fisher_spectrum
from .._validation import as_float_array, check_labels, check_rng, shape_str
from ._base import AttackResult, DegenerateSpectrumWarning, OSSAResult, Prepared, loss, per_input, prepare, unit

__all__ = ["ossa_direction", "fgm_direction", "otcm_direction", "ONE_STEP"]

#: A given direction must have unit rows (or zero rows) to this relative tolerance.
UNIT_RTOL = 1e-6


# ---------------------------------------------------------------------------------------------
# public: compute a direction


def ossa_direction(x: Any, backend: Any, *, method: str = "auto", operator: str = "auto",
                   rng: None | int | np.random.Generator = None) -> tuple[Any, np.ndarray]:
    """The top Fisher eigenpair at each input: OSSA's direction before its sign (Algorithm 1, line 7).

    Parameters
    ----------
    x : array-like of shape input_shape or (n, *input_shape)
    backend : Backend, callable, torch.nn.Module or ONNX model (see :func:`~fisher_ref.as_backend`)
    method, operator : str
        How the top eigenpair is computed (see :func:`~fisher_ref.fisher_spectrum`).
    rng : None, int or numpy.random.Generator
        For the iterative / sampled eigensolvers.

    Returns
    -------
    eigenvalue : ndarray of shape (n,) (a float for one input)
        lambda_1 of G_x.
    direction : ndarray of shape (n, *input_shape) (input_shape for one input)
        The unit top eigenvector v_1, sign fixed so that its largest-magnitude entry is positive;
        zero where G_x = 0 (a saturated prediction; a :class:`DegenerateSpectrumWarning` says where).
        Pass the pair as ``direction=`` to :func:`~fisher_ref.ossa` or
        :func:`~fisher_ref.least_perturbation` (which apply the sign rule per budget).
    """
    from .._backend import as_backend

    b = as_backend(backend)
    xb, single = b.as_batch(x)
    lam, v = _top_pair(fisher_spectrum(xb, b, k=1, method=method, operator=operator, rng=rng))
    return (float(lam[0]), v[0]) if single else (lam, v)


def fgm_direction(x: Any, backend: Any, *, labels: Any = None) -> np.ndarray:
    """FGM's direction: the unit gradient of the loss ``-log p_label`` at each input.

    One reverse pass for the batch on backends that declare ``loss_gradient``. ``labels`` default
    to the model's predictions. Returns an array shaped like ``x``; zero rows (with a
    :class:`DegenerateSpectrumWarning`) where the gradient vanishes.
    """
    prep = prepare(x, backend, labels, None)
    u = _fgm(prep)
    return u[0] if prep.single else u


def otcm_direction(x: Any, backend: Any, *, targets: Any = None, labels: Any = None,
                   rng: None | int | np.random.Generator = None) -> np.ndarray:
    """OTCM's direction: the unit descent direction of ``-log p_target`` at each input.

    ``targets`` default to classes drawn uniformly from the incorrect ones (``rng``); they must
    differ from ``labels`` (default: the model's predictions). Returns an array shaped like ``x``.
    """
    prep = prepare(x, backend, labels, None)
    u = _otcm(prep, _targets(prep, targets, rng))
    return u[0] if prep.single else u


# ---------------------------------------------------------------------------------------------
# the sign rule (Algorithm 1, line 8)


class SignTest(NamedTuple):
    """What Algorithm 1's sign test computed: the signs, the point it evaluated and p there."""

    signs: np.ndarray  # (m,) +1 or -1
    moved: np.ndarray  # (m, *input_shape) the unclipped x + eps v
    probs: np.ndarray  # (m, C) p(x + eps v)


def ossa_signs(prep: Prepared, v: np.ndarray, eps: np.ndarray, idx: np.ndarray) -> SignTest:
    """+1 where ``J(x + eps v) > J(x)``, else -1 (Algorithm 1, line 8), for the inputs ``idx``.

    ``J = -log p_label``, compared at the unclipped ``x + eps v`` as in the algorithm; one forward
    pass for the inputs ``idx`` (``J(x)`` comes from ``prep.probs``, which the eigensolve's
    Jacobian has already given). Only the ``+v`` side is evaluated (v is the eigenvector whose
    largest-magnitude entry is positive): where the loss rises in both directions ``+v`` is kept,
    where it rises in neither ``-v`` is taken, so the result is deterministic. Returns the signs
    with the point and the probabilities of that forward pass (:func:`_ossa_unit` reuses them as
    the prediction where the point needs no clipping).
    """
    b, y = prep.backend, prep.labels[idx]
    moved = prep.x[idx] + per_input(eps, prep.x.ndim) * v[idx]
    p = b.probabilities(moved)
    flip = loss(p, y) <= loss(prep.probs[idx], y)
    return SignTest(np.where(flip, -1.0, 1.0), moved, p)


# ---------------------------------------------------------------------------------------------
# the registry: name -> how to compute, check and apply a direction


@dataclass(frozen=True)
class OneStepAttack:
    """How a one-step attack turns its direction into perturbations.

    ``compute(prep, options)`` returns the direction (popping the options it uses from the dict);
    ``accept(given, prep)`` validates a direction passed by the caller; ``unit(prep, d, eps, idx)``
    gives the signed unit perturbation directions ``u`` of shape ``(len(idx), *input_shape)`` at
    budgets ``eps``, with the predictions at ``clip(x + eps u)`` where they are already known
    (-1 elsewhere); the attack's result is ``result`` with the fields ``extras(d, u)`` beside the
    common ones.
    """

    name: str
    compute: Callable[[Prepared, dict], Any]
    accept: Callable[[Any, Prepared], Any]
    unit: Callable[[Prepared, Any, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]
    result: type = AttackResult
    extras: Callable[[Any, np.ndarray], dict] = lambda d, u: {}

    def direction(self, prep: Prepared, given: Any, options: dict) -> Any:
        """The caller's direction, checked, or one computed at ``prep.x``."""
        return self.compute(prep, options) if given is None else self.accept(given, prep)


def _ossa_compute(prep: Prepared, options: dict) -> tuple[np.ndarray, np.ndarray]:
    w, V, info = fisher_spectrum(prep.x, prep.backend, k=1, method=options.pop("method", "auto"),
                                 operator=options.pop("operator", "auto"), rng=options.pop("rng", None),
                                 return_info=True)
    prep.learn(info.extra["probabilities"])  # p(x) from the eigensolve's own forward pass: the sign test's J(x)
    return _top_pair((w, V))


def _ossa_accept(given: Any, prep: Prepared) -> tuple[np.ndarray, np.ndarray]:
    """``(eigenvalue, v)`` from :func:`ossa_direction`, or ``(w, V)`` from ``fisher_spectrum``."""
    if not (isinstance(given, tuple) and len(given) == 2):
        raise TypeError("direction for OSSA must be the pair (eigenvalue, direction) that ossa_direction "
                        f"returns, or the pair (w, V) that fisher_spectrum returns; got {type(given).__name__}")
    w = as_float_array(given[0], "direction[0] (the eigenvalues)")
    V = as_float_array(given[1], "direction[1] (the eigenvectors)")
    n, shape = prep.x.shape[0], prep.x.shape[1:]
    lead = () if prep.single else (n,)
    if V.shape[len(lead) + 1:] == shape and V.ndim == len(lead) + 1 + len(shape) and w.ndim == len(lead) + 1:
        w, V = w[..., 0], V[(slice(None),) * len(lead) + (0,)]  # a spectrum: its top pair
    if V.shape != lead + shape or w.shape != lead:
        raise ValueError(f"direction for OSSA has eigenvalues of shape {shape_str(w.shape)} and vectors of shape "
                         f"{shape_str(V.shape)}; expected {shape_str(lead)} and {shape_str(lead + shape)} (one "
                         "eigenpair per input), or a spectrum (w, V) of these inputs")
    w, V = w.reshape(n), V.reshape(prep.x.shape)
    if np.any(w < 0):
        raise ValueError(f"direction for OSSA has a negative eigenvalue {w.min():.3g}; G is positive semi-definite")
    _check_unit_rows(V, "direction for OSSA")
    return _top_pair((w[:, None], V[:, None]))


def _ossa_unit(prep: Prepared, d: tuple, eps: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Signed OSSA directions at budgets ``eps``; where the sign is +1 and ``x + eps v`` lies
    inside the bounds, the sign test's forward pass was at the adversarial input itself (the
    same bits: clipping changes nothing), so its prediction is the result's."""
    v = d[1]
    test = ossa_signs(prep, v, eps, idx)
    u = per_input(test.signs, v.ndim) * v[idx]
    reuse = test.signs > 0
    if prep.bounds is not None:
        lo, hi = prep.bounds
        axes = tuple(range(1, v.ndim))
        reuse &= np.all(test.moved >= lo, axis=axes) & np.all(test.moved <= hi, axis=axes)
    pred = np.full(idx.size, -1, dtype=np.int64)
    pred[reuse] = test.probs[reuse].argmax(axis=1)
    return u, pred


def _fgm(prep: Prepared) -> np.ndarray:
    p, g = prep.backend.loss_gradient(prep.x, prep.labels)
    prep.learn(p)
    return unit(g, "the loss gradient")


def _otcm(prep: Prepared, targets: np.ndarray) -> np.ndarray:
    p, g = prep.backend.loss_gradient(prep.x, targets)
    prep.learn(p)
    return -unit(g, "the target-class gradient")


def _targets(prep: Prepared, targets: Any, rng: Any) -> np.ndarray:
    """OTCM's targets: given (checked to differ from the labels), or drawn from the incorrect classes."""
    y, C = prep.labels, prep.backend.n_classes
    if targets is None:
        t = check_rng(rng).integers(0, C - 1, size=y.shape[0])
        return t + (t >= y)  # uniform over the incorrect classes
    t = check_labels(targets, y.shape[0], C, "targets")
    if np.any(t == y):
        raise ValueError("targets must differ from labels (OTCM aims at an incorrect class)")
    return t


def _given_unit(name: str) -> Callable[[Any, Prepared], np.ndarray]:
    def accept(given: Any, prep: Prepared) -> np.ndarray:
        u = as_float_array(given, f"direction for {name}")
        lead = () if prep.single else (prep.x.shape[0],)
        if u.shape != lead + prep.x.shape[1:]:
            raise ValueError(f"direction for {name} has shape {shape_str(u.shape)}, expected "
                             f"{shape_str(lead + prep.x.shape[1:])} (a unit direction per input)")
        u = u.reshape(prep.x.shape)
        _check_unit_rows(u, f"direction for {name}")
        return u
    return accept


def _fixed_unit(prep: Prepared, u: np.ndarray, eps: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return u[idx], np.full(idx.size, -1, dtype=np.int64)


def _otcm_compute(prep: Prepared, options: dict) -> np.ndarray:
    return _otcm(prep, _targets(prep, options.pop("targets", None), options.pop("rng", None)))


ONE_STEP: dict[str, OneStepAttack] = {
    "ossa": OneStepAttack("ossa", _ossa_compute, _ossa_accept, _ossa_unit, OSSAResult,
                          lambda d, u: {"eigenvalue": d[0], "eigenvector": u}),
    "fgm": OneStepAttack("fgm", lambda prep, options: _fgm(prep), _given_unit("FGM"), _fixed_unit),
    "otcm": OneStepAttack("otcm", _otcm_compute, _given_unit("OTCM"), _fixed_unit),
}


# ---------------------------------------------------------------------------------------------
# helpers


def _top_pair(spectrum: tuple) -> tuple[np.ndarray, np.ndarray]:
    """``(lambda_1 (n,), v_1 (n, *shape))`` of a batched spectrum ``(w (n, k), V (n, k, *shape))``;
    v_1 set to zero (with a warning) where lambda_1 = 0."""
    w, V = spectrum
    lam, v = np.asarray(w)[:, 0], np.asarray(V)[:, 0]
    zero = lam == 0
    if np.any(zero):
        warnings.warn(f"the Fisher matrix is zero at inputs {np.flatnonzero(zero).tolist()} (saturated "
                      "prediction): OSSA has no direction there and leaves them unchanged",
                      DegenerateSpectrumWarning, stacklevel=5)
        v = v.copy()
        v[zero] = 0.0
    return lam, v


def _check_unit_rows(u: np.ndarray, name: str) -> None:
    nrm = np.linalg.norm(u.reshape(u.shape[0], -1), axis=1)
    bad = (np.abs(nrm - 1) > UNIT_RTOL) & (nrm != 0)
    if np.any(bad):
        j = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{name} must have unit l2 norm per input (or be zero), but input {j} has norm "
                         f"{nrm[j]:.6g}; pass what the matching *_direction function returns")
