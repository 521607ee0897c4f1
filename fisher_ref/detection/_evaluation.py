"""The evaluation of the paper's Tables 4 and 5: :func:`evaluate_detection` and its steps.

:func:`evaluate_detection` is a short pipeline of named steps:

1. :func:`split_by_input`: the correctly classified inputs into train and test (every copy of an
   input falls on its side; one split for every attack);
2. :func:`attack_budgets`: the l2 budget of each attack (default: FGM's 90th percentile least
   perturbation);
3. :func:`attack_and_augment`: each attack, and per fooled input its clean copy, a noisy copy
   (negatives) and the adversarial input (positive);
4. :func:`features_once`: each detector's features of every sample, once whatever the number of
   attacks;
5. :func:`auc_table` (Table 4: detectors x attacks) and :func:`cross_attack_table` (Table 5: the
   Fisher detector trained on one attack, tested on another).
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from sklearn.base import clone
from sklearn.metrics import roc_auc_score, roc_curve

from .._backend import Backend, as_backend, public_order
from .._progress import progress as show_progress
from .._validation import check_bounds, check_labels, check_real, shape_str
from ..attacks import AttackResult, bim, fgm, iterative_ossa, least_perturbation, opt, ossa, otcm
from ._base import generator
from ._detectors import (BayesianUncertaintyDetector, Detector, FisherDetector, KDBUDetector, KernelDensityDetector,
                         LIDDetector)
from ._features import FisherSpectrumFeatures
from ._tables import AUCTable, DetectionReport, plot_roc

__all__ = ["ATTACKS", "attack_and_augment", "attack_budgets", "auc_table", "cross_attack_table", "default_detectors",
           "evaluate_detection", "features_once", "split_by_input"]

#: The attacks :func:`evaluate_detection` knows by name: ``name -> (attack, takes rng=, iterative)``.
#: An attack that draws random numbers gets the evaluation's generator unless its options name one;
#: the iterative ones default to 10 steps of ``epsilon / 5``; Opt has no budget.
_BY_NAME: dict[str, tuple[Callable, bool, bool]] = {
    "fgm": (fgm, False, False), "otcm": (otcm, True, False), "opt": (opt, True, False),
    "bim": (bim, False, True), "ossa": (ossa, True, False), "iterative_ossa": (iterative_ossa, True, True)}
ATTACKS = tuple(_BY_NAME)
#: Fewest correctly classified inputs an evaluation accepts.
MIN_INPUTS = 4


@dataclass(frozen=True)
class _Attack:
    """One attack to run: a name of :data:`ATTACKS` (``kind``) or a callable (``fn``)."""

    kind: str | None
    fn: Callable | None
    options: dict


@dataclass
class _Samples:
    """The samples of one attack: rows into the sample matrix, label (1 adversarial), source input."""

    rows: np.ndarray
    labels: np.ndarray
    sources: np.ndarray


# ---------------------------------------------------------------------------------------------
# arguments


def _check_attacks(attacks: Any, epsilon: Any, attack_options: Any) -> dict[str, _Attack]:
    """``{name: _Attack}`` from the ``attacks`` argument; per-attack mappings name only those attacks."""
    if isinstance(attacks, Mapping):
        given = {str(k): v for k, v in attacks.items()}
    else:
        given = {str(a): str(a) for a in ((attacks,) if isinstance(attacks, str) else attacks)}
    if not given:
        raise ValueError("attacks must name at least one attack")
    for name, v in given.items():
        if isinstance(v, str) and v not in ATTACKS:
            raise ValueError(f"attacks must be names from {ATTACKS} or a mapping to callables, got {v!r}")
        if not isinstance(v, str) and not callable(v):
            raise TypeError(f"attack {name!r} must be a name or a callable, got {type(v).__name__}")
    options = dict(attack_options or {})
    for what, per_attack in (("attack_options", options), ("epsilon", epsilon if isinstance(epsilon, Mapping) else {})):
        unknown = [a for a in per_attack if a not in given]
        if unknown:
            raise ValueError(f"{what} has entries for attacks not run: {unknown} (attacks: {list(given)})")
    return {name: _Attack(kind=v if isinstance(v, str) else None, fn=None if isinstance(v, str) else v,
                          options=dict(options.get(name, {}))) for name, v in given.items()}


def _check_data(backend: Any, X_clean: Any, y_clean: Any) -> tuple[Backend, np.ndarray, np.ndarray, np.ndarray]:
    """``(backend, X (n, *input_shape), y (n,), the indices of the correctly classified inputs)``."""
    b = as_backend(backend)
    X, _ = b.as_batch(X_clean, "X_clean")
    if X.ndim != len(b.input_shape) + 1:
        raise ValueError(f"X_clean must be a batch (n, *input_shape), got shape {shape_str(np.shape(X_clean))}")
    p = b.probabilities(X)
    y = check_labels(y_clean, X.shape[0], p.shape[1], "y_clean")
    correct = np.flatnonzero(p.argmax(axis=1) == y)
    if correct.size < MIN_INPUTS:
        raise ValueError(f"only {correct.size} of the {X.shape[0]} inputs are classified correctly; "
                         f"need at least {MIN_INPUTS}")
    return b, X, y, correct


def _check_detectors(detectors: Any) -> dict:
    if not isinstance(detectors, Mapping) or not detectors:
        raise ValueError("detectors must be a non-empty mapping of name to detector")
    for name, det in detectors.items():
        if not isinstance(det, Detector) and not (hasattr(det, "fit") and hasattr(det, "predict_proba")):
            raise TypeError(f"detector {name!r} must be a detector of fisher_ref or a scikit-learn classifier, "
                            f"got {type(det).__name__}")
    return dict(detectors)


# ---------------------------------------------------------------------------------------------
# the steps


class _ShuffleSplitOnGenerator:
    """A shuffle split of the inputs drawn from a NumPy Generator: ``round(test_size * n)`` held out
    (at least one input on each side). The split of :func:`evaluate_detection` by default."""

    def __init__(self, test_size: float, rng: np.random.Generator):
        self.test_size, self.rng = test_size, rng

    def get_n_splits(self, X: Any = None, y: Any = None, groups: Any = None) -> int:
        return 1

    def split(self, X: Any, y: Any = None, groups: Any = None):
        n = len(X)
        perm = self.rng.permutation(n)
        n_test = min(max(1, int(round(self.test_size * n))), n - 1)
        yield perm[n_test:], perm[:n_test]


def split_by_input(X: np.ndarray, y: np.ndarray, correct: np.ndarray,
                   splitter: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(train_inputs, test_inputs)``: sorted indices into ``X`` of the correctly classified inputs.

    ``splitter`` is a scikit-learn group splitter (e.g.
    :class:`~sklearn.model_selection.GroupShuffleSplit`); each input is its own group, so all
    samples made from an input (clean, noisy and adversarial copies, of every attack) fall on its
    side. Its first split is used; it must put every input on exactly one side.
    """
    if not hasattr(splitter, "split"):
        raise TypeError(f"splitter must be a scikit-learn splitter with split(X, y, groups), "
                        f"got {type(splitter).__name__}")
    train, test = next(iter(splitter.split(X[correct].reshape(correct.size, -1), y[correct], groups=correct)))
    train, test = np.asarray(train, dtype=np.int64), np.asarray(test, dtype=np.int64)
    both, neither = np.intersect1d(train, test).size, correct.size - np.union1d(train, test).size
    if train.size == 0 or test.size == 0 or both or neither:
        raise ValueError(f"splitter must put each of the {correct.size} correctly classified inputs on one side, "
                         f"both sides non-empty; got {train.size} train and {test.size} test inputs, {both} on "
                         f"both sides, {neither} on neither")
    return np.sort(correct[train]), np.sort(correct[test])


