"""Detection (paper Section 4): Fisher spectral features, the Fisher detector, KD / BU / KD+BU / LID
baselines and the evaluation of Tables 4-5, on NumPy reference models."""

import math

import numpy as np
import pytest

sklearn = pytest.importorskip("sklearn")

from scipy.stats import norm  # noqa: E402
from sklearn.base import clone  # noqa: E402
from sklearn.exceptions import NotFittedError  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402
from sklearn.naive_bayes import GaussianNB  # noqa: E402
from sklearn.neighbors import KernelDensity  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402

import fisher_ref as fr  # noqa: E402
from fisher_ref import MissingCapabilityError, fisher_spectrum  # noqa: E402
from fisher_ref._detection import (  # noqa: E402
    AUCTable,
    BayesianUncertaintyDetector,
    BayesianUncertaintyFeatures,
    FisherDetector,
    FisherSpectrumFeatures,
    KDBUDetector,
    KernelDensityDetector,
    KernelDensityFeatures,
    LIDDetector,
    LIDFeatures,
    evaluate_detection,
)
from fisher_ref.backends import LogisticRegressionModel, MLPModel  # noqa: E402


# ---------------------------------------------------------------------------------------------
# synthetic problems with a trained model


def gaussian_problem(n_classes, *, n=300, d=10, seed=0, dropout=0.3):
    """Gaussian classes in R^d and a tanh MLP (d-16-C) trained on them, as a NumPy backend."""
    from sklearn.neural_network import MLPClassifier

    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 1.2, (n_classes, d))
    y = rng.integers(0, n_classes, n)
    X = centers[y] + rng.normal(0, 0.6, (n, d))
    clf = MLPClassifier((16,), activation="tanh", max_iter=2000, random_state=seed).fit(X, y)
    W, B = [c.T for c in clf.coefs_], list(clf.intercepts_)
    if n_classes == 2:  # one logistic output unit = softmax over the logits (0, z)
        W[-1], B[-1] = np.vstack([np.zeros_like(W[-1]), W[-1]]), np.r_[0.0, B[-1]]
    return MLPModel(list(zip(W, B)), activation="tanh", dropout=dropout), X, y


def fgm_detection_data(model, X, y, seed=0, factor=1.1):
    """Per input: clean copy, noisy copy (same l2 norm), FGM adversarial just past the boundary
    (``factor`` times the least FGM perturbation). Returns the inputs of the fooled inputs."""
    lp = fr.least_perturbation("fgm", X, model, labels=y, bounds=None, hi=20.0, tol=1e-3)
    ok = np.isfinite(lp) & (lp > 0)
    eps = factor * np.where(ok, lp, 0.0)
    u = fr.fgm(X, model, epsilon=1.0, labels=y, bounds=None).eta
    adv = X + eps[:, None] * u
    ok &= model.probabilities(adv).argmax(1) != y
    z = np.random.default_rng(seed).standard_normal(X.shape)
    noisy = X + eps[:, None] * z / np.linalg.norm(z, axis=1, keepdims=True)
    return np.flatnonzero(ok), noisy, adv


def stack(X, noisy, adv, idx):
    return (np.concatenate([X[idx], noisy[idx], adv[idx]]),
            np.r_[np.zeros(2 * idx.size), np.ones(idx.size)].astype(np.int64))


@pytest.fixture(scope="module")
def problem5():
    model, X, y = gaussian_problem(5, n=300, seed=0)
    idx, noisy, adv = fgm_detection_data(model, X, y)
    idx = np.random.default_rng(0).permutation(idx)
    half = idx.size // 2
    Xa, ya = stack(X, noisy, adv, idx[:half])
    Xb, yb = stack(X, noisy, adv, idx[half:])
    return model, X, y, (Xa, ya), (Xb, yb)


def small_model(d=6, C=4, dropout=0.0, rng=0):
    m = MLPModel.random((d,), C, (8,), scale=2.0, rng=rng)
    return MLPModel(list(zip(m.weights, m.biases)), dropout=dropout) if dropout else m


