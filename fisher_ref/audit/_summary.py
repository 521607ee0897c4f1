"""The audit's summary: fooling rates, eigenvalue statistics, the most vulnerable inputs, the
Spearman correlation of the top eigenvalue with the least perturbation (paper Figure 3)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ._shards import COLUMNS

__all__ = ["summarise", "json_clean", "merge_columns", "attacked"]


def merge_columns(shards: dict[int, dict]) -> dict:
    """The per-input columns of every shard, in shard order."""
    order = sorted(shards)
    return {key: np.concatenate([shards[i][key] for i in order]) for key in COLUMNS}


def attacked(cols: dict, has_labels: bool) -> np.ndarray:
    """The inputs the rates are over: those classified correctly (all of them without labels)."""
    return cols["prediction"] == cols["label"] if has_labels else np.ones(cols["index"].shape[0], dtype=bool)


def _stats(a: np.ndarray) -> dict | None:
    if a.size == 0:
        return None
    return {"min": float(a.min()), "median": float(np.median(a)), "mean": float(a.mean()), "max": float(a.max())}


def _fooling(cols: dict, att: np.ndarray, eps: list, has_labels: bool) -> dict:
    n_att = int(att.sum())

    def rate(a):
        return None if n_att == 0 else float(a[att].mean())

    return {"epsilons": eps,
            "ossa": [rate(cols["ossa_fooled"][:, j]) for j in range(len(eps))],
            "fgm": [rate(cols["fgm_fooled"][:, j]) for j in range(len(eps))],
            "over": "correctly classified inputs" if has_labels else "all inputs (no labels: predictions attacked)",
            "n": n_att}


def fooling_rate_population(fr: dict, *, why: bool = True) -> str:
    """Who the fooling rates are over, for a sentence: "8 correctly classified inputs", "1 input
    (no labels: the model's predictions are attacked)"."""
    from .._text import count

    if "correct" in fr["over"]:
        return count(fr["n"], "correctly classified input")
    return count(fr["n"], "input") + (" (no labels: the model's predictions are attacked)" if why else "")


def _spearman(lam1: np.ndarray, lp: np.ndarray, att: np.ndarray) -> dict:
    from scipy.stats import spearmanr

    fin = att & np.isfinite(lp) & (lam1 > 0)
    rho = pval = None
    if fin.sum() >= 3 and np.ptp(lam1[fin]) > 0 and np.ptp(lp[fin]) > 0:
        r = spearmanr(np.log(lam1[fin]), lp[fin])
        rho, pval = float(r.statistic), float(r.pvalue)
    return {"rho": rho, "pvalue": pval, "n": int(fin.sum()), "x": "log top eigenvalue",
            "y": "OSSA least l2 perturbation"}


def _entry(cols: dict, j: int, has_labels: bool) -> dict:
    ap = int(cols["adv_prediction"][j])
    return {"index": int(cols["index"][j]), "label": (int(cols["label"][j]) if has_labels else None),
            "prediction": int(cols["prediction"][j]), "confidence": float(cols["confidence"][j]),
            "top_eigenvalue": float(cols["eigenvalues"][j, 0]),
            "least_perturbation": float(cols["least_perturbation"][j]),
            "adv_prediction": ap if ap >= 0 else None, "adv_confidence": float(cols["adv_confidence"][j])}


def _most_vulnerable(cols: dict, att: np.ndarray, n_vulnerable: int, has_labels: bool) -> dict:
    lam1, lp = cols["eigenvalues"][:, 0], cols["least_perturbation"]
    cand = np.flatnonzero(att)
    by_lam = cand[np.argsort(-lam1[cand], kind="stable")][:n_vulnerable]
    cand_lp = cand[np.isfinite(lp[cand])]
    by_lp = cand_lp[np.argsort(lp[cand_lp], kind="stable")][:n_vulnerable]
    return {"by_top_eigenvalue": [_entry(cols, j, has_labels) for j in by_lam],
            "by_least_perturbation": [_entry(cols, j, has_labels) for j in by_lp]}


def summarise(cols: dict, eps: list, n_vulnerable: int, has_labels: bool) -> dict:
    """The results part of ``summary.json`` from the merged per-input columns."""
    n = cols["index"].shape[0]
    att = attacked(cols, has_labels)
    lam1, lp = cols["eigenvalues"][:, 0], cols["least_perturbation"]
    lp_att = lp[att]
    return {
        "n_inputs": n,
        "n_correct": int(att.sum()) if has_labels else None,
        "accuracy": float(att.mean()) if has_labels else None,
        "fooling_rate": _fooling(cols, att, eps, has_labels),
        "top_eigenvalue": _stats(lam1),
        "n_zero_spectrum": int(np.sum(lam1 == 0)),
        "least_perturbation": {"attack": "ossa", "stats": _stats(lp_att[np.isfinite(lp_att)]),
                               "fooled_within_max_epsilon": (None if not att.any() else
                                                             float(np.isfinite(lp_att).mean())),
                               "n": int(att.sum())},
        "spearman": _spearman(lam1, lp, att),
        "most_vulnerable": _most_vulnerable(cols, att, n_vulnerable, has_labels),
    }


def json_clean(obj):
    """``obj`` with NumPy scalars, paths and non-finite floats made JSON-safe (inf as a string)."""
    if isinstance(obj, dict):
        return {str(k): json_clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_clean(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        v = float(obj)
        return v if math.isfinite(v) else (None if math.isnan(v) else ("inf" if v > 0 else "-inf"))
    if isinstance(obj, np.ndarray):
        return json_clean(obj.tolist())
    return obj
