"""Top eigenpairs of the input Fisher information: Lanczos, power iteration, Gram, dense.

All methods return eigenvalues in descending order with unit eigenvectors as columns,
``V[:, i]`` going with ``w[i]``, as :func:`scipy.sparse.linalg.eigsh` (reordered). Since G is
positive semi-definite with rank(G) <= C - 1 for a softmax classifier, eigenvalues past the rank
are returned as exact zeros with orthonormal null-space vectors, never as solver noise; tiny
negative values from rounding are clipped to zero and significant negative ones raise.
"""

from __future__ import annotations

import contextlib
import functools
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse.linalg as spla
from scipy.sparse.linalg import LinearOperator

from ._backend import as_backend, public_order
from ._operators import (
    FisherOperator,
    MatrixFreeFisherOperator,
    SampledFisherOperator,
    _WeightedGradientOperator,
    default_n_samples,
    rank_bounds,
)
from ._validation import as_float_array, check_k, check_method, check_rng, shape_str

__all__ = ["top_eigenpairs", "fisher_spectrum", "SpectrumInfo", "NoConvergence", "METHODS", "OPERATORS"]

METHODS = ("auto", "gram", "dense", "lanczos", "power", "block-lanczos")
OPERATORS = ("auto", "exact", "sampled", "matrix-free")

#: Eigenvalues below ``ZERO_RTOL_FACTOR * max(d, r) * eps * lambda_max`` are rounding: set to 0.
ZERO_RTOL_FACTOR = 4.0
#: Negative Ritz values below ``-NEG_RTOL * lambda_max`` mean the operator is not PSD: raise.
NEG_RTOL = 1e-6
#: Largest d for which "auto" forms a dense matrix when nothing better applies.
DENSE_AUTO_MAX_D = 600
#: Unit roundoff of float64, the default arithmetic.
EPS64 = float(np.finfo(np.float64).eps)


class NoConvergence(RuntimeError):
    """An iterative eigensolver did not reach ``tol`` within ``maxiter`` iterations.

    Attributes
    ----------
    eigenvalues, eigenvectors : ndarray
        The last iterates (partial results), in the layout of :func:`top_eigenpairs`.
    n_iter : int
    """

    def __init__(self, msg: str, eigenvalues: np.ndarray, eigenvectors: np.ndarray, n_iter: int):
        super().__init__(msg)
        self.eigenvalues, self.eigenvectors, self.n_iter = eigenvalues, eigenvectors, n_iter


@dataclass
class SpectrumInfo:
    """What a spectrum computation did (returned with ``return_info=True``).

    Attributes
    ----------
    method : str
        The eigensolver used ("gram", "dense", "lanczos", "power", "block-lanczos").
    operator : str
        How G was applied: "exact" (all class gradients), "sampled" (alias Monte Carlo),
        "matrix-free" (backend Fisher-vector products) or "given" (an operator passed in).
    reason : str
        Why ``method="auto"`` chose what it chose (empty otherwise).
    n_iter : int or ndarray
        Iterations of the iterative solver (per input for :func:`fisher_spectrum`); 0 for direct ones.
    n_products : int or ndarray
        Number of vectors G was applied to (per input); 0 for direct methods.
    rank_bound : int or ndarray
        Bound on rank(G) used to decide which eigenvalues are exactly zero.
    extra : dict
        Further facts; from :func:`fisher_spectrum`: ``"probabilities"``, p(y | x) of shape (n, C)
        at the inputs (computed on the way: the attacks use it instead of another forward pass),
        ``"precision"``, ``"pad_null_space"`` and, for the sampled operator, ``"n_samples"``.
    """

    method: str
    operator: str = "given"
    reason: str = ""
    n_iter: Any = 0
    n_products: Any = 0
    rank_bound: Any = None
    extra: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# top_eigenpairs