# ---------------------------------------------------------------------------------------------
# FisherSpectrumFeatures


def test_features_equal_fisher_spectrum_and_log_variant():
    model = MLPModel.random((1, 3, 3), 4, (8,), activation="elu", scale=2.0, rng=1)
    X = np.random.default_rng(0).uniform(0, 1, (12, 1, 3, 3))
    w, _ = fisher_spectrum(model, X, k=5)
    F = FisherSpectrumFeatures(model, k=5).fit(X).transform(X)
    assert F.shape == (12, 5) and F.dtype == np.float64
    np.testing.assert_allclose(F, w, rtol=1e-12, atol=0)
    # rank(G) <= C - 1 = 3: eigenvalues 4 and 5 are exact zeros
    assert np.all(F[:, 3:] == 0) and np.all(F[:, :3] > 0)
    L = FisherSpectrumFeatures(model, k=5, log=True).fit_transform(X)
    np.testing.assert_allclose(L, np.log(w + np.finfo(float).tiny), rtol=1e-12)
    assert np.all(np.isfinite(L))


def test_features_k_beyond_the_dimension_pads_with_zeros():
    model = LogisticRegressionModel.random((3,), 6, rng=0)
    X = np.random.default_rng(1).uniform(0, 1, (5, 3))
    F = FisherSpectrumFeatures(model, k=20).fit(X).transform(X)
    assert F.shape == (5, 20)
    np.testing.assert_allclose(F[:, :3], fisher_spectrum(model, X, k=3)[0], rtol=1e-12)
    assert np.all(F[:, 3:] == 0)


def test_extra_features_shapes_and_values():
    model = small_model(d=6, C=4)
    X = np.random.default_rng(0).uniform(0, 1, (10, 6))
    k = 5
    f = FisherSpectrumFeatures(model, k=k, extra=["growth", "trace", "ratios"]).fit(X)
    F = f.transform(X)
    names = list(f.get_feature_names_out())
    assert F.shape == (10, k + 1 + (k - 1) + 1) == (10, len(names))
    assert names[:k] == [f"lambda_{i}" for i in range(1, k + 1)]
    assert names[k:] == ["trace", "ratio_2", "ratio_3", "ratio_4", "ratio_5", "growth"]  # canonical order
    w = F[:, :k]
    p, g = model.class_gradients(X)
    np.testing.assert_allclose(F[:, k], np.einsum("nc,ncd->n", p, g ** 2), rtol=1e-10)  # tr G = sum p |g|^2
    np.testing.assert_allclose(F[:, k + 1:2 * k], w[:, 1:] / w[:, :1], rtol=1e-12)
    # growth: lambda_1 at x + t v (v signed as OSSA) over lambda_1 at x
    r = fr.ossa(X, model, epsilon=0.1, bounds=None)
    lam_t = fisher_spectrum(model, X + r.eta, k=1)[0][:, 0]
    np.testing.assert_allclose(F[:, -1], lam_t / w[:, 0], rtol=1e-8)
    # trace with k < C - 1 comes from the class gradients
    F2 = FisherSpectrumFeatures(model, k=1, extra=("trace",)).fit_transform(X)
    np.testing.assert_allclose(F2[:, 1], F[:, k], rtol=1e-10)
    # log applies to eigenvalues, trace and growth, not to the ratios
    L = FisherSpectrumFeatures(model, k=k, log=True, extra=("trace", "ratios", "growth")).fit_transform(X)
    np.testing.assert_allclose(L[:, :k + 1], np.log(F[:, :k + 1] + np.finfo(float).tiny), rtol=1e-10)
    np.testing.assert_allclose(L[:, k + 1:2 * k], F[:, k + 1:2 * k], rtol=1e-12)
    np.testing.assert_allclose(np.exp(L[:, -1]), F[:, -1], rtol=1e-8)


def test_features_transformer_in_a_pipeline():
    model = small_model()
    X = np.random.default_rng(0).uniform(0, 1, (40, 6))
    y = (np.arange(40) % 2).astype(int)
    pipe = make_pipeline(FisherSpectrumFeatures(model, k=3), GaussianNB()).fit(X, y)
    assert pipe.predict_proba(X).shape == (40, 2)