def attack_budgets(b: Backend, Xc: np.ndarray, yc: np.ndarray, plan: dict[str, _Attack], epsilon: Any,
                   bounds: tuple[float, float] | None) -> dict[str, float]:
    """The l2 budget of each attack (``nan`` for Opt): ``epsilon``, per attack or for all; where it is
    not given, the 90th percentile of FGM's least perturbation over ``Xc`` (binary search)."""
    def given(a: str) -> Any:
        return epsilon.get(a) if isinstance(epsilon, Mapping) else epsilon

    missing = [a for a, at in plan.items() if at.kind != "opt" and given(a) is None]
    eps_default = None
    if missing:
        if bounds is not None:
            hi = (bounds[1] - bounds[0]) * math.sqrt(math.prod(b.input_shape))
        else:
            hi = 10.0 * float(np.max(np.linalg.norm(Xc.reshape(Xc.shape[0], -1), axis=1))) + 1.0
        lp = least_perturbation(x=Xc, backend=b, attack="fgm", labels=yc, lo=0.0, hi=hi, tol=hi * 1e-4, bounds=bounds)
        lp = lp[np.isfinite(lp)]
        if lp.size == 0:
            raise ValueError("FGM fools none of the inputs at any budget: pass epsilon explicitly")
        eps_default = float(np.percentile(lp, 90))
    eps = {}
    for a, at in plan.items():
        e = given(a)
        eps[a] = math.nan if at.kind == "opt" else check_real(eps_default if e is None else e, f"epsilon[{a!r}]",
                                                             min_val=0, include_boundaries="neither")
    return eps


