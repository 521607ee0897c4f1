"""Test another implementation of the input Fisher information against fisher_ref's golden cases.

A few lines suffice::

    from fisher_ref.testing import golden_cases, assert_fisher_close

    for case in golden_cases():
        fn = my_implementation_for(case.model_path)     # fn(x) -> (probs (C,), grads (C, *shape))
        assert_fisher_close(fn, case, spectrum=my_top_k, ossa=my_ossa)

``fn`` is checked on probabilities and per-class gradients of ``-log p_i``; the optional
``spectrum(x, k) -> (w (k,), V (k, *input_shape))`` and ``ossa(x, epsilon, label) -> eta`` on the
top-k eigenpairs and the OSSA perturbation (without them, fisher_ref computes those from ``fn``'s
gradients, which checks the gradients once more through the spectrum).

The cases live in ``fisher_ref/validation/golden/`` (see :mod:`fisher_ref.validation.golden`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

__all__ = ["GoldenCase", "golden_cases", "load_golden", "load_backend", "assert_fisher_close"]


def _golden_root() -> Path:
    from importlib import resources

    return Path(str(resources.files("fisher_ref.validation") / "golden"))


@dataclass
class GoldenCase:
    """One golden case: inputs, expected float64 answers, tolerances, and where the model is.

    Attributes
    ----------
    name, description : str
    model_path : pathlib.Path
        ``model.npz`` (NumPy reference weights) or ``model.onnx``.
    input_shape : tuple of int
    n_classes, k : int
    epsilon : float
        OSSA budget of ``ossa_eta``.
    x : ndarray (n, *input_shape)
    probs, grads, eigenvalues, eigenvectors, labels, ossa_eta : ndarray
        Expected values (see :mod:`fisher_ref.validation.golden`).
    ossa_sign_defined : ndarray of bool
        False where the loss increases in both directions of v1 or in neither, so that Algorithm 1's
        sign depends on the starting sign of v1 (fisher_ref starts from the eigenvector whose
        largest-magnitude entry is positive); ``ossa_eta`` is then not compared.
    tolerances : dict
        ``{"float64": {...}, "float32": {...}}``: max |got - expected| / max |expected| per quantity.
    meta : dict
        The whole ``case.json``.
    """

    name: str
    description: str
    model_path: Path
    input_shape: tuple
    n_classes: int
    k: int
    epsilon: float
    x: np.ndarray
    probs: np.ndarray
    grads: np.ndarray
    eigenvalues: np.ndarray
    eigenvectors: np.ndarray
    labels: np.ndarray
    ossa_eta: np.ndarray
    ossa_sign_defined: np.ndarray
    tolerances: dict
    meta: dict = field(repr=False, default_factory=dict)


def load_golden(name: str, root: str | Path | None = None) -> GoldenCase:
    """Load the golden case ``name``."""
    d = Path(root or _golden_root()) / name
    if not (d / "case.json").is_file():
        known = [c.name for c in golden_cases(root)]
        raise ValueError(f"no golden case {name!r}; known cases: {known}")
    meta = json.loads((d / "case.json").read_text())
    with np.load(d / "expected.npz") as f:
        arrays = {k: f[k] for k in f.files}
    return GoldenCase(name=meta["name"], description=meta["description"], model_path=d / meta["model"],
                      input_shape=tuple(meta["input_shape"]), n_classes=meta["n_classes"], k=meta["k"],
                      epsilon=meta["epsilon"], tolerances=meta["tolerances"], meta=meta, **arrays)


def golden_cases(root: str | Path | None = None) -> list[GoldenCase]:
    """All golden cases, sorted by name."""
    r = Path(root or _golden_root())
    return [load_golden(d.name, r) for d in sorted(r.iterdir()) if (d / "case.json").is_file()]


def load_backend(case: GoldenCase):
    """fisher_ref's own backend for a case: the NumPy reference model, or ONNX Runtime."""
    from .backends import MLPModel

    if case.model_path.suffix == ".npz":
        return MLPModel.load(case.model_path)
    from .backends import OnnxBackend

    return OnnxBackend(case.model_path)


