"""What :func:`~fisher_ref.detection.evaluate_detection` returns: AUC tables, the report, the ROC figure."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._validation import shape_str

__all__ = ["AUCTable", "DetectionReport", "plot_roc"]


@dataclass
class AUCTable:
    """A small table of AUC scores (rows x columns), without pandas.

    Attributes
    ----------
    rows, columns : list of str
    values : ndarray of shape (len(rows), len(columns))
        AUC in [0, 1] (``nan`` where it could not be computed).
    row_label : str
        Heading of the row names' column.
    """

    rows: list
    columns: list
    values: np.ndarray
    row_label: str = "detector"

    def __post_init__(self):
        self.rows, self.columns = [str(r) for r in self.rows], [str(c) for c in self.columns]
        self.values = np.asarray(self.values, dtype=np.float64)
        if self.values.shape != (len(self.rows), len(self.columns)):
            raise ValueError(f"values has shape {shape_str(self.values.shape)}, expected "
                             f"({len(self.rows)}, {len(self.columns)})")

    def __getitem__(self, key: Any) -> Any:
        """``table[row, column]`` is a float, ``table[row]`` a dict column -> float."""
        if isinstance(key, tuple):
            r, c = key
            return float(self.values[self.rows.index(r), self.columns.index(c)])
        return dict(zip(self.columns, self.values[self.rows.index(key)].tolist()))

    @property
    def shape(self) -> tuple[int, int]:
        return self.values.shape

    def to_dict(self) -> dict:
        """``{row: {column: auc}}``."""
        return {r: self[r] for r in self.rows}

    def to_markdown(self, *, percent: bool = True, digits: int = 2) -> str:
        """A GitHub-flavoured markdown table (AUC in % by default, as the paper's tables)."""
        def fmt(v: float) -> str:
            if not np.isfinite(v):
                return "n/a"
            return f"{100 * v:.{digits}f}" if percent else f"{v:.{digits + 2}f}"

        head = [self.row_label] + self.columns
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * len(self.columns)) + "|"]
        for r, vals in zip(self.rows, self.values):
            lines.append("| " + " | ".join([r] + [fmt(v) for v in vals]) + " |")
        return "\n".join(lines) + "\n"

    def to_csv(self, path: str | os.PathLike | None = None, *, percent: bool = False) -> str:
        """CSV text (AUC in [0, 1] by default, full precision); also written to ``path`` when given."""
        scale = 100.0 if percent else 1.0
        lines = [",".join([self.row_label] + self.columns)]
        for r, vals in zip(self.rows, self.values):
            lines.append(",".join([r] + ["" if not np.isfinite(v) else repr(float(v * scale)) for v in vals]))
        text = "\n".join(lines) + "\n"
        if path is not None:
            with open(path, "w", encoding="utf-8", newline="") as f:
                f.write(text)
        return text

    def __str__(self) -> str:
        return self.to_markdown()


@dataclass
class DetectionReport:
    """What :func:`evaluate_detection` measured.

    Attributes
    ----------
    auc : AUCTable
        Detectors x attacks, AUC on the held-out inputs (paper Table 4).
    cross : AUCTable or None
        The Fisher detector trained on the attack of the row, tested on the attack of the column
        (paper Table 5); its diagonal is the Fisher row of ``auc``. None without a Fisher detector.
    cross_detector : str or None
        The name of the detector in ``cross``.
    epsilon : dict of str to float
        The l2 budget used per attack (``nan`` for "opt", which has none).
    fooling_rate : dict of str to float
        Fraction of the correctly classified inputs each attack fooled.
    n_samples : dict of str to dict
        Per attack: ``train_negative``, ``train_positive``, ``test_negative``, ``test_positive``.
    train_inputs, test_inputs : ndarray of int
        Indices into ``X_clean`` of the inputs on each side of the split (disjoint).
    groups : dict of str to dict of str to ndarray
        Per attack, ``"train"`` / ``"test"``: for each sample, the index into ``X_clean`` of the
        input it was made from (clean copy, noisy copy or adversarial).
    roc : dict of (str, str) to (ndarray, ndarray)
        ``(fpr, tpr)`` per (detector, attack).
    skipped : dict of str to str
        Default detectors left out and why (a missing backend capability).
    roc_png : str or None
        Where the ROC figure was written.
    """

    auc: AUCTable
    cross: AUCTable | None
    cross_detector: str | None
    epsilon: dict
    fooling_rate: dict
    n_samples: dict
    train_inputs: np.ndarray
    test_inputs: np.ndarray
    groups: dict
    roc: dict = field(repr=False)
    skipped: dict = field(default_factory=dict)
    roc_png: str | None = None



def plot_roc(path: str, roc: dict, table: AUCTable) -> None:
    """One panel per attack, one curve per detector (matplotlib's Agg canvas: no global state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cols = min(len(table.columns), 3)
    nrows = math.ceil(len(table.columns) / cols)
    fig = Figure(figsize=(4.2 * cols, 4.0 * nrows))
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, cols, squeeze=False)
    for j, a in enumerate(table.columns):
        ax = axes[j // cols][j % cols]
        for i, name in enumerate(table.rows):
            if (name, a) in roc:
                fpr, tpr = roc[name, a]
                ax.plot(fpr, tpr, linestyle=("-", "--", ":", "-.")[i // 10 % 4],
                        label=f"{name} ({100 * table[name, a]:.1f})")
        ax.plot([0, 1], [0, 1], color="0.7", linestyle="--", linewidth=0.8)
        ax.set(title=a.upper(), xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1.01))
        ax.legend(loc="lower right", fontsize="small", title="AUC %")
    for j in range(len(table.columns), nrows * cols):
        axes[j // cols][j % cols].set_visible(False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
