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
    _rank_bound,
    default_n_samples,
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
                   return_info: bool = False):
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
        w, V = _gram(op.factor(), k_eff)
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
    w, V = _finalize(w, V, k, d, max(rank_bound, 1))
    return (w, V, info) if return_info else (w, V)


def _backend_driven(op) -> contextlib.AbstractContextManager:
    """While an eigensolver alternates its own BLAS calls with a backend's products (torch, ONNX
    Runtime: their own thread pools), NumPy's and SciPy's OpenBLAS threads are limited to one: their
    spinning workers otherwise compete with the backend's for the cores (measured: a ResNet's
    Fisher-vector products ran 2.2x slower under ARPACK on 2 cores). Needs threadpoolctl (the
    torch and onnx extras install it); without it nothing is limited."""
    if not isinstance(op, MatrixFreeFisherOperator):
        return contextlib.nullcontext()
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - depends on the environment
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


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


def _gram(F: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k eigenpairs of F^T F from the r x r Gram matrix F F^T (F may be a stack (n, r, d))."""
    M = F @ np.swapaxes(F, -1, -2)
    mu, U = np.linalg.eigh((M + np.swapaxes(M, -1, -2)) / 2)
    mu, U = mu[..., ::-1][..., :k], U[..., ::-1][..., :k]
    pos = mu > 0
    V = (np.swapaxes(F, -1, -2) @ U) / np.sqrt(np.where(pos, mu, 1.0))[..., None, :]
    V = np.where(pos[..., None, :], V, 0.0)
    # re-normalise (the lift is exact in exact arithmetic; this removes rounding drift)
    norms = np.linalg.norm(V, axis=-2, keepdims=True)
    return mu, V / np.where(norms > 0, norms, 1.0)


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


def _clip_rounding(w: np.ndarray, d: int, r: int) -> np.ndarray:
    """Refuse a non-PSD spectrum, set rounding-size eigenvalues to exact 0 (``w`` of shape (n, m))."""
    w = np.array(w, dtype=np.float64)
    if w.size == 0:
        return w
    top = w.max(axis=-1, keepdims=True)
    if np.any(top < 0):
        raise ValueError(f"the operator has only negative eigenvalues (largest {float(top.min()):.3g}): it is not "
                         "a Fisher matrix (positive semi-definite)")
    bad = w < -NEG_RTOL * top - np.finfo(float).tiny
    if np.any(bad):
        j = np.flatnonzero(bad.any(axis=-1))[0]
        raise ValueError(f"the operator has a significantly negative eigenvalue {float(w[j].min()):.3g} "
                         f"(largest {float(top[j, 0]):.3g}): it is not positive semi-definite")
    w[np.abs(w) <= ZERO_RTOL_FACTOR * max(d, r) * np.finfo(np.float64).eps * top] = 0.0
    return np.maximum(w, 0.0)


def _finalize(w: np.ndarray, V: np.ndarray, k: int, d: int, r: int) -> tuple[np.ndarray, np.ndarray]:
    """Clip rounding, pad with exact zeros past the rank, fix signs (one solver result, any order)."""
    w = np.asarray(w, dtype=np.float64)
    order = np.argsort(-w, kind="stable")
    W, Vs = _finalize_batch(w[order][None], np.asarray(V, dtype=np.float64)[:, order][None],
                            np.array([w.size]), k, d, r)
    return W[0], Vs[0]


def _finalize_batch(mu: np.ndarray, V: np.ndarray, ranks: np.ndarray, k: int, d: int,
                    r: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Clip rounding, pad with exact zeros past the rank, fix signs, for a stack of results:
    ``mu`` (n, m) descending, ``V`` (n, d, m).

    Eigenvalues past each input's rank bound are dropped, and so are the vectors of eigenvalues
    that round to zero (solver noise): any orthonormal basis of part of the null space replaces
    them, built for all inputs with the same number of kept eigenpairs in one batched step.
    ``r`` scales the rounding threshold (default the largest rank). Returns ``(n, k)`` and
    ``(n, d, k)``.
    """
    n, m = mu.shape
    w = mu.copy()
    w[np.arange(m)[None, :] >= ranks[:, None]] = 0.0
    w = _clip_rounding(w, d, int(ranks.max(initial=1)) if r is None else r)
    W = np.zeros((n, k))
    Vs = np.zeros((n, d, k))
    n_keep = np.minimum((w > 0).sum(axis=1), k)  # mu is descending: kept eigenvalues are a prefix
    for nk in np.unique(n_keep):
        idx = np.flatnonzero(n_keep == nk)
        W[idx, :nk] = w[idx, :nk]
        Vs[idx, :, :nk] = V[idx, :, :nk]
        if nk < k:
            Vs[idx, :, nk:] = _null_completion(V[idx, :, :nk], d, k - nk)
    return W, _fix_signs(Vs)


@functools.lru_cache(maxsize=32)
def _null_seed_block(d: int, m: int, attempt: int = 0) -> np.ndarray:
    """A fixed, seeded orthonormal (d, m) block, the start of every null-space completion."""
    Q, _ = np.linalg.qr(np.random.default_rng([0x5EED, d, attempt]).standard_normal((d, m)))
    Q.setflags(write=False)
    return Q


def _null_completion(V: np.ndarray, d: int, m: int) -> np.ndarray:
    """m orthonormal vectors orthogonal to the orthonormal columns of each ``V[j]`` (a fixed choice).

    ``V`` has shape (n, d, r); returns (n, d, m). A seeded block R is projected off span(V) and
    orthonormalised by the m x m Gram matrix (Cholesky QR), twice (Kahan's rule): only matrix
    products and m x m factorisations, so a batch costs O(n d m (r + m)) with no tall QR per input.
    Where the projected block is (nearly) rank deficient - R almost inside span(V) - the next
    seeded block is tried for those inputs.
    """
    n, r = V.shape[0], V.shape[-1]
    if m == 0:
        return np.zeros((n, d, 0))
    if r + m > d:
        raise ValueError(f"cannot complete {r} vectors with {m} more orthonormal ones in dimension {d}")
    out = np.empty((n, d, m))
    todo = np.arange(n)
    for attempt in range(8):
        Vt = V[todo]
        R = np.broadcast_to(_null_seed_block(d, m, attempt), (todo.size, d, m))
        good = np.ones(todo.size, dtype=bool)
        for _ in range(2):
            if r:
                R = R - Vt @ (np.swapaxes(Vt, -1, -2) @ R)
            S = np.swapaxes(R, -1, -2) @ R
            # R (R^T R)^(-1/2) by the m x m eigendecomposition: orthonormal, span unchanged
            lam, E = np.linalg.eigh((S + np.swapaxes(S, -1, -2)) / 2)
            good &= lam.min(axis=-1) > 1e-6  # R has unit columns: below this, too close to span(V)
            lam = np.where(lam > 0, lam, 1.0)
            R = R @ (E / np.sqrt(lam)[..., None, :]) @ np.swapaxes(E, -1, -2)
        out[todo[good]] = R[good]
        todo = todo[~good]
        if not todo.size:
            return out
    raise np.linalg.LinAlgError("null-space completion failed for 8 seeded blocks")  # pragma: no cover


def _fix_signs(V: np.ndarray) -> np.ndarray:
    """Flip each column (of a (d, k) matrix or a (n, d, k) stack) so its largest-magnitude entry is positive."""
    if V.size == 0:
        return V
    idx = np.argmax(np.abs(V), axis=-2)[..., None, :]
    s = np.sign(np.take_along_axis(V, idx, axis=-2))
    s[s == 0] = 1.0
    return V * s


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
                    rng: None | int | np.random.Generator = None, return_info: bool = False):
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
    The order ``fisher_spectrum(backend, x)`` of earlier releases still works (a backend is never
    an array) and issues a FutureWarning.
    """
    x, backend = public_order(x, backend, "fisher_spectrum")
    b = as_backend(backend)
    xb, single = b.as_batch(x)
    method = check_method(method, METHODS)
    operator = check_method(operator, OPERATORS, "operator")
    rng = check_rng(rng)
    n, d = xb.shape[0], math.prod(b.input_shape)
    k = check_k(k, d)
    if b.n_classes is None:
        b.probabilities(xb[:1])
    operator, method, reason = _resolve_method(b, d, k, operator, method)
    if operator == "exact" and method == "gram":
        W, Vs, n_iter, n_prod, ranks = _gram_spectra(b, xb, k)
    else:
        W, Vs, n_iter, n_prod, ranks = _operator_spectra(b, xb, k, operator, method, n_samples, tol, maxiter, rng)
    Vs = Vs.reshape((n, k) + b.input_shape)
    info = SpectrumInfo(method=method, operator=operator, reason=reason, n_iter=n_iter, n_products=n_prod,
                        rank_bound=ranks, extra={"n_samples": (n_samples or default_n_samples(b.n_classes))
                                                  if operator == "sampled" else None})
    if single:
        W, Vs = W[0], Vs[0]
    return (W, Vs, info) if return_info else (W, Vs)


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


def _gram_spectra(b: Any, xb: np.ndarray, k: int):
    """Batched exact Gram method: one class-gradient call per chunk, batched C x C eigendecompositions."""
    n, C, d = xb.shape[0], b.n_classes, math.prod(b.input_shape)
    W, Vs = np.zeros((n, k)), np.zeros((n, k, d))
    ranks = np.zeros(n, dtype=np.int64)
    chunk = max(1, int(GRAM_MEMORY_BYTES // (8 * C * d)))
    for s in range(0, n, chunk):
        p, g = b.class_gradients(xb[s:s + chunk])
        g = g.reshape(p.shape[0], C, d)
        F = np.sqrt(p)[:, :, None] * g
        mu, V = _gram(F, min(k, C, d))
        r = np.array([_rank_bound(p[j], g[j]) for j in range(p.shape[0])], dtype=np.int64)
        w, Vj = _finalize_batch(mu, V, r, k, d)
        W[s:s + p.shape[0]], Vs[s:s + p.shape[0]], ranks[s:s + p.shape[0]] = w, np.swapaxes(Vj, 1, 2), r
    return W, Vs, np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64), ranks


def _operator_spectra(b: Any, xb: np.ndarray, k: int, operator: str, method: str, n_samples, tol, maxiter, rng):
    """One operator and one :func:`top_eigenpairs` per input (exact, sampled or matrix-free)."""
    n, d = xb.shape[0], math.prod(b.input_shape)
    W, Vs = np.zeros((n, k)), np.zeros((n, k, d))
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
        w, V, inf = top_eigenpairs(op, k, method=method, tol=tol, maxiter=maxiter, rng=rng, return_info=True)
        W[j], Vs[j] = w, V.T
        n_iter[j], n_prod[j], ranks[j] = inf.n_iter, inf.n_products, inf.rank_bound
    return W, Vs, n_iter, n_prod, ranks
