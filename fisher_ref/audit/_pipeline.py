"""``audit()``: resolve the inputs, open the output folder, compute the shards, summarise, report."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .._text import count
from ._config import AuditConfig
from ._inputs import Prepared, check_dependencies, prepare_inputs
from ._model import describe
from ._outdir import OutputFolder, default_out, precheck
from ._run import ShardRun, plan_shards, run_shards
from ._shards import csv_text
from ._summary import json_clean, merge_columns, summarise

__all__ = ["audit", "AuditResult"]


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
        Shards found complete (and verified) on disk (``resume=True``) and not computed again.
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


def _version() -> str:
    from .. import __version__

    return __version__


def _summary(prep: Prepared, cfg: AuditConfig, run: ShardRun, cols: dict) -> dict:
    """``summary.json`` without its ``files`` and wall time."""
    spec, fp = prep.spec, prep.fingerprint
    summary = summarise(cols, list(spec.epsilons), cfg.n_vulnerable, prep.y is not None)
    summary["model"] = {"path": prep.model_path, "sha256": fp["model_sha256"], "bundled": prep.bundled,
                        **describe(prep.backend)}
    summary["data"] = {**prep.raw.description, "sha256": fp["data_sha256"], "has_labels": prep.y is not None,
                       "class_names": prep.raw.class_names,
                       "normalization": None if spec.mean is None else {"mean": spec.mean, "std": spec.std}}
    summary["config"] = {"k": spec.k, "k_requested": cfg.k, "epsilons": list(spec.epsilons), "limit": cfg.limit,
                         "bounds": None if spec.bounds is None else list(spec.bounds), "max_epsilon": spec.max_epsilon,
                         "tol": spec.tol, "shard_size": cfg.shard_size, "n_shards": len(run.slices),
                         "scheduler": cfg.scheduler, "batch_size": spec.batch_size, "batch_size_requested": cfg.batch_size}
    shards = [run.done[i] for i in range(len(run.slices))]
    summary["run"] = {"fisher_ref_version": _version(), "finished": _dt.datetime.now().isoformat(timespec="seconds"),
                      "shards_computed": len(run.computed), "shards_resumed": len(run.skipped),
                      "compute_seconds": float(sum(float(s["seconds"]) for s in shards)),
                      "n_degenerate": int(sum(int(s["n_degenerate"]) for s in shards))}
    return summary


def _finish(prep: Prepared, cfg: AuditConfig, folder: OutputFolder, run: ShardRun, result: AuditResult,
            t_start: float) -> None:
    """Merge the shards into ``results.csv``, then the report and ``summary.json`` (each written atomically)."""
    spec = prep.spec
    cols = merge_columns(run.done)
    text = "".join(csv_text(run.done[i], spec.k, spec.epsilons, header=(i == 0)) for i in range(len(run.slices)))
    folder.write("results.csv", text.encode())
    names = ["results.csv"]
    summary = _summary(prep, cfg, run, cols)
    if cfg.report:
        from ._report import write_report

        x_adv = np.concatenate([run.done[i]["x_adv"] for i in range(len(run.slices))])
        names += write_report(folder.write, summary, cols, prep.x, x_adv, class_names=prep.raw.class_names)
    names.append("summary.json")
    summary["files"] = sorted(names)
    summary["run"]["wall_seconds"] = time.perf_counter() - t_start
    folder.write("summary.json", json.dumps(json_clean(summary), indent=2, allow_nan=False).encode())
    result.summary, result.columns = summary, cols
    result.files = {name: folder.path / name for name in names}


def _config(config: AuditConfig | None, options: dict) -> AuditConfig:
    if config is None:
        return AuditConfig(**options)
    if not isinstance(config, AuditConfig):
        raise TypeError(f"config must be an AuditConfig, got {type(config).__name__}")
    return dataclasses.replace(config, **options) if options else config


def audit(model: str | os.PathLike | None = None, data: Any = None, *, labels: Any = None,
          config: AuditConfig | None = None, log: Callable[[str], None] | None = None, **options) -> AuditResult:
    """Audit an ONNX classifier's Fisher information and its vulnerability to one-step attacks.

    For every input: the top-k eigenvalues of the input Fisher information ``G_x`` (paper eq. 4),
    whether OSSA (Algorithm 1) and FGM change the prediction at each l2 budget, the least OSSA
    budget that does (Table 2, Figure 3), the prediction and its confidence. Then fooling-rate
    curves, the most vulnerable inputs, the eigenvalue histogram and the Spearman correlation of
    the top eigenvalue with the least perturbation.

    Parameters
    ----------
    model : str or os.PathLike, optional
        The ONNX classifier (one float input, class scores out). Default: the bundled MNIST LeNet-5
        (``fisher_ref/data/mnist_lenet.onnx``).
    data : path, array-like of shape (n, ...) or tuple (x, labels), optional
        A file or folder (see :func:`load_data`: .npy, .npz, IDX, ImageFolder, CIFAR-10 pickle),
        or the inputs themselves. Default, only when ``model`` is omitted too: the 500 bundled
        MNIST test images.
    labels : path or array-like of int, optional
        True labels for data that has none. Without labels the attacks target the model's own
        predictions and accuracy is not reported.
    config : AuditConfig, optional
        The options as one object; keyword ``options`` given as well replace its fields.
    log : callable, optional
        Called with one line of text at each stage (the command line prints them).
    **options
        The fields of :class:`AuditConfig`: ``out`` (default a fresh
        ``fisher-ref-audit/run-YYYYmmdd-HHMMSS``), ``k`` (10; clamped, with a log line, to the
        input dimension and to C - 1, the most eigenvalues that can be nonzero), ``epsilons``
        ((0.5, 1, 2, 3)), ``limit``, ``providers``, ``batch_size`` (64), ``max_memory`` (bytes, or
        a size such as ``"2G"``, that one worker's derivative runs may hold: ``batch_size`` is
        lowered to fit; default a quarter of the memory available, shared by the workers), ``input_name``,
        ``output_name``, ``data_format``, ``split``, ``layout``, ``scale``, ``mean``, ``std``
        (normalisation applied inside the backend, so budgets and bounds stay in the scaled-pixel
        space), ``resize``, ``bounds`` ("auto": [0, 1], and data outside it is refused; ``(lo,
        hi)``; None: no clipping), ``max_epsilon`` (6), ``tol`` (1e-3), ``shard_size`` (50),
        ``n_vulnerable`` (8), ``resume``, ``force``, ``force_any``, ``break_lock``, ``scheduler``
        (``"tcp://host:8786"`` or ``"local:N"``), ``worker_timeout`` (60 s), ``max_shards``,
        ``progress``, ``report``.

    Returns
    -------
    AuditResult

    Raises
    ------
    AuditError
        For bad input, with a one-line message, as one of its subclasses: :class:`ConfigError`
        (an option), :class:`DataError` (unreadable, truncated, ragged, non-finite or out-of-range
        data, labels that do not fit), :class:`ModelError` (a missing or corrupt model, several
        inputs or outputs and no ``input_name`` / ``output_name``, an operator onnx-ad cannot
        differentiate, NaN the model produces at an input), :class:`OutputFolderError` (a folder
        that is not ours to overwrite, a symbolic link out of it, no space left:
        :class:`DiskFullError`; another audit's lock: :class:`FolderLockedError`; shards that cannot
        be proven: :class:`NotResumableError`), :class:`DependencyError`, :class:`SchedulerError`
        (Dask unreachable, workers that keep dying or are gone).
    KeyboardInterrupt
        Shards finished before the interruption are on disk; ``resume=True`` continues.

    Notes
    -----
    Fooling rates are over the inputs the model classifies correctly (all inputs when there are
    no labels): an input already misclassified is "fooled" at epsilon 0 and says nothing about the
    attack. The same inputs enter the vulnerability ranking and the Spearman correlation
    between :math:`\\log \\lambda_1` and the OSSA least perturbation (Figure 3 of the paper shows
    that a larger top eigenvalue goes with a smaller perturbation, i.e. a negative correlation).

    The output folder is owned by ``manifest.json``: every file is listed there before it is
    written, and written to a temporary name, synced and renamed. ``force`` removes only what a
    manifest lists; ``resume`` uses a shard only when its row range, options fingerprint and the
    SHA-256 of its files match, and recomputes (saying so) any other.

    References
    ----------
    Zhao et al., AAAI 2019: eq. 4 (Fisher information), Algorithm 1 (OSSA), Table 2 and Figure 3
    (least perturbation against the eigenvalue).
    """
    t_start = time.perf_counter()
    say = log or (lambda s: None)
    cfg = _config(config, options)
    out = default_out() if cfg.out is None else cfg.out
    precheck(out, cfg)
    check_dependencies(cfg)
    prep = prepare_inputs(model, data, labels, cfg, say)
    folder = OutputFolder(out, say)
    continued = folder.open(cfg, {"fingerprint": prep.fingerprint, "spec": prep.spec.to_json(),
                                  "data": prep.raw.description})
    try:
        run = plan_shards(prep, folder, cfg, continued, say)
        result = AuditResult(out=out, complete=False, n_inputs=prep.n, n_shards=len(run.slices),
                             shards_skipped=run.skipped, shards_computed=run.computed)
        run_shards(prep, folder, cfg, run, say)
        result.complete = run.complete
        result.shards_computed = sorted(run.computed)
        if run.complete:
            _finish(prep, cfg, folder, run, result, t_start)
        else:
            say(f"stopped after {count(len(run.computed), 'new shard')}: {len(run.done)} of {len(run.slices)} done "
                f"in {out / 'shards'}; continue with --resume")
    finally:
        folder.close()
    result.seconds = time.perf_counter() - t_start
    return result