def top_eigenpairs(A: Any, k: int = 1, *, method: str = "auto", tol: float | None = None,
                   maxiter: int | None = None, rng: None | int | np.random.Generator = None,
                   pad_null_space: bool = True, return_info: bool = False):
    """Top-k eigenpairs of a symmetric positive semi-definite Fisher matrix or operator.

    Parameters
    ----------
    A : FisherOperator, SampledFisherOperator, MatrixFreeFisherOperator, LinearOperator or ndarray
        The (d, d) matrix. ``"gram"`` needs one of the first two (operators built from class
        gradients); the others accept any symmetric PSD operator or array.
    k : int
        Number of eigenpairs, ``1 <= k <= d``.
    method : {"auto", "gram", "dense", "lanczos", "power", "block-lanczos"}
        * ``"gram"``: exact. With ``F = diag(sqrt p) [g_1 .. g_C]^T`` (C x d), ``G = F^T F`` and the
          nonzero eigenpairs come from the C x C matrix ``F F^T = U M U^T``: eigenvalues ``M``,
          eigenvectors ``F^T u / sqrt(mu)``. Cost O(C^2 d).
        * ``"dense"``: ``numpy.linalg.eigh`` of the d x d matrix (forms it).
        * ``"lanczos"``: ARPACK's implicitly restarted Lanczos (:func:`scipy.sparse.linalg.eigsh`,
          ``which="LA"``) on ``A @ v``.
        * ``"power"``: power iteration (paper eq. 7), block (subspace) iteration with
          Rayleigh-Ritz for k > 1, stopped when every residual
          ``||A v_i - w_i v_i|| <= tol * w_1``.
        * ``"block-lanczos"``: block Lanczos with full reorthogonalisation on blocks of k + 2
          vectors (one batched backend call per block), Rayleigh-Ritz after each block, stopped
          on the same residual test as power iteration.
        * ``"auto"``: ``"gram"`` for operators built from class gradients, ``"dense"`` for arrays
          with d <= 600, ``"lanczos"`` otherwise.
    tol : float, optional
        Solver tolerance: relative eigenvalue accuracy for Lanczos (default 0, machine precision);
        relative residual for power iteration (default 1e-8) and block Lanczos (default 1e-10).
    maxiter : int, optional
        Iteration cap (Lanczos: ARPACK restarts, default ``max(1000, 10 d)``; power: 10000;
        block Lanczos: block steps, default ``max(10, d)``).
    rng : None, int or numpy.random.Generator
        Start vectors of the iterative methods.
    pad_null_space : bool
        Past rank(G) the eigenvalues are exact zeros; with True (default) their columns of ``V``
        are orthonormal vectors of the null space, with False zero vectors (see
        :func:`fisher_spectrum`: the padding costs memory of the size of ``V``).
    return_info : bool
        Also return a :class:`SpectrumInfo`.

    Returns
    -------
    w : ndarray of shape (k,)
        Eigenvalues in descending order, float64; exactly 0 past rank(G).
    V : ndarray of shape (d, k)
        Orthonormal eigenvectors, ``V[:, i]`` for ``w[i]``. Each is fixed in sign so that its
        entry of largest magnitude is positive (eigenvectors are defined up to sign; the attack
        chooses its own sign, see :func:`ossa`).
    info : SpectrumInfo
        Only with ``return_info=True``.

    Raises
    ------
    ValueError
        If ``k`` is out of range, ``method`` unknown or inapplicable, A is not square or has a
        significantly negative eigenvalue (not PSD).
    scipy.sparse.linalg.ArpackNoConvergence
        Lanczos did not converge (carries partial results).
    NoConvergence
        Power iteration or block Lanczos did not converge (carries partial results).

    Notes
    -----
    Eigenvalues past ``rank_bound`` (C - 1 for a softmax classifier with all p_i > 0) are not
    asked of ARPACK, whose answers there would be noise of size eps * ||G||; they are returned as
    0 with orthonormal vectors spanning part of the null space (a fixed, seeded choice).
    """
    method = check_method(method, METHODS)
    op, dense = _as_operator(A)
    d = op.shape[0]
    k = check_k(k, d)
    rank_bound = int(getattr(op, "rank_bound", d))
    reason = ""
    if method == "auto":
        if isinstance(op, _WeightedGradientOperator):
            method, reason = "gram", "operator built from class gradients: exact Gram method"
        elif d <= DENSE_AUTO_MAX_D:
            method, reason = "dense", f"d = {d} <= {DENSE_AUTO_MAX_D}: dense eigh"
        else:
            method, reason = "lanczos", "matrix-free operator: ARPACK Lanczos"
    if method == "gram" and not isinstance(op, _WeightedGradientOperator):
        raise ValueError("method='gram' needs a FisherOperator or SampledFisherOperator (an operator built "
                         f"from class gradients), got {type(A).__name__}")
    info = SpectrumInfo(method=method, reason=reason, rank_bound=rank_bound)
    k_eff = min(k, rank_bound)
    if k_eff == 0:
        w, V = np.zeros(0), np.zeros((d, 0))
    elif method == "gram":
        w, Vr = _gram(op.factor(), k_eff)
        V = Vr.T
    elif method == "dense" or (method == "lanczos" and k_eff >= d - 1):
        if method != "dense":
            info.extra["fallback"] = f"ARPACK needs k < d - 1 (d = {d}, k = {k_eff}): used dense eigh"
        w, V = _dense(dense if dense is not None else op @ np.eye(d), k_eff)
    elif method == "lanczos":
        with _backend_driven(op):
            w, V, info.n_iter, info.n_products = _lanczos(op, k_eff, tol, maxiter, rng)
    elif method == "power":
        with _backend_driven(op):
            w, V, info.n_iter, info.n_products = _power(op, k_eff, tol, maxiter, rng)
    else:
        with _backend_driven(op):
            w, V, info.n_iter, info.n_products = _block_lanczos(op, k_eff, tol, maxiter, rng, rank_bound)
    w, Vr = _finalize(w, V.T, k, d, max(rank_bound, 1), pad=_check_pad(pad_null_space))
    V = np.ascontiguousarray(Vr.T)
    return (w, V, info) if return_info else (w, V)


def _check_pad(pad_null_space: Any) -> bool:
    if not isinstance(pad_null_space, (bool, np.bool_)):
        raise TypeError(f"pad_null_space must be True or False, got {type(pad_null_space).__name__}")
    return bool(pad_null_space)


def _backend_driven(op) -> contextlib.AbstractContextManager:
    """While an eigensolver alternates its own BLAS calls with a backend's products (torch, ONNX
    Runtime: their own thread pools), NumPy's and SciPy's OpenBLAS threads are limited to one: their
    spinning workers otherwise compete with the backend's for the cores (measured: a ResNet's
    Fisher-vector products ran 2.2x slower under ARPACK on 2 cores)."""
    if not isinstance(op, MatrixFreeFisherOperator):
        return contextlib.nullcontext()
    return one_blas_thread()


#: Below this many multiply-adds per matrix (C^2 d of the Gram method), stacked products run on one
#: BLAS thread: waking OpenBLAS's workers for each small matrix of a stack costs more than it saves.
SMALL_GEMM = 2**24


