"""One shard of the audit: the computation (here or on a Dask worker) and its two files.

A shard is ``shards/shard-NNNNN.npz`` (the exact arrays and the adversarial examples) and
``shards/shard-NNNNN.csv`` (its rows of ``results.csv``, with the header).
"""

from __future__ import annotations

import csv
import io
import math
import time
import warnings
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

from .._spectrum import fisher_spectrum
from ..attacks import DegenerateSpectrumWarning, fgm, least_perturbation, ossa
from ._errors import AuditError, ModelError
from ._model import backend_for
from .._text import one_line

__all__ = ["ShardSpec", "compute_shard", "shard_files", "shard_names", "read_shard_npz", "csv_text", "COLUMNS"]

#: The per-input arrays of a shard that make up ``results.csv`` (and AuditResult.columns).
COLUMNS = ("index", "label", "prediction", "confidence", "eigenvalues", "ossa_fooled", "fgm_fooled",
           "least_perturbation", "adv_prediction", "adv_confidence")


@dataclass(frozen=True)
class ShardSpec:
    """What a shard task needs besides its inputs: the model (by path) and the attack options."""

    model: str
    providers: list | None
    input_name: str
    output_name: str
    batch_size: int
    input_shape: tuple
    mean: list | None
    std: list | None
    k: int
    epsilons: tuple
    bounds: tuple | None
    max_epsilon: float
    tol: float

    def to_json(self) -> dict:
        d = asdict(self)
        return {key: (list(v) if isinstance(v, tuple) else v) for key, v in d.items()}


# ---------------------------------------------------------------------------------- compute
def _adversarial_at(b, x, at_lp, p, lp):
    """The OSSA example at each input's least perturbation (the input itself where there is none)."""
    x_adv = x.copy()
    adv_pred = np.full(x.shape[0], -1, dtype=np.int64)
    adv_conf = np.full(x.shape[0], np.nan)
    found = np.isfinite(lp) & (lp > 0)
    if found.any():
        x_adv[found] = at_lp.x_adv[found]
        pa = b.probabilities(x_adv[found])
        adv_pred[found], adv_conf[found] = pa.argmax(axis=1), pa.max(axis=1)
    already = lp == 0
    adv_pred[already], adv_conf[already] = p.argmax(axis=1)[already], p.max(axis=1)[already]
    return x_adv, adv_pred, adv_conf


def _audit_inputs(b, spec: ShardSpec, x: np.ndarray, labels: np.ndarray | None) -> dict:
    """Every column of the audit for the inputs ``x`` (the shard's computation, without I/O).

    One eigensolve per input: the spectrum ``(w, V)`` gives the eigenvalue columns, and its top
    pair is the direction of OSSA at every epsilon and of the least-perturbation search.
    """
    eps = list(spec.epsilons)
    bounds = None if spec.bounds is None else tuple(spec.bounds)
    # NaN or Inf a model produces is refused by the backend's checks (and blamed on an input by
    # compute_shard), so NumPy's floating-point warnings on the way there would only be noise
    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        warnings.simplefilter("ignore", DegenerateSpectrumWarning)
        p = b.probabilities(x)
        y = p.argmax(axis=1) if labels is None else np.asarray(labels, dtype=np.int64)
        spectrum = fisher_spectrum(x=x, backend=b, k=int(spec.k))
        w = spectrum[0]
        ro = ossa(x, b, epsilon=eps, labels=y, bounds=bounds, direction=spectrum)
        rf = fgm(x, b, epsilon=eps, labels=y, bounds=bounds)
        lp, at_lp = least_perturbation(x=x, backend=b, attack="ossa", labels=y, hi=float(spec.max_epsilon),
                                       tol=float(spec.tol), bounds=bounds, direction=spectrum, return_result=True)
        lp = np.asarray(lp, dtype=np.float64)
        x_adv, adv_pred, adv_conf = _adversarial_at(b, x, at_lp, p, lp)
    return {
        "label": (np.full(x.shape[0], -1, dtype=np.int64) if labels is None else y.astype(np.int64)),
        "prediction": p.argmax(axis=1).astype(np.int64),
        "confidence": p.max(axis=1),
        "eigenvalues": w,
        "ossa_fooled": np.stack([r.success for r in ro], axis=1),
        "fgm_fooled": np.stack([r.success for r in rf], axis=1),
        "least_perturbation": lp,
        "adv_prediction": adv_pred,
        "adv_confidence": adv_conf,
        "x_adv": x_adv.astype(np.float32),
        "n_degenerate": np.int64(np.sum(w[:, 0] == 0)),
    }


