"""The detector of fisher_ref.detection: the composite Detector(features, classifier), the paper's
configurations of it (Fisher, KD, BU, KD+BU, LID) and detection where the answer is known."""

import math

import numpy as np
import pytest

pytest.importorskip("sklearn")

from scipy.stats import norm  # noqa: E402
from sklearn.base import BaseEstimator, TransformerMixin, clone  # noqa: E402
from sklearn.ensemble import RandomForestClassifier  # noqa: E402
from sklearn.exceptions import NotFittedError  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402
from sklearn.naive_bayes import GaussianNB  # noqa: E402
from sklearn.neighbors import KNeighborsClassifier  # noqa: E402
from sklearn.pipeline import FeatureUnion, Pipeline, make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

from _detection_problems import fgm_detection_data, gaussian_problem, small_model, stack  # noqa: E402
from fisher_ref import MissingCapabilityError  # noqa: E402
from fisher_ref.backends import LogisticRegressionModel, MLPModel  # noqa: E402
from fisher_ref.detection import (  # noqa: E402
    BayesianUncertaintyDetector,
    BayesianUncertaintyFeatures,
    Detector,
    FisherDetector,
    FisherSpectrumFeatures,
    KDBUDetector,
    KernelDensityDetector,
    KernelDensityFeatures,
    LIDDetector,
    LIDFeatures,
)


@pytest.fixture(scope="module")
def problem5():
    model, X, y = gaussian_problem(5, n=300, seed=0)
    idx, noisy, adv = fgm_detection_data(model, X, y)
    idx = np.random.default_rng(0).permutation(idx)
    half = idx.size // 2
    Xa, ya = stack(X, noisy, adv, idx[:half])
    Xb, yb = stack(X, noisy, adv, idx[half:])
    return model, X, y, (Xa, ya), (Xb, yb)


# ---------------------------------------------------------------------------------------------
# the estimator contract


DETECTORS = {
    "fisher": lambda m: FisherDetector(m, k=4, random_state=0),
    "fisher_nb": lambda m: FisherDetector(m, classifier="naive_bayes"),
    "kd": lambda m: KernelDensityDetector(m),
    "bu": lambda m: BayesianUncertaintyDetector(m, n_samples=10, random_state=0),
    "kdbu": lambda m: KDBUDetector(m, n_samples=10, random_state=0),
    "lid": lambda m: LIDDetector(m, k=5, batch_size=20, random_state=0),
}


def plain_params(est):
    """The nested parameters that are plain values (no estimator, no list of steps, no backend)."""
    def steps(v):
        return isinstance(v, list) and all(isinstance(t, tuple) and hasattr(t[-1], "get_params") for t in v)

    return {k: v for k, v in est.get_params(deep=True).items()
            if not hasattr(v, "get_params") and not steps(v) and not k.endswith("backend")}


@pytest.mark.filterwarnings("ignore:KD. classes .* have no reference inputs")  # random labels
@pytest.mark.parametrize("name", list(DETECTORS))
def test_detector_fit_predict_contract(name):
    model = small_model(d=6, C=4, dropout=0.3)
    rng = np.random.default_rng(0)
    X = rng.uniform(0, 1, (60, 6))
    y = (np.arange(60) % 3 == 0).astype(int)
    det = DETECTORS[name](model)
    assert isinstance(det, Detector)
    with pytest.raises(NotFittedError):
        det.predict(X)
    assert det.fit(X, y) is det
    np.testing.assert_array_equal(det.classes_, [0, 1])
    assert det.n_features_in_ == 6 and det.input_shape_ == (6,)
    P = det.predict_proba(X[:7])
    assert P.shape == (7, 2)
    np.testing.assert_allclose(P.sum(axis=1), 1.0, rtol=1e-12)
    dec = det.decision_function(X[:7])
    assert dec.shape == (7,)
    np.testing.assert_array_equal(det.predict(X[:7]), np.where(dec > 0, 1, 0))
    F = det.score_features(X[:7])
    np.testing.assert_allclose(det.predict_proba_from_features(F), P)
    # clone: same parameters, unfitted, the model shared (not copied)
    c = clone(det)
    backends = [v for k, v in c.get_params(deep=True).items() if k.endswith("backend")]
    assert backends and all(b is model for b in backends) and not hasattr(c, "classes_")
    assert plain_params(c) == plain_params(det) and c.features is not det.features
    # fit_from_features gives the same model as fit, and knows the input shape from the features
    tr = det.make_transformer().fit(X[y == 0])
    c.fit_from_features(tr.transform(X), y, tr)
    assert c.input_shape_ == (6,) and c.n_features_in_ == 6
    np.testing.assert_allclose(c.predict_proba(X[:7]), P, rtol=1e-10)


