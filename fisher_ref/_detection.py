"""Adversarial-example detection with the Fisher spectrum (paper Section 4) and its baselines.

The paper's detector maps an input to the top-k eigenvalues of its input Fisher information
``G_x`` (eq. 4) and trains a random forest (or Gaussian naive Bayes) to tell adversarial inputs
(positives) from clean and noisy ones (negatives); Table 4 compares it with the kernel-density (KD)
and Bayesian-uncertainty (BU) features of Feinman et al. (2017), Table 5 tests it across attacks.

Every detector here is a scikit-learn classifier on RAW inputs ``(n, *input_shape)``, built from
two parts that can be used on their own:

* a transformer from inputs to detection features - :class:`FisherSpectrumFeatures`,
  :class:`KernelDensityFeatures`, :class:`BayesianUncertaintyFeatures`, :class:`LIDFeatures`;
* a classifier on those features (random forest / naive Bayes for the Fisher features, a
  standardised logistic regression for the baselines, as their authors).

``detector.make_transformer()`` gives the (unfitted) feature map, ``detector.score_features(X)`` the
features of a fitted detector and ``detector.fit_from_features(F, y, transformer)`` trains the
classifier on precomputed features, so that :func:`evaluate_detection` computes the features of
every input once, whatever the number of attacks.

This module imports scikit-learn (the ``detect`` extra) at import time; the rest of
:mod:`fisher_ref` needs only NumPy and SciPy.
"""

from __future__ import annotations

import copy
import hashlib
import math
import numbers
import os
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from scipy.spatial.distance import cdist
from scipy.special import logsumexp

try:
    from sklearn.base import BaseEstimator, ClassifierMixin, TransformerMixin, clone
    from sklearn.utils import assert_all_finite
    from sklearn.utils.multiclass import check_classification_targets, type_of_target
    from sklearn.utils.validation import check_array, check_is_fitted, column_or_1d
except ImportError as exc:  # pragma: no cover - exercised only without scikit-learn
    raise ImportError("fisher_ref's detectors need scikit-learn: pip install 'fisher-ref[detect]'") from exc

try:  # private in scikit-learn, but the only way to keep feature_names_in_ right for DataFrames
    from sklearn.utils.validation import _check_feature_names
except ImportError:  # pragma: no cover
    _check_feature_names = None

from .attacks import AttackResult, bim, fgm, iterative_ossa, least_perturbation, ossa, otcm
from ._backend import Backend, as_backend
from .attacks import opt
from ._spectrum import fisher_spectrum
from ._validation import check_bounds, check_labels, check_rng, shape_str

__all__ = [
    "AUCTable",
    "BayesianUncertaintyDetector",
    "BayesianUncertaintyFeatures",
    "DetectionReport",
    "EXTRA_FEATURES",
    "FisherDetector",
    "FisherSpectrumFeatures",
    "KDBUDetector",
    "KernelDensityDetector",
    "KernelDensityFeatures",
    "LIDDetector",
    "LIDFeatures",
    "default_detectors",
    "evaluate_detection",
]

#: Spectral statistics :class:`FisherSpectrumFeatures` can add to the eigenvalues.
EXTRA_FEATURES = ("trace", "ratios", "growth")
#: Added to eigenvalues before the logarithm (``log=True``), so that exact zeros stay finite.
LOG_FLOOR = float(np.finfo(np.float64).tiny)
#: KDE bandwidths Feinman et al. (2017) chose by cross-validation on their networks' last hidden layer.
FEINMAN_BANDWIDTHS = {"mnist": 1.20, "cifar10": 0.26}
#: Inputs per backend call when computing features (bounded further by memory, see _chunks).
CHUNK = 256
#: Memory cap (bytes) of one chunk's float64 eigenvectors / distance matrices.
CHUNK_BYTES = 64 * 2**20
#: The attacks :func:`evaluate_detection` knows by name.
ATTACKS = ("fgm", "otcm", "opt", "bim", "ossa", "iterative_ossa")


# ---------------------------------------------------------------------------------------------
# validation helpers


def _backend_of(est: Any) -> Backend:
    b = as_backend(est.backend)
    if b.input_shape is None:
        raise ValueError(f"{type(est).__name__}: the backend's input_shape is unknown; construct the backend "
                         "with input_shape= so that a batch X of shape (n, *input_shape) is recognised")
    return b


def _check_inputs(b: Backend, X: Any, name: str, owner: str) -> np.ndarray:
    """A batch ``(n, *input_shape)`` of finite floats (scikit-learn's check_array, then the shape)."""
    shp = b.input_shape
    X = check_array(X, allow_nd=True, dtype=np.float64, input_name=name)
    if X.shape[1:] != shp:
        d = math.prod(shp)
        expected = "(n, " + ", ".join(str(s) for s in shp) + ")"
        raise ValueError(f"{name} has {math.prod(X.shape[1:])} features, but {owner} is expecting {d} features "
                         f"as input: {name} has shape {shape_str(X.shape)}, expected {expected}, a batch of the "
                         f"backend's input_shape {shape_str(shp)}")
    return X


def _validate_X(est: Any, X: Any, *, reset: bool) -> np.ndarray:
    b = _backend_of(est)
    if not reset and getattr(est, "input_shape_", b.input_shape) != b.input_shape:
        raise ValueError(f"the backend's input_shape {shape_str(b.input_shape)} differs from the one at fit "
                         f"({shape_str(est.input_shape_)})")
    if _check_feature_names is not None:
        _check_feature_names(est, X, reset=reset)
    X = _check_inputs(b, X, "X", type(est).__name__)
    if reset:
        est.n_features_in_ = math.prod(b.input_shape)
        est.input_shape_ = b.input_shape
    return X


def _check_binary_y(y: Any, n: int | None, owner: str = "the detector") -> tuple[np.ndarray, np.ndarray]:
    """``(classes (2,), y encoded as 0/1)``; the second class (``classes[1]``) is "adversarial"."""
    if y is None:
        raise ValueError(f"{owner} requires y to be passed, but the target y is None (y = 1 for adversarial "
                         "inputs, 0 for clean or noisy ones)")
    y = column_or_1d(y, warn=True)
    if n is not None and y.shape[0] != n:
        raise ValueError(f"y has {y.shape[0]} labels but X has {n} inputs")
    if y.dtype.kind in "fc":
        assert_all_finite(y, input_name="y")
    if y.shape[0] == 0:
        raise ValueError("y is empty: a detector needs labelled inputs (1 adversarial, 0 clean or noisy)")
    check_classification_targets(y)
    classes = np.unique(y)
    if classes.size < 2:
        raise ValueError(f"y has only one class ({classes[0]!r}); a detector needs both: 1 adversarial, "
                         "0 clean or noisy")
    y_type = type_of_target(y, input_name="y")
    if y_type != "binary":
        raise ValueError(f"Only binary classification is supported (y = 1 adversarial, 0 clean or noisy). "
                         f"The type of the target is {y_type} ({classes.size} classes)")
    return classes, np.searchsorted(classes, y).astype(np.int64)