def _rel(got, exp) -> float:
    return float(np.max(np.abs(np.asarray(got, dtype=np.float64) - exp)) / max(float(np.max(np.abs(exp))), 1e-300))


def assert_fisher_close(fn: Any, case: GoldenCase, *, spectrum: Callable | None = None, ossa: Callable | None = None,
                        dtype: str | None = None) -> dict:
    """Assert that an implementation reproduces a golden case within its tolerances.

    Parameters
    ----------
    fn : Backend or callable
        ``fn(x) -> (probs (C,), grads (C, *input_shape))`` for one input (or a fisher_ref backend).
    case : GoldenCase
    spectrum : callable, optional
        ``spectrum(x, k) -> (w (k,), V (k, *input_shape))``: the implementation's top-k eigenpairs
        (descending). Default: fisher_ref's :func:`~fisher_ref.fisher_spectrum` on ``fn``.
    ossa : callable, optional
        ``ossa(x, epsilon, label) -> eta``: the implementation's OSSA perturbation (Algorithm 1,
        ``||eta|| = epsilon``). Default: fisher_ref's :func:`~fisher_ref.ossa` on ``fn``.
    dtype : {"float64", "float32"}, optional
        Which tolerance row applies; default the backend's ``dtype`` (float64 for a callable).

    Returns
    -------
    dict
        The largest relative error per quantity.

    Raises
    ------
    AssertionError
        Listing every quantity outside its tolerance, with the error and the tolerance.
    """
    from .attacks import ossa as fr_ossa
    from ._backend import as_backend
    from ._spectrum import fisher_spectrum

    b = as_backend(fn, input_shape=case.input_shape)
    row = dtype or ("float32" if np.dtype(getattr(b, "dtype", np.float64)) == np.float32 else "float64")
    if row not in case.tolerances:
        raise ValueError(f"dtype must be one of {sorted(case.tolerances)}, got {row!r}")
    tol = case.tolerances[row]
    p, g = b.class_gradients(case.x)
    if spectrum is None:
        w, V = fisher_spectrum(case.x, b, k=case.k)
    else:
        pairs = [spectrum(x, case.k) for x in case.x]
        w = np.stack([np.asarray(pw, dtype=np.float64) for pw, _ in pairs])
        V = np.stack([np.asarray(pv, dtype=np.float64).reshape((case.k,) + case.input_shape) for _, pv in pairs])
    if ossa is None:
        eta = fr_ossa(case.x, b, epsilon=case.epsilon, labels=case.labels, bounds=None).eta
    else:
        eta = np.stack([np.asarray(ossa(x, case.epsilon, int(lab)), dtype=np.float64)
                        for x, lab in zip(case.x, case.labels)])
    errors = {"probs": _rel(p, case.probs), "grads": _rel(g, case.grads),
              "eigenvalues": _rel(w, case.eigenvalues)}
    # eigenvectors up to sign, where the eigenvalue is separated from its neighbours
    vec_err, eta_err = 0.0, 0.0
    for j in range(case.x.shape[0]):
        we = case.eigenvalues[j]
        for i in range(case.k):
            gap = min([abs(we[i] - we[m]) for m in range(case.k) if m != i] + [np.inf])
            if we[i] > 1e-6 * we[0] and gap > 1e-6 * we[0]:
                got, exp = V[j, i].ravel(), case.eigenvectors[j, i].ravel()
                vec_err = max(vec_err, min(np.abs(got - exp).max(), np.abs(got + exp).max()) / np.abs(exp).max())
        if case.ossa_sign_defined[j] and we[0] - (we[1] if case.k > 1 else 0) > 1e-6 * we[0]:
            eta_err = max(eta_err, _rel(eta[j], case.ossa_eta[j]))
    errors["eigenvectors"], errors["ossa_eta"] = vec_err, eta_err
    bad = [f"{q}: relative error {e:.2e} > {tol[q]:g}" for q, e in errors.items() if not e <= tol[q]]
    if bad:
        raise AssertionError(f"golden case {case.name!r} ({row} tolerances): " + "; ".join(bad))
    return errors