def one_blas_thread() -> contextlib.AbstractContextManager:
    """Limit NumPy's and SciPy's BLAS to one thread meanwhile (threadpoolctl's controller, made once:
    about 10 microseconds a use). Needs threadpoolctl (the torch and onnx extras install it);
    without it nothing is limited."""
    ctl = _blas_controller()
    return contextlib.nullcontext() if ctl is None else ctl.limit(limits=1, user_api="blas")


@functools.lru_cache(maxsize=1)
def _blas_controller():
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:  # pragma: no cover - depends on the environment
        return None
    return ThreadpoolController()


def _as_operator(A: Any) -> tuple[LinearOperator, np.ndarray | None]:
    if isinstance(A, LinearOperator):
        if A.shape[0] != A.shape[1]:
            raise ValueError(f"A must be square, got shape {shape_str(A.shape)}")
        return A, None
    if hasattr(A, "toarray") and not isinstance(A, np.ndarray):  # scipy.sparse
        A = A.toarray()
    a = as_float_array(A, "A")
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise ValueError(f"A must be a square (d, d) matrix or LinearOperator, got shape {shape_str(a.shape)}")
    if not np.allclose(a, a.T, rtol=1e-10, atol=1e-12 * max(1.0, float(np.abs(a).max()))):
        raise ValueError("A must be symmetric: the input Fisher matrix is")
    return spla.aslinearoperator(a), a


def _gram(F: np.ndarray, k: int, dtype: Any = np.float64) -> tuple[np.ndarray, np.ndarray]:
    """Top-k eigenpairs of F^T F from the r x r Gram matrix F F^T, for F of shape (..., r, d).

    Returns the eigenvalues (..., k) and the unit eigenvectors as rows (..., k, d): with
    ``F F^T = U M U^T`` the eigenvector of ``mu_i > 0`` is ``F^T u_i / ||F^T u_i||`` (zero where
    ``mu_i <= 0``). The two O(r^2 d) products are computed in ``dtype`` (float64, or float32 for
    a float32 backend's gradients, see :func:`fisher_spectrum`'s ``precision``); the r x r
    eigendecomposition and the normalisation are always float64.
    """
    Fc = F if F.dtype == dtype else F.astype(dtype)
    M = (Fc @ np.swapaxes(Fc, -1, -2)).astype(np.float64, copy=False)
    mu, U = np.linalg.eigh((M + np.swapaxes(M, -1, -2)) / 2)
    mu, U = mu[..., ::-1][..., :k], U[..., ::-1][..., :k]
    Ut = np.ascontiguousarray(np.swapaxes(U, -1, -2), dtype=dtype)  # contiguous: numpy's stacked matmul is BLAS then
    V = (Ut @ Fc).astype(np.float64, copy=False)
    norms = np.sqrt(np.einsum("...kd,...kd->...k", V, V))
    V /= np.where(norms > 0, norms, 1.0)[..., None]
    V[mu <= 0] = 0.0
    return mu, V


