"""The backend protocol: what the core needs from a classifier.

A backend answers, for a batch of inputs ``x`` of shape ``(n, *input_shape)``:

* ``probabilities(x)`` -> ``(n, C)`` class probabilities p(y | x);
* ``class_gradients(x, classes=None)`` -> ``(probs (n, C), grads (n, m, *input_shape))`` with
  ``grads[j, i] = grad_x(-log p_{classes[i]}(x_j))`` (all C classes when ``classes`` is None);
* optionally ``fisher_vector_product(x, v)`` -> ``G(x_j) v_jl`` for ``v`` of shape
  ``(n, k, *input_shape)``, computed matrix-free as ``J^T (diag p - p p^T) J v`` (one JVP and one
  VJP, whatever C is);
* optionally ``loss_gradient(x, labels)`` -> ``(probs, grad_x(-log p_label))`` in one reverse pass.

Concrete backends subclass :class:`Backend` and implement the private ``_probabilities``,
``_class_gradients`` and, when they declare the capability, ``_fisher_vector_product`` /
``_loss_gradient``. The public methods validate shapes, refuse NaN/Inf in inputs and outputs,
check that probabilities are probabilities, and convert to float64 NumPy arrays at the edge: a
backend computes in its own precision (:attr:`Backend.dtype`) and the core sees float64.

Any plain callable ``fn(x) -> (probs (C,), grads (C, *input_shape))`` for one input is accepted
wherever a backend is (:func:`as_backend` wraps it).
"""

from __future__ import annotations

import functools
import math
import os
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from ._validation import (
    as_float_array,
    check_finite,
    check_int,
    check_labels,
    check_probabilities,
    check_rng,
    shape_str,
)

__all__ = [
    "Backend",
    "CallableBackend",
    "as_backend",
    "CAPABILITIES",
    "MissingCapabilityError",
]

#: Capabilities a backend may declare.
#: ``"probabilities"`` and ``"class_gradients"`` are required; the others are optional.
CAPABILITIES = frozenset(
    {
        "probabilities",
        "class_gradients",
        "fisher_vector_product",  # matrix-free G v from one JVP + one VJP
        "loss_gradient",  # grad of -log p_label from one reverse pass
        "features",  # hidden-layer activations (detectors: KD, LID)
        "stochastic_probabilities",  # Monte-Carlo dropout predictions (detector: BU)
    }
)


class MissingCapabilityError(TypeError):
    """Raised when an operation needs a capability the backend does not declare."""