@pytest.mark.parametrize("params, match", [
    ({"k": 0}, "k must be"),
    ({"extra": ("trace", "bogus")}, "extra must be"),
    ({"extra": ("trace", "trace")}, "extra must be"),
    ({"growth_step": -1.0}, "growth_step"),
    ({"log": "yes"}, "log must be"),
])
def test_features_bad_parameters_raise_at_fit(params, match):
    f = FisherSpectrumFeatures(small_model(), **params)  # __init__ only stores
    with pytest.raises(ValueError, match=match):
        f.fit(np.zeros((3, 6)))


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


@pytest.mark.filterwarnings("ignore:KD. classes .* have no reference inputs")  # random labels
@pytest.mark.parametrize("name", list(DETECTORS))
def test_detector_fit_predict_contract(name):
    model = small_model(d=6, C=4, dropout=0.3)
    rng = np.random.default_rng(0)
    X = rng.uniform(0, 1, (60, 6))
    y = (np.arange(60) % 3 == 0).astype(int)
    det = DETECTORS[name](model)
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
    assert c.get_params()["backend"] is model and not hasattr(c, "classes_")
    assert {k: v for k, v in c.get_params(deep=False).items() if k != "backend"} == \
        {k: v for k, v in det.get_params(deep=False).items() if k != "backend"}
    # fit_from_features gives the same model as fit
    tr = det.make_transformer().fit(X[y == 0])
    c.fit_from_features(tr.transform(X), y, tr)
    np.testing.assert_allclose(c.predict_proba(X[:7]), P, rtol=1e-10)


def test_detector_get_set_params_and_string_labels():
    model = small_model()
    det = FisherDetector(model, k=3, random_state=1)
    assert det.get_params()["k"] == 3 and det.set_params(k=2, log=True) is det and det.k == 2
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
    det.fit(X, y)
    with pytest.raises(ValueError, match=r"X has shape \(4, 1, 3, 2\), expected \(n, 1, 2, 3\)"):
        det.predict_proba(X[:4].reshape(4, 1, 3, 2))
    with pytest.raises(ValueError, match="classifier must be"):
        FisherDetector(model, classifier="svm").fit(X, y)
    with pytest.raises(ValueError, match="classifier must be"):
        FisherDetector(model, classifier=object()).fit(X, y)


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


def test_kd_score_is_sklearn_kernel_density_of_the_predicted_class():
    model = small_model(d=6, C=3)
    rng = np.random.default_rng(0)
    Xtr, Xte = rng.uniform(0, 1, (50, 6)), rng.uniform(0, 1, (8, 6))
    ytr = rng.integers(0, 3, 50)
    f = KernelDensityFeatures(model, bandwidth=0.7, X_train=Xtr, y_train=ytr).fit(Xte)
    s = f.transform(Xte)[:, 0]
    Ztr, Zte = model.features(Xtr)["hidden0"], model.features(Xte)["hidden0"]
    pred = model.probabilities(Xte).argmax(1)
    ref = [KernelDensity(bandwidth=0.7).fit(Ztr[ytr == c]).score_samples(Zte[j:j + 1])[0] for j, c in enumerate(pred)]
    np.testing.assert_allclose(s, ref, rtol=1e-10)
    # without X_train the inputs given to fit are the reference, each leaving itself out
    f2 = KernelDensityFeatures(model, bandwidth=0.7).fit(Xtr)
    p = model.probabilities(Xtr).argmax(1)
    j = 0
    others = np.flatnonzero((p == p[j]) & (np.arange(50) != j))
    loo = KernelDensity(bandwidth=0.7).fit(Ztr[others]).score_samples(Ztr[:1])[0]
    np.testing.assert_allclose(f2.transform(Xtr[:1])[0, 0], loo, rtol=1e-10)


