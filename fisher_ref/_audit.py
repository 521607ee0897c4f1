"""``fisher-ref audit``: the Fisher-information vulnerability audit of an ONNX classifier.

For every input of a data set the audit records the top-k eigenvalues of the input Fisher
information matrix ``G_x`` (paper eq. 4), whether the one-step spectral attack (OSSA, Algorithm 1)
and the fast gradient method (FGM) change the prediction at each l2 budget epsilon, the least l2
budget at which OSSA does (binary search, :func:`~fisher_ref.least_perturbation`; the paper's
Table 2 and Figure 3), the prediction and its confidence. It then summarises: fooling-rate curves,
the most vulnerable inputs with their adversarial examples, the eigenvalue histogram, and the
Spearman rank correlation between the top eigenvalue and the least perturbation (the paper's
observation: a larger eigenvalue, a smaller perturbation).

Work is split into shards of consecutive inputs. Each shard is written to
``OUT/shards/shard-NNNNN.csv`` (+ ``.npz`` with the exact arrays and the adversarial examples) as
soon as it is done, so an interrupted audit resumes where it stopped (``resume=True``) and loses
nothing. Shards run in this process, or as tasks on a Dask distributed cluster
(``scheduler="tcp://..."`` or ``"local:N"``); each task loads the ONNX model itself from its path.

ONNX Runtime, onnx-ad, matplotlib, tqdm and dask are imported when needed, never at import time.
"""

from __future__ import annotations

import csv
import datetime as _dt
import hashlib
import io
import json
import math
import os
import pickle
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .attacks import DegenerateSpectrumWarning, fgm, least_perturbation, ossa
from ._backend import Backend
from ._spectrum import fisher_spectrum

__all__ = ["AuditError", "AuditResult", "audit", "compute_shard", "load_data", "DEFAULT_OUT_ROOT"]

#: Where an audit without ``out`` writes: a fresh ``run-YYYYmmdd-HHMMSS`` folder inside it.
DEFAULT_OUT_ROOT = Path("fisher-ref-audit")

#: Data formats :func:`load_data` reads (``"auto"`` tells them apart).
DATA_FORMATS = ("auto", "npy", "npz", "idx", "imagefolder", "cifar")
LAYOUTS = ("auto", "nchw", "nhwc")
SCALES = ("auto", "255", "none")

#: Files an audit writes at the top of its output folder (``force`` removes only these and shards/).
REPORT_FILES = ("results.csv", "summary.json", "report.html", "fooling_rate.png", "eigenvalues.png",
                "scatter.png", "vulnerable_least_perturbation.png", "vulnerable_top_eigenvalue.png")
SHARD_DIR = "shards"
MANIFEST = "manifest.json"
_NPZ_KEYS = ("x", "images", "X", "data", "inputs")
_NPZ_LABEL_KEYS = ("y", "labels", "Y", "targets", "label")
_FORMAT_VERSION = 1


class AuditError(ValueError):
    """Bad input to an audit (model, data, options or output folder); the message is one line."""


# ============================================================================================ data
def _read_labels_file(path: Path) -> np.ndarray:
    """Labels from .npy, .npz, IDX, or a text file with one integer per line."""
    if not path.is_file():
        raise AuditError(f"labels: no such file {str(path)!r}")
    try:
        if path.suffix == ".npy":
            return np.load(path, allow_pickle=False)
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as f:
                key = next((k for k in _NPZ_LABEL_KEYS if k in f.files), None)
                if key is None and len(f.files) == 1:
                    key = f.files[0]
                if key is None:
                    raise AuditError(f"labels: {str(path)!r} holds arrays {f.files}; expected one of "
                                     f"{list(_NPZ_LABEL_KEYS)}")
                return f[key]
        if _looks_like_idx(path):
            from .datasets import read_idx

            return read_idx(path)
        text = path.read_text().split()
        return np.array([int(t) for t in text], dtype=np.int64)
    except AuditError:
        raise
    except Exception as exc:
        raise AuditError(f"labels: cannot read {str(path)!r} ({type(exc).__name__}: {_one_line(exc)})") from exc


def _head(path: Path, n: int = 4) -> bytes:
    import gzip

    with open(path, "rb") as f:
        raw = f.read(64)
    if raw[:2] == b"\x1f\x8b":
        try:
            with gzip.open(path, "rb") as g:
                return g.read(n)
        except (OSError, EOFError):
            return b""
    return raw[:n]


def _looks_like_idx(path: Path) -> bool:
    h = _head(path)
    return len(h) == 4 and h[0] == 0 and h[1] == 0 and h[2] in (0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E) and 1 <= h[3] <= 8


def _detect_format(path: Path) -> str:
    if path.is_dir():
        if (path / "cifar-10-batches-py").is_dir() or (path / "test_batch").is_file() or \
                (path / "data_batch_1").is_file():
            return "cifar"
        if any(p.name.startswith(("t10k-images", "train-images")) for p in path.iterdir()) or \
                (path / "mnist").is_dir():
            return "idx"
        if any(p.is_dir() and not p.name.startswith(".") for p in path.iterdir()):
            return "imagefolder"
        raise AuditError(f"data: cannot tell the format of folder {str(path)!r}: expected an ImageFolder "
                         "(root/<class>/<image>), CIFAR-10 pickle batches or MNIST IDX files (pass --format)")
    if path.suffix == ".npy":
        return "npy"
    if path.suffix == ".npz":
        return "npz"
    if path.name.endswith((".tar.gz", ".tgz", ".tar")):
        return "cifar"
    if _looks_like_idx(path):
        return "idx"
    if _head(path, 1) == b"\x80":
        return "cifar"
    raise AuditError(f"data: cannot tell the format of {str(path)!r}: expected .npy, .npz, an IDX file, a CIFAR-10 "
                     "pickle batch or a folder (pass --format)")