def test_detector_get_set_params_and_string_labels():
    model = small_model()
    det = FisherDetector(model, k=3, random_state=1)
    params = det.get_params()
    assert params["features__k"] == 3 and params["classifier__random_state"] == 1
    assert params["features__extra"] == ("growth",) and params["classifier__max_depth"] == 5
    assert det.set_params(features__k=2, features__log=True) is det and det.features.k == 2 and det.features.log
    det = FisherDetector(model, classifier=make_pipeline(GaussianNB()))
    assert "classifier__gaussiannb__var_smoothing" in det.get_params()
    X = np.random.default_rng(0).uniform(0, 1, (30, 6))
    y = np.where(np.arange(30) % 2, "adversarial", "clean")
    det.fit(X, y)
    assert set(det.predict(X)) <= {"adversarial", "clean"} and list(det.classes_) == ["adversarial", "clean"]


def test_detector_bad_inputs_raise_clear_errors():
    model = MLPModel.random((1, 2, 3), 3, (5,), rng=0)
    X = np.random.default_rng(0).uniform(0, 1, (20, 1, 2, 3))
    y = np.arange(20) % 2
    det = FisherDetector(model)
    with pytest.raises(ValueError, match=r"X has shape \(20, 6\), expected \(n, 1, 2, 3\)"):
        det.fit(X.reshape(20, 6), y)
    with pytest.raises(ValueError, match=r"Only binary classification is supported"):
        det.fit(X, np.arange(20) % 3)
    with pytest.raises(ValueError, match="only one class"):
        det.fit(X, np.zeros(20))
    with pytest.raises(ValueError, match="y has 19 labels"):
        det.fit(X, y[:19])
    with pytest.raises(ValueError, match="requires y"):
        det.fit(X, None)
    with pytest.raises(ValueError, match="Unknown label type"):
        det.fit(X, np.linspace(0, 1, 20))
    with pytest.raises(ValueError, match="NaN"):
        det.fit(np.where(X > 0.5, np.nan, X), y)
    with pytest.raises(ValueError, match=r"Expected a batch of inputs \(n, \*input_shape\), got an array of shape "
                                         r"\(6,\)"):
        det.fit(X.reshape(-1)[:6], y[:6])
    det.fit(X, y)
    with pytest.raises(ValueError, match=r"X has 6 features, but Detector is expecting 6 features as input: X has "
                                         r"shape \(4, 1, 3, 2\), expected \(n, 1, 2, 3\), the input shape"):
        det.predict_proba(X[:4].reshape(4, 1, 3, 2))
    with pytest.raises(ValueError, match="classifier must be 'random_forest', 'naive_bayes' or a scikit-learn "
                                         "classifier with fit and predict_proba, got 'svm'"):
        FisherDetector(model, classifier="svm")
    with pytest.raises(ValueError, match="classifier must be"):
        FisherDetector(model, classifier=object())
    with pytest.raises(ValueError, match="classifier must be a scikit-learn classifier with fit and predict_proba, "
                                         "got object"):
        Detector(FisherSpectrumFeatures(model), object()).fit(X, y)
    with pytest.raises(ValueError, match="features must be a scikit-learn transformer with fit and transform, "
                                         "got LogisticRegression"):
        Detector(LogisticRegression(), GaussianNB()).fit(X, y)


@pytest.mark.filterwarnings("ignore:KD. classes .* have no reference inputs")
def test_baselines_need_their_capabilities():
    lr = LogisticRegressionModel.random((6,), 3, rng=0)  # no hidden layer: no features, no dropout
    plain = small_model(dropout=0.0)  # features but no dropout
    X = np.random.default_rng(0).uniform(0, 1, (40, 6))
    y = np.arange(40) % 2
    for det in (KernelDensityDetector(lr), LIDDetector(lr, k=3, batch_size=10), KDBUDetector(lr)):
        with pytest.raises(MissingCapabilityError, match="features"):
            det.fit(X, y)
    for det in (BayesianUncertaintyDetector(plain), KDBUDetector(plain)):
        with pytest.raises(MissingCapabilityError, match="stochastic_probabilities"):
            det.fit(X, y)
    with pytest.raises(ValueError, match="more than k"):
        LIDDetector(plain, k=20, batch_size=10).fit(X, y)