def _dense(a: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(a, dtype=np.float64)
    w, V = np.linalg.eigh((a + a.T) / 2)
    return w[::-1][:k], V[:, ::-1][:, :k]


def _lanczos(op, k, tol, maxiter, rng):
    d = op.shape[0]
    rng = check_rng(rng)
    counter = _CountingOperator(op)
    w, V = spla.eigsh(counter, k=k, which="LA", tol=0.0 if tol is None else float(tol),
                      maxiter=maxiter if maxiter is not None else max(1000, 10 * d),
                      v0=rng.standard_normal(d))
    order = np.argsort(w)[::-1]
    return w[order], V[:, order], counter.n_calls, counter.n_products


def _power(op, k, tol, maxiter, rng):
    """Power iteration (eq. 7); block iteration with Rayleigh-Ritz for k > 1."""
    d = op.shape[0]
    tol = 1e-8 if tol is None else float(tol)
    maxiter = 10000 if maxiter is None else int(maxiter)
    rng = check_rng(rng)
    Q, _ = np.linalg.qr(rng.standard_normal((d, k)))
    n_products = 0
    w = np.zeros(k)
    for it in range(1, maxiter + 1):
        Z = np.asarray(op @ Q)
        n_products += k
        # Rayleigh-Ritz on span(Q): for k = 1 this is eta <- G eta / ||G eta|| with w = eta^T G eta
        H = Q.T @ Z
        theta, S = np.linalg.eigh((H + H.T) / 2)
        theta, S = theta[::-1], S[:, ::-1]
        Q, Z = Q @ S, Z @ S
        w = theta
        resid = np.linalg.norm(Z - Q * theta, axis=0)
        scale = max(float(theta[0]), 0.0)
        if scale == 0.0 or np.all(resid <= tol * scale):
            return w, Q, it, n_products
        Q, _ = np.linalg.qr(Z)
    raise NoConvergence(f"power iteration did not reach tol = {tol:g} in maxiter = {maxiter} iterations "
                        f"(largest relative residual {float(np.max(resid) / scale):.3g})", w, Q, maxiter)


def _block_lanczos(op, k, tol, maxiter, rng, rank_bound):
    """Block Lanczos with full reorthogonalisation and Rayleigh-Ritz after every block.

    The Krylov space ``[X, A X, A^2 X, ...]`` of a random d x b block (b = k + 2 guard vectors, at
    most rank(G)) grows one block product ``A @ Z`` at a time, which a backend evaluates as one
    batched JVP + VJP; it stops when every Ritz pair has ``||A v - theta v|| <= tol * theta_1`` or
    the space is exhausted (then the Ritz values are exact: rank(G) <= C - 1 is small).
    """
    d = op.shape[0]
    rng = check_rng(rng)
    tol = 1e-10 if tol is None else float(tol)
    maxiter = max(10, d) if maxiter is None else int(maxiter)
    b = max(k, min(k + 2, rank_bound, d))
    Q, _ = np.linalg.qr(rng.standard_normal((d, b)))
    basis, images = [], []
    n_products = 0
    for it in range(1, maxiter + 1):
        AQ = np.asarray(op @ Q)
        n_products += Q.shape[1]
        basis.append(Q)
        images.append(AQ)
        B, AB = np.hstack(basis), np.hstack(images)
        H = B.T @ AB
        theta, Y = np.linalg.eigh((H + H.T) / 2)
        theta, Y = theta[::-1][:k], Y[:, ::-1][:, :k]
        V = B @ Y
        resid = np.linalg.norm(AB @ Y - V * theta, axis=0)
        scale = max(float(theta[0]), 0.0)
        if scale == 0.0 or np.all(resid <= tol * scale):
            return theta, V, it, n_products
        # next block: the part of A Q orthogonal to the space so far (twice: Kahan's rule)
        Z = AQ
        for _ in range(2):
            Z = Z - B @ (B.T @ Z)
        Zq, R = np.linalg.qr(Z)
        keep = np.abs(np.diag(R)) > d * np.finfo(float).eps * max(scale, np.abs(AQ).max())
        room = d - B.shape[1]
        if not np.any(keep) or room <= 0:
            return theta, V, it, n_products  # Krylov space exhausted: Ritz pairs are exact
        Q = Zq[:, np.flatnonzero(keep)[:room]]
        for _ in range(2):  # QR of a nearly dependent block leaks back into span(B): project again
            Q, _ = np.linalg.qr(Q - B @ (B.T @ Q))
    raise NoConvergence(f"block Lanczos did not reach tol = {tol:g} in maxiter = {maxiter} block steps "
                        f"(largest relative residual {float(np.max(resid) / scale):.3g})", theta, V, maxiter)


class _CountingOperator(LinearOperator):
    def __init__(self, op):
        self.op, self.n_calls, self.n_products = op, 0, 0
        super().__init__(dtype=np.dtype(np.float64), shape=op.shape)

    def _matmat(self, V):
        self.n_calls += 1
        self.n_products += V.shape[1]
        return np.asarray(self.op @ V)

    def _matvec(self, v):
        return self._matmat(np.asarray(v).reshape(-1, 1)).reshape(-1)

    def _adjoint(self):
        return self


def _clip_rounding(w: np.ndarray, d: int, r: int, eps: float = EPS64) -> np.ndarray:
    """Refuse a non-PSD spectrum, set rounding-size eigenvalues to exact 0 (``w`` of shape (n, m)).

    ``eps`` is the unit roundoff of the arithmetic that produced ``w``: eigenvalues within
    ``ZERO_RTOL_FACTOR * max(d, r) * eps * lambda_max`` of zero are rounding (negative ones too).
    """
    w = np.array(w, dtype=np.float64)
    if w.size == 0:
        return w
    top = w.max(axis=-1, keepdims=True)
    if np.any(top < 0):
        raise ValueError(f"the operator has only negative eigenvalues (largest {float(top.min()):.3g}): it is not "
                         "a Fisher matrix (positive semi-definite)")
    band = ZERO_RTOL_FACTOR * max(d, r) * eps
    bad = w < -max(NEG_RTOL, band) * top - np.finfo(float).tiny
    if np.any(bad):
        j = np.flatnonzero(bad.any(axis=-1))[0]
        raise ValueError(f"the operator has a significantly negative eigenvalue {float(w[j].min()):.3g} "
                         f"(largest {float(top[j, 0]):.3g}): it is not positive semi-definite")
    w[np.abs(w) <= band * top] = 0.0
    return np.maximum(w, 0.0)


def _finalize(w: np.ndarray, V: np.ndarray, k: int, d: int, r: int, pad: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Clip rounding, pad with exact zeros past the rank, fix signs (one solver result, any order;
    ``V`` holds the eigenvectors as rows (m, d)); returns ``(k,)`` and rows ``(k, d)``."""
    w = np.asarray(w, dtype=np.float64)
    order = np.argsort(-w, kind="stable")
    W, Vs = _finalize_batch(w[order][None], np.asarray(V, dtype=np.float64)[order][None],
                            np.array([w.size]), k, d, r, pad=pad)
    return W[0], Vs[0]


def _finalize_batch(mu: np.ndarray, V: np.ndarray, ranks: np.ndarray, k: int, d: int, r: int | None = None, *,
                    eps: float = EPS64, pad: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Clip rounding, pad with exact zeros past the rank, fix signs, for a stack of results:
    ``mu`` (n, m) descending, ``V`` (n, m, d) with the eigenvectors as rows.

    Eigenvalues past each input's rank bound are dropped, and so are the vectors of eigenvalues
    that round to zero (solver noise): with ``pad``, any orthonormal basis of part of the null
    space replaces them (:func:`_null_completion`, written in place into the result), otherwise
    their rows stay zero and are never written (``numpy.zeros`` pages that are not touched take no
    memory). ``r`` scales the rounding threshold (default the largest rank), ``eps`` is the unit
    roundoff of the arithmetic behind ``mu``. Returns ``(n, k)`` and ``(n, k, d)``.
    """
    n, m = mu.shape
    w = np.array(mu, dtype=np.float64)
    w[np.arange(m)[None, :] >= ranks[:, None]] = 0.0
    w = _clip_rounding(w, d, int(ranks.max(initial=1)) if r is None else r, eps)
    W = np.zeros((n, k))
    Vs = np.zeros((n, k, d))
    n_keep = np.minimum((w > 0).sum(axis=1), k)  # mu is descending: kept eigenvalues are a prefix
    lo, hi = int(n_keep.min()), int(n_keep.max())  # n >= 1
    kept = np.arange(hi)[None, :] < n_keep[:, None]
    W[:, :hi] = np.where(kept, w[:, :hi], 0.0)
    Vs[:, :hi] = V[:, :hi]
    if lo < hi:
        Vs[:, :hi][~kept] = 0.0  # vectors of eigenvalues that rounded to zero: replaced below
    _fix_signs(Vs[:, :hi])
    if not pad or lo == k:
        return W, Vs
    if lo == hi:  # one count for all (the usual case): in place, through views
        _fix_signs(_null_completion(Vs[:, :hi], d, k - hi, out=Vs[:, hi:]))
    elif hi + k - lo <= d:  # zero rows leave the completion exact: one batched call for all
        N = _fix_signs(_null_completion(Vs[:, :hi], d, k - lo))
        for nk in np.unique(n_keep):
            idx = np.flatnonzero(n_keep == nk)
            Vs[idx, nk:] = N[idx, :k - nk]
    else:  # a small d: each count on its own
        for nk in np.unique(n_keep):
            idx = np.flatnonzero(n_keep == nk)
            Vs[idx, nk:] = _fix_signs(_null_completion(Vs[idx, :nk], d, k - nk))
    return W, Vs


#: Element count of the temporaries of the blocked in-place steps (null completion, sign fix).
_BLOCK_ELEMS = 2**20
#: Seed blocks up to this many elements are kept dense in a cache (larger ones are built a block of
#: columns at a time from their O(d) description).
_SEED_CACHE_ELEMS = 2**20


def _seed_layout(d: int, m: int, attempt: int) -> tuple[np.ndarray, np.ndarray]:
    """The seeded orthonormal (m, d) block that starts every null-space completion, described in O(d):
    coordinate c belongs to row ``rows[c]`` with value ``vals[c]`` (all other entries are 0).

    A seeded permutation of the d coordinates is dealt out to the m rows in turn, each entry gets
    a random sign, and each row is normalised: disjoint supports, so the rows are orthonormal by
    construction (no QR of a tall matrix).
    """
    rng = np.random.default_rng([0x5EED, d, m, attempt])
    rows = np.empty(d, dtype=np.int64)
    rows[rng.permutation(d)] = np.arange(d) % m
    vals = rng.choice(np.array([-1.0, 1.0]), size=d) / np.sqrt(np.bincount(rows, minlength=m)[rows])
    return rows, vals


@functools.lru_cache(maxsize=32)
def _cached_seed_block(d: int, m: int, attempt: int) -> np.ndarray:
    R = _build_seed_columns(_seed_layout(d, m, attempt), m, slice(0, d))
    R.setflags(write=False)
    return R


def _build_seed_columns(layout: tuple[np.ndarray, np.ndarray], m: int, blk: slice) -> np.ndarray:
    rows, vals = layout
    cols = np.arange(blk.start, blk.stop)
    R = np.zeros((m, cols.size))
    R[rows[cols], cols - blk.start] = vals[cols]
    return R


def _seed_columns(d: int, m: int, attempt: int, blk: slice, layout: tuple | None = None) -> np.ndarray:
    """Columns ``blk`` of the seed block, shape (m, len(blk)): from the cache for small blocks, else
    built from ``layout`` (:func:`_seed_layout`, computed here when not given)."""
    if d * m <= _SEED_CACHE_ELEMS:
        return _cached_seed_block(d, m, attempt)[:, blk]
    return _build_seed_columns(layout if layout is not None else _seed_layout(d, m, attempt), m, blk)


def _null_seed_block(d: int, m: int, attempt: int = 0) -> np.ndarray:
    """The seed block of :func:`_seed_layout` as a dense (m, d) array (read-only when cached)."""
    return _seed_columns(d, m, attempt, slice(0, d))


def _null_completion(V: np.ndarray, d: int, m: int, out: np.ndarray | None = None) -> np.ndarray:
    """m orthonormal rows orthogonal to the rows of each ``V[j]`` (a fixed choice).

    ``V`` has shape (n, r, d): orthonormal rows to their rounding (a Gram lift's rows of tiny
    eigenvalues are so only to about ``eps sqrt(lambda_1 / lambda)``), zero rows allowed. Returns
    ``out`` of shape (n, m, d) (allocated if not given; it may be a view into a larger array,
    written in place). With the seeded orthonormal block R (:func:`_seed_layout`), ``A = R V^T``
    and ``G = V V^T``, the projection ``W = R - A G^-1 V`` is orthogonal to the rows of V exactly
    (whatever their rounding) and has Gram matrix ``S = I - A G^-1 A^T``, so ``S^(-1/2) W`` is the
    completion: products and r x r, m x m factorisations only, O(n d (m + r) r), computed in blocks
    of columns, so that besides the result only O(d) and blocks of at most ``_BLOCK_ELEMS``
    elements are allocated. Where ``S`` is nearly singular - R almost inside span(V) - the next
    seeded block is tried for those inputs.
    """
    n, r = V.shape[0], V.shape[1]
    if out is None:
        out = np.empty((n, m, d))
    if m == 0:
        return out
    if r + m > d:
        raise ValueError(f"cannot complete {r} vectors with {m} more orthonormal ones in dimension {d}")
    todo = np.arange(n)
    for attempt in range(8):
        layout = None if d * m <= _SEED_CACHE_ELEMS else _seed_layout(d, m, attempt)
        whole = todo.size == n
        Vt = V if whole else V[todo]
        step = max(1, _BLOCK_ELEMS // max(1, todo.size * max(m, r)))
        blocks = [slice(c, min(c + step, d)) for c in range(0, d, step)]
        seeds = [_seed_columns(d, m, attempt, blk, layout) for blk in blocks] if len(blocks) == 1 else None
        A = np.zeros((todo.size, m, r))
        G = np.zeros((todo.size, r, r))
        for i, blk in enumerate(blocks):
            Vb = np.ascontiguousarray(np.swapaxes(Vt[:, :, blk], -1, -2))  # (t, block, r)
            A += (seeds[0] if seeds else _seed_columns(d, m, attempt, blk, layout)) @ Vb
            G += Vt[:, :, blk] @ Vb
        G[:, np.arange(r), np.arange(r)] += np.diagonal(G, axis1=1, axis2=2) == 0  # zero rows of V
        AG = np.swapaxes(np.linalg.solve(G, np.swapaxes(A, -1, -2)), -1, -2)  # A G^-1, (t, m, r)
        T, good = _inv_sqrt(np.eye(m) - AG @ np.ascontiguousarray(np.swapaxes(A, -1, -2)))
        dest = out if whole else np.empty((todo.size, m, d))
        for i, blk in enumerate(blocks):
            Wb = AG @ Vt[:, :, blk]  # (t, m, block); in place from here (fresh pages cost page faults)
            np.subtract(seeds[0] if seeds else _seed_columns(d, m, attempt, blk, layout), Wb, out=Wb)
            np.matmul(T, Wb, out=dest[:, :, blk])
        if not whole or not good.all():
            out[todo[good]] = dest[good]
        todo = todo[~good]
        if not todo.size:
            return out
    raise np.linalg.LinAlgError("null-space completion failed for 8 seeded blocks")  # pragma: no cover


def _inv_sqrt(S: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``S^(-1/2)`` of a stack of symmetric m x m matrices, and where S is well conditioned (smallest
    eigenvalue above 1e-6: the rows being completed are unit rows, below that they lie too close
    to span(V))."""
    lam, E = np.linalg.eigh((S + np.swapaxes(S, -1, -2)) / 2)
    good = lam.min(axis=-1) > 1e-6
    T = (E / np.sqrt(np.where(lam > 0, lam, 1.0))[..., None, :]) @ np.ascontiguousarray(np.swapaxes(E, -1, -2))
    return T, good


def _fix_signs(V: np.ndarray) -> np.ndarray:
    """Flip each row of ``V`` (..., k, d) in place so that its largest-magnitude entry is positive;
    returns ``V`` (blocked over the leading rows for large arrays)."""
    if V.size == 0:
        return V
    if V.size > _BLOCK_ELEMS and V.ndim > 2:
        for j in range(V.shape[0]):
            _fix_signs(V[j])
        return V
    if V.size > _BLOCK_ELEMS and V.ndim == 2 and V.shape[0] > 1:
        step = max(1, _BLOCK_ELEMS // V.shape[1])
        for c in range(0, V.shape[0], step):
            _fix_signs(V[c:c + step][None])
        return V
    idx = np.argmax(np.abs(V), axis=-1)[..., None]
    s = np.sign(np.take_along_axis(V, idx, axis=-1))
    s[s == 0] = 1.0
    V *= s
    return V


# ---------------------------------------------------------------------------------------------
# fisher_spectrum

#: Cost model constants (in units of one reverse pass): a Fisher-vector product is one JVP and
#: one VJP; ARPACK needs about ncv = 2k + 1 products per restart and a few restarts.
_FVP_COST = 3.0
#: Memory cap for the (n, C, d) float64 class-gradient block of the Gram method.
GRAM_MEMORY_BYTES = 512 * 2**20


def choose_method(n_classes: int, d: int, k: int, *, has_fvp: bool) -> tuple[str, str, str]:
    """The cost model behind ``method="auto"``: returns ``(operator, method, reason)``.

    The exact Gram method needs all C class gradients, C reverse passes batched into one
    Jacobian; a Krylov method on the matrix-free product needs about ``4 k + 20`` Fisher-vector
    products (one JVP and one VJP each, about 3 reverse passes) whatever C is. The cheaper wins.
    """
    k_eff = max(1, min(k, n_classes - 1))
    gram_cost = float(n_classes)
    krylov_cost = _FVP_COST * (4 * k_eff + 20)
    if not has_fvp or gram_cost <= krylov_cost:
        why = ("backend has no Fisher-vector product" if not has_fvp
               else f"C = {n_classes} class gradients cost less than ~{krylov_cost:.0f} pass-equivalents of Lanczos")
        return "exact", "gram", f"exact Gram method: {why}"
    return ("matrix-free", "lanczos",
            f"matrix-free Lanczos: ~{krylov_cost:.0f} pass-equivalents of Fisher-vector products "
            f"cost less than C = {n_classes} class gradients")


def matrix_free_tol(backend: Any) -> float:
    """ARPACK's default tolerance on a backend's Fisher-vector products: ``8 eps`` of the backend's
    precision when it computes in less than float64 (the products carry that rounding, so a smaller
    Ritz residual buys nothing: measured on a float32 ResNet, the top-20 eigenvalues agree to 1e-7
    with tol 0 or 1e-6, with 30% fewer products), else 0 (float64 machine precision)."""
    dt = np.dtype(getattr(backend, "dtype", np.float64))
    return 0.0 if dt.itemsize >= 8 else 8.0 * float(np.finfo(dt).eps)


def fisher_spectrum(x: Any, backend: Any, k: int = 20, *, method: str = "auto", operator: str = "auto",
                    n_samples: int | None = None, tol: float | None = None, maxiter: int | None = None,
                    rng: None | int | np.random.Generator = None, precision: str = "float64",
                    pad_null_space: bool = True, return_info: bool = False):
    """Top-k eigenpairs of the input Fisher information at each input of a batch.

    Parameters
    ----------
    x : array-like of shape input_shape or (n, *input_shape)
    backend : Backend, callable, torch.nn.Module or ONNX model
        A backend, ``fn(x) -> (probs (C,), grads (C, *input_shape))``, or a model to wrap (see
        :func:`~fisher_ref.as_backend`).
    k : int
        Number of eigenpairs (default 20, as the paper's detector). For a C-class softmax model
        at most C - 1 are nonzero; the rest are returned as exact zeros.
    method : {"auto", "gram", "dense", "lanczos", "power", "block-lanczos"}
        Eigensolver (see :func:`top_eigenpairs`). ``"auto"`` chooses by a cost model in C, d, k
        and the backend's capabilities (:func:`choose_method`), and says why in ``info.reason``.
    operator : {"auto", "exact", "sampled", "matrix-free"}
        How G is applied: from all C class gradients (``"exact"``), from ``n_samples`` classes
        drawn with the alias method (``"sampled"``, the paper's Monte-Carlo approximation), or
        from the backend's Fisher-vector products (``"matrix-free"``).
    n_samples : int, optional
        Draws for ``operator="sampled"``; default about C / 5 as the paper.
    tol, maxiter : optional
        Passed to the eigensolver. For matrix-free Lanczos ``tol`` defaults to
        :func:`matrix_free_tol` (8 eps of the backend's precision for a float32 backend).
    rng : None, int or numpy.random.Generator
        Randomness of the draws and of the iterative solvers' start vectors.
    precision : {"float64", "float32"}
        Arithmetic of the exact Gram method's two O(C^2 d) products (``F F^T`` and the lift
        ``F^T U``; the C x C eigendecomposition is float64 either way). ``"float64"`` (default) is
        the reference. ``"float32"`` halves their time and memory and is exact to float32
        precision for a float32 backend, whose gradients carry that rounding already: the
        eigenvalues agree with the float64 ones to about ``sqrt(d) eps32 lambda_1``, and
        eigenvalues below ``4 d eps32 lambda_1`` (which float32 cannot resolve) are returned as
        0; use float64 where small eigenvalues matter (their logarithms, as detection features).
        The other methods compute in float64: asking them for float32 is a ValueError.
    pad_null_space : bool
        Eigenvalues past rank(G) <= C - 1 are exact zeros. With True (default) their vectors
        ``V[j, i]`` are orthonormal vectors of the null space (a fixed, seeded choice), computed in
        place in the result: the padding costs ``n (k - rank) d`` float64 of memory and about as
        many operations times the rank. With False they are zero vectors that are never written
        (``k`` far above the rank on a large input then costs memory only for the nonzero pairs).
    return_info : bool
        Also return a :class:`SpectrumInfo` (with per-input iteration counts).

    Returns
    -------
    w : ndarray of shape (n, k) (or (k,) for one input)
        Eigenvalues per input, descending.
    V : ndarray of shape (n, k, *input_shape) (or (k, *input_shape) for one input)
        ``V[j, i]`` is the unit eigenvector of ``w[j, i]``, shaped like the input (note: the
        eigenvector index comes before the input axes here, unlike ``top_eigenpairs``'s columns).
    info : SpectrumInfo
        Only with ``return_info=True``.

    Notes
    -----
    The exact Gram method makes one class-gradient call per chunk of inputs (under 512 MB of
    gradients) and batches everything else over the chunk: the C x C eigendecompositions, the
    lifts, the rank bounds, the null-space padding and the sign convention.

    The order ``fisher_spectrum(backend, x)`` of earlier releases still works (a backend is never
    an array) and issues a FutureWarning.
    """
    x, backend = public_order(x, backend, "fisher_spectrum")
    b = as_backend(backend)
    xb, single = b.as_batch(x)
    W, Vs, info, _ = _batch_spectra(b, xb, k, method=method, operator=operator, n_samples=n_samples, tol=tol,
                                   maxiter=maxiter, rng=rng, precision=precision, pad_null_space=pad_null_space)
    Vs = Vs.reshape((xb.shape[0], W.shape[1]) + b.input_shape)
    if single:
        W, Vs = W[0], Vs[0]
    return (W, Vs, info) if return_info else (W, Vs)


PRECISIONS = ("float64", "float32")


def _batch_spectra(b: Any, xb: np.ndarray, k: Any, *, method: str = "auto", operator: str = "auto",
                  n_samples: int | None = None, tol: float | None = None, maxiter: int | None = None,
                  rng: Any = None, precision: str = "float64", pad_null_space: bool = True):
    """:func:`fisher_spectrum` on a batch ``xb`` already validated by the backend ``b``.

    Returns ``(w (n, k), V (n, k, d), info, probs (n, C))``: ``probs`` are the class probabilities
    at ``xb`` that the eigensolve computed on its way (also in ``info.extra["probabilities"]``).
    """
    method = check_method(method, METHODS)
    operator = check_method(operator, OPERATORS, "operator")
    precision = check_method(precision, PRECISIONS, "precision")
    pad = _check_pad(pad_null_space)
    rng = None if rng is None else check_rng(rng)  # None: each solver draws its own (no entropy call here)
    n, d = xb.shape[0], math.prod(b.input_shape)
    k = check_k(k, d)
    if b.n_classes is None:
        b.probabilities(xb[:1])
    operator, method, reason = _resolve_method(b, d, k, operator, method)
    if precision == "float32" and method != "gram":
        raise ValueError(f"precision='float32' is an option of the Gram method, not of method={method!r}")
    if operator == "exact" and method == "gram":
        W, Vs, ranks, P = _gram_spectra(b, xb, k, np.dtype(precision), pad)
        n_iter = n_prod = np.zeros(n, dtype=np.int64)
    else:
        W, Vs, n_iter, n_prod, ranks, P = _operator_spectra(b, xb, k, operator, method, n_samples, tol, maxiter,
                                                            rng, pad)
    info = SpectrumInfo(method=method, operator=operator, reason=reason, n_iter=n_iter, n_products=n_prod,
                        rank_bound=ranks, extra={"n_samples": (n_samples or default_n_samples(b.n_classes))
                                                  if operator == "sampled" else None,
                                                  "precision": precision, "pad_null_space": pad, "probabilities": P})
    return W, Vs, info, P


def _resolve_method(b: Any, d: int, k: int, operator: str, method: str) -> tuple[str, str, str]:
    """``(operator, method, reason)``: fill in "auto" from the cost model, refuse impossible pairs."""
    reason = ""
    if operator == "auto" or method == "auto":
        has_fvp = b.supports("fisher_vector_product")
        op_auto, meth_auto, reason = choose_method(b.n_classes, d, k, has_fvp=has_fvp)
        if operator == "auto" and method in ("auto", "gram"):
            operator = op_auto if method == "auto" else "exact"
        elif operator == "auto":
            operator = "exact" if method == "dense" or not has_fvp else op_auto
        if method == "auto":
            method = meth_auto if operator == op_auto else ("gram" if operator in ("exact", "sampled") else "lanczos")
            if operator != op_auto:
                reason = f"{method} for operator={operator!r}"
    if operator == "matrix-free" and method == "gram":
        raise ValueError("method='gram' needs class gradients: use operator='exact' or 'sampled', not 'matrix-free'")
    return operator, method, reason


def _gram_spectra(b: Any, xb: np.ndarray, k: int, dtype: np.dtype, pad: bool):
    """Batched exact Gram method: one class-gradient call per chunk of inputs, everything else
    batched over the chunk. Returns ``(w (n, k), V (n, k, d), rank bounds (n,), probs (n, C))``."""
    n, C, d = xb.shape[0], b.n_classes, math.prod(b.input_shape)
    chunk = max(1, int(GRAM_MEMORY_BYTES // (8 * C * d)))
    parts = []
    for s in range(0, n, chunk):
        p, g = b.class_gradients(xb[s:s + chunk])
        g = g.reshape(p.shape[0], C, d)
        with one_blas_thread() if C * C * d < SMALL_GEMM else contextlib.nullcontext():
            mu, V = _gram(np.sqrt(p)[:, :, None] * g, min(k, C, d), dtype)
            r = rank_bounds(p, g)
            del g
            w, Vj = _finalize_batch(mu, V, r, k, d, eps=float(np.finfo(dtype).eps), pad=pad)
        parts.append((w, Vj, r, p))
    if len(parts) == 1:
        return parts[0]
    return tuple(np.concatenate(a) for a in zip(*parts))


def _operator_spectra(b: Any, xb: np.ndarray, k: int, operator: str, method: str, n_samples, tol, maxiter, rng,
                      pad: bool):
    """One operator and one :func:`top_eigenpairs` per input (exact, sampled or matrix-free)."""
    n, d = xb.shape[0], math.prod(b.input_shape)
    W, Vs = np.zeros((n, k)), np.zeros((n, k, d))
    P = np.empty((n, b.n_classes))
    n_iter, n_prod, ranks = (np.zeros(n, dtype=np.int64) for _ in range(3))
    if tol is None and operator == "matrix-free" and method == "lanczos":
        tol = matrix_free_tol(b)
    for j in range(n):
        if operator == "exact":
            op = FisherOperator.from_backend(xb[j], b)
        elif operator == "sampled":
            op = SampledFisherOperator.from_backend(xb[j], b, n_samples, rng=rng)
        else:
            op = MatrixFreeFisherOperator(xb[j], b)
        w, V, inf = top_eigenpairs(op, k, method=method, tol=tol, maxiter=maxiter, rng=rng,
                                   pad_null_space=pad, return_info=True)
        W[j], Vs[j], P[j] = w, V.T, op.probs
        n_iter[j], n_prod[j], ranks[j] = inf.n_iter, inf.n_products, inf.rank_bound
    return W, Vs, n_iter, n_prod, ranks, P