def _run_attack(at: _Attack, X: np.ndarray, b: Backend, y: np.ndarray, eps: float, bounds: Any,
                rng: np.random.Generator) -> AttackResult:
    opts = dict(at.options)
    if at.fn is not None:
        return at.fn(X, b, labels=y, bounds=bounds, epsilon=eps, **opts)
    fn, takes_rng, iterative = _BY_NAME[at.kind]
    if takes_rng:
        opts.setdefault("rng", rng)
    if iterative:
        opts.setdefault("step_size", eps / 5)
        opts.setdefault("n_steps", 10)
    if at.kind == "opt":
        return fn(X, b, labels=y, bounds=bounds, **opts)
    return fn(X, b, epsilon=eps, labels=y, bounds=bounds, **opts)


def _same_norm_noise(X: np.ndarray, adv: np.ndarray, bounds: Any, rng: np.random.Generator) -> np.ndarray:
    """``X`` plus Gaussian noise of the l2 norm of ``adv - X`` per input, clipped to ``bounds``."""
    n = X.shape[0]
    norms = np.linalg.norm((adv - X).reshape(n, -1), axis=1)
    z = rng.standard_normal(adv.shape)
    zn = np.linalg.norm(z.reshape(n, -1), axis=1)
    noisy = X + z * (norms / zn).reshape((-1,) + (1,) * (z.ndim - 1))
    return noisy if bounds is None else np.clip(noisy, bounds[0], bounds[1])


def attack_and_augment(b: Backend, Xc: np.ndarray, yc: np.ndarray, sources: np.ndarray, plan: dict[str, _Attack],
                       eps: dict[str, float], bounds: Any, noise: str | None, rng: np.random.Generator,
                       progress: bool) -> tuple[np.ndarray, dict[str, _Samples], dict[str, float]]:
    """Run every attack on ``Xc``; per fooled input: clean copy and noisy copy (0), adversarial (1).

    Returns ``(samples, {attack: _Samples}, {attack: fooling rate})``. The clean copies are shared
    by all attacks (rows ``0..len(Xc) - 1``); ``sources[i]`` names the input ``Xc[i]`` came from.
    """
    samples, per_attack, fooling = [Xc], {}, {}
    offset = Xc.shape[0]
    for a in show_progress(list(plan), enabled=progress, desc="attacks"):
        r = _run_attack(plan[a], Xc, b, yc, eps[a], bounds, rng)
        ok = np.asarray(r.success, dtype=bool).reshape(-1)
        fooling[a] = float(ok.mean())
        if not ok.any():
            raise ValueError(f"attack {a!r} fooled none of the {Xc.shape[0]} inputs: raise its epsilon")
        sel = np.flatnonzero(ok)
        adv = np.asarray(r.x_adv, dtype=np.float64).reshape(Xc.shape)[sel]
        copies = [Xc[sel], adv] if noise is None else [Xc[sel], _same_norm_noise(Xc[sel], adv, bounds, rng), adv]
        rows = [sel]
        for copy in copies[1:]:
            samples.append(copy)
            rows.append(offset + np.arange(sel.size))
            offset += sel.size
        labels = np.zeros(len(rows) * sel.size, dtype=np.int64)
        labels[-sel.size:] = 1
        per_attack[a] = _Samples(np.concatenate(rows), labels, np.tile(sources[sel], len(rows)))
    return np.concatenate(samples), per_attack, fooling


def features_once(detectors: dict, X_fit: np.ndarray, samples: np.ndarray, progress: bool) -> tuple[dict, dict]:
    """``({name: features of every sample}, {name: fitted feature map or None})``.

    A :class:`Detector`'s feature map is fitted on ``X_fit`` (the clean training inputs) and maps
    every sample once, whatever the number of attacks; another classifier sees the flattened inputs.
    """
    feats, transformers = {}, {}
    for name in show_progress(list(detectors), enabled=progress, desc="features"):
        det = detectors[name]
        if isinstance(det, Detector):
            transformers[name] = det.make_transformer().fit(X_fit)
            feats[name] = transformers[name].transform(samples)
        else:
            transformers[name] = None
            feats[name] = samples.reshape(samples.shape[0], -1)
    return feats, transformers