# ---------------------------------------------------------------------------------------------
# the composite: nested parameters, clone, any transformer with any classifier


def test_nested_parameters_change_the_features():
    model = small_model(d=6, C=4)
    rng = np.random.default_rng(1)
    X = rng.uniform(0, 1, (40, 6))
    y = (np.arange(40) % 2).astype(int)
    det = FisherDetector(model, k=3, random_state=0).fit(X, y)
    assert det.score_features(X).shape == (40, 3 + 1)  # k eigenvalues and the growth
    det.set_params(features__k=2, features__extra=(), classifier__n_estimators=7)
    assert not hasattr(det.features, "extra_")  # the parameter is set, nothing fitted yet
    det.fit(X, y)
    np.testing.assert_array_equal(det.score_features(X), FisherSpectrumFeatures(model, k=2).fit(X).transform(X))
    assert det.features_.k == 2 and len(det.classifier_.estimators_) == 7
    with pytest.raises(ValueError, match="Invalid parameter 'kk'"):
        det.set_params(features__kk=1)


@pytest.mark.filterwarnings("ignore:KD. classes .* have no reference inputs")  # few inputs
def test_clone_gives_an_unfitted_copy_sharing_the_model():
    model = small_model(d=6, C=4, dropout=0.3)
    X = np.random.default_rng(2).uniform(0, 1, (30, 6))
    y = (np.arange(30) % 2).astype(int)
    det = KDBUDetector(model, bandwidth=0.5, X_train=X, n_samples=5, random_state=0).fit(X, y)
    c = clone(det)
    assert not hasattr(c, "classes_") and not hasattr(c, "features_")
    assert c.get_params()["features__kd__bandwidth"] == 0.5 and c.get_params()["features__bu__n_samples"] == 5
    kd, kd0 = c.features.transformer_list[0][1], det.features.transformer_list[0][1]
    assert kd is not kd0 and kd.backend is model and kd.X_train is X  # shared, not copied
    assert not hasattr(kd, "class_features_")
    np.testing.assert_array_equal(c.fit(X, y).predict_proba(X), det.predict_proba(X))


class CentredNorms(TransformerMixin, BaseEstimator):
    """A custom feature map on images: distance to the mean negative input, and the largest pixel."""

    def fit(self, X, y=None):
        self.mean_ = X.mean(axis=0)
        self.n_features_in_ = int(np.prod(X.shape[1:]))
        return self

    def transform(self, X):
        d = (X - self.mean_).reshape(len(X), -1)
        return np.c_[np.linalg.norm(d, axis=1), X.reshape(len(X), -1).max(axis=1)]


def test_any_transformer_with_any_classifier():
    rng = np.random.default_rng(3)
    X = rng.uniform(0, 1, (80, 1, 3, 3))
    y = (np.arange(80) % 2).astype(int)
    X[y == 1] += rng.normal(0, 0.4, X[y == 1].shape)  # "adversarial": further from the clean mean
    det = Detector(CentredNorms(), KNeighborsClassifier(n_neighbors=5)).fit(X, y)
    assert det.input_shape_ == (1, 3, 3) and det.n_features_in_ == 9
    assert det.get_params()["classifier__n_neighbors"] == 5
    # by hand: the feature map fitted on the negatives, the classifier on the features of all inputs
    tr = CentredNorms().fit(X[y == 0])
    clf = KNeighborsClassifier(n_neighbors=5).fit(tr.transform(X), y)
    np.testing.assert_array_equal(det.predict_proba(X), clf.predict_proba(tr.transform(X)))
    assert roc_auc_score(y, det.predict_proba(X)[:, 1]) > 0.9
    with pytest.raises(ValueError, match=r"expected \(n, 1, 3, 3\)"):
        det.predict(X.reshape(80, 9))


def rf(seed):
    return RandomForestClassifier(n_estimators=50, max_depth=5, random_state=seed)


def slr():
    return make_pipeline(StandardScaler(), LogisticRegression())


