"""Adversarial-example detection with the Fisher spectrum (paper Section 4) and its baselines.

The paper's detector maps an input to the top-k eigenvalues of its input Fisher information
``G_x`` (eq. 4) and trains a random forest (or Gaussian naive Bayes) to tell adversarial inputs
(positives) from clean and noisy ones (negatives); Table 4 compares it with the kernel-density (KD)
and Bayesian-uncertainty (BU) features of Feinman et al. (2017), Table 5 tests it across attacks.

Every detector is a :class:`Detector`: a scikit-learn classifier on RAW inputs ``(n, *input_shape)``
made of two estimators, as a two-step pipeline (nested parameters ``features__k``,
``classifier__max_depth``):

* ``features``, a transformer from inputs to detection features - :class:`FisherSpectrumFeatures`,
  :class:`KernelDensityFeatures`, :class:`BayesianUncertaintyFeatures`, :class:`LIDFeatures` (or
  any scikit-learn transformer);
* ``classifier``, any scikit-learn classifier on those features.

:func:`FisherDetector`, :func:`KernelDensityDetector`, :func:`BayesianUncertaintyDetector`,
:func:`KDBUDetector` and :func:`LIDDetector` build the paper's configurations (random forest or
naive Bayes on the Fisher features, a standardised logistic regression on the baselines' scores,
as their authors). :func:`evaluate_detection` measures them against attacks (Tables 4 and 5),
computing the features of every input once, whatever the number of attacks.

Modules: ``_base`` (input checks, chunking, input identity), ``_features``, ``_detectors``,
``_evaluation`` (the steps of :func:`evaluate_detection`), ``_tables`` (:class:`AUCTable`,
:class:`DetectionReport`, the ROC figure). This package imports scikit-learn (the ``detect``
extra) at import time; the rest of :mod:`fisher_ref` needs only NumPy and SciPy.
"""

from .._extras import require_extras

require_extras("detect", what="fisher_ref.detection")  # one clear ImportError without scikit-learn

from ._detectors import (
    BayesianUncertaintyDetector,
    Detector,
    FisherDetector,
    KDBUDetector,
    KernelDensityDetector,
    LIDDetector,
)
from ._evaluation import ATTACKS, default_detectors, evaluate_detection
from ._features import (
    EXTRA_FEATURES,
    FEINMAN_BANDWIDTHS,
    BayesianUncertaintyFeatures,
    FisherSpectrumFeatures,
    KernelDensityFeatures,
    LIDFeatures,
)
from ._tables import AUCTable, DetectionReport

__all__ = [
    # feature maps (transformers)
    "FisherSpectrumFeatures", "KernelDensityFeatures", "BayesianUncertaintyFeatures", "LIDFeatures",
    "EXTRA_FEATURES", "FEINMAN_BANDWIDTHS",
    # the detector and the paper's configurations of it
    "Detector", "FisherDetector", "KernelDensityDetector", "BayesianUncertaintyDetector", "KDBUDetector",
    "LIDDetector",
    # evaluation (Tables 4 and 5)
    "evaluate_detection", "default_detectors", "ATTACKS", "AUCTable", "DetectionReport",
]