def _fit(det: Any, F: np.ndarray, y: np.ndarray, transformer: Any) -> Any:
    model = clone(det)
    return model.fit(F, y) if transformer is None else model.fit_from_features(F, y, transformer)


def _proba(model: Any, F: np.ndarray, transformer: Any) -> np.ndarray:
    return model.predict_proba(F) if transformer is None else model.predict_proba_from_features(F)


def _both_classes(labels: np.ndarray, what: str, side: str) -> bool:
    if np.unique(labels).size < 2:
        warnings.warn(f"{what}: the {side} split lacks a class; AUC left as nan", UserWarning, stacklevel=4)
        return False
    return True


def auc_table(detectors: dict, feats: dict, transformers: dict, per_attack: dict[str, _Samples],
              is_test: np.ndarray, progress: bool) -> tuple[AUCTable, dict, dict]:
    """Table 4: each detector trained per attack on the training inputs' samples, its AUC on the
    held-out ones. Returns ``(table, {(detector, attack): (fpr, tpr)}, {(detector, attack): model})``."""
    names, attacks = list(detectors), list(per_attack)
    auc = np.full((len(names), len(attacks)), np.nan)
    roc, models = {}, {}
    for i, name in enumerate(show_progress(names, enabled=progress, desc="detectors")):
        for j, a in enumerate(attacks):
            s = per_attack[a]
            te = is_test[s.sources]
            F = feats[name][s.rows]
            if not _both_classes(s.labels[~te], f"{name} / {a}", "training"):
                continue
            models[name, a] = _fit(detectors[name], F[~te], s.labels[~te], transformers[name])
            if not _both_classes(s.labels[te], f"{name} / {a}", "test"):
                continue
            score = _proba(models[name, a], F[te], transformers[name])[:, 1]
            auc[i, j] = roc_auc_score(s.labels[te], score)
            fpr, tpr, _ = roc_curve(s.labels[te], score)
            roc[name, a] = (fpr, tpr)
    return AUCTable(names, attacks, auc), roc, models


def cross_attack_table(name: str, feats: np.ndarray, transformer: Any, models: dict, per_attack: dict[str, _Samples],
                       is_test: np.ndarray) -> AUCTable:
    """Table 5: detector ``name`` trained on the attack of the row, its AUC on the held-out samples of
    the attack of the column (the diagonal is its row of :func:`auc_table`)."""
    attacks = list(per_attack)
    cv = np.full((len(attacks), len(attacks)), np.nan)
    for i, a in enumerate(attacks):
        if (name, a) not in models:
            continue
        for j, t in enumerate(attacks):
            s = per_attack[t]
            te = is_test[s.sources]
            if np.unique(s.labels[te]).size < 2:
                continue
            score = _proba(models[name, a], feats[s.rows][te], transformer)
            cv[i, j] = roc_auc_score(s.labels[te], score[:, 1])
    return AUCTable(attacks, attacks, cv, row_label="trained on \\ tested on")


def _split_sizes(per_attack: dict[str, _Samples], is_test: np.ndarray) -> tuple[dict, dict]:
    """``n_samples`` and ``groups`` of :class:`DetectionReport`."""
    n_samples, groups = {}, {}
    for a, s in per_attack.items():
        te = is_test[s.sources]
        n_samples[a] = {"train_negative": int(np.sum(~te & (s.labels == 0))),
                        "train_positive": int(np.sum(~te & (s.labels == 1))),
                        "test_negative": int(np.sum(te & (s.labels == 0))),
                        "test_positive": int(np.sum(te & (s.labels == 1)))}
        groups[a] = {"train": s.sources[~te], "test": s.sources[te]}
    return n_samples, groups