def _blame_input(b, spec: ShardSpec, x, labels, index) -> ModelError | None:
    """The first input that fails on its own: the model (not the finite data) produced the failure.

    First the inputs' probabilities and class gradients one at a time (cheap), then, if none of
    those fails, each input's whole audit (the failure was at a perturbed point).
    """
    def cheap(j):
        b.class_gradients(x[j:j + 1])

    def whole(j):
        _audit_inputs(b, spec, x[j:j + 1], None if labels is None else labels[j:j + 1])

    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        for attempt in (cheap, whole):
            for j in range(x.shape[0]):
                try:
                    attempt(j)
                except AuditError:
                    raise
                except ValueError as err:
                    return ModelError(f"model {spec.model}: it produced values the library refuses at input "
                                      f"{int(index[j])}, whose data is finite (so the model, not the data, made them): "
                                      f"{one_line(err)}")
    return None


def compute_shard(spec: ShardSpec, x: np.ndarray, labels: np.ndarray | None, index: np.ndarray) -> dict:
    """Audit one shard of inputs (the task run locally or on a Dask worker).

    Parameters
    ----------
    spec : ShardSpec
        The model (path of the ONNX file, loaded here) and the attack options.
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

    Raises
    ------
    ModelError
        When the model cannot be loaded here, or produces values the library refuses (NaN, Inf,
        not probabilities) at an input: the message names the first such input.
    """
    t0 = time.perf_counter()
    b = backend_for(spec)
    x = np.asarray(x, dtype=np.float64)
    try:
        res = _audit_inputs(b, spec, x, labels)
    except AuditError:
        raise
    except ValueError as exc:
        blame = _blame_input(b, spec, x, labels, index)
        if blame is None:
            raise
        raise blame from exc
    return {"index": np.asarray(index, dtype=np.int64), **res, "seconds": np.float64(time.perf_counter() - t0)}


# ---------------------------------------------------------------------------------- files
def csv_columns(k: int, epsilons: Sequence[float]) -> list[str]:
    cols = ["index", "label", "prediction", "confidence", "correct"]
    cols += [f"lambda_{i + 1}" for i in range(k)]
    cols += [f"ossa_fooled_eps{float(e):g}" for e in epsilons]
    cols += [f"fgm_fooled_eps{float(e):g}" for e in epsilons]
    cols += ["least_perturbation_ossa", "adv_prediction", "adv_confidence"]
    return cols


def _num(v: float) -> str:
    v = float(v)
    if math.isnan(v):
        return ""
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return repr(v)


def csv_text(res: dict, k: int, epsilons: Sequence[float], header: bool) -> str:
    """The rows of a shard in ``results.csv`` (with the header when asked)."""
    buf = io.StringIO()
    wr = csv.writer(buf, lineterminator="\n")
    if header:
        wr.writerow(csv_columns(k, epsilons))
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


def shard_names(i: int) -> tuple[str, str]:
    """``(npz, csv)`` paths of shard ``i``, relative to the output folder."""
    base = f"shards/shard-{i:05d}"
    return f"{base}.npz", f"{base}.csv"


def shard_files(i: int, res: dict, k: int, epsilons) -> list[tuple[str, bytes]]:
    """The files of shard ``i`` in the order they are written: the npz, then the CSV."""
    buf = io.BytesIO()
    np.savez(buf, **res)
    npz, csv_name = shard_names(i)
    return [(npz, buf.getvalue()), (csv_name, csv_text(res, k, epsilons, header=True).encode())]


def read_shard_npz(data: bytes) -> dict:
    """The arrays of a shard's npz (bytes already verified against the manifest)."""
    with np.load(io.BytesIO(data), allow_pickle=False) as f:
        return {key: f[key] for key in f.files}