def _check_int(value: Any, name: str, minimum: int = 1) -> int:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def _check_positive(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def _check_extra(extra: Any) -> tuple[str, ...]:
    names = (extra,) if isinstance(extra, str) else tuple(extra) if extra is not None else ()
    bad = [e for e in names if e not in EXTRA_FEATURES]
    if bad or len(set(names)) != len(names):
        raise ValueError(f"extra must be a sequence of distinct names from {EXTRA_FEATURES}, got {extra!r}")
    return tuple(e for e in EXTRA_FEATURES if e in names)  # canonical order


def _generator(random_state: Any) -> np.random.Generator:
    """A NumPy Generator from scikit-learn's ``random_state`` (None, int, RandomState or Generator)."""
    if isinstance(random_state, np.random.RandomState):
        return np.random.default_rng(random_state.randint(2**31 - 1))
    return check_rng(random_state, "random_state")


def _chunks(n: int, per_input_bytes: float) -> range:
    size = max(1, min(CHUNK, int(CHUNK_BYTES // max(per_input_bytes, 1.0))))
    return range(0, n, size)


def _input_keys(X: np.ndarray) -> list:
    """A digest of each input's float64 bytes: byte-exact identity, independent of batching."""
    X = np.ascontiguousarray(X, dtype=np.float64).reshape(X.shape[0], -1)
    return [hashlib.blake2b(row.tobytes(), digest_size=16).digest() for row in X]


def _key_index(keys: list) -> dict:
    index: dict = {}
    for j, key in enumerate(keys):
        index.setdefault(key, []).append(j)
    return index


def _identical(query_keys: list, index: dict, n_ref: int) -> np.ndarray:
    """Boolean (n_query, n_ref): query i is the same input as reference j (left out as a neighbour)."""
    same = np.zeros((len(query_keys), n_ref), dtype=bool)
    for i, key in enumerate(query_keys):
        same[i, index.get(key, [])] = True
    return same


def _layer_features(b: Backend, X: np.ndarray, layers: list[str]) -> dict[str, np.ndarray]:
    parts = [b.features(X[s:s + CHUNK], layers) for s in range(0, X.shape[0], CHUNK)]
    return {name: np.concatenate([p[name] for p in parts]) for name in layers}


class _SharedBackendMixin:
    """Clone shares the backend (and reference data) instead of deep-copying it.

    The backend is a trained model, not a hyper-parameter: :func:`sklearn.base.clone` would
    deep-copy it (a whole network, or an ONNX Runtime session that cannot be copied) for every
    clone. The shared parameters are only read.
    """

    _shared_params: tuple[str, ...] = ("backend",)

    def __sklearn_clone__(self):
        params = self.get_params(deep=False)
        new = {k: (v if k in self._shared_params else clone(v, safe=False)) for k, v in params.items()}
        obj = type(self)(**new)
        if hasattr(self, "_sklearn_output_config"):
            obj._sklearn_output_config = copy.deepcopy(self._sklearn_output_config)
        return obj


# ---------------------------------------------------------------------------------------------
# feature maps (transformers)


class FisherSpectrumFeatures(_SharedBackendMixin, TransformerMixin, BaseEstimator):
    """Inputs to the top-k eigenvalues of their input Fisher information (paper Section 4).

    A scikit-learn transformer that fits in a :class:`~sklearn.pipeline.Pipeline` in front of any
    classifier: ``transform`` maps raw inputs ``(n, *input_shape)`` to ``(n, n_features_out)``.

    Parameters
    ----------
    backend : Backend or callable
        The classifier whose Fisher information is taken (see :func:`~fisher_ref.as_backend`); its
        ``input_shape`` must be known.
    k : int, default=20
        Number of eigenvalues, in descending order (the paper uses the top 20). rank(G) <= C - 1
        because ``sum_i p_i g_i = 0``, so on a C-class model at most C - 1 are nonzero: "top 20" on
        a 10-class model gives 9 eigenvalues and 11 exact zeros. Past the input dimension d the
        columns are zero as well.
    log : bool, default=False
        Return ``log(lambda + LOG_FLOOR)`` (``LOG_FLOOR`` is the smallest positive double, so
        exact zeros map to about -708) instead of ``lambda``; also applies to "trace" and
        "growth" (log-ratio), not to "ratios".
    extra : sequence of {"trace", "ratios", "growth"}, default=()
        Further spectral statistics, appended in this order:

        * ``"trace"``: ``tr G = sum_i p_i ||g_i||^2`` (one column). It is the sum of the
          eigenvalues when ``k >= C - 1``; otherwise it costs one class-gradient call (C reverse
          passes) per input.
        * ``"ratios"``: ``lambda_i / lambda_1`` for ``i = 2..k`` (``k - 1`` columns; 0 where
          ``lambda_1 = 0``).
        * ``"growth"``: ``lambda_1(x + t v_1) / lambda_1(x)`` with ``t = growth_step`` and ``v_1``
          signed as OSSA (the loss of the predicted class increases; Algorithm 1, line 8): the
          increase of the top eigenvalue along the attack direction of the paper's Figure 4b (one
          column; 1 where ``lambda_1 = 0``). Costs a second spectrum per input.

        The transformer's default is the paper's feature (eigenvalues only); :class:`FisherDetector`
        adds ``"growth"`` by default, the one statistic that helped in our measurement (see Notes).
    growth_step : float, default=0.1
        The l2 step ``t`` of ``"growth"``, in input units.

    Attributes
    ----------
    n_features_in_ : int
        ``prod(input_shape)``.
    input_shape_ : tuple of int
        The backend's input shape at fit.
    n_classes_ : int
    extra_ : tuple of str
        ``extra`` in canonical order.

    See Also
    --------
    FisherDetector : these features with a random forest or naive Bayes on top.
    fisher_ref.fisher_spectrum : the eigenvalues (computed here with ``rng=0`` for determinism).

    Notes
    -----
    ``fit`` learns nothing from the data (it validates it and records its shape); the features
    of an input depend on the input and the model only.

    Effect of the extra statistics, measured with :func:`evaluate_detection` (defaults: FGM's 90th
    percentile least perturbation as budget, eps = 2.08; noisy negatives; 30 % of the inputs held
    out) on the first 1500 MNIST test images and the bundled MLP (784-100-10, tanh), random forest,
    k = 20, three seeds; AUC in %, mean over the attacks FGM / OTCM / Opt / BIM / OSSA:
    eigenvalues only 81.4; + trace 81.5; + ratios 82.0; + growth 84.2 (FGM 76.1 -> 79.4,
    OTCM 75.1 -> 78.5, Opt 97.9 -> 99.6, BIM 82.1 -> 84.2, OSSA 75.6 -> 79.1; seed-to-seed
    standard deviation 0.2-1.1); all three 83.9; log-eigenvalues change nothing for the forest
    (81.6) but lift naive Bayes from 68.1 to 77.1. Growth helps for small steps (t = 0.03 and 0.1
    alike, 0.3 loses about a point, t = 1 nothing left): it is the slope of lambda_1 along v_1.

    References
    ----------
    Zhao et al., AAAI 2019, Section 4 (eigenvalues of eq. 4 as detection features), Figure 4.
    """

    def __init__(self, backend: Any, *, k: int = 20, log: bool = False, extra: Sequence[str] = (),
                 growth_step: float = 0.1):
        self.backend = backend
        self.k = k
        self.log = log
        self.extra = extra
        self.growth_step = growth_step

    def fit(self, X: Any, y: Any = None) -> "FisherSpectrumFeatures":
        """Validate the parameters and ``X`` (a batch ``(n, *input_shape)``); return self."""
        _check_int(self.k, "k")
        if not isinstance(self.log, (bool, np.bool_)):
            raise ValueError(f"log must be a bool, got {self.log!r}")
        extra = _check_extra(self.extra)
        _check_positive(self.growth_step, "growth_step")
        X = _validate_X(self, X, reset=True)
        b = _backend_of(self)
        if b.n_classes is None:
            b.probabilities(X[:1])
        self.n_classes_ = int(b.n_classes)
        self.extra_ = extra
        return self

    def transform(self, X: Any) -> np.ndarray:
        """The spectral features of ``X``, shape ``(n, n_features_out)``, float64."""
        check_is_fitted(self)
        X = _validate_X(self, X, reset=False)
        b = _backend_of(self)
        d = math.prod(self.input_shape_)
        # rank(G) <= C - 1 (sum_i p_i g_i = -grad sum_i p_i = 0): eigenvalues past it are exact
        # zeros, padded here rather than asked of the solver (which would build null-space vectors)
        k_eff = min(self.k, d, self.n_classes_ - 1)
        chunks = _chunks(X.shape[0], 8.0 * d * (k_eff + self.n_classes_))
        return np.concatenate([self._features(b, X[s:s + chunks.step], k_eff) for s in chunks])

    def _features(self, b: Backend, X: np.ndarray, k_eff: int) -> np.ndarray:
        n, C = X.shape[0], self.n_classes_
        w, V = fisher_spectrum(b, X, k=k_eff, rng=0)
        if k_eff < self.k:
            w = np.concatenate([w, np.zeros((n, self.k - k_eff))], axis=1)
        lg = bool(self.log)
        cols = [np.log(w + LOG_FLOOR) if lg else w]
        if "trace" in self.extra_:
            if k_eff >= C - 1:
                tr = w.sum(axis=1)
            else:
                p, g = b.class_gradients(X)
                tr = np.einsum("nc,ncd->n", p, g.reshape(n, C, -1) ** 2)
            cols.append((np.log(tr + LOG_FLOOR) if lg else tr)[:, None])
        if "ratios" in self.extra_:
            top = w[:, :1]
            cols.append(np.divide(w[:, 1:], top, out=np.zeros((n, self.k - 1)), where=top > 0))
        if "growth" in self.extra_:
            cols.append(self._growth(b, X, w[:, 0], V[:, 0])[:, None])
        return np.concatenate(cols, axis=1)

    def _growth(self, b: Backend, X: np.ndarray, lam: np.ndarray, v: np.ndarray) -> np.ndarray:
        t = float(self.growth_step)
        tiny = np.finfo(np.float64).tiny
        p0 = b.probabilities(X)
        y = p0.argmax(axis=1)
        rows = np.arange(X.shape[0])
        loss0 = -np.log(np.maximum(p0[rows, y], tiny))
        loss1 = -np.log(np.maximum(b.probabilities(X + t * v)[rows, y], tiny))
        sign = np.where(loss1 <= loss0, -1.0, 1.0).reshape((-1,) + (1,) * (X.ndim - 1))
        lam_t = fisher_spectrum(b, X + t * sign * v, k=1, rng=0)[0][:, 0]
        log_growth = np.where(lam > 0, np.log(lam_t + LOG_FLOOR) - np.log(lam + LOG_FLOOR), 0.0)
        return log_growth if self.log else np.exp(np.minimum(log_growth, 700.0))

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        """Names of the output columns: ``lambda_1..k`` (``log_lambda_*``), ``trace``, ``ratio_2..k``, ``growth``."""
        check_is_fitted(self)
        _check_input_features(self, input_features)
        pre = "log_" if self.log else ""
        names = [f"{pre}lambda_{i + 1}" for i in range(self.k)]
        if "trace" in self.extra_:
            names.append(f"{pre}trace")
        if "ratios" in self.extra_:
            names += [f"ratio_{i + 1}" for i in range(1, self.k)]
        if "growth" in self.extra_:
            names.append(f"{pre}growth")
        return np.asarray(names, dtype=object)


def _check_input_features(est: Any, input_features: Any) -> None:
    if input_features is not None and len(input_features) != est.n_features_in_:
        raise ValueError(f"input_features should have length equal to number of features "
                         f"({est.n_features_in_}), got {len(input_features)}")


class KernelDensityFeatures(_SharedBackendMixin, TransformerMixin, BaseEstimator):
    """Inputs to the kernel-density (KD) score of Feinman et al. (2017), one column.

    The score of an input is the log density of its last-hidden-layer features under a Gaussian
    KDE of the features of the TRAINING inputs of its predicted class; adversarial inputs tend to
    lie off the data manifold of the class they are pushed into, so a LOW score is suspicious.

    Parameters
    ----------
    backend : Backend or callable
        Needs the ``"features"`` capability.
    bandwidth : float, default=1.0
        Gaussian kernel bandwidth ``h`` in feature units. Feinman et al. chose 1.20 for MNIST and
        0.26 for CIFAR-10 on their networks (:data:`FEINMAN_BANDWIDTHS`); it scales with the
        layer's activations, so re-tune it for another model.
    layer : str, optional
        A name from ``backend.feature_layers``; default the last (the layer before the logits).
    X_train : array-like of shape (n_train, *input_shape), optional
        Clean training inputs whose features make up the KDE of each class. Without it, the
        inputs passed to :meth:`fit` are used, labelled by the model's predictions.
    y_train : array-like of int of shape (n_train,), optional
        True labels of ``X_train`` (default: the model's predictions).

    Attributes
    ----------
    layer_ : str
    class_features_ : list of ndarray
        ``class_features_[c]`` holds the reference features of class c, shape ``(n_c, n_units)``.

    Notes
    -----
    A reference input identical to the query (byte for byte) is left out of its density
    (leave-one-out), so that the score of a training input does not count its own kernel. A class
    without reference points falls back to the KDE of all reference points (with a warning).

    .. math::

        \\mathrm{KD}(x) = \\log \\frac{1}{|X_t|} \\sum_{x_i \\in X_t}
        \\mathcal{N}(z(x); z(x_i), h^2 I), \\qquad t = \\arg\\max_c p_c(x).

    References
    ----------
    Feinman, Curtin, Shintre and Gardner (2017), "Detecting adversarial samples from artifacts",
    arXiv:1703.00410, Section 3.1 (density estimates), eq. (1).
    """

    _shared_params = ("backend", "X_train", "y_train")

    def __init__(self, backend: Any, *, bandwidth: float = 1.0, layer: str | None = None, X_train: Any = None,
                 y_train: Any = None):
        self.backend = backend
        self.bandwidth = bandwidth
        self.layer = layer
        self.X_train = X_train
        self.y_train = y_train

    def fit(self, X: Any, y: Any = None) -> "KernelDensityFeatures":
        """Build the per-class KDEs (from ``X_train`` when given, else from ``X``)."""
        b = _backend_of(self)
        b.require("features", "the KD detector uses hidden-layer activations")
        _check_positive(self.bandwidth, "bandwidth")
        layer = b.feature_layers[-1] if self.layer is None else self.layer
        if layer not in b.feature_layers:
            raise ValueError(f"layer must be one of {list(b.feature_layers)}, got {layer!r}")
        X = _validate_X(self, X, reset=True)
        if self.X_train is None:
            if self.y_train is not None:
                raise ValueError("y_train was given without X_train")
            Xr, yr = X, None
        else:
            Xr = _check_inputs(b, self.X_train, "X_train", type(self).__name__)
            yr = self.y_train
        if b.n_classes is None:
            b.probabilities(Xr[:1])
        C = int(b.n_classes)
        if yr is None:
            yr = np.concatenate([b.probabilities(Xr[s:s + CHUNK]).argmax(axis=1) for s in range(0, len(Xr), CHUNK)])
        else:
            yr = check_labels(yr, Xr.shape[0], C, "y_train")
        Z = _layer_features(b, Xr, [layer])[layer]
        keys = _input_keys(Xr)
        self.layer_ = layer
        self.n_classes_ = C
        self.class_features_ = [Z[yr == c] for c in range(C)]
        self.class_keys_ = [_key_index([keys[i] for i in np.flatnonzero(yr == c)]) for c in range(C)]
        self.all_features_ = Z
        self.all_keys_ = _key_index(keys)
        empty = [c for c in range(C) if self.class_features_[c].shape[0] == 0]
        if empty:
            warnings.warn(f"KD: classes {empty} have no reference inputs; their inputs are scored against "
                          "all reference inputs", UserWarning, stacklevel=2)
        return self

    def transform(self, X: Any) -> np.ndarray:
        """Log density of each input's features under its predicted class's KDE, shape ``(n, 1)``."""
        check_is_fitted(self)
        X = _validate_X(self, X, reset=False)
        b = _backend_of(self)
        out = np.empty(X.shape[0])
        for s in range(0, X.shape[0], CHUNK):
            Xc = X[s:s + CHUNK]
            Z = b.features(Xc, [self.layer_])[self.layer_]
            pred = b.probabilities(Xc).argmax(axis=1)
            keys = _input_keys(Xc)
            for c in np.unique(pred):
                idx = np.flatnonzero(pred == c)
                ref, index = self.class_features_[c], self.class_keys_[c]
                if ref.shape[0] == 0:
                    ref, index = self.all_features_, self.all_keys_
                same = _identical([keys[i] for i in idx], index, ref.shape[0])
                out[s + idx] = _log_kde(Z[idx], ref, float(self.bandwidth), same)
        return out[:, None]

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        check_is_fitted(self)
        _check_input_features(self, input_features)
        return np.asarray(["kd"], dtype=object)


def _log_kde(Z: np.ndarray, R: np.ndarray, h: float, same: np.ndarray) -> np.ndarray:
    """Log density of a Gaussian KDE with bandwidth h, leaving out the pairs marked ``same``."""
    n, D = Z.shape
    out = np.empty(n)
    const = -0.5 * D * math.log(2 * math.pi * h * h)
    step = max(1, int(CHUNK_BYTES // (8 * max(R.shape[0], 1))))
    for s in range(0, n, step):
        d2 = cdist(Z[s:s + step], R, "sqeuclidean")
        keep = ~same[s:s + step]
        n_eff = keep.sum(axis=1)
        all_same = n_eff == 0  # only duplicates of the query: keep them rather than leave nothing
        keep[all_same] = True
        n_eff[all_same] = R.shape[0]
        logk = np.where(keep, -d2 / (2 * h * h), -np.inf)
        out[s:s + step] = logsumexp(logk, axis=1) - np.log(n_eff) + const
    return out


class BayesianUncertaintyFeatures(_SharedBackendMixin, TransformerMixin, BaseEstimator):
    """Inputs to the Bayesian-uncertainty (BU) score of Feinman et al. (2017), one column.

    The variance of Monte-Carlo dropout predictions: with T stochastic probability vectors
    ``p_1..p_T`` (dropout active),

    .. math::

        \\mathrm{BU}(x) = \\frac1T \\sum_t \\|p_t\\|^2 - \\Big\\|\\frac1T \\sum_t p_t\\Big\\|^2,

    the trace of the predictive covariance; adversarial inputs tend to have a HIGH score.

    Parameters
    ----------
    backend : Backend or callable
        Needs the ``"stochastic_probabilities"`` capability (e.g. ``MLPModel(..., dropout=0.3)``).
    n_samples : int, default=50
        T, the number of dropout samples (Feinman et al. use 50).
    random_state : None, int, numpy.random.Generator or RandomState
        Dropout masks. With an int, every ``transform`` call draws the same masks (deterministic).

    References
    ----------
    Feinman, Curtin, Shintre and Gardner (2017), arXiv:1703.00410, Section 3.2 (Bayesian neural
    network uncertainty), eq. (4).
    Gal and Ghahramani (2016), dropout as a Bayesian approximation.
    """

    def __init__(self, backend: Any, *, n_samples: int = 50, random_state: Any = None):
        self.backend = backend
        self.n_samples = n_samples
        self.random_state = random_state

    def fit(self, X: Any, y: Any = None) -> "BayesianUncertaintyFeatures":
        """Check the capability and ``X``; BU learns nothing from data."""
        b = _backend_of(self)
        b.require("stochastic_probabilities", "the BU detector needs Monte-Carlo dropout predictions")
        _check_int(self.n_samples, "n_samples", 2)
        _validate_X(self, X, reset=True)
        return self

    def transform(self, X: Any) -> np.ndarray:
        """BU score per input, shape ``(n, 1)``."""
        check_is_fitted(self)
        X = _validate_X(self, X, reset=False)
        b = _backend_of(self)
        rng = _generator(self.random_state)
        out = np.empty(X.shape[0])
        for s in range(0, X.shape[0], CHUNK):
            P = b.stochastic_probabilities(X[s:s + CHUNK], int(self.n_samples), rng=rng)
            out[s:s + CHUNK] = (P * P).sum(axis=-1).mean(axis=0) - (P.mean(axis=0) ** 2).sum(axis=-1)
        return np.maximum(out, 0.0)[:, None]

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        check_is_fitted(self)
        _check_input_features(self, input_features)
        return np.asarray(["bu"], dtype=object)


class LIDFeatures(_SharedBackendMixin, TransformerMixin, BaseEstimator):
    """Inputs to their local intrinsic dimensionality (LID) in each layer (Ma et al. 2018).

    In the activations ``a(x)`` of each layer, with ``r_1 <= ... <= r_k`` the distances from
    ``a(x)`` to its k nearest neighbours among a minibatch of clean reference inputs,

    .. math::

        \\mathrm{LID}(x) = -\\Big(\\frac1k \\sum_{i=1}^k \\log \\frac{r_i}{r_k}\\Big)^{-1}

    (the maximum-likelihood estimate); adversarial regions have a HIGHER LID.

    Parameters
    ----------
    backend : Backend or callable
        Needs the ``"features"`` capability.
    k : int, default=20
        Number of nearest neighbours (Ma et al. use 10-20 for minibatches of 100).
    batch_size : int, default=100
        Size of the reference minibatch; must exceed k.
    layers : sequence of str, optional
        Names from ``backend.feature_layers`` (default all): one LID column each.
    random_state : None, int or numpy.random.Generator
        Which fit inputs form the reference minibatch.

    Attributes
    ----------
    layers_ : list of str
    reference_ : dict of str to ndarray
        The reference minibatch's activations per layer, ``(batch_size, n_units)``.

    Notes
    -----
    Ma et al. estimate LID inside each minibatch of 100 clean inputs and their noisy and
    adversarial counterparts, against the clean ones. Here the reference minibatch is drawn once
    at ``fit`` (``batch_size`` of the inputs given to fit, which should be clean) and every input
    is scored against it: the same estimator, deterministic and independent of how inputs are
    batched. A reference that is the query itself (the same input, byte for byte) is not its
    neighbour.

    References
    ----------
    Ma, Li, Wang, Erfani, Wijewickrema, Schoenebeck, Song, Houle and Bailey (2018),
    "Characterizing adversarial subspaces using local intrinsic dimensionality", ICLR 2018,
    Section 4 (eq. 3 and the minibatch estimate, Algorithm 1).
    """

    def __init__(self, backend: Any, *, k: int = 20, batch_size: int = 100, layers: Sequence[str] | None = None,
                 random_state: Any = None):
        self.backend = backend
        self.k = k
        self.batch_size = batch_size
        self.layers = layers
        self.random_state = random_state

    def fit(self, X: Any, y: Any = None) -> "LIDFeatures":
        """Draw the reference minibatch from ``X`` (clean inputs) and store its activations."""
        b = _backend_of(self)
        b.require("features", "the LID detector uses hidden-layer activations")
        k = _check_int(self.k, "k")
        bs = _check_int(self.batch_size, "batch_size", 2)
        layers = list(b.feature_layers) if self.layers is None else list(self.layers)
        unknown = [name for name in layers if name not in b.feature_layers]
        if unknown or not layers:
            raise ValueError(f"layers must be names from {list(b.feature_layers)}, got {self.layers!r}")
        X = _validate_X(self, X, reset=True)
        m = min(bs, X.shape[0])
        if m <= k:
            raise ValueError(f"LID needs more than k = {k} reference inputs: got {m} "
                             f"(batch_size = {bs}, {X.shape[0]} inputs given to fit)")
        idx = np.sort(_generator(self.random_state).choice(X.shape[0], size=m, replace=False))
        self.layers_ = layers
        self.reference_ = _layer_features(b, X[idx], layers)
        self.reference_keys_ = _key_index(_input_keys(X[idx]))
        self.n_reference_ = int(m)
        return self

    def transform(self, X: Any) -> np.ndarray:
        """LID per layer, shape ``(n, len(layers_))``."""
        check_is_fitted(self)
        X = _validate_X(self, X, reset=False)
        b = _backend_of(self)
        out = np.empty((X.shape[0], len(self.layers_)))
        for s in range(0, X.shape[0], CHUNK):
            Xc = X[s:s + CHUNK]
            acts = b.features(Xc, self.layers_)
            same = _identical(_input_keys(Xc), self.reference_keys_, self.n_reference_)
            for j, name in enumerate(self.layers_):
                out[s:s + CHUNK, j] = _lid(acts[name], self.reference_[name], int(self.k), same)
        return out

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        check_is_fitted(self)
        _check_input_features(self, input_features)
        return np.asarray([f"lid_{name}" for name in self.layers_], dtype=object)


def _lid(A: np.ndarray, R: np.ndarray, k: int, same: np.ndarray) -> np.ndarray:
    """Maximum-likelihood LID of each row of A among its k nearest rows of R (pairs ``same`` left out)."""
    D = cdist(A, R)
    D[same] = np.inf
    D = np.maximum(D, np.finfo(np.float64).tiny)  # duplicate activations of distinct inputs: finite logs
    r = np.sort(np.partition(D, k - 1, axis=1)[:, :k], axis=1)
    valid = np.isfinite(r)
    m = valid.sum(axis=1)
    rk = np.take_along_axis(r, np.maximum(m - 1, 0)[:, None], axis=1)
    ratio = np.where(valid, r / np.where(np.isfinite(rk), rk, 1.0), 1.0)
    s = np.log(ratio).sum(axis=1)  # <= 0
    return m / np.maximum(-s, 1e-12 * np.maximum(m, 1))


# ---------------------------------------------------------------------------------------------
# detectors (classifiers on raw inputs)


class _Detector(_SharedBackendMixin, ClassifierMixin, BaseEstimator):
    """Shared machinery: a feature map and a classifier on its features."""

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_class = False
        return tags

    # -------------------------------------------------------------- to implement
    def make_transformer(self) -> TransformerMixin:
        """The detector's (unfitted) feature map from raw inputs to detection features."""
        raise NotImplementedError

    def _make_classifier(self) -> Any:
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        return make_pipeline(StandardScaler(), LogisticRegression())

    # -------------------------------------------------------------- fitting
    def fit(self, X: Any, y: Any) -> "_Detector":
        """Fit on raw inputs ``X (n, *input_shape)`` with ``y = 1`` adversarial, 0 clean or noisy.

        The feature map is fitted on the negatives (``y == classes_[0]``: its reference inputs,
        e.g. LID's minibatch), the classifier on the features of all of ``X``.

        Raises
        ------
        ValueError
            If X is not a batch of the backend's input shape, or y is not binary.
        fisher_ref.MissingCapabilityError
            If the backend lacks a capability the features need.
        """
        _, y01 = _check_binary_y(y, None, type(self).__name__)  # y first: it decides what X is for
        X = _validate_X(self, X, reset=True)
        if X.shape[0] != y01.shape[0]:
            raise ValueError(f"y has {y01.shape[0]} labels but X has {X.shape[0]} inputs")
        tr = self.make_transformer().fit(X[y01 == 0])
        return self.fit_from_features(tr.transform(X), y, tr)

    def fit_from_features(self, F: Any, y: Any, transformer: Any) -> "_Detector":
        """Fit the classifier on precomputed features ``F = transformer.transform(X)``.

        ``transformer`` (fitted, from :meth:`make_transformer`) is kept, so that :meth:`predict`
        and friends work on raw inputs afterwards. This is how :func:`evaluate_detection` computes
        each input's features once for many detectors' training sets.
        """
        check_is_fitted(transformer)
        F = check_array(F, dtype=np.float64, input_name="F")
        classes, y01 = _check_binary_y(y, F.shape[0], type(self).__name__)
        clf = self._make_classifier()
        clf.fit(F, y01)
        b = _backend_of(self)
        self.transformer_ = transformer
        self.classifier_ = clf
        self.classes_ = classes
        self.n_features_in_ = math.prod(b.input_shape)
        self.input_shape_ = b.input_shape
        return self

    # -------------------------------------------------------------- prediction
    def score_features(self, X: Any) -> np.ndarray:
        """The detection features of raw inputs, ``(n, n_detection_features)``."""
        check_is_fitted(self)
        X = _validate_X(self, X, reset=False)
        return self.transformer_.transform(X)

    def predict_proba_from_features(self, F: Any) -> np.ndarray:
        """Class probabilities ``(n, 2)`` from precomputed features (columns follow ``classes_``)."""
        check_is_fitted(self)
        F = check_array(F, dtype=np.float64, input_name="F")
        return self.classifier_.predict_proba(F)

    def predict_proba(self, X: Any) -> np.ndarray:
        """Probabilities ``(n, 2)``: column 1 is that of ``classes_[1]`` (adversarial); rows sum to 1."""
        return self.predict_proba_from_features(self.score_features(X))

    def decision_function(self, X: Any) -> np.ndarray:
        """``P(adversarial) - 1/2``, shape ``(n,)``: positive means ``classes_[1]`` (adversarial)."""
        return self.predict_proba(X)[:, 1] - 0.5

    def predict(self, X: Any) -> np.ndarray:
        """``classes_[1]`` (adversarial) where ``P(adversarial) > 1/2``, else ``classes_[0]``."""
        adversarial = self.predict_proba(X)[:, 1] > 0.5
        return self.classes_[adversarial.astype(np.int64)]


class FisherDetector(_Detector):
    """The paper's detector: top-k Fisher eigenvalues of an input, then a random forest.

    By default the eigenvalues are joined by the growth of the top eigenvalue along the OSSA
    direction (``extra=("growth",)``, measured to help; ``extra=()`` is the paper's detector).

    A scikit-learn classifier on raw inputs ``(n, *input_shape)``: ``y = 1`` marks adversarial
    inputs, ``y = 0`` clean and noisy ones (the paper's negatives).

    Parameters
    ----------
    backend : Backend or callable
        The attacked classifier (see :func:`~fisher_ref.as_backend`); its ``input_shape`` must be
        known.
    k : int, default=20
        Number of eigenvalues (the paper: top 20; at most C - 1 are nonzero, see
        :class:`FisherSpectrumFeatures`).
    classifier : {"random_forest", "naive_bayes"} or estimator, default="random_forest"
        ``"random_forest"``: ``RandomForestClassifier(n_estimators=50, max_depth=5)`` (the paper:
        depth at most 5 and at least 20 trees); ``"naive_bayes"``: ``GaussianNB()``; or any
        scikit-learn classifier with ``predict_proba`` (cloned at fit).
    log : bool, default=False
        Log-eigenvalues as features (see :class:`FisherSpectrumFeatures`).
    extra : sequence of {"trace", "ratios", "growth"}, default=("growth",)
        Extra spectral statistics (see :class:`FisherSpectrumFeatures`). The default adds the
        growth of lambda_1 along the OSSA direction (paper Figure 4b), which raised the mean AUC
        on MNIST from 81.4 % to 84.2 % (every attack gained 1.7-3.5 points); "trace" and "ratios"
        did not help measurably. ``extra=()`` is the paper's detector.
    growth_step : float, default=0.1
        Step of the ``"growth"`` statistic.
    random_state : None, int or RandomState
        Seed of the random forest.

    Attributes
    ----------
    classes_ : ndarray of shape (2,)
        The labels seen at fit; ``classes_[1]`` is "adversarial".
    transformer_ : FisherSpectrumFeatures
    classifier_ : estimator
    n_features_in_ : int
    input_shape_ : tuple of int

    Notes
    -----
    scikit-learn's estimator checks run on this class and on :class:`FisherSpectrumFeatures`
    (tests/test_detection.py, ``test_sklearn_estimator_checks``), with these caveats:

    * X is read through a fixed model, so X must have that model's number of features. The checks
      fit data of widths 1, 2, 3, 4, 5 or 10; each check is run against a model of the width it
      uses (against another model it could only fail on the width). A mismatched X raises
      ``ValueError("X has 3 features, but FisherDetector is expecting 4 features as input: ...")``.
    * ``check_estimators_overwrite_params`` is an expected failure: it compares
      ``joblib.hash(deepcopy(params))`` with the parameters after ``fit``, and the hash of a
      backend's ``capabilities`` frozenset follows the set's iteration order, which a deep copy
      may change (it depends on ``PYTHONHASHSEED``) although ``fit`` does not touch the backend.
    * The detector sees an input only through C - 1 nonzero Fisher eigenvalues of the model, not
      through the input itself, so it is no universal classifier of arbitrary data:
      ``check_classifiers_train`` (training accuracy >= 0.83 on blobs) passes with the test's
      model but need not with another one.
    * It is a binary detector (adversarial or not): the ``multi_class`` tag is False and
      multiclass targets raise the ValueError scikit-learn asks for.
    * ``clone`` shares the backend instead of deep-copying it (``__sklearn_clone__``): the model
      is data, not a hyper-parameter, and may not be copyable (an ONNX Runtime session).

    References
    ----------
    Zhao et al., AAAI 2019, Section 4, Tables 4-5 (random forest on the top 20 eigenvalues;
    Gaussian naive Bayes also works well).
    """

    def __init__(self, backend: Any, *, k: int = 20, classifier: Any = "random_forest", log: bool = False,
                 extra: Sequence[str] = ("growth",), growth_step: float = 0.1, random_state: Any = None):
        self.backend = backend
        self.k = k
        self.classifier = classifier
        self.log = log
        self.extra = extra
        self.growth_step = growth_step
        self.random_state = random_state

    def make_transformer(self) -> FisherSpectrumFeatures:
        return FisherSpectrumFeatures(self.backend, k=self.k, log=self.log, extra=self.extra,
                                      growth_step=self.growth_step)

    def _make_classifier(self) -> Any:
        c = self.classifier
        if isinstance(c, str):
            if c == "random_forest":
                from sklearn.ensemble import RandomForestClassifier

                return RandomForestClassifier(n_estimators=50, max_depth=5, random_state=self.random_state)
            if c == "naive_bayes":
                from sklearn.naive_bayes import GaussianNB

                return GaussianNB()
            raise ValueError(f"classifier must be 'random_forest', 'naive_bayes' or a scikit-learn classifier, "
                             f"got {c!r}")
        if not (hasattr(c, "fit") and hasattr(c, "predict_proba")):
            raise ValueError(f"classifier must be 'random_forest', 'naive_bayes' or a scikit-learn classifier with "
                             f"fit and predict_proba, got {type(c).__name__}")
        return clone(c)


class KernelDensityDetector(_Detector):
    """Feinman et al.'s kernel-density (KD) detector: logistic regression on the KD score.

    Parameters
    ----------
    backend : Backend or callable
        Needs ``"features"``.
    bandwidth : float, default=1.0
        KDE bandwidth; Feinman et al. used 1.20 on MNIST and 0.26 on CIFAR-10.
    layer : str, optional
        Feature layer (default the last hidden layer).
    X_train, y_train : array-like, optional
        Clean training inputs and their labels for the per-class KDEs (default: the negatives
        given to :meth:`fit`, labelled by the model). See :class:`KernelDensityFeatures`.

    References
    ----------
    Feinman, Curtin, Shintre and Gardner (2017), arXiv:1703.00410, Sections 3.1 and 4.
    Zhao et al., AAAI 2019, Table 4 (row KD).
    """

    _shared_params = ("backend", "X_train", "y_train")

    def __init__(self, backend: Any, *, bandwidth: float = 1.0, layer: str | None = None, X_train: Any = None,
                 y_train: Any = None):
        self.backend = backend
        self.bandwidth = bandwidth
        self.layer = layer
        self.X_train = X_train
        self.y_train = y_train

    def make_transformer(self) -> KernelDensityFeatures:
        return KernelDensityFeatures(self.backend, bandwidth=self.bandwidth, layer=self.layer, X_train=self.X_train,
                                     y_train=self.y_train)


class BayesianUncertaintyDetector(_Detector):
    """Feinman et al.'s Bayesian-uncertainty (BU) detector: logistic regression on the BU score.

    Parameters
    ----------
    backend : Backend or callable
        Needs ``"stochastic_probabilities"`` (Monte-Carlo dropout).
    n_samples : int, default=50
        Dropout samples per input.
    random_state : None, int or Generator
        Dropout masks (an int makes the scores deterministic).

    References
    ----------
    Feinman, Curtin, Shintre and Gardner (2017), arXiv:1703.00410, Sections 3.2 and 4.
    Zhao et al., AAAI 2019, Table 4 (row BU).
    """

    def __init__(self, backend: Any, *, n_samples: int = 50, random_state: Any = None):
        self.backend = backend
        self.n_samples = n_samples
        self.random_state = random_state

    def make_transformer(self) -> BayesianUncertaintyFeatures:
        return BayesianUncertaintyFeatures(self.backend, n_samples=self.n_samples, random_state=self.random_state)


class KDBUDetector(_Detector):
    """Feinman et al.'s combined detector: logistic regression on the standardised KD and BU scores.

    Parameters are those of :class:`KernelDensityDetector` and :class:`BayesianUncertaintyDetector`;
    the backend needs both ``"features"`` and ``"stochastic_probabilities"``.

    References
    ----------
    Feinman, Curtin, Shintre and Gardner (2017), arXiv:1703.00410, Section 4.3 (combined).
    Zhao et al., AAAI 2019, Table 4 (row KD+BU).
    """

    _shared_params = ("backend", "X_train", "y_train")

    def __init__(self, backend: Any, *, bandwidth: float = 1.0, layer: str | None = None, X_train: Any = None,
                 y_train: Any = None, n_samples: int = 50, random_state: Any = None):
        self.backend = backend
        self.bandwidth = bandwidth
        self.layer = layer
        self.X_train = X_train
        self.y_train = y_train
        self.n_samples = n_samples
        self.random_state = random_state

    def make_transformer(self) -> Any:
        from sklearn.pipeline import FeatureUnion

        return FeatureUnion([
            ("kd", KernelDensityFeatures(self.backend, bandwidth=self.bandwidth, layer=self.layer,
                                         X_train=self.X_train, y_train=self.y_train)),
            ("bu", BayesianUncertaintyFeatures(self.backend, n_samples=self.n_samples,
                                               random_state=self.random_state)),
        ])


class LIDDetector(_Detector):
    """Ma et al.'s LID detector: logistic regression on the standardised per-layer LID estimates.

    Parameters
    ----------
    backend : Backend or callable
        Needs ``"features"``.
    k : int, default=20
        Nearest neighbours of the LID estimate.
    batch_size : int, default=100
        Size of the clean reference minibatch (drawn from the negatives given to :meth:`fit`).
    layers : sequence of str, optional
        Layers (default all of ``backend.feature_layers``).
    random_state : None, int or Generator
        Choice of the reference minibatch.

    References
    ----------
    Ma et al. (2018), "Characterizing adversarial subspaces using local intrinsic
    dimensionality", ICLR 2018, Section 4 and Algorithm 1. See :class:`LIDFeatures`.
    """

    def __init__(self, backend: Any, *, k: int = 20, batch_size: int = 100, layers: Sequence[str] | None = None,
                 random_state: Any = None):
        self.backend = backend
        self.k = k
        self.batch_size = batch_size
        self.layers = layers
        self.random_state = random_state

    def make_transformer(self) -> LIDFeatures:
        return LIDFeatures(self.backend, k=self.k, batch_size=self.batch_size, layers=self.layers,
                           random_state=self.random_state)


# ---------------------------------------------------------------------------------------------
# evaluation (Tables 4 and 5)


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


def _progress(iterable, *, enabled: bool, desc: str, total: int | None = None):
    if not enabled:
        return iterable
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, desc=desc, total=total, leave=False)


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


def _run_attack(name: str, fn: Any, X: np.ndarray, b: Backend, y: np.ndarray, eps: float, bounds: Any,
                options: dict, rng: np.random.Generator) -> AttackResult:
    opts = dict(options)
    if fn is not None:
        return fn(X, b, labels=y, bounds=bounds, epsilon=eps, **opts)
    if name == "fgm":
        return fgm(X, b, epsilon=eps, labels=y, bounds=bounds, **opts)
    if name == "otcm":
        return otcm(X, b, epsilon=eps, labels=y, bounds=bounds, rng=opts.pop("rng", rng), **opts)
    if name == "ossa":
        return ossa(X, b, epsilon=eps, labels=y, bounds=bounds, rng=opts.pop("rng", rng), **opts)
    if name in ("bim", "iterative_ossa"):
        opts.setdefault("step_size", eps / 5)
        opts.setdefault("n_steps", 10)
        f = bim if name == "bim" else iterative_ossa
        if name == "iterative_ossa":
            opts.setdefault("rng", rng)
        return f(X, b, epsilon=eps, labels=y, bounds=bounds, **opts)
    return opt(X, b, labels=y, bounds=bounds, rng=opts.pop("rng", rng), **opts)


def evaluate_detection(backend: Any, X_clean: Any, y_clean: Any, *,
                       attacks: Sequence[str] | Mapping[str, Callable] = ("fgm", "otcm", "opt", "bim", "ossa"),
                       detectors: Mapping[str, Any] | None = None, epsilon: float | Mapping[str, float] | None = None,
                       bounds: tuple[float, float] | None = (0.0, 1.0), noise: str | None = "same_norm",
                       attack_options: Mapping[str, dict] | None = None, test_size: float = 0.3,
                       random_state: int | None = 0, X_train: Any = None, y_train: Any = None,
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
    backend : Backend or callable
    X_clean : array-like of shape (n, *input_shape)
        Clean inputs (inside ``bounds``).
    y_clean : array-like of int of shape (n,)
        Their true labels.
    attacks : sequence of str or mapping of str to callable
        Names from "fgm", "otcm", "opt", "bim", "ossa", "iterative_ossa", or ``{name: fn}`` with
        ``fn(X, backend, labels=, bounds=, epsilon=, **options)`` returning an
        :class:`~fisher_ref.AttackResult` (``fn`` may also be one of those names).
    detectors : mapping of str to detector, optional
        Default: "KD", "BU", "KD+BU", "LID" (those the backend's capabilities allow, see
        :func:`default_detectors`) and "Fisher" (:class:`FisherDetector`). A detector of this
        module has its features computed once per input; any other scikit-learn classifier is fit
        on the flattened raw inputs.
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
    test_size : float
        Fraction of the inputs held out for testing, in (0, 1).
    random_state : int or None
        Seeds the split, the noise, the random attack targets and the default detectors.
    X_train, y_train : array-like, optional
        Clean training inputs (and labels) for the KD detector's density estimates; default the
        clean inputs of the training split.
    roc_png : str or path, optional
        Write the ROC curves there (one panel per attack; matplotlib, Agg canvas, imported lazily).
    progress : bool
        tqdm progress bars (when tqdm is installed).

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
    from sklearn.metrics import roc_auc_score, roc_curve

    b = as_backend(backend)
    X, _ = b.as_batch(X_clean, "X_clean")
    if X.ndim != len(b.input_shape) + 1:
        raise ValueError(f"X_clean must be a batch (n, *input_shape), got shape {shape_str(np.shape(X_clean))}")
    n = X.shape[0]
    p = b.probabilities(X)
    y = check_labels(y_clean, n, p.shape[1], "y_clean")
    bnds = check_bounds(bounds, X)
    if not (isinstance(test_size, numbers.Real) and 0 < test_size < 1):
        raise ValueError(f"test_size must be a number in (0, 1), got {test_size!r}")
    if noise not in ("same_norm", None):
        raise ValueError(f"noise must be 'same_norm' or None, got {noise!r}")
    if isinstance(attacks, Mapping):
        attack_fns = {str(k): (None if isinstance(v, str) else v) for k, v in attacks.items()}
        attack_kind = {str(k): (v if isinstance(v, str) else None) for k, v in attacks.items()}
    else:
        if isinstance(attacks, str):
            attacks = (attacks,)
        attack_fns = {str(a): None for a in attacks}
        attack_kind = {str(a): str(a) for a in attacks}
    if not attack_fns:
        raise ValueError("attacks must name at least one attack")
    for name, kind in attack_kind.items():
        if attack_fns[name] is None and kind not in ATTACKS:
            raise ValueError(f"attacks must be names from {ATTACKS} or a mapping to callables, got {kind!r}")
        if attack_fns[name] is not None and not callable(attack_fns[name]):
            raise TypeError(f"attack {name!r} must be a name or a callable, got {type(attack_fns[name]).__name__}")
    options = dict(attack_options or {})
    for what, given in (("attack_options", options), ("epsilon", epsilon if isinstance(epsilon, Mapping) else {})):
        unknown = [a for a in given if a not in attack_fns]
        if unknown:
            raise ValueError(f"{what} has entries for attacks not run: {unknown} (attacks: {list(attack_fns)})")
    rng = np.random.default_rng(random_state)

    # ----------------------------------------------------------- inputs and the split by input
    correct = np.flatnonzero(p.argmax(axis=1) == y)
    if correct.size < 4:
        raise ValueError(f"only {correct.size} of the {n} inputs are classified correctly; need at least 4")
    perm = rng.permutation(correct)
    n_test = min(max(1, int(round(test_size * correct.size))), correct.size - 1)
    test_inputs, train_inputs = np.sort(perm[:n_test]), np.sort(perm[n_test:])
    is_test = np.zeros(n, dtype=bool)
    is_test[test_inputs] = True
    Xc, yc = X[correct], y[correct]

    # ----------------------------------------------------------- budgets
    eps_default = None
    if epsilon is None or (isinstance(epsilon, Mapping) and any(a not in epsilon for a in attack_fns)):
        if bnds is not None:
            hi = (bnds[1] - bnds[0]) * math.sqrt(math.prod(b.input_shape))
        else:
            hi = 10.0 * float(np.max(np.linalg.norm(Xc.reshape(Xc.shape[0], -1), axis=1))) + 1.0
        lp = least_perturbation("fgm", Xc, b, labels=yc, lo=0.0, hi=hi, tol=hi * 1e-4, bounds=bnds)
        lp = lp[np.isfinite(lp)]
        if lp.size == 0:
            raise ValueError("FGM fools none of the inputs at any budget: pass epsilon explicitly")
        eps_default = float(np.percentile(lp, 90))
    eps = {}
    for a in attack_fns:
        if isinstance(epsilon, Mapping):
            e = epsilon.get(a, eps_default)
        else:
            e = eps_default if epsilon is None else epsilon
        eps[a] = math.nan if attack_kind[a] == "opt" else _check_positive(e, f"epsilon[{a!r}]")

    # ----------------------------------------------------------- attacks, noisy copies
    samples = [Xc]  # the clean copies, shared by all attacks
    offset = Xc.shape[0]
    per_attack, fooling = {}, {}
    for a in _progress(list(attack_fns), enabled=progress, desc="attacks"):
        r = _run_attack(attack_kind[a] or a, attack_fns[a], Xc, b, yc, eps[a], bnds, options.get(a, {}), rng)
        ok = np.asarray(r.success, dtype=bool).reshape(-1)
        fooling[a] = float(ok.mean())
        if not ok.any():
            raise ValueError(f"attack {a!r} fooled none of the {Xc.shape[0]} inputs: raise its epsilon")
        sel = np.flatnonzero(ok)
        adv = np.asarray(r.x_adv, dtype=np.float64).reshape(Xc.shape)[sel]
        idx_clean = sel
        rows = [idx_clean]
        labels = [np.zeros(sel.size, dtype=np.int64)]
        if noise == "same_norm":
            norms = np.linalg.norm((adv - Xc[sel]).reshape(sel.size, -1), axis=1)
            z = rng.standard_normal(adv.shape)
            zn = np.linalg.norm(z.reshape(sel.size, -1), axis=1)
            noisy = Xc[sel] + z * (norms / zn).reshape((-1,) + (1,) * (z.ndim - 1))
            if bnds is not None:
                noisy = np.clip(noisy, bnds[0], bnds[1])
            samples.append(noisy)
            rows.append(offset + np.arange(sel.size))
            labels.append(np.zeros(sel.size, dtype=np.int64))
            offset += sel.size
        samples.append(adv)
        rows.append(offset + np.arange(sel.size))
        labels.append(np.ones(sel.size, dtype=np.int64))
        offset += sel.size
        src = correct[sel]
        per_attack[a] = (np.concatenate(rows), np.concatenate(labels), np.tile(src, len(rows)))
    S = np.concatenate(samples)

    # ----------------------------------------------------------- detectors and their features
    skipped: dict = {}
    if detectors is None:
        Xkd = X_train if X_train is not None else X[train_inputs]
        ykd = y_train if X_train is not None else y[train_inputs]
        detectors, skipped = default_detectors(b, X_train=Xkd, y_train=ykd, random_state=random_state)
    elif not isinstance(detectors, Mapping) or not detectors:
        raise ValueError("detectors must be a non-empty mapping of name to detector")
    names = list(detectors)
    feats, transformers = {}, {}
    for name in _progress(names, enabled=progress, desc="features"):
        det = detectors[name]
        if isinstance(det, _Detector):
            tr = det.make_transformer().fit(X[train_inputs])
            transformers[name] = tr
            feats[name] = tr.transform(S)  # once per input, whatever the number of attacks
        elif hasattr(det, "fit") and hasattr(det, "predict_proba"):
            transformers[name] = None
            feats[name] = S.reshape(S.shape[0], -1)
        else:
            raise TypeError(f"detector {name!r} must be a detector of fisher_ref or a scikit-learn classifier, "
                            f"got {type(det).__name__}")

    # ----------------------------------------------------------- train per attack, AUC on held-out inputs
    attack_names = list(attack_fns)
    auc = np.full((len(names), len(attack_names)), np.nan)
    roc, models, n_samples, groups = {}, {}, {}, {}
    for a in attack_names:
        rows, lab, src = per_attack[a]
        te = is_test[src]
        n_samples[a] = {"train_negative": int(np.sum(~te & (lab == 0))),
                        "train_positive": int(np.sum(~te & (lab == 1))),
                        "test_negative": int(np.sum(te & (lab == 0))),
                        "test_positive": int(np.sum(te & (lab == 1)))}
        groups[a] = {"train": src[~te], "test": src[te]}
    for i, name in enumerate(_progress(names, enabled=progress, desc="detectors")):
        for j, a in enumerate(attack_names):
            rows, lab, src = per_attack[a]
            te = is_test[src]
            F = feats[name][rows]
            if np.unique(lab[~te]).size < 2:
                warnings.warn(f"{name} / {a}: the training split lacks a class; AUC left as nan", UserWarning,
                              stacklevel=2)
                continue
            model = _fit_on_features(detectors[name], F[~te], lab[~te], transformers[name])
            models[name, a] = model
            if np.unique(lab[te]).size < 2:
                warnings.warn(f"{name} / {a}: the test split lacks a class; AUC left as nan", UserWarning, stacklevel=2)
                continue
            score = _proba_on_features(model, F[te], transformers[name])[:, 1]
            auc[i, j] = roc_auc_score(lab[te], score)
            fpr, tpr, _ = roc_curve(lab[te], score)
            roc[name, a] = (fpr, tpr)

    # ----------------------------------------------------------- Table 5: the Fisher detector across attacks
    cross_name = next((nm for nm in names if isinstance(detectors[nm], FisherDetector)), None)
    cross = None
    if cross_name is not None:
        cv = np.full((len(attack_names), len(attack_names)), np.nan)
        for i, a in enumerate(attack_names):
            if (cross_name, a) not in models:
                continue
            for j, t in enumerate(attack_names):
                rows, lab, src = per_attack[t]
                te = is_test[src]
                if np.unique(lab[te]).size < 2:
                    continue
                score = _proba_on_features(models[cross_name, a], feats[cross_name][rows][te], transformers[cross_name])
                cv[i, j] = roc_auc_score(lab[te], score[:, 1])
        cross = AUCTable(attack_names, attack_names, cv, row_label="trained on \\ tested on")

    table = AUCTable(names, attack_names, auc)
    png = None
    if roc_png is not None:
        png = os.fspath(roc_png)
        _plot_roc(png, roc, table)
    return DetectionReport(auc=table, cross=cross, cross_detector=cross_name,
                           epsilon={a: eps[a] for a in attack_names}, fooling_rate=fooling, n_samples=n_samples,
                           train_inputs=train_inputs, test_inputs=test_inputs, groups=groups, roc=roc,
                           skipped=skipped, roc_png=png)


def _fit_on_features(det: Any, F: np.ndarray, y: np.ndarray, transformer: Any) -> Any:
    model = clone(det)
    if transformer is not None:
        return model.fit_from_features(F, y, transformer)
    return model.fit(F, y)


def _proba_on_features(model: Any, F: np.ndarray, transformer: Any) -> np.ndarray:
    if transformer is not None:
        return model.predict_proba_from_features(F)
    return model.predict_proba(F)


def _plot_roc(path: str, roc: dict, table: AUCTable) -> None:
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