def load_data(path: str | os.PathLike, *, data_format: str = "auto", labels: Any = None,
              split: str = "test", resize: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray | None, dict, list | None]:
    """Read raw inputs (and labels when the data has them) from a file or folder.

    Parameters
    ----------
    path : path
        ``.npy`` (inputs only), ``.npz`` (inputs under ``x``/``images``, labels under
        ``y``/``labels``), an IDX images file (its labels file is found by replacing ``images``
        with ``labels`` and ``idx3`` with ``idx1`` in the name), a folder in MNIST's four-file IDX
        layout, an ImageFolder (``root/<class>/<image>``), CIFAR-10 pickle batches (a folder, one
        batch file, or ``cifar-10-python.tar.gz``).
    data_format : {"auto", "npy", "npz", "idx", "imagefolder", "cifar"}
    labels : path or array-like of int, optional
        Labels for data that has none (or to replace those it has).
    split : {"test", "train"}
        For MNIST and CIFAR-10 folders.
    resize : (height, width), optional
        For ImageFolder: resize while decoding (other formats are resized by :func:`audit`).

    Returns
    -------
    raw : ndarray (n, ...)
    labels : ndarray of int64 or None
    description : dict
    class_names : list of str or None

    Raises
    ------
    AuditError
        For a missing or unreadable file, an unknown format, or labels that do not fit.
    """
    from . import datasets

    p = Path(path)
    if not p.exists():
        raise AuditError(f"data: no such file or folder {str(p)!r}")
    if data_format not in DATA_FORMATS:
        raise AuditError(f"data format must be one of {DATA_FORMATS}, got {data_format!r}")
    fmt = _detect_format(p) if data_format == "auto" else data_format
    y = None
    class_names = None
    source = str(p)
    try:
        if fmt == "npy":
            x = np.load(p, allow_pickle=False)
        elif fmt == "npz":
            with np.load(p, allow_pickle=False) as f:
                key = next((k for k in _NPZ_KEYS if k in f.files), None)
                if key is None and len(f.files) == 1:
                    key = f.files[0]
                if key is None:
                    raise AuditError(f"data: {str(p)!r} holds arrays {f.files}; expected the inputs under one of "
                                     f"{list(_NPZ_KEYS)} (and labels under one of {list(_NPZ_LABEL_KEYS)})")
                x = f[key]
                ykey = next((k for k in _NPZ_LABEL_KEYS if k in f.files), None)
                y = None if ykey is None else f[ykey]
        elif fmt == "idx":
            if p.is_dir():
                x, y = datasets.load_mnist(p, split)
            else:
                x = datasets.read_idx(p)
                guess = p.with_name(p.name.replace("images", "labels").replace("idx3", "idx1"))
                if labels is None and guess != p and guess.is_file():
                    y = datasets.read_idx(guess)
                    source = f"{p} + {guess.name}"
        elif fmt == "imagefolder":
            x, y, class_names = datasets.load_image_folder(p, size=resize)
        elif fmt == "cifar":
            if p.is_dir():
                x, y = datasets.load_cifar10(p, split)
            elif p.name.endswith((".tar.gz", ".tgz", ".tar")):
                x, y = datasets._load_cifar_pickle_tar(p, split, None)
            else:
                with open(p, "rb") as f:
                    x, y = datasets._read_cifar_batch(f, p)
            class_names = list(datasets.CIFAR10_CLASSES)
        else:  # pragma: no cover - checked above
            raise AuditError(f"data format {fmt!r}")
    except AuditError:
        raise
    except (ValueError, OSError, EOFError, pickle.UnpicklingError, KeyError) as exc:
        raise AuditError(f"data: cannot read {str(p)!r} as {fmt} ({_one_line(exc)})") from exc
    x = np.asarray(x)
    if labels is not None:
        y = _read_labels_file(Path(labels)) if isinstance(labels, (str, os.PathLike)) else np.asarray(labels)
    if y is not None:
        y = np.asarray(y)
        if y.dtype.kind not in "iu" and not (y.dtype.kind == "f" and np.all(np.isfinite(y)) and np.all(y == np.round(y))):
            raise AuditError(f"labels must be integers, got an array of dtype {y.dtype}")
        y = y.astype(np.int64).reshape(-1)
    desc = {"path": str(p), "format": fmt, "source": source, "raw_shape": list(x.shape), "raw_dtype": str(x.dtype)}
    return x, y, desc, class_names


def _spatial_axes(shape: tuple, layout: str) -> tuple[str, tuple[int, int] | None]:
    """``(kind, (h_axis, w_axis))`` of one raw input: 'hw', 'chw' or 'hwc' (None: not an image)."""
    if len(shape) == 2:
        return "hw", (0, 1)
    if len(shape) == 3:
        if layout == "nhwc":
            return "hwc", (0, 1)
        if layout == "nchw":
            return "chw", (1, 2)
        if shape[-1] in (1, 3, 4) and shape[0] not in (1, 3, 4):
            return "hwc", (0, 1)
        return "chw", (1, 2)
    return "flat", None


def _resize(x: np.ndarray, size: Sequence[int], layout: str) -> np.ndarray:
    """Bilinear resize of every image (Pillow, float mode) to ``(height, width)``."""
    try:
        from PIL import Image
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise AuditError("resize needs Pillow: pip install pillow") from exc
    h, w = (int(s) for s in size)
    kind, axes = _spatial_axes(x.shape[1:], layout)
    if axes is None:
        raise AuditError(f"resize: inputs of shape {tuple(x.shape[1:])} are not images")
    if (x.shape[1 + axes[0]], x.shape[1 + axes[1]]) == (h, w):
        return x
    a = x.astype(np.float32)
    if kind == "hw":
        a = a[:, None]
    elif kind == "hwc":
        a = np.moveaxis(a, -1, 1)
    out = np.empty(a.shape[:2] + (h, w), dtype=np.float32)
    for i in range(a.shape[0]):
        for c in range(a.shape[1]):
            out[i, c] = np.asarray(Image.fromarray(a[i, c], mode="F").resize((w, h), Image.Resampling.BILINEAR))
    if kind == "hw":
        out = out[:, 0]
    elif kind == "hwc":
        out = np.moveaxis(out, 1, -1)
    return out.astype(np.float64)


def _to_model_layout(x: np.ndarray, shape: tuple, layout: str) -> tuple[np.ndarray, str]:
    """Reshape / transpose a batch ``x`` to ``(n, *shape)``; returns it and what was done."""
    d = tuple(x.shape[1:])
    n = x.shape[0]
    what = None
    if layout == "auto" and d == shape:
        return x, "none"
    if len(d) == 3 and len(shape) == 3:
        if layout in ("auto", "nhwc") and (d[2], d[0], d[1]) == shape:
            return np.ascontiguousarray(x.transpose(0, 3, 1, 2)), "NHWC -> NCHW"
        if layout in ("auto", "nchw") and (d[1], d[2], d[0]) == shape:
            return np.ascontiguousarray(x.transpose(0, 2, 3, 1)), "NCHW -> NHWC"
        if d == shape:
            return x, "none"
    if len(d) == 2 and len(shape) == 3:
        if shape == (1,) + d:
            return x[:, None], "added a channel axis (N, H, W) -> (N, 1, H, W)"
        if shape == d + (1,):
            return x[:, :, :, None], "added a channel axis (N, H, W) -> (N, H, W, 1)"
    if d == shape:
        return x, "none"
    if math.prod(d) == math.prod(shape) and (len(d) == 1 or len(shape) == 1):
        if len(d) == 3 and _spatial_axes(d, layout)[0] == "hwc" and d[-1] > 1:
            x = x.transpose(0, 3, 1, 2)  # flatten channel-first, as torch's view(n, -1) does
            what = "NHWC -> NCHW, "
        return np.ascontiguousarray(x).reshape((n,) + shape), (what or "") + f"reshaped {d} -> {shape}"
    raise AuditError(f"data: inputs have shape {_shape(d)}, but the model expects {_shape(shape)} per input"
                     + ("" if layout == "auto" else f" (with --layout {layout})")
                     + "; check --layout, --resize or the model")