def test_bu_is_the_trace_of_the_mc_dropout_covariance_and_lid_matches_the_formula():
    model = small_model(d=6, C=4, dropout=0.3)
    X = np.random.default_rng(0).uniform(0, 1, (9, 6))
    bu = BayesianUncertaintyFeatures(model, n_samples=30, random_state=3).fit(X).transform(X)[:, 0]
    P = model.stochastic_probabilities(X, 30, rng=np.random.default_rng(3))
    cov_trace = np.array([np.trace(np.cov(P[:, j].T, bias=True)) for j in range(9)])
    np.testing.assert_allclose(bu, cov_trace, rtol=1e-10, atol=1e-15)
    assert np.all(bu > 0)
    # LID: -(1/k sum log(r_i / r_k))^-1 over the k nearest reference activations
    R = np.random.default_rng(1).uniform(0, 1, (30, 6))
    f = LIDFeatures(model, k=5, batch_size=30).fit(R)
    lid = f.transform(X)[:, 0]
    A, B = model.features(X)["hidden0"], model.features(R)["hidden0"]
    for j in range(9):
        r = np.sort(np.linalg.norm(B - A[j], axis=1))[:5]
        assert lid[j] == pytest.approx(-1 / np.mean(np.log(r / r[-1])), rel=1e-10)
    # a reference input is not its own neighbour
    r0 = np.sort(np.linalg.norm(B - B[0], axis=1))[1:6]
    assert f.transform(R[:1])[0, 0] == pytest.approx(-1 / np.mean(np.log(r0 / r0[-1])), rel=1e-10)


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
    for det in (KernelDensityDetector(model, X_train=X, y_train=y), BayesianUncertaintyDetector(model, random_state=0),
                KDBUDetector(model, X_train=X, y_train=y, random_state=0), LIDDetector(model, random_state=0),
                FisherDetector(model, classifier="naive_bayes", log=True)):
        auc = roc_auc_score(yb, det.fit(Xa, ya).predict_proba(Xb)[:, 1])
        assert 0.0 <= auc <= 1.0
        assert auc > 0.6, type(det).__name__  # all of them see these boundary adversarials


# ---------------------------------------------------------------------------------------------
# evaluate_detection (Tables 4-5)


def test_evaluate_detection_tables_split_by_input_and_png(tmp_path):
    model, X, y = gaussian_problem(3, n=90, d=6, seed=2)
    X = (X - X.min()) / (X.max() - X.min())  # into [0, 1]
    attacks = ("fgm", "otcm", "opt", "bim", "ossa")
    png = tmp_path / "roc.png"
    rep = evaluate_detection(model, X, y, attacks=attacks, epsilon={"fgm": 0.3, "otcm": 0.3, "bim": 0.3, "ossa": 0.3},
                             attack_options={"opt": {"max_iter": 30, "binary_search_steps": 3}},
                             X_train=X, y_train=y, roc_png=png, progress=False, random_state=0)
    names = ["KD", "BU", "KD+BU", "LID", "Fisher"]
    assert rep.auc.rows == names and rep.auc.columns == list(attacks) and rep.auc.shape == (5, 5)
    assert rep.cross.shape == (5, 5) and rep.cross_detector == "Fisher"
    finite = np.isfinite(rep.auc.values)
    assert finite.mean() > 0.8 and np.all((rep.auc.values[finite] >= 0) & (rep.auc.values[finite] <= 1))
    np.testing.assert_allclose(np.diag(rep.cross.values), rep.auc.values[-1])  # diagonal = Fisher row
    # the split is by input: no input on both sides, for any attack
    assert not set(rep.train_inputs) & set(rep.test_inputs)
    for a in attacks:
        tr, te = rep.groups[a]["train"], rep.groups[a]["test"]
        assert not set(tr) & set(te)
        assert set(tr) <= set(rep.train_inputs) and set(te) <= set(rep.test_inputs)
        ns = rep.n_samples[a]
        # every fooled input gives one clean and one noisy negative and one adversarial positive
        assert ns["train_negative"] == 2 * ns["train_positive"] and ns["test_negative"] == 2 * ns["test_positive"]
        assert tr.size == ns["train_negative"] + ns["train_positive"]
    assert math.isnan(rep.epsilon["opt"]) and rep.epsilon["fgm"] == 0.3
    assert png.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and rep.roc_png == str(png)
    md = rep.auc.to_markdown()
    assert md.splitlines()[0] == "| detector | fgm | otcm | opt | bim | ossa |" and len(md.splitlines()) == 7
    csv = rep.auc.to_csv(tmp_path / "auc.csv")
    assert (tmp_path / "auc.csv").read_text() == csv and csv.splitlines()[0] == "detector,fgm,otcm,opt,bim,ossa"
    assert rep.auc["Fisher", "fgm"] == rep.auc.to_dict()["Fisher"]["fgm"]


