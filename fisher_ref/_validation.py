"""Input validation at the public boundary (one private module, as scikit-learn).

Every message names the argument, what was expected and what arrived.
"""

from __future__ import annotations

import numbers
from typing import Any, Sequence

import numpy as np

__all__ = [
    "check_rng",
    "check_finite",
    "check_probabilities",
    "check_class_gradients",
    "check_k",
    "check_epsilon",
    "check_bounds",
    "check_method",
    "check_labels",
    "check_int",
    "check_real",
    "shape_str",
]

#: Relative tolerance for "probabilities sum to one" (rows are checked in float64).
PROB_SUM_RTOL = 1e-5


def shape_str(shape: Sequence[int]) -> str:
    return "(" + ", ".join(str(int(s)) for s in shape) + ("," if len(shape) == 1 else "") + ")"


def check_rng(rng: None | int | np.random.Generator, name: str = "rng") -> np.random.Generator:
    """Normalise ``None | int | Generator`` to a :class:`numpy.random.Generator`."""
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None:
        return np.random.default_rng()
    if isinstance(rng, numbers.Integral) and not isinstance(rng, bool):
        if rng < 0:
            raise ValueError(f"{name} must be a non-negative int seed (or None, or a numpy.random.Generator), "
                             f"got {rng}")
        return np.random.default_rng(rng)
    if isinstance(rng, np.random.SeedSequence):
        return np.random.default_rng(rng)
    raise TypeError(
        f"{name} must be None, an int seed or a numpy.random.Generator, got {type(rng).__name__}"
    )


def check_finite(a: np.ndarray, name: str) -> np.ndarray:
    """Refuse NaN and Inf: they are never propagated."""
    if not np.all(np.isfinite(a)):
        n_nan = int(np.isnan(a).sum())
        n_inf = int(np.isinf(a).sum())
        raise ValueError(f"{name} contains {n_nan} NaN and {n_inf} Inf values; expected finite values")
    return a


def as_float_array(x: Any, name: str, dtype=np.float64) -> np.ndarray:
    """Convert to a floating ndarray, refusing objects, strings, complex and non-finite values."""
    try:
        a = np.asarray(x)
    except Exception as exc:  # pragma: no cover - numpy raises many things
        raise TypeError(f"{name} must be array-like of real numbers, got {type(x).__name__}") from exc
    if a.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold real numbers, got an array of dtype {a.dtype}")
    a = a.astype(dtype, copy=False)
    return check_finite(a, name)


def check_probabilities(probs: Any, name: str = "probs", *, rtol: float = PROB_SUM_RTOL) -> np.ndarray:
    """Validate probabilities of shape ``(C,)`` or ``(n, C)``: finite, >= 0, rows sum to 1."""
    p = as_float_array(probs, name)
    if p.ndim not in (1, 2) or p.shape[-1] < 2:
        raise ValueError(f"{name} must have shape (n_classes,) or (n, n_classes) with n_classes >= 2, "
                         f"got shape {shape_str(p.shape)}")
    if np.any(p < 0):
        raise ValueError(f"{name} has negative entries (min {p.min():.3g}); expected probabilities >= 0")
    s = p.sum(axis=-1)
    # float32 outputs of a softmax over C classes carry a sum error up to about C * eps32
    tol = rtol + p.shape[-1] * float(np.finfo(np.float32).eps)
    bad = np.abs(s - 1.0) > tol
    if np.any(bad):
        worst = float(s.flat[np.argmax(np.abs(s - 1.0))])
        raise ValueError(f"{name} rows must sum to 1 (tolerance {tol:.2g}); a row sums to {worst:.8g}. "
                         "Are these logits? Pass probabilities, or declare output='logits' on the backend")
    return p


def check_class_gradients(grads: Any, n_classes: int, name: str = "grads") -> np.ndarray:
    """Validate per-class gradients ``(C, *input_shape)`` and return them flattened ``(C, d)``."""
    g = as_float_array(grads, name)
    if g.ndim < 2 or g.shape[0] != n_classes:
        raise ValueError(f"{name} must have shape (n_classes, *input_shape) with n_classes = {n_classes}, "
                         f"got shape {shape_str(g.shape)}")
    return g.reshape(n_classes, -1)


def check_k(k: Any, n: int, name: str = "k") -> int:
    if not isinstance(k, numbers.Integral) or isinstance(k, bool):
        raise TypeError(f"{name} must be an int, got {type(k).__name__}")
    if not 1 <= k <= n:
        raise ValueError(f"{name} must satisfy 1 <= {name} <= {n} (the dimension), got {k}")
    return int(k)


def check_epsilon(epsilon: Any, name: str = "epsilon") -> tuple[np.ndarray, bool]:
    """Return ``(epsilons (m,), scalar?)``; epsilon may be a scalar or a sequence of scalars."""
    scalar = np.ndim(epsilon) == 0
    e = as_float_array(np.atleast_1d(epsilon), name)
    if e.ndim != 1 or e.size == 0:
        raise ValueError(f"{name} must be a scalar or a non-empty 1-D sequence, got shape {shape_str(np.shape(epsilon))}")
    if np.any(e < 0):
        raise ValueError(f"{name} must be >= 0, got {e[e < 0][0]:g}")
    return e, scalar