def prepare_data(raw: np.ndarray, labels: np.ndarray | None, input_shape: tuple, *, limit: int | None = None,
                 layout: str = "auto", scale: str = "auto", resize: Sequence[int] | None = None,
                 n_classes: int | None = None) -> tuple[np.ndarray, np.ndarray | None, dict]:
    """Validate raw inputs and bring them to the model's input space.

    The steps, in order: keep the first ``limit`` inputs; refuse empty data, non-numeric data and
    NaN/Inf; resize (when asked); divide by 255 (``scale="255"``, or ``"auto"`` for uint8 data);
    convert the layout to the model's (NHWC <-> NCHW, a missing channel axis, flattening).

    Parameters
    ----------
    raw : array-like of shape (n, ...)
    labels : ndarray of int of shape (n,) or None
    input_shape : tuple of int
        The model's shape of one input.
    limit : int, optional
    layout : {"auto", "nchw", "nhwc"}
        Layout of ``raw``.
    scale : {"auto", "255", "none"}
    resize : (height, width), optional
    n_classes : int, optional
        When given, labels must lie in ``[0, n_classes)``.

    Returns
    -------
    x : ndarray of shape (n, *input_shape), float64
    labels : ndarray of int64 or None
    description : dict
    """
    raw = np.asarray(raw)
    if raw.dtype.kind not in "biuf":
        raise AuditError(f"data must hold real numbers, got an array of dtype {raw.dtype}")
    if raw.ndim < 2:
        raise AuditError(f"data has shape {_shape(raw.shape)}; expected a batch (n, *input_shape)")
    if raw.shape[0] == 0:
        raise AuditError(f"data is empty: shape {_shape(raw.shape)}, 0 inputs")
    if labels is not None and labels.shape[0] != raw.shape[0]:
        raise AuditError(f"labels: {labels.shape[0]} labels for {raw.shape[0]} inputs")
    if limit is not None:
        raw = raw[:limit]
        labels = None if labels is None else labels[:limit]
    if raw.dtype.kind == "f":
        bad = ~np.isfinite(raw.reshape(raw.shape[0], -1)).all(axis=1)
        if bad.any():
            n_nan, n_inf = int(np.isnan(raw).sum()), int(np.isinf(raw).sum())
            raise AuditError(f"data contains {n_nan} NaN and {n_inf} Inf values (in {int(bad.sum())} input"
                             f"{'s' if bad.sum() > 1 else ''}, the first at index {int(np.flatnonzero(bad)[0])}); expected finite values")
    desc: dict = {"n": int(raw.shape[0])}
    if scale not in SCALES:
        raise AuditError(f"scale must be one of {SCALES}, got {scale!r}")
    divide = scale == "255" or (scale == "auto" and raw.dtype == np.uint8)
    if resize is not None:
        raw = _resize(raw, resize, layout)
        desc["resize"] = [int(s) for s in resize]
    x = raw.astype(np.float64) / 255.0 if divide else raw.astype(np.float64)
    desc["scale"] = "divided by 255" if divide else "none"
    x, conv = _to_model_layout(x, tuple(input_shape), layout)
    desc["layout"] = conv
    desc["input_shape"] = list(input_shape)
    desc["range"] = [float(x.min()), float(x.max())]
    if labels is not None and n_classes is not None:
        if labels.min() < 0 or labels.max() >= n_classes:
            raise AuditError(f"labels must lie in [0, {n_classes - 1}] (the model has {n_classes} classes), got "
                             f"values in [{labels.min()}, {labels.max()}]")
    return x, labels, desc


# ====================================================================================== backends
class NormalizedBackend(Backend):
    """A backend seen through the affine input map ``x -> (x - mean) / std``.

    The audit measures perturbations, bounds and Fisher information in the space of the scaled
    pixels ``x`` (typically [0, 1]); the model sees ``(x - mean) / std``. With ``D = diag(1/std)``
    the chain rule gives gradients ``D g`` and Fisher matrix ``D G D`` in ``x``.

    Parameters
    ----------
    inner : Backend
    mean, std : ndarray broadcastable to ``inner.input_shape``
    """

    def __init__(self, inner: Backend, mean: np.ndarray, std: np.ndarray):
        super().__init__(inner.input_shape)
        self.inner = inner
        self.mean = np.asarray(mean, dtype=np.float64)
        self.std = np.asarray(std, dtype=np.float64)
        self.capabilities = inner.capabilities & frozenset(
            {"probabilities", "class_gradients", "fisher_vector_product", "loss_gradient"})
        self.dtype = inner.dtype
        self.n_classes = inner.n_classes

    def _in(self, x):
        return (x - self.mean) / self.std

    def _probabilities(self, x):
        return self.inner.probabilities(self._in(x))

    def _class_gradients(self, x, classes):
        p, g = self.inner.class_gradients(self._in(x), classes)
        return p, g / self.std

    def _loss_gradient(self, x, labels):
        p, g = self.inner.loss_gradient(self._in(x), labels)
        return p, g / self.std

    def _fisher_vector_product(self, x, v):
        return self.inner.fisher_vector_product(self._in(x), v / self.std) / self.std

    def __repr__(self) -> str:
        return f"NormalizedBackend({self.inner!r}, mean={self.mean.ravel().tolist()}, std={self.std.ravel().tolist()})"


def _onnx_backend(model: str, *, providers, input_name, batch_size, input_shape=None):
    """Construct :class:`~fisher_ref.backends.OnnxBackend`; bad models become one-line AuditErrors."""
    try:
        from .backends.onnxruntime import OnnxBackend
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise AuditError(_one_line(exc)) from exc
    try:
        return OnnxBackend(model, providers=providers, input_name=input_name, batch_size=batch_size,
                           input_shape=input_shape)
    except ImportError as exc:
        raise AuditError(_one_line(exc)) from exc
    except (ValueError, TypeError, RuntimeError) as exc:
        msg = _one_line(exc).replace("pass input_name= to choose", "pass --input-name (input_name=) to choose")
        if msg.startswith("model: "):
            msg = f"model {model}: {msg[len('model: '):]}"
        elif msg.startswith("model has "):
            msg = f"model {model} {msg[len('model '):]}"
        elif msg.startswith(("model input ", "model output ")):
            msg = f"model {model}: {msg[len('model '):]}"
        else:
            msg = f"model {model}: {msg}"
        raise AuditError(msg) from exc


def _channel_shape(values: Sequence[float], input_shape: tuple, what: str) -> np.ndarray:
    a = np.asarray(values, dtype=np.float64).ravel()
    if a.size == 1:
        return a.reshape(())
    if len(input_shape) == 3:
        if input_shape[0] == a.size:
            return a.reshape(-1, 1, 1)
        if input_shape[-1] == a.size:
            return a.reshape(1, 1, -1)
    raise AuditError(f"{what} has {a.size} values, but the model input {_shape(input_shape)} has no channel axis of "
                     "that length (give one value, or one per channel)")


_BACKENDS: dict = {}


def _backend_for(spec: dict) -> Backend:
    """The backend a shard computes with, built from the model's path (cached per process)."""
    path = spec["model"]
    try:
        st = os.stat(path)
    except OSError as exc:
        import socket

        raise AuditError(f"model {path}: cannot read it on host {socket.gethostname()} ({exc.strerror}); every "
                         "Dask worker loads the model from this path") from exc
    key = (path, st.st_mtime_ns, st.st_size, json.dumps(spec["providers"]), spec["input_name"],
           spec["batch_size"], tuple(spec["input_shape"]), json.dumps(spec["mean"]), json.dumps(spec["std"]))
    b = _BACKENDS.get(key)
    if b is None:
        providers = spec["providers"]
        if providers is not None:  # JSON turned (name, options) pairs into lists
            providers = [tuple(p) if isinstance(p, list) else p for p in providers]
        b = _onnx_backend(path, providers=providers, input_name=spec["input_name"],
                          batch_size=spec["batch_size"], input_shape=tuple(spec["input_shape"]))
        if spec["mean"] is not None:
            shape = tuple(spec["input_shape"])
            b = NormalizedBackend(b, _channel_shape(spec["mean"], shape, "mean"), _channel_shape(spec["std"], shape, "std"))
        _BACKENDS.clear()  # one model per process is enough
        _BACKENDS[key] = b
    return b