def test_evaluate_detection_defaults_and_errors():
    model = LogisticRegressionModel.random((5,), 3, scale=3.0, rng=0)  # no features, no dropout
    X = np.random.default_rng(0).uniform(0, 1, (60, 5))
    y = model.probabilities(X).argmax(1)
    rep = evaluate_detection(model, X, y, attacks=["fgm", "ossa"], progress=True, noise=None,
                             detectors=None, random_state=1)
    assert rep.auc.rows == ["Fisher"] and set(rep.skipped) == {"KD", "BU", "KD+BU", "LID"}
    # default budget: FGM fools about 90% of the inputs
    assert 0.8 <= rep.fooling_rate["fgm"] <= 1.0 and rep.epsilon["fgm"] == rep.epsilon["ossa"] > 0
    assert rep.n_samples["fgm"]["train_negative"] == rep.n_samples["fgm"]["train_positive"]  # no noisy copies
    # any scikit-learn classifier runs on the flattened raw inputs; attacks may be callables
    from sklearn.linear_model import LogisticRegression

    rep = evaluate_detection(model, X, y, attacks={"fgm": "fgm", "my_fgm": fr.fgm}, epsilon=0.5, progress=False,
                             detectors={"raw": LogisticRegression(), "F": FisherDetector(model, random_state=0)})
    assert rep.auc.rows == ["raw", "F"] and rep.cross_detector == "F" and rep.cross.shape == (2, 2)
    assert rep.fooling_rate["fgm"] == rep.fooling_rate["my_fgm"] and rep.n_samples["fgm"] == rep.n_samples["my_fgm"]
    assert np.all(np.isfinite(rep.auc.values))
    with pytest.raises(ValueError, match="attacks must be"):
        evaluate_detection(model, X, y, attacks=["deepfool"], progress=False)
    with pytest.raises(ValueError, match="epsilon has entries for attacks not run"):
        evaluate_detection(model, X, y, attacks=["fgm"], epsilon={"bim": 1.0}, progress=False)
    with pytest.raises(ValueError, match="test_size"):
        evaluate_detection(model, X, y, attacks=["fgm"], test_size=1.5, progress=False)
    with pytest.raises(ValueError, match="noise"):
        evaluate_detection(model, X, y, attacks=["fgm"], noise="uniform", progress=False)
    with pytest.raises(ValueError, match="y_clean"):
        evaluate_detection(model, X, y[:10], attacks=["fgm"], progress=False)
    with pytest.raises(ValueError, match="fooled none"):
        evaluate_detection(model, X, y, attacks=["fgm"], epsilon=1e-9, progress=False)
    with pytest.raises(MissingCapabilityError):
        evaluate_detection(model, X, y, attacks=["fgm"], detectors={"KD": KernelDensityDetector(model)},
                           progress=False)


def test_auc_table_formats():
    t = AUCTable(["A", "B"], ["fgm", "opt"], [[0.5, 0.987654], [np.nan, 1.0]])
    assert t.to_markdown().splitlines()[2] == "| A | 50.00 | 98.77 |"
    assert "n/a" in t.to_markdown()
    assert t.to_csv().splitlines()[2] == "B,,1.0"
    assert t["A"] == {"fgm": 0.5, "opt": 0.987654}
    with pytest.raises(ValueError, match="values has shape"):
        AUCTable(["A"], ["x", "y"], [[1.0]])