def default_detectors(backend: Any, *, X_train: Any = None, y_train: Any = None, random_state: Any = 0,
                      bandwidth: float = 1.0) -> tuple[dict, dict]:
    """The detectors of the paper's Table 4 (plus LID) that ``backend`` supports, and the skipped ones.

    Returns ``({name: detector}, {name: reason})`` with names "KD", "BU", "KD+BU", "LID", "Fisher".
    """
    b = as_backend(backend)
    dets, skipped = {}, {}
    feats, mc = b.supports("features"), b.supports("stochastic_probabilities")
    why_f = "the backend has no 'features' capability"
    why_s = "the backend has no 'stochastic_probabilities' capability (Monte-Carlo dropout)"
    if feats:
        dets["KD"] = KernelDensityDetector(b, bandwidth=bandwidth, X_train=X_train, y_train=y_train)
    else:
        skipped["KD"] = why_f
    if mc:
        dets["BU"] = BayesianUncertaintyDetector(b, random_state=random_state)
    else:
        skipped["BU"] = why_s
    if feats and mc:
        dets["KD+BU"] = KDBUDetector(b, bandwidth=bandwidth, X_train=X_train, y_train=y_train,
                                     random_state=random_state)
    else:
        skipped["KD+BU"] = why_f if not feats else why_s
    if feats:
        dets["LID"] = LIDDetector(b, random_state=random_state)
    else:
        skipped["LID"] = why_f
    dets["Fisher"] = FisherDetector(b, random_state=random_state)
    return dets, skipped


def _cross_detector(detectors: dict) -> str | None:
    """The first detector on Fisher spectrum features: the one Table 5 crosses over attacks."""
    return next((nm for nm, d in detectors.items()
                 if isinstance(d, Detector) and isinstance(d.features, FisherSpectrumFeatures)), None)


# ---------------------------------------------------------------------------------------------
# the pipeline