def test_named_configurations_are_the_pipelines_they_say(problem5):
    """Each configuration scores as the two-step Pipeline(features, classifier) written out by hand
    (for LID, whose reference minibatch comes from the inputs of fit, with the features fit on the
    negatives as the detector does)."""
    model, X, y, (Xa, ya), (Xb, yb) = problem5
    cases = [
        (FisherDetector(model, random_state=0), FisherSpectrumFeatures(model, k=20, extra=("growth",)), rf(0)),
        (FisherDetector(model, extra=(), random_state=3), FisherSpectrumFeatures(model, k=20), rf(3)),
        (FisherDetector(model, k=5, classifier="naive_bayes", log=True, extra=("trace", "ratios", "growth")),
         FisherSpectrumFeatures(model, k=5, log=True, extra=("trace", "ratios", "growth")), GaussianNB()),
        (KernelDensityDetector(model, bandwidth=0.8, X_train=X, y_train=y),
         KernelDensityFeatures(model, bandwidth=0.8, X_train=X, y_train=y), slr()),
        (BayesianUncertaintyDetector(model, n_samples=20, random_state=0),
         BayesianUncertaintyFeatures(model, n_samples=20, random_state=0), slr()),
        (KDBUDetector(model, X_train=X, y_train=y, random_state=0),
         FeatureUnion([("kd", KernelDensityFeatures(model, X_train=X, y_train=y)),
                       ("bu", BayesianUncertaintyFeatures(model, random_state=0))]), slr()),
    ]
    for det, features, classifier in cases:
        pipe = Pipeline([("features", features), ("classifier", classifier)]).fit(Xa, ya)
        np.testing.assert_allclose(det.fit(Xa, ya).predict_proba(Xb), pipe.predict_proba(Xb), rtol=1e-12, atol=0)
    det = LIDDetector(model, k=10, batch_size=50, random_state=0).fit(Xa, ya)
    lid = LIDFeatures(model, k=10, batch_size=50, random_state=0).fit(Xa[ya == 0])
    clf = slr().fit(lid.transform(Xa), ya)
    np.testing.assert_allclose(det.predict_proba(Xb), clf.predict_proba(lid.transform(Xb)), rtol=1e-12, atol=0)


# ---------------------------------------------------------------------------------------------
# detection where the answer is known


@pytest.mark.parametrize("n_classes", [2, 5])
def test_fisher_detector_detects_fgm_adversarials_beyond_chance(n_classes):
    """FGM adversarials just past the decision boundary sit where the prediction is uncertain,
    so their Fisher eigenvalues are large; clean and equally-noisy inputs sit inside the classes."""
    model, X, y = gaussian_problem(n_classes, n=300, seed=1)
    idx, noisy, adv = fgm_detection_data(model, X, y)
    idx = np.random.default_rng(0).permutation(idx)
    half = idx.size // 2
    Xa, ya = stack(X, noisy, adv, idx[:half])  # split BY INPUT: every copy on one side
    Xb, yb = stack(X, noisy, adv, idx[half:])
    n0, n1 = int(np.sum(yb == 0)), int(np.sum(yb == 1))
    assert n0 + n1 >= 200
    det = FisherDetector(model, random_state=0).fit(Xa, ya)
    auc = roc_auc_score(yb, det.predict_proba(Xb)[:, 1])
    # Under H0 (scores independent of labels) the AUC is a Mann-Whitney statistic with mean 1/2 and
    # variance (n0 + n1 + 1) / (12 n0 n1) (no ties); AUC > 0.8 is then > 8 standard deviations out,
    # a one-sided p-value below 1e-15: the detection is not luck.
    sd = math.sqrt((n0 + n1 + 1) / (12 * n0 * n1))
    assert auc > 0.8
    assert norm.sf((auc - 0.5) / sd) < 1e-9


def test_baselines_run_on_the_mlp_and_give_aucs(problem5):
    model, X, y, (Xa, ya), (Xb, yb) = problem5
    for name, det in (("KD", KernelDensityDetector(model, X_train=X, y_train=y)),
                      ("BU", BayesianUncertaintyDetector(model, random_state=0)),
                      ("KD+BU", KDBUDetector(model, X_train=X, y_train=y, random_state=0)),
                      ("LID", LIDDetector(model, random_state=0)),
                      ("Fisher NB log", FisherDetector(model, classifier="naive_bayes", log=True))):
        auc = roc_auc_score(yb, det.fit(Xa, ya).predict_proba(Xb)[:, 1])
        assert 0.0 <= auc <= 1.0
        assert auc > 0.6, name  # all of them see these boundary adversarials
