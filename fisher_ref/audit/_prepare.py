"""Bringing raw inputs to the model's input space: checks, scale, resize, layout, bounds."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from ._config import LAYOUTS, SCALES
from ._errors import DataError, DependencyError
from .._validation import shape_str

__all__ = ["prepare_data", "resolve_bounds", "channel_shape"]


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
        raise DependencyError("resize needs Pillow: pip install pillow") from exc
    h, w = (int(s) for s in size)
    kind, axes = _spatial_axes(x.shape[1:], layout)
    if axes is None:
        raise DataError(f"resize: inputs of shape {shape_str(x.shape[1:])} are not images")
    if (x.shape[1 + axes[0]], x.shape[1 + axes[1]]) == (h, w):
        return x
    a = x.astype(np.float32)
    a = a[:, None] if kind == "hw" else (np.moveaxis(a, -1, 1) if kind == "hwc" else a)
    out = np.empty(a.shape[:2] + (h, w), dtype=np.float32)
    for i in range(a.shape[0]):
        for c in range(a.shape[1]):
            out[i, c] = np.asarray(Image.fromarray(a[i, c], mode="F").resize((w, h), Image.Resampling.BILINEAR))
    out = out[:, 0] if kind == "hw" else (np.moveaxis(out, 1, -1) if kind == "hwc" else out)
    return out.astype(np.float64)


def _to_model_layout(x: np.ndarray, shape: tuple, layout: str) -> tuple[np.ndarray, str]:
    """Reshape / transpose a batch ``x`` to ``(n, *shape)``; returns it and what was done."""
    d = tuple(x.shape[1:])
    n = x.shape[0]
    if d == shape and layout == "auto":
        return x, "none"
    if len(d) == 3 and len(shape) == 3:
        if layout in ("auto", "nhwc") and (d[2], d[0], d[1]) == shape:
            return np.ascontiguousarray(x.transpose(0, 3, 1, 2)), "NHWC -> NCHW"
        if layout in ("auto", "nchw") and (d[1], d[2], d[0]) == shape:
            return np.ascontiguousarray(x.transpose(0, 2, 3, 1)), "NCHW -> NHWC"
    if len(d) == 2 and len(shape) == 3:
        if shape == (1,) + d:
            return x[:, None], "added a channel axis (N, H, W) -> (N, 1, H, W)"
        if shape == d + (1,):
            return x[:, :, :, None], "added a channel axis (N, H, W) -> (N, H, W, 1)"
    if d == shape:
        return x, "none"
    if math.prod(d) == math.prod(shape) and (len(d) == 1 or len(shape) == 1):
        what = ""
        if len(d) == 3 and _spatial_axes(d, layout)[0] == "hwc" and d[-1] > 1:
            x = x.transpose(0, 3, 1, 2)  # flatten channel-first, as torch's view(n, -1) does
            what = "NHWC -> NCHW, "
        return np.ascontiguousarray(x).reshape((n,) + shape), what + f"reshaped {d} -> {shape}"
    raise DataError(f"data: inputs have shape {shape_str(d)}, but the model expects {shape_str(shape)} per input"
                    + ("" if layout == "auto" else f" (with --layout {layout})")
                    + _missing_batch_axis_hint(x.shape, shape) + "; check --layout, --resize or the model")


def _missing_batch_axis_hint(data_shape: tuple, shape: tuple) -> str:
    """A note when the whole array has the size of one input: the batch axis is probably missing."""
    if math.prod(data_shape) != math.prod(shape):
        return ""
    return (f"; the whole array {shape_str(data_shape)} has the size of one input: if it is a single input, "
            f"add a batch axis (save it with shape {shape_str((1,) + tuple(data_shape))}, e.g. x[None])")


def _check_raw(raw: np.ndarray, labels: np.ndarray | None) -> None:
    if raw.dtype.kind not in "biuf":
        raise DataError(f"data must hold real numbers, got an array of dtype {raw.dtype}")
    if raw.ndim < 2:
        raise DataError(f"data has shape {shape_str(raw.shape)}; expected a batch (n, *input_shape): if it is a "
                        f"single input, add a batch axis (save it with shape {shape_str((1,) + raw.shape)}, e.g. x[None])")
    if raw.shape[0] == 0:
        raise DataError(f"data is empty: shape {shape_str(raw.shape)}, 0 inputs")
    if labels is not None and labels.shape[0] != raw.shape[0]:
        raise DataError(f"labels: {labels.shape[0]} labels for {raw.shape[0]} inputs")


def _check_finite(raw: np.ndarray) -> None:
    if raw.dtype.kind != "f":
        return
    bad = ~np.isfinite(raw.reshape(raw.shape[0], -1)).all(axis=1)
    if bad.any():
        n_nan, n_inf, n_bad = int(np.isnan(raw).sum()), int(np.isinf(raw).sum()), int(bad.sum())
        raise DataError(f"data contains {n_nan} NaN and {n_inf} Inf values (in {n_bad} input{'s' if n_bad > 1 else ''}, "
                        f"the first at index {int(np.flatnonzero(bad)[0])}); expected finite values")


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

    Raises
    ------
    DataError
        For data that is not numeric, empty, not finite or does not fit the model, and labels
        that do not fit.
    """
    raw = np.asarray(raw)
    _check_raw(raw, labels)
    if limit is not None:
        raw, labels = raw[:limit], (None if labels is None else labels[:limit])
    _check_finite(raw)
    if scale not in SCALES or layout not in LAYOUTS:
        raise DataError(f"scale must be one of {SCALES} and layout one of {LAYOUTS}, got {scale!r}, {layout!r}")
    desc: dict = {"n": int(raw.shape[0])}
    if resize is not None:
        raw = _resize(raw, resize, layout)
        desc["resize"] = [int(s) for s in resize]
    divide = scale == "255" or (scale == "auto" and raw.dtype == np.uint8)
    x = raw.astype(np.float64) / 255.0 if divide else raw.astype(np.float64)
    desc["scale"] = "divided by 255" if divide else "none"
    x, desc["layout"] = _to_model_layout(x, tuple(input_shape), layout)
    desc["input_shape"] = list(input_shape)
    desc["range"] = [float(x.min()), float(x.max())]
    if labels is not None and n_classes is not None and (labels.min() < 0 or labels.max() >= n_classes):
        raise DataError(f"labels must lie in [0, {n_classes - 1}] (the model has {n_classes} classes), got "
                        f"values in [{labels.min()}, {labels.max()}]")
    return x, labels, desc