def check_bounds(bounds: Any, x: np.ndarray | None = None, name: str = "bounds") -> tuple[float, float] | None:
    """Validate ``(lo, hi)`` or None; if x is given, x must lie inside the bounds."""
    if bounds is None:
        return None
    try:
        lo, hi = (float(b) for b in bounds)
    except Exception as exc:
        raise TypeError(f"{name} must be None or a pair (lo, hi) of numbers, got {bounds!r}") from exc
    if not (np.isfinite(lo) and np.isfinite(hi)) or not lo < hi:
        raise ValueError(f"{name} must be a pair (lo, hi) of finite numbers with lo < hi, got ({lo:g}, {hi:g})")
    if x is not None:
        xmin, xmax = float(np.min(x)), float(np.max(x))
        if xmin < lo or xmax > hi:
            raise ValueError(f"x lies outside {name} = ({lo:g}, {hi:g}): its values span [{xmin:g}, {xmax:g}]. "
                             "Pass bounds matching the input range, or bounds=None for no clipping")
    return lo, hi


def check_method(method: Any, allowed: Sequence[str], name: str = "method") -> str:
    if not isinstance(method, str) or method not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(repr(a) for a in allowed)}; got {method!r}")
    return method


def check_labels(labels: Any, n: int, n_classes: int, name: str = "labels") -> np.ndarray:
    """Integer class labels of shape ``(n,)`` (a scalar is allowed for n == 1)."""
    a = np.asarray(labels)
    if a.dtype.kind not in "iu" and not (a.dtype.kind == "f" and np.all(np.isfinite(a)) and np.all(a == np.round(a))):
        raise TypeError(f"{name} must be integer class indices, got dtype {a.dtype}")
    a = np.atleast_1d(a).astype(np.int64)
    if a.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},) (one label per input), got shape {shape_str(a.shape)}")
    if np.any(a < 0) or np.any(a >= n_classes):
        raise ValueError(f"{name} must lie in [0, {n_classes - 1}], got values in [{a.min()}, {a.max()}]")
    return a


def _interval(lo: float | None, hi: float | None, closed: str, integer: bool = False) -> str:
    """Words for the allowed range: "positive", "non-negative", ">= 3", "in [0, 1)", ..."""
    lo_in, hi_in = closed in ("both", "left"), closed in ("both", "right")
    if lo is not None and hi is not None:
        return f"in {'[' if lo_in else '('}{lo:g}, {hi:g}{']' if hi_in else ')'}"
    if lo is not None:
        if integer and lo == 1 and lo_in:
            return "positive"
        if lo == 0:
            return "non-negative" if lo_in else "positive"
        return f"{'>=' if lo_in else '>'} {lo:g}"
    if hi is not None:
        return f"{'<=' if hi_in else '<'} {hi:g}"
    return ""


def _describe(kind: str, lo, hi, closed: str, allow_none: bool) -> str:
    rng = _interval(lo, hi, closed, integer=kind == "int")
    if rng.startswith(("positive", "non-negative")):
        what = f"a {rng} {kind}"
    else:
        what = f"{'an' if kind == 'int' else 'a'} {kind}" + (f" {rng}" if rng else "")
    return f"None or {what}" if allow_none else what


def _in_range(v: float, lo, hi, closed: str) -> bool:
    lo_in, hi_in = closed in ("both", "left"), closed in ("both", "right")
    if lo is not None and (v < lo or (v == lo and not lo_in)):
        return False
    return not (hi is not None and (v > hi or (v == hi and not hi_in)))


def check_int(value: Any, name: str, *, min_val: int | None = None, max_val: int | None = None,
              allow_none: bool = False) -> int | None:
    """Validate an integer argument (as scikit-learn's ``check_scalar``), return it as ``int``.

    ``min_val`` / ``max_val`` are inclusive; ``bool`` is not an int here. Raises TypeError for a
    value of another type and ValueError for one out of range, both with the same message:
    ``"n_steps must be a positive int, got 0"``.
    """
    if value is None and allow_none:
        return None
    what = _describe("int", min_val, max_val, "both", allow_none)
    if not isinstance(value, numbers.Integral) or isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be {what}, got {value!r}")
    if not _in_range(int(value), min_val, max_val, "both"):
        raise ValueError(f"{name} must be {what}, got {value!r}")
    return int(value)


def check_real(value: Any, name: str, *, min_val: float | None = None, max_val: float | None = None,
               include_boundaries: str = "both", allow_none: bool = False) -> float | None:
    """Validate a finite real argument (as scikit-learn's ``check_scalar``), return it as ``float``.

    ``include_boundaries`` is "both", "left", "right" or "neither" (sklearn's names): with
    ``min_val=0, include_boundaries="neither"`` the message reads "a positive number". NaN and
    Inf are refused. TypeError for a value of another type, ValueError out of range.
    """
    if include_boundaries not in ("both", "left", "right", "neither"):
        raise ValueError(f"include_boundaries must be 'both', 'left', 'right' or 'neither', got {include_boundaries!r}")
    if value is None and allow_none:
        return None
    what = _describe("number", min_val, max_val, include_boundaries, allow_none)
    if not isinstance(value, numbers.Real) or isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be {what}, got {value!r}")
    v = float(value)
    if not np.isfinite(v) or not _in_range(v, min_val, max_val, include_boundaries):
        raise ValueError(f"{name} must be {what}, got {value!r}")
    return v