# ======================================================================================== shards
def compute_shard(spec: dict, x: np.ndarray, labels: np.ndarray | None, index: np.ndarray) -> dict:
    """Audit one shard of inputs (the task run locally or on a Dask worker).

    Parameters
    ----------
    spec : dict
        The audit's configuration: ``model`` (path of the ONNX file, loaded here), ``providers``,
        ``input_name``, ``batch_size``, ``input_shape``, ``mean``, ``std``, ``k``, ``epsilons``,
        ``bounds``, ``max_epsilon``, ``tol``.
    x : ndarray of shape (m, *input_shape)
    labels : ndarray of int of shape (m,) or None
        True labels; None attacks the model's predictions.
    index : ndarray of int of shape (m,)
        Positions of the inputs in the data set.

    Returns
    -------
    dict of ndarray
        ``index``, ``label`` (-1 where unknown), ``prediction``, ``confidence``, ``eigenvalues``
        (m, k), ``ossa_fooled`` and ``fgm_fooled`` (m, n_epsilons), ``least_perturbation``
        (``inf`` where OSSA does not fool the model within ``max_epsilon``, 0 where the input is
        already misclassified), ``adv_prediction`` and ``adv_confidence`` (the prediction at the
        OSSA example at the least perturbation; -1 / NaN where there is none), ``x_adv`` (that
        example, float32; the input itself where there is none), ``n_degenerate`` (inputs whose
        Fisher matrix is zero) and ``seconds``.
    """
    t0 = time.perf_counter()
    b = _backend_for(spec)
    x = np.asarray(x, dtype=np.float64)
    eps = [float(e) for e in spec["epsilons"]]
    bounds = None if spec["bounds"] is None else tuple(spec["bounds"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DegenerateSpectrumWarning)
        p = b.probabilities(x)
        pred = p.argmax(axis=1)
        conf = p.max(axis=1)
        y = pred if labels is None else np.asarray(labels, dtype=np.int64)
        spectrum = fisher_spectrum(x, b, k=int(spec["k"]))  # one eigensolve per input, reused below
        w = spectrum[0]
        ro = ossa(x, b, epsilon=eps, labels=y, bounds=bounds, direction=spectrum)
        rf = fgm(x, b, epsilon=eps, labels=y, bounds=bounds)
        lp, at_lp = least_perturbation(x, b, "ossa", labels=y, hi=float(spec["max_epsilon"]), tol=float(spec["tol"]),
                                       bounds=bounds, direction=spectrum, return_result=True)
        # the OSSA example at the least perturbation
        x_adv = x.copy()
        adv_pred = np.full(x.shape[0], -1, dtype=np.int64)
        adv_conf = np.full(x.shape[0], np.nan)
        found = np.isfinite(lp) & (lp > 0)
        if found.any():
            sel = np.flatnonzero(found)
            xa = at_lp.x_adv[sel]
            pa = b.probabilities(xa)
            x_adv[sel], adv_pred[sel], adv_conf[sel] = xa, pa.argmax(axis=1), pa.max(axis=1)
        already = lp == 0
        adv_pred[already], adv_conf[already] = pred[already], conf[already]
    return {
        "index": np.asarray(index, dtype=np.int64),
        "label": (np.full(x.shape[0], -1, dtype=np.int64) if labels is None else y.astype(np.int64)),
        "prediction": pred.astype(np.int64),
        "confidence": conf,
        "eigenvalues": w,
        "ossa_fooled": np.stack([r.success for r in ro], axis=1),
        "fgm_fooled": np.stack([r.success for r in rf], axis=1),
        "least_perturbation": np.asarray(lp, dtype=np.float64),
        "adv_prediction": adv_pred,
        "adv_confidence": adv_conf,
        "x_adv": x_adv.astype(np.float32),
        "n_degenerate": np.int64(np.sum(w[:, 0] == 0)),
        "seconds": np.float64(time.perf_counter() - t0),
    }


def _columns(k: int, epsilons: Sequence[float]) -> list[str]:
    cols = ["index", "label", "prediction", "confidence", "correct"]
    cols += [f"lambda_{i + 1}" for i in range(k)]
    cols += [f"ossa_fooled_eps{_fmt_eps(e)}" for e in epsilons]
    cols += [f"fgm_fooled_eps{_fmt_eps(e)}" for e in epsilons]
    cols += ["least_perturbation_ossa", "adv_prediction", "adv_confidence"]
    return cols


def _fmt_eps(e: float) -> str:
    return f"{float(e):g}"


def _num(v: float) -> str:
    v = float(v)
    if math.isnan(v):
        return ""
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return repr(v)


def _csv_text(res: dict, k: int, epsilons: Sequence[float], header: bool) -> str:
    buf = io.StringIO()
    wr = csv.writer(buf, lineterminator="\n")
    if header:
        wr.writerow(_columns(k, epsilons))
    for j in range(res["index"].shape[0]):
        lab = int(res["label"][j])
        known = lab >= 0
        row = [int(res["index"][j]), lab if known else "", int(res["prediction"][j]), _num(res["confidence"][j]),
               (int(res["prediction"][j] == lab) if known else "")]
        row += [_num(v) for v in res["eigenvalues"][j]]
        row += [int(v) for v in res["ossa_fooled"][j]]
        row += [int(v) for v in res["fgm_fooled"][j]]
        ap = int(res["adv_prediction"][j])
        row += [_num(res["least_perturbation"][j]), ap if ap >= 0 else "", _num(res["adv_confidence"][j])]
        wr.writerow(row)
    return buf.getvalue()


def _atomic_write(path: Path, data: bytes) -> None:
    """Write to a temporary file beside ``path``, then rename: ``path`` is whole or absent."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _shard_paths(out: Path, i: int) -> tuple[Path, Path]:
    base = out / SHARD_DIR / f"shard-{i:05d}"
    return base.with_suffix(".csv"), base.with_suffix(".npz")


def _write_shard(out: Path, i: int, res: dict, k: int, epsilons) -> None:
    """npz first, then the CSV: a shard is complete when its CSV exists."""
    csv_path, npz_path = _shard_paths(out, i)
    buf = io.BytesIO()
    np.savez(buf, **res)
    _atomic_write(npz_path, buf.getvalue())
    _atomic_write(csv_path, _csv_text(res, k, epsilons, header=True).encode())


def _read_shard(out: Path, i: int, n_rows: int) -> dict | None:
    """A complete shard's arrays, or None if it is missing or incomplete."""
    csv_path, npz_path = _shard_paths(out, i)
    if not (csv_path.is_file() and npz_path.is_file()):
        return None
    try:
        with np.load(npz_path, allow_pickle=False) as f:
            res = {key: f[key] for key in f.files}
    except Exception:
        return None
    if res.get("index") is None or res["index"].shape[0] != n_rows:
        return None
    return res


# ======================================================================================== result
@dataclass
class AuditResult:
    """What :func:`audit` did and where it wrote it.

    Attributes
    ----------
    out : pathlib.Path
        The output folder.
    complete : bool
        False when the audit stopped early (``max_shards``); ``resume=True`` continues it.
    n_inputs : int
    n_shards : int
    shards_computed : list of int
        Shards computed by this call.
    shards_skipped : list of int
        Shards found complete on disk (``resume=True``) and not computed again.
    summary : dict
        The content of ``summary.json`` (empty when not complete).
    columns : dict of ndarray
        Per-input results (``index``, ``label``, ``prediction``, ``confidence``, ``eigenvalues``,
        ``ossa_fooled``, ``fgm_fooled``, ``least_perturbation``, ``adv_prediction``,
        ``adv_confidence``), merged over shards (empty when not complete).
    files : dict of str to pathlib.Path
        ``results.csv``, ``summary.json``, ``report.html`` and the plots that were written.
    seconds : float
        Wall time of this call.
    """

    out: Path
    complete: bool
    n_inputs: int
    n_shards: int
    shards_computed: list = field(default_factory=list)
    shards_skipped: list = field(default_factory=list)
    summary: dict = field(default_factory=dict)
    columns: dict = field(default_factory=dict)
    files: dict = field(default_factory=dict)
    seconds: float = 0.0


# ======================================================================================== driver
def _default_out() -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = DEFAULT_OUT_ROOT / f"run-{stamp}"
    i = 1
    while out.exists():
        i += 1
        out = DEFAULT_OUT_ROOT / f"run-{stamp}-{i}"
    return out


def _check_out(out: Path, resume: bool, force: bool) -> None:
    """Refuse an output folder that cannot be written, or that holds files and neither flag is given."""
    anc = out
    while not anc.exists():
        if anc.parent == anc:
            break
        anc = anc.parent
    if anc.exists() and not anc.is_dir():
        raise AuditError(f"cannot write to output folder {str(out)!r}: {str(anc)!r} is a file, not a folder")
    if not os.access(anc, os.W_OK | os.X_OK):
        raise AuditError(f"cannot write to output folder {str(out)!r}: permission denied on {str(anc)!r}")
    if out.is_dir() and any(out.iterdir()) and not (resume or force):
        raise AuditError(f"output folder {str(out)!r} already exists and is not empty: pass --force to overwrite it "
                         "(force=True), or --resume to continue an interrupted audit there (resume=True)")


def _make_out(out: Path) -> None:
    try:
        (out / SHARD_DIR).mkdir(parents=True, exist_ok=True)
        probe = out / SHARD_DIR / ".fisher-ref-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise AuditError(f"cannot write to output folder {str(out)!r}: {exc.strerror or _one_line(exc)}") from exc


def _clean_out(out: Path) -> None:
    """``force``: remove what an audit writes (and only that)."""
    for name in REPORT_FILES:
        (out / name).unlink(missing_ok=True)
    sd = out / SHARD_DIR
    if sd.is_dir():
        for p in sd.iterdir():
            if p.is_file() and (p.name == MANIFEST or (p.name.startswith(("shard-", ".shard-")))):
                p.unlink()


def _sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _sha256_arrays(*arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        if a is None:
            h.update(b"none")
        else:
            a = np.ascontiguousarray(a)
            h.update(str((a.dtype.str, a.shape)).encode())
            h.update(a.tobytes())
    return h.hexdigest()


def _check_options(k, epsilons, limit, shard_size, max_epsilon, tol, batch_size, max_shards, n_vulnerable):
    def pos_int(v, name, allow_none=False):
        if v is None and allow_none:
            return None
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise AuditError(f"{name} must be a positive int, got {v!r}")
        return int(v)

    k = pos_int(k, "k")
    limit = pos_int(limit, "limit", True)
    shard_size = pos_int(shard_size, "shard_size")
    batch_size = pos_int(batch_size, "batch_size")
    max_shards = pos_int(max_shards, "max_shards", True)
    n_vulnerable = pos_int(n_vulnerable, "n_vulnerable")
    try:
        eps = np.atleast_1d(np.asarray(epsilons, dtype=np.float64))
    except (TypeError, ValueError) as exc:
        raise AuditError(f"epsilons must be numbers, got {epsilons!r}") from exc
    if eps.ndim != 1 or eps.size == 0 or not np.all(np.isfinite(eps)) or np.any(eps <= 0):
        raise AuditError(f"epsilons must be one or more positive numbers, got {epsilons!r}")
    eps = sorted(set(float(e) for e in eps))
    for v, name in ((max_epsilon, "max_epsilon"), (tol, "tol")):
        if not (isinstance(v, (int, float, np.floating)) and np.isfinite(v) and v > 0):
            raise AuditError(f"{name} must be a positive number, got {v!r}")
    return k, eps, limit, shard_size, float(max_epsilon), float(tol), batch_size, max_shards, n_vulnerable


def audit(model: str | os.PathLike | None = None, data: Any = None, *, out: str | os.PathLike | None = None,
          labels: Any = None, k: int = 10, epsilons: Sequence[float] = (0.5, 1.0, 2.0, 3.0),
          limit: int | None = None, providers: str | Sequence[Any] | None = None, batch_size: int = 64,
          input_name: str | None = None, data_format: str = "auto", split: str = "test", layout: str = "auto",
          scale: str = "auto", mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
          resize: Sequence[int] | None = None, bounds: str | tuple[float, float] | None = "auto",
          max_epsilon: float = 6.0, tol: float = 1e-3, shard_size: int = 50, n_vulnerable: int = 8,
          resume: bool = False, force: bool = False, scheduler: str | None = None,
          max_shards: int | None = None, progress: bool = True, report: bool = True,
          log: Callable[[str], None] | None = None) -> AuditResult:
    """Audit an ONNX classifier's Fisher information and its vulnerability to one-step attacks.

    Parameters
    ----------
    model : str or os.PathLike, optional
        The ONNX classifier (one float input, class scores out). Default: the bundled MNIST LeNet-5
        (``fisher_ref/data/mnist_lenet.onnx``).
    data : path, array-like of shape (n, ...) or tuple (x, labels), optional
        A file or folder (see :func:`load_data`: .npy, .npz, IDX, ImageFolder, CIFAR-10 pickle),
        or the inputs themselves. Default, only when ``model`` is omitted too: the 500 bundled
        MNIST test images.
    out : path, optional
        Output folder. Default: a fresh ``fisher-ref-audit/run-YYYYmmdd-HHMMSS`` in the current
        folder. An existing non-empty folder is refused unless ``force`` or ``resume``.
    labels : path or array-like of int, optional
        True labels for data that has none. Without labels the attacks target the model's own
        predictions and accuracy is not reported.
    k : int, default 10
        Number of top Fisher eigenvalues per input (at most C - 1 are nonzero).
    epsilons : sequence of float, default (0.5, 1, 2, 3)
        l2 budgets of OSSA and FGM (``||eta||_2 = epsilon`` in the scaled input space).
    limit : int, optional
        Audit only the first ``limit`` inputs.
    providers, batch_size, input_name
        Passed to :class:`~fisher_ref.backends.OnnxBackend`.
    data_format : {"auto", "npy", "npz", "idx", "imagefolder", "cifar"}
    split : {"test", "train"}
        For MNIST IDX and CIFAR-10 folders.
    layout : {"auto", "nchw", "nhwc"}
        Layout of the data; it is converted to the model's (``"auto"``: by matching shapes).
    scale : {"auto", "255", "none"}
        Divide by 255 (``"auto"``: uint8 data only) so that pixels lie in [0, 1].
    mean, std : sequence of float, optional
        Per-channel normalisation the model expects, ``(x - mean) / std``. It is applied inside
        the backend, so eigenvalues, budgets and bounds stay in the scaled-pixel space.
    resize : (height, width), optional
        Resize images (bilinear); off by default.
    bounds : "auto", (lo, hi) or None
        Input domain the adversarial examples are clipped to. ``"auto"``: (0, 1) when the
        prepared data lies in [0, 1], else no clipping.
    max_epsilon, tol : float
        Binary search interval ``[0, max_epsilon]`` and tolerance of the least perturbation.
    shard_size : int, default 50
        Inputs per shard (the unit of resumption and of Dask tasks).
    n_vulnerable : int, default 8
        Inputs listed (and drawn) as the most vulnerable.
    resume : bool
        Continue the audit in ``out``: shards already on disk are kept, not computed again. The
        configuration (model, data, k, epsilons, ...) must be the one they were computed with.
    force : bool
        Overwrite an existing audit in ``out`` (only the files an audit writes are removed).
    scheduler : str, optional
        Run the shards as tasks on a Dask distributed cluster: the scheduler's address
        (``"tcp://host:8786"``), or ``"local:N"`` for a ``LocalCluster`` of N single-threaded
        worker processes on this machine. Each task loads the model from its path, so the path
        must be readable by the workers.
    max_shards : int, optional
        Compute at most this many shards in this call, then stop (``complete=False``).
    progress : bool
        Show a tqdm progress bar (on stderr).
    report : bool
        Write the plots and ``report.html`` (needs matplotlib).
    log : callable, optional
        Called with one line of text at each stage (the command line prints them).

    Returns
    -------
    AuditResult

    Raises
    ------
    AuditError
        For bad input, with a one-line message: a missing or corrupt model, a model with several
        inputs and no ``input_name``, a non-float input, an output that is not class scores, an
        operator onnx-ad cannot differentiate, data that is empty, non-finite or does not fit the
        model, labels that do not fit, an output folder that exists or cannot be written, a
        missing optional dependency, a Dask scheduler that cannot be reached.
    KeyboardInterrupt
        Shards finished before the interruption are on disk; ``resume=True`` continues.

    Notes
    -----
    Fooling rates are over the inputs the model classifies correctly (all inputs when there are
    no labels): an input already misclassified is "fooled" at epsilon 0 and says nothing about the
    attack. The same inputs enter the vulnerability ranking and the Spearman correlation
    between :math:`\\log \\lambda_1` and the OSSA least perturbation (Figure 3 of the paper shows
    that a larger top eigenvalue goes with a smaller perturbation, i.e. a negative correlation).

    References
    ----------
    Zhao et al., AAAI 2019: eq. 4 (Fisher information), Algorithm 1 (OSSA), Table 2 and Figure 3
    (least perturbation against the eigenvalue).
    """
    t_start = time.perf_counter()
    say = log or (lambda s: None)
    k, eps, limit, shard_size, max_epsilon, tol, batch_size, max_shards, n_vulnerable = _check_options(
        k, epsilons, limit, shard_size, max_epsilon, tol, batch_size, max_shards, n_vulnerable)
    if resume and force:
        raise AuditError("resume and force exclude each other")
    for name, val, allowed in (("layout", layout, LAYOUTS), ("scale", scale, SCALES),
                               ("data_format", data_format, DATA_FORMATS), ("split", split, ("test", "train"))):
        if val not in allowed:
            raise AuditError(f"{name} must be one of {allowed}, got {val!r}")
    if (mean is None) != (std is None):
        raise AuditError("mean and std go together: give both or neither")
    if std is not None and np.any(np.asarray(std, dtype=np.float64) <= 0):
        raise AuditError(f"std must be positive, got {list(std)}")
    if resize is not None:
        try:
            resize = tuple(int(s) for s in resize)
        except (TypeError, ValueError) as exc:
            raise AuditError(f"resize must be (height, width), got {resize!r}") from exc
        if len(resize) != 2 or min(resize) < 1:
            raise AuditError(f"resize must be (height, width) with positive sizes, got {resize!r}")

    # --------------------------------------------------------------- what to audit, where
    from .backends import bundled_path

    bundled = model is None
    if model is None:
        model = bundled_path("mnist_lenet.onnx")
        if data is None:
            data = bundled_path("mnist_sample.npz")
    if data is None:
        raise AuditError("data is required when a model is given (--data PATH)")
    if resume and out is None:
        raise AuditError("resume needs the output folder of the audit to continue (--out DIR)")
    out = _default_out() if out is None else Path(out)
    _check_out(out, resume, force)
    if report:
        try:
            import matplotlib  # noqa: F401
        except ImportError as exc:
            raise AuditError("the report needs matplotlib: pip install 'fisher-ref[audit]' (or pass --no-report)") from exc
    if scheduler is not None:
        try:
            import distributed  # noqa: F401
        except ImportError as exc:
            raise AuditError("--scheduler needs dask.distributed: pip install 'fisher-ref[audit]'") from exc

    model_path = os.path.abspath(os.fspath(model))
    if not os.path.isfile(model_path):
        raise AuditError(f"model {model_path}: no such ONNX file")

    # --------------------------------------------------------------- data (raw), then the model
    if isinstance(data, (str, os.PathLike)):
        raw, y, data_desc, class_names = load_data(data, data_format=data_format, labels=labels, split=split,
                                                   resize=resize)
        if data_desc["format"] == "imagefolder":
            resize_later = None
        else:
            resize_later = resize
    else:
        if isinstance(data, tuple) and len(data) == 2:
            raw, y = np.asarray(data[0]), (None if data[1] is None else np.asarray(data[1]))
        else:
            raw, y = np.asarray(data), None
        if labels is not None:
            y = _read_labels_file(Path(labels)) if isinstance(labels, (str, os.PathLike)) else np.asarray(labels)
        if y is not None:
            if y.dtype.kind not in "iu":
                raise AuditError(f"labels must be integers, got an array of dtype {y.dtype}")
            y = y.astype(np.int64).reshape(-1)
        data_desc = {"path": None, "format": "array", "source": "array", "raw_shape": list(raw.shape),
                     "raw_dtype": str(raw.dtype)}
        class_names, resize_later = None, resize
    if bundled:
        data_desc["source"] = "bundled MNIST sample (500 MNIST test images, fisher_ref/data/mnist_sample.npz)"

    say(f"model: {model_path}")
    backend = _onnx_backend_for_data(model_path, providers, input_name, batch_size, raw, layout)
    input_shape = tuple(backend.input_shape)
    x, y, prep = prepare_data(raw, y, input_shape, limit=limit, layout=layout, scale=scale,
                              resize=resize_later, n_classes=backend.n_classes)
    if resize is not None:
        prep["resize"] = list(resize)
    data_desc.update(prep)
    n = x.shape[0]
    if bounds == "auto":
        bnds = (0.0, 1.0) if (x.min() >= 0 and x.max() <= 1) else None
    elif bounds is None:
        bnds = None
    else:
        try:
            lo, hi = (float(v) for v in bounds)
        except (TypeError, ValueError) as exc:
            raise AuditError(f"bounds must be 'auto', (lo, hi) or None, got {bounds!r}") from exc
        if not lo < hi:
            raise AuditError(f"bounds must satisfy lo < hi, got {bounds!r}")
        if x.min() < lo or x.max() > hi:
            raise AuditError(f"data lies in [{x.min():.4g}, {x.max():.4g}], outside bounds [{lo:g}, {hi:g}]; check "
                             "--scale or --bounds")
        bnds = (lo, hi)
    if mean is not None:
        _channel_shape(mean, input_shape, "mean"), _channel_shape(std, input_shape, "std")
    say(f"data:  {n} inputs of shape {_shape(input_shape)} from {data_desc['source']} "
        f"({'labels given' if y is not None else 'no labels: attacking the predictions'})")

    spec = {"model": model_path, "providers": _jsonable_providers(providers), "input_name": backend.input_name,
            "batch_size": batch_size, "input_shape": list(input_shape),
            "mean": None if mean is None else [float(v) for v in np.ravel(mean)],
            "std": None if std is None else [float(v) for v in np.ravel(std)],
            "k": k, "epsilons": eps, "bounds": None if bnds is None else list(bnds),
            "max_epsilon": max_epsilon, "tol": tol}
    n_shards = -(-n // shard_size)
    fingerprint = {
        "format_version": _FORMAT_VERSION,
        "model_sha256": _sha256_file(model_path),
        "data_sha256": _sha256_arrays(x, y),
        "n_inputs": n, "shard_size": shard_size, "n_shards": n_shards,
        **{key: spec[key] for key in ("input_name", "input_shape", "mean", "std", "k", "epsilons", "bounds",
                                      "max_epsilon", "tol")},
    }

    # --------------------------------------------------------------- the output folder
    manifest_path = out / SHARD_DIR / MANIFEST
    if force:
        _clean_out(out)
    _make_out(out)
    if resume and manifest_path.is_file():
        try:
            old = json.loads(manifest_path.read_text())["fingerprint"]
        except Exception as exc:
            raise AuditError(f"cannot resume: {str(manifest_path)!r} is unreadable ({_one_line(exc)}); "
                             "use --force to start over") from exc
        diff = sorted(key for key in set(old) | set(fingerprint) if old.get(key) != fingerprint.get(key))
        if diff:
            raise AuditError(f"cannot resume the audit in {str(out)!r}: {', '.join(diff)} differ from the interrupted "
                             "run's; use the same model, data and options, or --force to start over")
    else:
        if resume:
            say(f"nothing to resume in {out}: starting a new audit")
        _atomic_write(manifest_path, json.dumps({"fingerprint": fingerprint, "spec": spec, "data": data_desc},
                                                indent=2).encode())

    slices = [slice(i * shard_size, min(n, (i + 1) * shard_size)) for i in range(n_shards)]
    shards: dict[int, dict] = {}
    for i, sl in enumerate(slices):
        if resume:
            res = _read_shard(out, i, sl.stop - sl.start)
            if res is not None:
                shards[i] = res
    skipped = sorted(shards)
    pending = [i for i in range(n_shards) if i not in shards]
    if max_shards is not None:
        pending = pending[:max_shards]
    if skipped:
        say(f"resuming: {len(skipped)} of {n_shards} shards already done, {len(pending)} to compute")

    # --------------------------------------------------------------- compute
    bar = _progress(progress, n, sum(slices[i].stop - slices[i].start for i in skipped))
    computed: list[int] = []

    def done(i: int, res: dict) -> None:
        _write_shard(out, i, res, k, eps)
        shards[i] = res
        computed.append(i)
        bar.update(slices[i].stop - slices[i].start)

    idx_all = np.arange(n)
    try:
        if scheduler is None:
            for i in pending:
                sl = slices[i]
                done(i, compute_shard(spec, x[sl], None if y is None else y[sl], idx_all[sl]))
        else:
            _run_dask(scheduler, spec, x, y, slices, pending, done, fingerprint["data_sha256"][:10], say)
    finally:
        bar.close()

    complete = len(shards) == n_shards
    result = AuditResult(out=out, complete=complete, n_inputs=n, n_shards=n_shards, shards_computed=sorted(computed),
                         shards_skipped=skipped)
    if not complete:
        say(f"stopped after {len(computed)} new shards: {len(shards)} of {n_shards} done in {out / SHARD_DIR}; "
            "continue with --resume")
        result.seconds = time.perf_counter() - t_start
        return result

    # --------------------------------------------------------------- merge and summarise
    cols = {key: np.concatenate([shards[i][key] for i in range(n_shards)])
            for key in ("index", "label", "prediction", "confidence", "eigenvalues", "ossa_fooled", "fgm_fooled",
                        "least_perturbation", "adv_prediction", "adv_confidence")}
    text = "".join(_csv_text({key: shards[i][key] for key in shards[i]}, k, eps, header=(i == 0)) for i in range(n_shards))
    _atomic_write(out / "results.csv", text.encode())
    files = {"results.csv": out / "results.csv"}
    seconds_shards = float(sum(float(shards[i]["seconds"]) for i in range(n_shards)))
    summary = _summarise(cols, eps, k, n_vulnerable, y is not None)
    summary["model"] = {"path": model_path, "sha256": fingerprint["model_sha256"], "bundled": bundled,
                        "input_name": backend.input_name, "output_name": backend.output_name,
                        "output_kind": backend.output_kind_, "input_shape": list(input_shape),
                        "n_classes": int(backend.n_classes), "dtype": backend.dtype.name,
                        "providers": [p if isinstance(p, str) else p[0] for p in backend.providers]}
    summary["data"] = {**data_desc, "sha256": fingerprint["data_sha256"], "has_labels": y is not None,
                       "class_names": class_names, "normalization": None if mean is None else
                       {"mean": spec["mean"], "std": spec["std"]}}
    summary["config"] = {"k": k, "epsilons": eps, "limit": limit, "bounds": spec["bounds"],
                         "max_epsilon": max_epsilon, "tol": tol, "shard_size": shard_size, "n_shards": n_shards,
                         "scheduler": scheduler, "batch_size": batch_size}
    summary["run"] = {"fisher_ref_version": _version(), "finished": _dt.datetime.now().isoformat(timespec="seconds"),
                      "shards_computed": len(computed), "shards_resumed": len(skipped),
                      "compute_seconds": seconds_shards,
                      "n_degenerate": int(sum(int(shards[i]["n_degenerate"]) for i in range(n_shards)))}
    if report:
        from ._report import write_report

        x_adv = np.concatenate([shards[i]["x_adv"] for i in range(n_shards)])
        files.update(write_report(out, summary, cols, x, x_adv, class_names=class_names))
    files["summary.json"] = out / "summary.json"
    summary["files"] = sorted(files)
    summary["run"]["wall_seconds"] = time.perf_counter() - t_start
    _atomic_write(out / "summary.json", json.dumps(_json_clean(summary), indent=2, allow_nan=False).encode())
    result.summary, result.columns, result.files = summary, cols, files
    result.seconds = time.perf_counter() - t_start
    return result


def _onnx_backend_for_data(model_path, providers, input_name, batch_size, raw, layout):
    """The backend; a graph with symbolic non-batch dimensions takes the shape of the data."""
    try:
        return _onnx_backend(model_path, providers=providers, input_name=input_name, batch_size=batch_size)
    except AuditError as exc:
        if "cannot be inferred" not in str(exc) or raw.ndim < 2:
            raise
        return _onnx_backend(model_path, providers=providers, input_name=input_name, batch_size=batch_size,
                             input_shape=tuple(raw.shape[1:]))


def _run_dask(scheduler: str, spec, x, y, slices, pending, done, tag, say) -> None:
    """Run the pending shards as tasks on a Dask cluster; write each as it completes."""
    import logging

    from distributed import Client, LocalCluster, as_completed

    cluster = None
    if scheduler.startswith("local:"):
        try:
            n_workers = int(scheduler.split(":", 1)[1])
            if n_workers < 1:
                raise ValueError
        except ValueError:
            raise AuditError(f"scheduler must be an address or local:N with N >= 1 workers, got {scheduler!r}") from None
        cluster = LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                               dashboard_address=None, silence_logs=logging.ERROR)
        say(f"dask: LocalCluster of {n_workers} worker processes at {cluster.scheduler_address}")
        target = cluster
    else:
        target = scheduler
    try:
        try:
            client = Client(target, timeout="20s")
        except (OSError, TimeoutError) as exc:
            raise AuditError(f"cannot connect to the Dask scheduler at {scheduler!r}: {_one_line(exc)}") from exc
        try:
            if cluster is None:
                say(f"dask: {len(client.scheduler_info().get('workers', {}))} workers at {scheduler}")
            idx_all = np.arange(x.shape[0])
            futures = {}
            for i in pending:
                sl = slices[i]
                fut = client.submit(compute_shard, spec, x[sl], None if y is None else y[sl], idx_all[sl],
                                    key=f"fisher-ref-shard-{tag}-{i:05d}", pure=False)
                futures[fut.key] = (i, fut)
            for fut in as_completed([f for _, f in futures.values()]):
                i = futures[fut.key][0]
                done(i, fut.result())
        finally:
            client.close()
    finally:
        if cluster is not None:
            cluster.close()


class _NoBar:
    def update(self, n):
        pass

    def close(self):
        pass


def _progress(enabled: bool, total: int, initial: int):
    if not enabled:
        return _NoBar()
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is in the audit extra
        return _NoBar()
    return tqdm(total=total, initial=initial, unit="input", desc="fisher-ref audit", file=sys.stderr,
                dynamic_ncols=True, leave=True)


# ======================================================================================= summary
def _summarise(cols: dict, eps: list, k: int, n_vulnerable: int, has_labels: bool) -> dict:
    from scipy.stats import spearmanr

    n = cols["index"].shape[0]
    correct = cols["prediction"] == cols["label"] if has_labels else np.ones(n, dtype=bool)
    att = correct
    n_att = int(att.sum())
    lam1 = cols["eigenvalues"][:, 0]
    lp = cols["least_perturbation"]

    def rate(a):
        return None if n_att == 0 else float(a[att].mean())

    fooling = {"epsilons": eps,
               "ossa": [rate(cols["ossa_fooled"][:, j]) for j in range(len(eps))],
               "fgm": [rate(cols["fgm_fooled"][:, j]) for j in range(len(eps))],
               "over": "correctly classified inputs" if has_labels else "all inputs (no labels: predictions attacked)",
               "n": n_att}
    fin = att & np.isfinite(lp) & (lam1 > 0)
    rho = pval = None
    if fin.sum() >= 3 and np.ptp(lam1[fin]) > 0 and np.ptp(lp[fin]) > 0:
        r = spearmanr(np.log(lam1[fin]), lp[fin])
        rho, pval = float(r.statistic), float(r.pvalue)
    lp_att = lp[att]
    lp_fin = lp_att[np.isfinite(lp_att)]

    def stats(a):
        if a.size == 0:
            return None
        return {"min": float(a.min()), "median": float(np.median(a)), "mean": float(a.mean()), "max": float(a.max())}

    def entry(j):
        return {"index": int(cols["index"][j]), "label": (int(cols["label"][j]) if has_labels else None),
                "prediction": int(cols["prediction"][j]), "confidence": float(cols["confidence"][j]),
                "top_eigenvalue": float(lam1[j]), "least_perturbation": float(lp[j]),
                "adv_prediction": (int(cols["adv_prediction"][j]) if cols["adv_prediction"][j] >= 0 else None),
                "adv_confidence": float(cols["adv_confidence"][j])}

    cand = np.flatnonzero(att)
    by_lam = cand[np.argsort(-lam1[cand], kind="stable")][:n_vulnerable]
    cand_lp = cand[np.isfinite(lp[cand])]
    by_lp = cand_lp[np.argsort(lp[cand_lp], kind="stable")][:n_vulnerable]
    return {
        "n_inputs": n,
        "n_correct": int(correct.sum()) if has_labels else None,
        "accuracy": float(correct.mean()) if has_labels else None,
        "fooling_rate": fooling,
        "top_eigenvalue": stats(lam1),
        "n_zero_spectrum": int(np.sum(lam1 == 0)),
        "least_perturbation": {"attack": "ossa", "stats": stats(lp_fin),
                               "fooled_within_max_epsilon": (None if n_att == 0 else float(np.isfinite(lp_att).mean())),
                               "n": n_att},
        "spearman": {"rho": rho, "pvalue": pval, "n": int(fin.sum()),
                     "x": "log top eigenvalue", "y": "OSSA least l2 perturbation"},
        "most_vulnerable": {"by_top_eigenvalue": [entry(j) for j in by_lam],
                            "by_least_perturbation": [entry(j) for j in by_lp]},
    }


# ====================================================================================== helpers
def _json_clean(obj):
    if isinstance(obj, dict):
        return {str(k): _json_clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_clean(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        v = float(obj)
        return v if math.isfinite(v) else (None if math.isnan(v) else ("inf" if v > 0 else "-inf"))
    if isinstance(obj, np.ndarray):
        return _json_clean(obj.tolist())
    return obj


def _jsonable_providers(providers):
    if providers is None:
        return None
    if isinstance(providers, str):
        return [providers]
    return [p if isinstance(p, str) else [p[0], dict(p[1])] for p in providers]


def _shape(shape) -> str:
    shape = tuple(int(s) for s in shape)
    return "(" + ", ".join(map(str, shape)) + ("," if len(shape) == 1 else "") + ")"


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _version() -> str:
    from . import __version__

    return __version__