def resolve_bounds(x: np.ndarray, bounds, scaled: bool) -> tuple[float, float] | None:
    """The clipping bounds of the audit, checked against the data (as the attacks check them).

    ``"auto"`` means [0, 1], the range of scaled pixels: data outside it is refused with what to
    pass (``--scale 255``, ``--bounds``, ``--no-clip``) rather than audited unclipped without a word.
    """
    lo, hi = float(x.min()), float(x.max())
    if bounds is None:
        return None
    if bounds == "auto":
        if lo >= 0 and hi <= 1:
            return 0.0, 1.0
        hint = " (it looks like 0..255 pixels: pass --scale 255)" if lo >= 0 and hi <= 255 and not scaled else ""
        raise DataError(f"data lies in [{lo:.4g}, {hi:.4g}], outside [0, 1], the input range the audit assumes "
                        f"unless told{hint}; check --scale, or pass --bounds LO HI for the data's real range, or "
                        "--no-clip (bounds=None) to audit without bounds")
    b_lo, b_hi = bounds
    if lo < b_lo or hi > b_hi:
        raise DataError(f"data lies in [{lo:.4g}, {hi:.4g}], outside bounds [{b_lo:g}, {b_hi:g}]; check --scale "
                        "or --bounds")
    return float(b_lo), float(b_hi)


def channel_shape(values: Sequence[float], input_shape: tuple, what: str) -> np.ndarray:
    """Per-channel ``mean`` / ``std`` shaped to broadcast against one input."""
    a = np.asarray(values, dtype=np.float64).ravel()
    if a.size == 1:
        return a.reshape(())
    if len(input_shape) == 3:
        if input_shape[0] == a.size:
            return a.reshape(-1, 1, 1)
        if input_shape[-1] == a.size:
            return a.reshape(1, 1, -1)
    raise DataError(f"{what} has {a.size} values, but the model input {shape_str(input_shape)} has no channel axis "
                    "of that length (give one value, or one per channel)")