def evaluate_detection(X_clean: Any, backend: Any, y_clean: Any, *,
                       attacks: Sequence[str] | Mapping[str, Callable] = ("fgm", "otcm", "opt", "bim", "ossa"),
                       detectors: Mapping[str, Any] | None = None, epsilon: float | Mapping[str, float] | None = None,
                       bounds: tuple[float, float] | None = (0.0, 1.0), noise: str | None = "same_norm",
                       attack_options: Mapping[str, dict] | None = None, test_size: float | None = None,
                       splitter: Any = None, random_state: int | None = 0, X_train: Any = None, y_train: Any = None,
                       roc_png: str | os.PathLike | None = None, progress: bool = True) -> DetectionReport:
    """AUC of adversarial-example detectors against several attacks (paper Tables 4 and 5).

    Data are built as in the paper (after Feinman et al. 2017): the inputs of ``X_clean`` that the
    model classifies correctly are attacked; for every input an attack fools, its clean copy and a
    noisy copy are negatives and the adversarial input a positive. The noisy copy is the input
    plus Gaussian noise rescaled to the l2 norm of that input's adversarial perturbation, clipped to
    ``bounds``. The inputs (not the copies) are split into train and test, so all copies of an
    input fall on the same side; the same split serves every attack, so the cross-attack matrix
    never tests on an input seen in training either.

    Parameters
    ----------
    X_clean : array-like of shape (n, *input_shape)
        Clean inputs (inside ``bounds``).
    backend : Backend, callable, torch.nn.Module or ONNX model
    y_clean : array-like of int of shape (n,)
        Their true labels. (The order ``evaluate_detection(backend, X_clean, y_clean)`` of earlier
        releases works with a FutureWarning.)
    attacks : sequence of str or mapping of str to callable
        Names from "fgm", "otcm", "opt", "bim", "ossa", "iterative_ossa", or ``{name: fn}`` with
        ``fn(X, backend, labels=, bounds=, epsilon=, **options)`` returning an
        :class:`~fisher_ref.AttackResult` (``fn`` may also be one of those names).
    detectors : mapping of str to detector, optional
        Default: "KD", "BU", "KD+BU", "LID" (those the backend's capabilities allow, see
        :func:`default_detectors`) and "Fisher" (:func:`~fisher_ref.detection.FisherDetector`). A
        :class:`~fisher_ref.detection.Detector` has its features computed once per input; any other
        scikit-learn classifier is fit on the flattened raw inputs. The first detector on
        :class:`~fisher_ref.detection.FisherSpectrumFeatures` is crossed over the attacks (Table 5).
    epsilon : float or mapping of str to float, optional
        l2 budget of the budgeted attacks (a mapping gives it per attack). Default: the 90th
        percentile of FGM's least successful perturbation over the correctly classified inputs
        (binary search, :func:`~fisher_ref.least_perturbation`), so that FGM fools about 90% of
        them - the operating point the paper quotes for its one-step attacks (Section 3.4).
    bounds : (float, float) or None
        Input domain of the attacks and the noise.
    noise : {"same_norm"} or None
        How negatives are augmented: "same_norm" adds the noisy copies described above; None
        keeps clean negatives only.
    attack_options : mapping of str to dict, optional
        Keyword arguments per attack, e.g. ``{"opt": {"max_iter": 50}, "bim": {"n_steps": 20}}``.
        BIM and iterative OSSA default to 10 steps of ``epsilon / 5``.
    test_size : float, default=0.3
        Fraction of the inputs held out for testing, in (0, 1), by the default split (not with
        ``splitter``).
    splitter : scikit-learn group splitter, optional
        How the correctly classified inputs are split, each input its own group, e.g.
        ``GroupShuffleSplit(n_splits=1, test_size=0.3, random_state=0)`` (its first split is used).
        Default: a shuffle split drawn from the evaluation's generator (seeded by ``random_state``)
        before the attacks, ``round(test_size * n)`` inputs held out - the split behind the numbers
        published with fisher_ref; GroupShuffleSplit draws its own permutation (and rounds the test
        size up), so it holds out other inputs and the attacks then draw other random numbers.
    random_state : int or None
        Seeds the split, the noise, the random attack targets and the default detectors.
    X_train, y_train : array-like, optional
        Clean training inputs (and labels) for the KD detector's density estimates; default the
        clean inputs of the training split.
    roc_png : str or path, optional
        Write the ROC curves there (one panel per attack; matplotlib, Agg canvas, imported lazily).
    progress : bool
        Progress of the attacks, features and detectors on stderr: a tqdm bar on a terminal (when
        tqdm is installed), one line per step elsewhere.

    Returns
    -------
    DetectionReport
        ``.auc`` (detectors x attacks), ``.cross`` (the Fisher detector across attacks), the split,
        the ROC curves; see :class:`DetectionReport`.

    Raises
    ------
    ValueError
        For bad arguments, too few correctly classified inputs, or an attack that fools no input.
    fisher_ref.MissingCapabilityError
        If a detector given in ``detectors`` needs a capability the backend lacks.

    References
    ----------
    Zhao et al., AAAI 2019, Section 4, Table 4 (AUC per attack) and Table 5 (generalisation).
    Feinman et al. (2017), Section 4 (clean, noisy and adversarial samples).
    """
    X_clean, backend = public_order(X_clean, backend, "evaluate_detection")
    b, X, y, correct = _check_data(backend, X_clean, y_clean)
    bnds = check_bounds(bounds, X)
    if splitter is not None and test_size is not None:
        raise ValueError("test_size is the default split's; with splitter=, give the test size to the splitter")
    test_size = 0.3 if test_size is None else check_real(test_size, "test_size", min_val=0, max_val=1,
                                                         include_boundaries="neither")
    if noise not in ("same_norm", None):
        raise ValueError(f"noise must be 'same_norm' or None, got {noise!r}")
    plan = _check_attacks(attacks, epsilon, attack_options)
    rng = generator(random_state)
    if splitter is None:
        splitter = _ShuffleSplitOnGenerator(test_size, rng)  # draws from rng before the attacks do
    train_inputs, test_inputs = split_by_input(X, y, correct, splitter)
    skipped: dict = {}
    if detectors is None:
        Xkd, ykd = (X_train, y_train) if X_train is not None else (X[train_inputs], y[train_inputs])
        detectors, skipped = default_detectors(b, X_train=Xkd, y_train=ykd, random_state=random_state)
    detectors = _check_detectors(detectors)

    Xc, yc = X[correct], y[correct]
    eps = attack_budgets(b, Xc, yc, plan, epsilon, bnds)
    samples, per_attack, fooling = attack_and_augment(b, Xc, yc, correct, plan, eps, bnds, noise, rng, progress)
    feats, transformers = features_once(detectors, X[train_inputs], samples, progress)
    is_test = np.isin(np.arange(X.shape[0]), test_inputs)
    table, roc, models = auc_table(detectors, feats, transformers, per_attack, is_test, progress)
    cross_name = _cross_detector(detectors)
    cross = None if cross_name is None else cross_attack_table(cross_name, feats[cross_name], transformers[cross_name],
                                                               models, per_attack, is_test)
    png = None if roc_png is None else os.fspath(roc_png)
    if png is not None:
        plot_roc(png, roc, table)
    n_samples, groups = _split_sizes(per_attack, is_test)
    return DetectionReport(auc=table, cross=cross, cross_detector=cross_name, epsilon=eps, fooling_rate=fooling,
                           n_samples=n_samples, train_inputs=train_inputs, test_inputs=test_inputs, groups=groups,
                           roc=roc, skipped=skipped, roc_png=png)