class Backend:
    """Base class of all backends (the protocol of :mod:`fisher_ref`).

    Parameters
    ----------
    input_shape : tuple of int or None
        Shape of one input. ``None`` lets the backend fix it from the first input it sees
        (subclasses decide how; :class:`CallableBackend` treats that input as a single one).

    Attributes
    ----------
    input_shape : tuple of int or None
    capabilities : frozenset of str
        What the backend can do, a subset of :data:`CAPABILITIES`.
    dtype : numpy.dtype
        The precision the backend computes in. Results are float64 at the boundary, but their
        accuracy is that of ``dtype`` (ARPACK tolerances and test tolerances derive from it).
    """

    capabilities: frozenset = frozenset({"probabilities", "class_gradients"})
    dtype: np.dtype = np.dtype(np.float64)

    def __init__(self, input_shape: Sequence[int] | None = None):
        self.input_shape = None if input_shape is None else _check_shape(input_shape)
        self.n_classes: int | None = None

    # ------------------------------------------------------------------ capabilities
    def supports(self, capability: str) -> bool:
        """Whether the backend declares ``capability`` (one of :data:`CAPABILITIES`)."""
        if capability not in CAPABILITIES:
            raise ValueError(f"capability must be one of {sorted(CAPABILITIES)}, got {capability!r}")
        return capability in self.capabilities

    def require(self, capability: str, what: str = "") -> None:
        """Raise :class:`MissingCapabilityError` unless the backend declares ``capability``."""
        if not self.supports(capability):
            why = f" ({what})" if what else ""
            raise MissingCapabilityError(
                f"{type(self).__name__} does not provide {capability!r}{why}; it declares "
                f"{sorted(self.capabilities)}"
            )

    @property
    def n_features(self) -> int:
        """Input dimension d = prod(input_shape)."""
        if self.input_shape is None:
            raise ValueError(f"{type(self).__name__}.input_shape is not known yet: pass input_shape=")
        return int(math.prod(self.input_shape))

    # ------------------------------------------------------------------ batching
    def as_batch(self, x: Any, name: str = "x") -> tuple[np.ndarray, bool]:
        """Validate ``x`` and return ``(batch (n, *input_shape) float64, was_single_input)``.

        ``x`` may be one input of shape ``input_shape`` or a batch ``(n, *input_shape)``.
        """
        a = as_float_array(x, name)
        if self.input_shape is None:
            self.input_shape = self._infer_input_shape(a)
        shp = self.input_shape
        if a.shape == shp:
            return a[None], True
        if a.ndim == len(shp) + 1 and a.shape[1:] == shp:
            if a.shape[0] == 0:
                raise ValueError(f"{name} is an empty batch: shape {shape_str(a.shape)}")
            return a, False
        raise ValueError(f"{name} has shape {shape_str(a.shape)}, expected {shape_str(shp)} "
                         f"or a batch (n, {', '.join(map(str, shp))})")

    def _infer_input_shape(self, x: np.ndarray) -> tuple[int, ...]:
        """Fix ``input_shape`` from the first input seen (default: x is one input)."""
        if x.ndim == 0:
            raise ValueError("x must have at least one dimension, got a scalar")
        return tuple(int(s) for s in x.shape)

    # ------------------------------------------------------------------ public protocol
    def probabilities(self, x: Any) -> np.ndarray:
        """Class probabilities of a batch, shape ``(n, C)``, float64."""
        xb, _ = self.as_batch(x)
        p = self._probabilities(xb)
        return self._check_probs(p, xb.shape[0])

    def class_gradients(self, x: Any, classes: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities ``(n, C)`` and per-class gradients of ``-log p_i``, ``(n, m, *input_shape)``.

        Parameters
        ----------
        x : array-like of shape (n, *input_shape) or input_shape
        classes : array-like of int of shape (m,), optional
            Class indices whose gradients are wanted (all C classes, in order, when None).
        """
        self.require("class_gradients")
        xb, _ = self.as_batch(x)
        cls = None if classes is None else _check_classes(classes, self.n_classes)
        p, g = self._class_gradients(xb, cls)
        p = self._check_probs(p, xb.shape[0])
        m = p.shape[1] if cls is None else cls.size
        if cls is not None and np.any(cls >= p.shape[1]):
            raise ValueError(f"classes must lie in [0, {p.shape[1] - 1}], got max {cls.max()}")
        g = np.asarray(g, dtype=np.float64)
        expected = (xb.shape[0], m) + self.input_shape
        if g.shape != expected:
            raise ValueError(f"{type(self).__name__} returned gradients of shape {shape_str(g.shape)}, "
                             f"expected {shape_str(expected)}")
        check_finite(g, f"gradients returned by {type(self).__name__}")
        return p, g

    def fisher_vector_product(self, x: Any, v: Any) -> np.ndarray:
        """Matrix-free Fisher-vector products ``G(x_j) v[j, l]``.

        Parameters
        ----------
        x : array-like of shape (n, *input_shape)
        v : array-like of shape (n, k, *input_shape)

        Returns
        -------
        ndarray of shape (n, k, *input_shape)
        """
        self.require("fisher_vector_product", "a matrix-free Fisher-vector product")
        xb, single = self.as_batch(x)
        va = as_float_array(v, "v")
        if single and va.ndim == len(self.input_shape) + 1:
            va = va[None]
        if va.ndim != len(self.input_shape) + 2 or va.shape[0] != xb.shape[0] or va.shape[2:] != self.input_shape:
            raise ValueError(f"v has shape {shape_str(va.shape)}, expected (n, k, *input_shape) = "
                             f"({xb.shape[0]}, k, {', '.join(map(str, self.input_shape))})")
        out = np.asarray(self._fisher_vector_product(xb, va), dtype=np.float64)
        if out.shape != va.shape:
            raise ValueError(f"{type(self).__name__} returned Fisher-vector products of shape "
                             f"{shape_str(out.shape)}, expected {shape_str(va.shape)}")
        return check_finite(out, f"Fisher-vector products returned by {type(self).__name__}")

    def loss_gradient(self, x: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities ``(n, C)`` and ``grad_x(-log p_label)`` of shape ``(n, *input_shape)``.

        Uses the backend's single reverse pass when it declares ``"loss_gradient"``; otherwise
        the gradient of the label's class is taken from :meth:`class_gradients`.
        """
        xb, _ = self.as_batch(x)
        if self.n_classes is None:
            self.probabilities(xb[:1])
        y = check_labels(labels, xb.shape[0], self.n_classes)
        if self.supports("loss_gradient"):
            p, g = self._loss_gradient(xb, y)
            p = self._check_probs(p, xb.shape[0])
            g = np.asarray(g, dtype=np.float64)
            if g.shape != xb.shape:
                raise ValueError(f"{type(self).__name__} returned a loss gradient of shape "
                                 f"{shape_str(g.shape)}, expected {shape_str(xb.shape)}")
            return p, check_finite(g, f"loss gradient returned by {type(self).__name__}")
        # one class per input: group inputs by label to ask only for the classes needed
        p = np.empty((xb.shape[0], self.n_classes))
        g = np.empty_like(xb)
        for c in np.unique(y):
            idx = np.flatnonzero(y == c)
            pc, gc = self.class_gradients(xb[idx], classes=[c])
            p[idx], g[idx] = pc, gc[:, 0]
        return p, g

    def features(self, x: Any, layers: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Hidden-layer activations, for the KD and LID detectors.

        Parameters
        ----------
        x : array-like of shape (n, *input_shape) or input_shape
        layers : sequence of str, optional
            Names from :attr:`feature_layers` (default: all of them, in order).

        Returns
        -------
        dict mapping layer name to ndarray of shape (n, n_units), float64 (activations flattened).
        """
        self.require("features", "hidden-layer activations (KD and LID detectors need them)")
        xb, _ = self.as_batch(x)
        names = list(self.feature_layers) if layers is None else list(layers)
        unknown = [n for n in names if n not in self.feature_layers]
        if unknown or not names:
            raise ValueError(f"layers must be names from {list(self.feature_layers)}, got {names!r}")
        out = self._features(xb, names)
        res = {}
        for n in names:
            a = np.asarray(out[n], dtype=np.float64).reshape(xb.shape[0], -1)
            res[n] = check_finite(a, f"features of layer {n!r} returned by {type(self).__name__}")
        return res

    def stochastic_probabilities(self, x: Any, n_samples: int, *, rng=None) -> np.ndarray:
        """Monte-Carlo dropout predictions, shape ``(n_samples, n, C)`` (for the BU detector)."""
        self.require("stochastic_probabilities", "Monte-Carlo dropout predictions (the BU detector needs them)")
        n_samples = check_int(n_samples, "n_samples", min_val=1)
        xb, _ = self.as_batch(x)

        out = np.asarray(self._stochastic_probabilities(xb, int(n_samples), check_rng(rng)), dtype=np.float64)
        if out.shape[:2] != (n_samples, xb.shape[0]) or out.ndim != 3:
            raise ValueError(f"{type(self).__name__} returned stochastic probabilities of shape "
                             f"{shape_str(out.shape)}, expected ({n_samples}, {xb.shape[0]}, n_classes)")
        for s in range(n_samples):
            self._check_probs(out[s], xb.shape[0])
        return out

    #: Names of the layers :meth:`features` can return (backends with the "features" capability).
    feature_layers: tuple = ()

    # ------------------------------------------------------------------ to implement
    def _features(self, x: np.ndarray, layers: list[str]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def _stochastic_probabilities(self, x: np.ndarray, n_samples: int, rng: np.random.Generator) -> np.ndarray:
        raise NotImplementedError

    def _probabilities(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _class_gradients(self, x: np.ndarray, classes: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def _fisher_vector_product(self, x: np.ndarray, v: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _loss_gradient(self, x: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    # ------------------------------------------------------------------ helpers
    def _check_probs(self, p: Any, n: int) -> np.ndarray:
        p = np.asarray(p, dtype=np.float64)
        name = f"probabilities returned by {type(self).__name__}"
        if p.ndim != 2 or p.shape[0] != n:
            raise ValueError(f"{name} have shape {shape_str(p.shape)}, expected (n, n_classes) with n = {n}")
        p = check_probabilities(p, name)
        if self.n_classes is None:
            self.n_classes = int(p.shape[1])
        elif p.shape[1] != self.n_classes:
            raise ValueError(f"{name} have {p.shape[1]} classes, earlier calls gave {self.n_classes}")
        return p

    def __repr__(self) -> str:
        shp = None if self.input_shape is None else shape_str(self.input_shape)
        return f"{type(self).__name__}(input_shape={shp}, n_classes={self.n_classes})"


class CallableBackend(Backend):
    """A backend around a plain callable ``fn(x) -> (probs (C,), grads (C, *input_shape))``.

    ``fn`` sees one input at a time (shape ``input_shape``). With ``input_shape`` given, a batch
    ``(n, *input_shape)`` is recognised and evaluated input by input; without it, every ``x``
    handed to the library is taken as a single input and fixes ``input_shape`` on first use.
    """

    def __init__(self, fn: Callable[[np.ndarray], tuple[Any, Any]], input_shape: Sequence[int] | None = None):
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {type(fn).__name__}")
        super().__init__(input_shape)
        self.fn = fn

    def _call(self, x1: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = self.fn(x1)
        if not isinstance(out, tuple) or len(out) != 2:
            raise TypeError(f"the callable must return a tuple (probs, grads), got {type(out).__name__}")
        p = check_probabilities(out[0], "probs returned by the callable")
        if p.ndim != 1:
            raise ValueError(f"probs returned by the callable must have shape (n_classes,), got {shape_str(p.shape)}")
        g = as_float_array(out[1], "grads returned by the callable")
        if g.shape != (p.size,) + self.input_shape:
            raise ValueError(f"grads returned by the callable have shape {shape_str(g.shape)}, expected "
                             f"(n_classes, *input_shape) = {shape_str((p.size,) + self.input_shape)}")
        return p, g

    def _class_gradients(self, x, classes):
        ps, gs = zip(*(self._call(xi) for xi in x))
        g = np.stack(gs)
        return np.stack(ps), (g if classes is None else g[:, classes])

    def _probabilities(self, x):
        return np.stack([self._call(xi)[0] for xi in x])

    def __repr__(self) -> str:
        return f"CallableBackend({getattr(self.fn, '__name__', repr(self.fn))}, input_shape={self.input_shape})"


def as_backend(fn: Any, input_shape: Sequence[int] | None = None) -> Backend:
    """A :class:`Backend` for ``fn``: a backend itself, a model wrapped in its backend, or a callable.

    Parameters
    ----------
    fn : Backend, torch.nn.Module, onnx.ModelProto, path to an .onnx file, or callable
        * a :class:`Backend` is returned as it is;
        * a ``torch.nn.Module`` (returning logits) is wrapped in
          :class:`~fisher_ref.backends.TorchBackend` (a private eval-mode copy; the input shape
          from ``input_shape`` or the first input seen). Build the TorchBackend yourself to reuse
          it across calls, to declare ``output=`` or ``dtype=``;
        * an ``onnx.ModelProto`` or a path ending in ``.onnx`` is wrapped in
          :class:`~fisher_ref.backends.OnnxBackend` (for a path, the backend is kept and reused
          while the file is unchanged);
        * any other callable ``fn(x) -> (probs (C,), grads (C, *input_shape))`` for one input ``x``
          is wrapped in :class:`CallableBackend`.
    input_shape : tuple of int, optional
        Shape of one input; with it, a leading batch axis is recognised.

    Raises
    ------
    TypeError
        If ``fn`` is none of these (the message says which wrapper to use).
    ImportError
        If wrapping a torch or ONNX model needs a framework that is not installed (names the extra).
    """
    if isinstance(fn, Backend):
        if input_shape is not None and fn.input_shape is not None and _check_shape(input_shape) != fn.input_shape:
            raise ValueError(f"input_shape {tuple(input_shape)} disagrees with the backend's {fn.input_shape}")
        return fn
    if _is_torch_module(fn):
        from .backends import TorchBackend

        return TorchBackend(fn, input_shape=input_shape)
    if _is_onnx_model(fn):
        return _onnx_backend(fn, input_shape)
    if callable(fn):
        return CallableBackend(fn, input_shape)
    raise TypeError("backend must be a fisher_ref Backend or a callable fn(x) -> (probs, grads), a torch.nn.Module "
                    "or an ONNX model (onnx.ModelProto or a path to an .onnx file), got "
                    f"{type(fn).__name__}{f' {fn!r}' if isinstance(fn, str) else ''}; other models need a wrapper: "
                    "fisher_ref.backends.TorchBackend(model) or OnnxBackend(path)")


def public_order(x: Any, backend: Any, func: str) -> tuple[Any, Any]:
    """``(x, backend)`` of a function taking both, accepting the earlier order ``(backend, x)``
    (a backend is never an array) with a FutureWarning."""
    if is_backend_like(x) and not is_backend_like(backend):
        import warnings

        warnings.warn(f"{func}(backend, x) is the order of earlier releases; use {func}(x, backend, ...) "
                      "(or pass x= and backend= by keyword)", FutureWarning, stacklevel=3)
        return backend, x
    return x, backend


def is_backend_like(obj: Any) -> bool:
    """Whether ``obj`` is something :func:`as_backend` accepts (and so never an input array)."""
    if isinstance(obj, Backend) or _is_torch_module(obj) or _is_onnx_model(obj):
        return True
    return callable(obj) and not hasattr(obj, "__array__")


def _is_torch_module(obj: Any) -> bool:
    """A ``torch.nn.Module`` (checked without importing torch)."""
    return any(c.__name__ == "Module" and c.__module__ == "torch.nn.modules.module" for c in type(obj).__mro__)


def _is_onnx_model(obj: Any) -> bool:
    """An ``onnx.ModelProto``, or a path ending in ``.onnx`` (checked without importing onnx)."""
    if type(obj).__name__ == "ModelProto" and type(obj).__module__.startswith("onnx"):
        return True
    return isinstance(obj, (str, os.PathLike)) and os.fspath(obj).lower().endswith(".onnx")


def _onnx_backend(model: Any, input_shape: Sequence[int] | None) -> Backend:
    from .backends import OnnxBackend

    if not isinstance(model, (str, os.PathLike)):
        return OnnxBackend(model, input_shape=input_shape)
    path = os.path.realpath(os.fspath(model))
    try:
        st = os.stat(path)
    except OSError:
        return OnnxBackend(model, input_shape=input_shape)  # its own error names the missing file
    shape = None if input_shape is None else _check_shape(input_shape)
    return _cached_onnx_backend(path, st.st_mtime_ns, st.st_size, shape)


@functools.lru_cache(maxsize=4)
def _cached_onnx_backend(path: str, mtime_ns: int, size: int, input_shape: tuple | None) -> Backend:
    from .backends import OnnxBackend

    return OnnxBackend(path, input_shape=input_shape)


def _check_shape(shape: Iterable[int]) -> tuple[int, ...]:
    try:
        t = tuple(int(s) for s in shape)
    except Exception as exc:
        raise TypeError(f"input_shape must be a tuple of positive ints, got {shape!r}") from exc
    if not t or any(s <= 0 for s in t):
        raise ValueError(f"input_shape must be a non-empty tuple of positive ints, got {shape!r}")
    return t


def _check_classes(classes: Any, n_classes: int | None) -> np.ndarray:
    c = np.asarray(classes)
    if c.dtype.kind not in "iu" or c.ndim != 1 or c.size == 0:
        raise ValueError(f"classes must be a non-empty 1-D array of class indices, got {classes!r}")
    c = c.astype(np.int64)
    if np.any(c < 0) or (n_classes is not None and np.any(c >= n_classes)):
        hi = "n_classes - 1" if n_classes is None else str(n_classes - 1)
        raise ValueError(f"classes must lie in [0, {hi}], got values in [{c.min()}, {c.max()}]")
    return c