# ---------------------------------------------------------------------------------------------
# scikit-learn's estimator checks


#: The width (number of features) of the X each check fits on, in scikit-learn 1.9; checks not
#: listed raise before the width matters (or fit nothing) and run against the width-3 model. The
#: estimators read X through a model of fixed input width, so each check runs against a model of
#: its own width (against another, it would fail on the width, having tested nothing else).
CHECK_WIDTHS = {
    1: ["check_fit2d_1feature"],
    2: ["check_classifier_data_not_an_array", "check_classifiers_classes", "check_classifiers_train",
        "check_decision_proba_consistency", "check_estimators_fit_returns_self", "check_estimators_overwrite_params",
        "check_fit_check_is_fitted", "check_fit_idempotent", "check_n_features_in", "check_readonly_memmap_input"],
    3: ["check_dict_unchanged", "check_dont_overwrite_parameters", "check_estimators_nan_inf",
        "check_estimators_pickle", "check_f_contiguous_array_estimator", "check_fit2d_predict1d",
        "check_fit_score_takes_y", "check_methods_sample_order_invariance", "check_methods_subset_invariance",
        "check_pipeline_consistency", "check_supervised_y_2d", "check_transformer_data_not_an_array",
        "check_transformer_general", "check_transformer_preserve_dtypes"],
    4: ["check_n_features_in_after_fitting", "check_positive_only_tag_during_fit"],
    5: ["check_estimators_dtypes"],
    10: ["check_dtype_object", "check_fit2d_1sample"],
}
#: The detector validates y first: with one sample it raises the "one class" error sklearn expects
#: before X's width matters.
WIDTH_FREE_FOR_DETECTOR = {"check_fit2d_1sample"}
DEFAULT_WIDTH = 3


def check_name(check):
    return getattr(check, "func", check).__name__


def check_width(est, name):
    if isinstance(est, FisherDetector) and name in WIDTH_FREE_FOR_DETECTOR:
        return DEFAULT_WIDTH
    return next((w for w, names in CHECK_WIDTHS.items() if name in names), DEFAULT_WIDTH)


def expected_failed_checks(est):
    """The checks that cannot pass whatever the model's width, and why."""
    return {"check_estimators_overwrite_params": (
        "compares joblib.hash(deepcopy(params)) with the params after fit; the hash of the backend's "
        "`capabilities` frozenset follows its iteration order, which a deep copy may change although fit "
        "does not touch the backend (flaky: depends on PYTHONHASHSEED)")}


def estimator_check_params():
    from sklearn.utils.estimator_checks import estimator_checks_generator

    params = []
    for make in (lambda m: FisherDetector(m, random_state=0), lambda m: FisherSpectrumFeatures(m, k=3)):
        for width in CHECK_WIDTHS:
            est = make(MLPModel.random((width,), 3, (8,), scale=2.0, rng=0))
            for item in estimator_checks_generator(est, expected_failed_checks=expected_failed_checks(est),
                                                   mark="xfail"):
                values, marks = (item.values, item.marks) if hasattr(item, "values") else (item, ())
                name = check_name(values[1])
                if check_width(est, name) != width:
                    continue
                kw = "".join(f"-{k}={v}" for k, v in getattr(values[1], "keywords", {}).items())
                params.append(pytest.param(*values, marks=marks, id=f"{type(est).__name__}-d{width}-{name}{kw}"))
    return params


@pytest.mark.parametrize("estimator, check", estimator_check_params())
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


def test_every_sklearn_check_runs_once_per_estimator():
    ids = [p.id for p in estimator_check_params()]
    for cls in ("FisherDetector", "FisherSpectrumFeatures"):
        names = [i.split("-", 2)[2] for i in ids if i.startswith(cls + "-")]
        assert len(names) == len(set(names)) > 40
        ran = {n.split("-")[0] for n in names}
        assert {"check_fit2d_1feature", "check_estimators_dtypes", "check_n_features_in_after_fitting"} <= ran
        assert ("check_classifiers_train" in ran) == (cls == "FisherDetector")
