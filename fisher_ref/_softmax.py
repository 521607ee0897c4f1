"""The softmax algebra of the input Fisher information, in float64 NumPy (one home for it).

For scores ``s`` (logits) of a softmax classifier, ``p = softmax(s)``, and the score Jacobian
``J = ds/dx``:

* the score-gradient of ``-log p_c`` is ``p - e_c``, so the class gradient is
  ``g_c = J^T (p - e_c)`` (paper eq. 4 needs all of them, or their span);
* ``G = J^T (diag p - p p^T) J``, so a Fisher-vector product is ``J^T w`` with
  ``w = (diag p - p p^T) (J v)`` (eq. 6, matrix-free).

Each of the three pieces keeps full relative accuracy where a naive formula loses it: a
dominant class's ``log p_c`` is tiny, not 0 (``log(sum exp)`` as ``log1p`` of the non-maximal
terms); ``p_c - 1`` of a saturated class is ``expm1(log p_c)``, not a difference that rounds to
0; ``(diag p - p p^T) u`` subtracts the top class's entry of ``u`` first, which leaves the result
unchanged (``sum p = 1``) and removes the cancellation ``u_top - p.u`` for a nearly one-hot p.

The NumPy reference models and the ONNX Runtime backend use these functions; the torch backend
keeps a twin in torch (on the device), pinned to this module by ``tests/test_softmax.py``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["log_softmax", "softmax_seeds", "fisher_weights"]


def log_softmax(s: np.ndarray) -> np.ndarray:
    """``log softmax(s)`` along the last axis, in float64.

    ``log sum_j exp(s_j - s_top)`` is computed as ``log1p`` of the non-maximal terms, so that
    ``log p`` of a dominant class keeps its relative accuracy (it is tiny, not rounded to 0).
    """
    s = np.asarray(s, dtype=np.float64)
    top = s.argmax(axis=-1)[..., None]
    z = s - np.take_along_axis(s, top, axis=-1)
    e = np.exp(z)
    np.put_along_axis(e, top, 0.0, axis=-1)
    return z - np.log1p(e.sum(axis=-1, keepdims=True))


def softmax_seeds(logp: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """The score-gradients ``p - e_c`` of ``-log p_c``, shape ``(n, m, C)``.

    Parameters
    ----------
    logp : ndarray of shape (n, C)
        Log-probabilities (from :func:`log_softmax`).
    classes : ndarray of int of shape (m,) or (n, m)
        The classes ``c``: the same m classes for every input, or m per input.

    Notes
    -----
    The diagonal entry ``p_c - 1`` is ``expm1(log p_c)``: exact when ``p_c`` is close to 1 (a
    saturated prediction), where ``p_c - 1`` would round to 0.
    """
    logp = np.asarray(logp, dtype=np.float64)
    n = logp.shape[0]
    cls = np.asarray(classes, dtype=np.int64)
    cls = np.broadcast_to(cls, (n, cls.size)) if cls.ndim == 1 else cls
    seeds = np.repeat(np.exp(logp)[:, None, :], cls.shape[1], axis=1)
    rows = np.arange(n)[:, None]
    seeds[rows, np.arange(cls.shape[1])[None, :], cls] = np.expm1(logp[rows, cls])
    return seeds


def fisher_weights(logp: np.ndarray, u: np.ndarray) -> np.ndarray:
    """``w = (diag p - p p^T) u`` for each vector of ``u``, in float64.

    Parameters
    ----------
    logp : ndarray of shape (n, C)
        Log-probabilities of the n inputs.
    u : ndarray of shape (n, k, C)
        k score-space vectors per input (``J v`` for the k tangents ``v``).

    Returns
    -------
    ndarray of shape (n, k, C)
        ``p * (u - p.u)``, computed as ``p * (du - p.du)`` with ``du = u - u_top``: exact since
        ``sum p = 1``, and free of the cancellation ``u_top - p.u`` when p is nearly one-hot.
    """
    logp = np.asarray(logp, dtype=np.float64)
    u = np.asarray(u, dtype=np.float64)
    p = np.exp(logp)[:, None, :]
    top = logp.argmax(axis=-1)[:, None, None]
    du = u - np.take_along_axis(u, top, axis=-1)
    return p * (du - (p * du).sum(axis=-1, keepdims=True))
