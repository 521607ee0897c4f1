"""The detector: a feature map and a classifier on its features, and the paper's configurations of it.

:class:`Detector` is one scikit-learn classifier on RAW inputs ``(n, *input_shape)`` built from two
estimators, as a two-step :class:`~sklearn.pipeline.Pipeline`: ``features`` (a transformer from
inputs to detection features, e.g. :class:`~fisher_ref.detection.FisherSpectrumFeatures`) and
``classifier`` (any scikit-learn classifier with ``predict_proba``). Their parameters are nested
parameters of the detector (``detector.set_params(features__k=5)``, ``classifier__max_depth``),
so grid searches and :func:`~sklearn.base.clone` work as for a pipeline.

:func:`FisherDetector`, :func:`KernelDensityDetector`, :func:`BayesianUncertaintyDetector`,
:func:`KDBUDetector` and :func:`LIDDetector` build the detectors of the paper's Table 4 (and LID)
as such pairs, from the arguments the papers speak of.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.utils.validation import check_array, check_is_fitted

from .._backend import as_backend
from .._validation import shape_str
from ._base import check_batch, check_binary_y, check_input_shape
from ._features import BayesianUncertaintyFeatures, FisherSpectrumFeatures, KernelDensityFeatures, LIDFeatures

__all__ = ["BayesianUncertaintyDetector", "Detector", "FisherDetector", "KDBUDetector", "KernelDensityDetector",
           "LIDDetector"]


class Detector(ClassifierMixin, BaseEstimator):
    """Adversarial-example detector: a feature map from raw inputs, then a classifier on the features.

    ``y = 1`` marks adversarial inputs, ``y = 0`` clean and noisy ones (the paper's negatives);
    any two labels work, the second of the sorted labels (``classes_[1]``) is "adversarial".

    Parameters
    ----------
    features : transformer
        Maps a batch ``(n, *input_shape)`` to ``(n, n_features)``: one of
        :class:`~fisher_ref.detection.FisherSpectrumFeatures`, ``KernelDensityFeatures``,
        ``BayesianUncertaintyFeatures``, ``LIDFeatures``, a :class:`~sklearn.pipeline.FeatureUnion`
        of them, or any scikit-learn transformer. Cloned at fit.
    classifier : classifier
        Any scikit-learn classifier with ``predict_proba``; cloned at fit, trained on the
        features with the labels encoded as 0 / 1.

    Attributes
    ----------
    classes_ : ndarray of shape (2,)
        The labels seen at fit; ``classes_[1]`` is "adversarial".
    features_ : transformer
        The fitted clone of ``features``.
    classifier_ : classifier
        The fitted clone of ``classifier``.
    n_features_in_ : int
        Number of values per input, ``prod(input_shape_)``.
    input_shape_ : tuple of int or None
        Shape of one input at fit (None after :meth:`fit_from_features` when the feature map does
        not say it).

    Notes
    -----
    Unlike a :class:`~sklearn.pipeline.Pipeline`, :meth:`fit` fits the feature map on the
    negatives only (``y == classes_[0]``: its reference inputs, e.g. LID's minibatch of clean
    inputs, come from there) and the classifier on the features of all inputs. With a feature map
    that learns nothing from data (the Fisher spectrum, BU, KD with ``X_train``) it is that pipeline.

    scikit-learn's estimator checks run on :func:`FisherDetector` and
    :class:`~fisher_ref.detection.FisherSpectrumFeatures` (tests/test_detection_sklearn.py), with
    these caveats:

    * X is read through a fixed model, so X must have that model's number of features. The checks
      fit data of widths 1, 2, 3, 4, 5 or 10; each check is run against a model of the width it
      uses (against another model it could only fail on the width). A mismatched X raises
      ``ValueError("X has 3 features, but Detector is expecting 4 features as input: ...")``.
    * ``check_estimators_overwrite_params`` is an expected failure: it compares
      ``joblib.hash(deepcopy(params))`` with the parameters after ``fit``, and the hash of a
      backend's ``capabilities`` frozenset follows the set's iteration order, which a deep copy
      may change (it depends on ``PYTHONHASHSEED``) although ``fit`` does not touch the backend.
    * The Fisher detector sees an input only through C - 1 nonzero Fisher eigenvalues of the model,
      not through the input itself, so it is no universal classifier of arbitrary data:
      ``check_classifiers_train`` (training accuracy >= 0.83 on blobs) passes with the test's
      model but need not with another one.
    * It is a binary detector (adversarial or not): the ``multi_class`` tag is False and
      multiclass targets raise the ValueError scikit-learn asks for.
    * ``clone`` shares the backend of the feature maps instead of deep-copying it: the model is
      data, not a hyper-parameter, and may not be copyable (an ONNX Runtime session).
    """

    def __init__(self, features: Any, classifier: Any):
        self.features = features
        self.classifier = classifier

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_class = False
        return tags

    def make_transformer(self) -> Any:
        """The detector's (unfitted) feature map: a clone of ``features``."""
        if not (hasattr(self.features, "fit") and hasattr(self.features, "transform")):
            raise ValueError(f"features must be a scikit-learn transformer with fit and transform, "
                             f"got {type(self.features).__name__}")
        return clone(self.features)

    # -------------------------------------------------------------- fitting
    def fit(self, X: Any, y: Any) -> "Detector":
        """Fit on raw inputs ``X (n, *input_shape)`` with ``y = 1`` adversarial, 0 clean or noisy.

        The feature map is fitted on the negatives (``y == classes_[0]``), the classifier on the
        features of all of ``X``.

        Raises
        ------
        ValueError
            If X is not a batch of the backend's input shape, or y is not binary.
        fisher_ref.MissingCapabilityError
            If the backend lacks a capability the features need.
        """
        _, y01 = check_binary_y(y, None, type(self).__name__)  # y first: it decides what X is for
        X = check_batch(self, X, reset=True)
        if X.shape[0] != y01.shape[0]:
            raise ValueError(f"y has {y01.shape[0]} labels but X has {X.shape[0]} inputs")
        shape = _backend_input_shape(self.features)
        if shape is not None:  # checked here on all of X, before the feature map sees the negatives
            check_input_shape(X, shape, "X", type(self).__name__,
                              f"a batch of the backend's input_shape {shape_str(shape)}")
        features = self.make_transformer().fit(X[y01 == 0])
        return self._fit_classifier(features.transform(X), y, features, X.shape[1:])

    def fit_from_features(self, F: Any, y: Any, features: Any) -> "Detector":
        """Fit the classifier on precomputed features ``F = features.transform(X)``.

        ``features`` (fitted, from :meth:`make_transformer`) is kept, so that :meth:`predict`
        and friends work on raw inputs afterwards. This is how
        :func:`~fisher_ref.detection.evaluate_detection` computes each input's features once for
        many detectors' training sets.
        """
        check_is_fitted(features)
        return self._fit_classifier(F, y, features, _fitted_input_shape(features))

    def _fit_classifier(self, F: Any, y: Any, features: Any, input_shape: tuple | None) -> "Detector":
        if not (hasattr(self.classifier, "fit") and hasattr(self.classifier, "predict_proba")):
            raise ValueError(f"classifier must be a scikit-learn classifier with fit and predict_proba, "
                             f"got {type(self.classifier).__name__}")
        F = check_array(F, dtype=np.float64, input_name="F")
        classes, y01 = check_binary_y(y, F.shape[0], type(self).__name__)
        self.classifier_ = clone(self.classifier).fit(F, y01)
        self.features_ = features
        self.classes_ = classes
        self.input_shape_ = None if input_shape is None else tuple(int(s) for s in input_shape)
        n_in = getattr(features, "n_features_in_", None)
        self.n_features_in_ = int(np.prod(self.input_shape_)) if self.input_shape_ is not None else n_in
        return self

    # -------------------------------------------------------------- prediction
    def score_features(self, X: Any) -> np.ndarray:
        """The detection features of raw inputs, ``(n, n_detection_features)``."""
        check_is_fitted(self)
        X = check_batch(self, X, reset=False)
        if self.input_shape_ is not None:
            check_input_shape(X, self.input_shape_, "X", type(self).__name__,
                              f"the input shape {shape_str(self.input_shape_)} seen at fit")
        return self.features_.transform(X)

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


def _backend_input_shape(features: Any) -> tuple | None:
    """The input shape of the backend a feature map reads inputs through (its ``backend`` parameters,
    nested ones included), when they know one and agree; else None."""
    params = features.get_params(deep=True) if hasattr(features, "get_params") else {}
    shapes = {as_backend(v).input_shape for k, v in params.items() if k.split("__")[-1] == "backend"}
    shapes.discard(None)
    return shapes.pop() if len(shapes) == 1 else None


def _fitted_input_shape(features: Any) -> tuple | None:
    """The input shape a fitted feature map was fit on: its ``input_shape_``, or the one its parts
    (a FeatureUnion's transformers, a Pipeline's first step) agree on; None when it does not say."""
    shape = getattr(features, "input_shape_", None)
    if shape is not None:
        return tuple(shape)
    parts = [t for _, t in getattr(features, "transformer_list", [])]
    parts += [s for _, s in getattr(features, "steps", [])[:1]]
    shapes = {_fitted_input_shape(p) for p in parts if hasattr(p, "fit")} - {None}
    return shapes.pop() if len(shapes) == 1 else None


# ---------------------------------------------------------------------------------------------
# the paper's configurations


def standardised_logistic_regression() -> Any:
    """The classifier of the baselines, as their authors: logistic regression on standardised features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression())


def _fisher_classifier(classifier: Any, random_state: Any) -> Any:
    if isinstance(classifier, str):
        if classifier == "random_forest":
            from sklearn.ensemble import RandomForestClassifier

            return RandomForestClassifier(n_estimators=50, max_depth=5, random_state=random_state)
        if classifier == "naive_bayes":
            from sklearn.naive_bayes import GaussianNB

            return GaussianNB()
    if isinstance(classifier, str) or not (hasattr(classifier, "fit") and hasattr(classifier, "predict_proba")):
        raise ValueError(f"classifier must be 'random_forest', 'naive_bayes' or a scikit-learn classifier with "
                         f"fit and predict_proba, got {classifier!r}")
    return classifier


def FisherDetector(backend: Any, *, k: int = 20, classifier: Any = "random_forest", log: bool = False,
                   extra: Sequence[str] = ("growth",), growth_step: float = 0.1, random_state: Any = None) -> Detector:
    """The paper's detector: top-k Fisher eigenvalues of an input, then a random forest.

    By default the eigenvalues are joined by the growth of the top eigenvalue along the OSSA
    direction (``extra=("growth",)``, measured to help; ``extra=()`` is the paper's detector).

    Parameters
    ----------
    backend : Backend or callable
        The attacked classifier (see :func:`~fisher_ref.as_backend`); its ``input_shape`` must be
        known.
    k : int, default=20
        Number of eigenvalues (the paper: top 20; at most C - 1 are nonzero, see
        :class:`~fisher_ref.detection.FisherSpectrumFeatures`).
    classifier : {"random_forest", "naive_bayes"} or estimator, default="random_forest"
        ``"random_forest"``: ``RandomForestClassifier(n_estimators=50, max_depth=5)`` (the paper:
        depth at most 5 and at least 20 trees); ``"naive_bayes"``: ``GaussianNB()``; or any
        scikit-learn classifier with ``predict_proba`` (cloned at fit).
    log : bool, default=False
        Log-eigenvalues as features (see :class:`~fisher_ref.detection.FisherSpectrumFeatures`).
    extra : sequence of {"trace", "ratios", "growth"}, default=("growth",)
        Extra spectral statistics (see :class:`~fisher_ref.detection.FisherSpectrumFeatures`). The
        default adds the growth of lambda_1 along the OSSA direction (paper Figure 4b), which raised
        the mean AUC on MNIST from 81.4 % to 84.2 % (every attack gained 1.7-3.5 points); "trace"
        and "ratios" did not help measurably. ``extra=()`` is the paper's detector.
    growth_step : float, default=0.1
        Step of the ``"growth"`` statistic.
    random_state : None, int or RandomState
        Seed of the random forest.

    Returns
    -------
    Detector
        ``Detector(features=FisherSpectrumFeatures(backend, k=k, log=log, extra=extra,
        growth_step=growth_step), classifier=...)``: ``set_params(features__k=10)`` and
        ``classifier__max_depth`` reach its parts.

    Raises
    ------
    ValueError
        For a ``classifier`` that is none of the names and no classifier with ``predict_proba``.

    References
    ----------
    Zhao et al., AAAI 2019, Section 4, Tables 4-5 (random forest on the top 20 eigenvalues;
    Gaussian naive Bayes also works well).
    """
    features = FisherSpectrumFeatures(backend, k=k, log=log, extra=extra, growth_step=growth_step)
    return Detector(features, _fisher_classifier(classifier, random_state))


def KernelDensityDetector(backend: Any, *, bandwidth: float = 1.0, layer: str | None = None,
                          X_train: Any = None, y_train: Any = None) -> Detector:
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
        given to ``fit``, labelled by the model). See :class:`~fisher_ref.detection.KernelDensityFeatures`.

    Returns
    -------
    Detector
        ``Detector(KernelDensityFeatures(...), make_pipeline(StandardScaler(), LogisticRegression()))``.

    References
    ----------
    Feinman, Curtin, Shintre and Gardner (2017), arXiv:1703.00410, Sections 3.1 and 4.
    Zhao et al., AAAI 2019, Table 4 (row KD).
    """
    features = KernelDensityFeatures(backend, bandwidth=bandwidth, layer=layer, X_train=X_train, y_train=y_train)
    return Detector(features, standardised_logistic_regression())


def BayesianUncertaintyDetector(backend: Any, *, n_samples: int = 50, random_state: Any = None) -> Detector:
    """Feinman et al.'s Bayesian-uncertainty (BU) detector: logistic regression on the BU score.

    Parameters
    ----------
    backend : Backend or callable
        Needs ``"stochastic_probabilities"`` (Monte-Carlo dropout).
    n_samples : int, default=50
        Dropout samples per input.
    random_state : None, int or Generator
        Dropout masks (an int makes the scores deterministic).

    Returns
    -------
    Detector
        ``Detector(BayesianUncertaintyFeatures(...), make_pipeline(StandardScaler(), LogisticRegression()))``.

    References
    ----------
    Feinman, Curtin, Shintre and Gardner (2017), arXiv:1703.00410, Sections 3.2 and 4.
    Zhao et al., AAAI 2019, Table 4 (row BU).
    """
    features = BayesianUncertaintyFeatures(backend, n_samples=n_samples, random_state=random_state)
    return Detector(features, standardised_logistic_regression())


def KDBUDetector(backend: Any, *, bandwidth: float = 1.0, layer: str | None = None, X_train: Any = None,
                 y_train: Any = None, n_samples: int = 50, random_state: Any = None) -> Detector:
    """Feinman et al.'s combined detector: logistic regression on the standardised KD and BU scores.

    Parameters are those of :func:`KernelDensityDetector` and :func:`BayesianUncertaintyDetector`;
    the backend needs both ``"features"`` and ``"stochastic_probabilities"``.

    Returns
    -------
    Detector
        Its ``features`` is ``FeatureUnion([("kd", KernelDensityFeatures(...)),
        ("bu", BayesianUncertaintyFeatures(...))])`` (nested parameters ``features__kd__bandwidth``,
        ``features__bu__n_samples``).

    References
    ----------
    Feinman, Curtin, Shintre and Gardner (2017), arXiv:1703.00410, Section 4.3 (combined).
    Zhao et al., AAAI 2019, Table 4 (row KD+BU).
    """
    from sklearn.pipeline import FeatureUnion

    features = FeatureUnion([
        ("kd", KernelDensityFeatures(backend, bandwidth=bandwidth, layer=layer, X_train=X_train, y_train=y_train)),
        ("bu", BayesianUncertaintyFeatures(backend, n_samples=n_samples, random_state=random_state)),
    ])
    return Detector(features, standardised_logistic_regression())


def LIDDetector(backend: Any, *, k: int = 20, batch_size: int = 100, layers: Sequence[str] | None = None,
                random_state: Any = None) -> Detector:
    """Ma et al.'s LID detector: logistic regression on the standardised per-layer LID estimates.

    Parameters
    ----------
    backend : Backend or callable
        Needs ``"features"``.
    k : int, default=20
        Nearest neighbours of the LID estimate.
    batch_size : int, default=100
        Size of the clean reference minibatch (drawn from the negatives given to ``fit``).
    layers : sequence of str, optional
        Layers (default all of ``backend.feature_layers``).
    random_state : None, int or Generator
        Choice of the reference minibatch.

    Returns
    -------
    Detector
        ``Detector(LIDFeatures(...), make_pipeline(StandardScaler(), LogisticRegression()))``.

    References
    ----------
    Ma et al. (2018), "Characterizing adversarial subspaces using local intrinsic
    dimensionality", ICLR 2018, Section 4 and Algorithm 1. See :class:`~fisher_ref.detection.LIDFeatures`.
    """
    features = LIDFeatures(backend, k=k, batch_size=batch_size, layers=layers, random_state=random_state)
    return Detector(features, standardised_logistic_regression())
