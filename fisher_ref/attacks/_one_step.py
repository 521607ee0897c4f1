"""The one-step attacks: OSSA (paper Algorithm 1), FGM and OTCM, all batched over inputs."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .._validation import check_epsilon
from ._base import AttackResult, OSSAResult, finish, per_epsilon, prepare
from ._directions import ONE_STEP

__all__ = ["ossa", "fgm", "otcm"]


def _one_step(name: str, x: Any, backend: Any, epsilon: Any, labels: Any, bounds: Any, direction: Any,
              options: dict) -> AttackResult | list[AttackResult]:
    """The common body of the one-step attacks: prepare, one direction, one perturbation per epsilon.

    Backend calls: the direction (OSSA: the eigensolve, whose Jacobian also gives p(x); FGM and
    OTCM: one loss gradient, after one forward pass for the labels when none are given), then per
    epsilon one forward pass at the adversarial inputs - for OSSA first the sign test at the
    unclipped ``x + eps v``, whose forward pass is the prediction itself where the sign is +1 and
    the point lies inside the bounds, so that only the other inputs are evaluated again.
    """
    attack = ONE_STEP[name]
    prep = prepare(x, backend, labels, bounds)
    check_epsilon(epsilon)
    d = attack.direction(prep, direction, options)
    idx = np.arange(prep.x.shape[0])

    def make(e: float) -> AttackResult:
        u, pred = attack.unit(prep, d, np.full(idx.size, e), idx)
        return finish(attack.result, prep, e * u, e, pred=pred, **attack.extras(d, u))

    return per_epsilon(make, epsilon)


def ossa(x: Any, backend: Any, *, epsilon: float | Sequence[float], labels: Any = None,
         bounds: tuple[float, float] | None = (0.0, 1.0), method: str = "auto", operator: str = "auto",
         rng: None | int | np.random.Generator = None, direction: Any = None) -> OSSAResult | list[OSSAResult]:
    """One-step spectral attack (paper Algorithm 1): perturb along the top Fisher eigenvector.

    Parameters
    ----------
    x : array-like of shape input_shape or (n, *input_shape)
    backend : Backend, callable, torch.nn.Module or ONNX model
        A backend, ``fn(x) -> (probs, grads)``, or a model to wrap (see :func:`~fisher_ref.as_backend`).
    epsilon : float or sequence of float
        l2 size of the perturbation: ``||eta||_2 = epsilon``. A sequence gives one result each.
    labels : array-like of int, optional
        Labels whose loss the attack increases; default the model's predictions at x.
    bounds : (float, float) or None
        Input domain; the result is clipped to it (``x`` must lie inside). None: no clipping.
    method, operator : str
        How the top eigenpair is computed (see :func:`~fisher_ref.fisher_spectrum`).
    rng : None, int or numpy.random.Generator
        For the iterative / sampled eigensolvers.
    direction : tuple, optional
        The top eigenpairs already computed at these inputs: ``(eigenvalue, v)`` from
        :func:`~fisher_ref.ossa_direction`, or ``(w, V)`` from :func:`~fisher_ref.fisher_spectrum`
        (its top pair is used). Then no eigensolve is done; ``method``, ``operator``, ``rng`` are unused.

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
    at the unclipped ``x + eta`` as in the algorithm. fisher_ref starts from the eigenvector whose
    largest-magnitude entry is positive, so the result is deterministic. Where G is zero (a
    saturated prediction) there is no direction: eta is zero there and a
    :class:`~fisher_ref.DegenerateSpectrumWarning` is issued.

    References
    ----------
    Zhao et al., AAAI 2019, eqs. (2)-(5) and Algorithm 1.
    """
    return _one_step("ossa", x, backend, epsilon, labels, bounds, direction,
                     {"method": method, "operator": operator, "rng": rng})


def fgm(x: Any, backend: Any, *, epsilon: float | Sequence[float], labels: Any = None,
        bounds: tuple[float, float] | None = (0.0, 1.0), direction: Any = None) -> AttackResult | list[AttackResult]:
    """Fast gradient method in l2: ``eta = epsilon * grad J / ||grad J||``, J = -log p_label.

    Parameters and returns as :func:`ossa`; ``direction`` is what :func:`~fisher_ref.fgm_direction`
    returns (the unit loss gradients at these inputs). The gradient costs one reverse pass for the
    batch on backends that declare ``loss_gradient``.

    References
    ----------
    Kurakin, Goodfellow and Bengio (2016b), the l2 variant of FGSM (Goodfellow et al. 2014).
    """
    return _one_step("fgm", x, backend, epsilon, labels, bounds, direction, {})


def otcm(x: Any, backend: Any, *, epsilon: float | Sequence[float], labels: Any = None,
         targets: Any = None, bounds: tuple[float, float] | None = (0.0, 1.0),
         rng: None | int | np.random.Generator = None, direction: Any = None) -> AttackResult | list[AttackResult]:
    """One-step target class method: descend ``-log p_target`` with l2 step ``epsilon``.

    ``eta = -epsilon * grad(-log p_t) / ||grad(-log p_t)||`` for a target ``t`` drawn uniformly
    from the incorrect classes (``rng``) unless ``targets`` is given. ``success`` is the
    untargeted criterion (prediction differs from the label), as the paper's fooling rates.
    ``direction`` is what :func:`~fisher_ref.otcm_direction` returns (then ``targets`` and ``rng``
    are unused).

    References
    ----------
    Kurakin, Goodfellow and Bengio (2016b).
    """
    return _one_step("otcm", x, backend, epsilon, labels, bounds, direction, {"targets": targets, "rng": rng})
