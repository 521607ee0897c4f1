"""The feature maps of fisher_ref.detection against their formulas: Fisher eigenvalues and spectral
statistics, KD (sklearn's KernelDensity), BU (MC-dropout covariance trace), LID (the ML estimate)."""

import numpy as np
import pytest

pytest.importorskip("sklearn")

from sklearn.naive_bayes import GaussianNB  # noqa: E402
from sklearn.neighbors import KernelDensity  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402

import fisher_ref as fr  # noqa: E402
from _detection_problems import small_model  # noqa: E402
from fisher_ref import fisher_spectrum  # noqa: E402
from fisher_ref.backends import LogisticRegressionModel, MLPModel  # noqa: E402
from fisher_ref.detection import (  # noqa: E402
    BayesianUncertaintyFeatures,
    FisherSpectrumFeatures,
    KernelDensityFeatures,
    LIDFeatures,
)


def test_features_equal_fisher_spectrum_and_log_variant():
    model = MLPModel.random((1, 3, 3), 4, (8,), activation="elu", scale=2.0, rng=1)
    X = np.random.default_rng(0).uniform(0, 1, (12, 1, 3, 3))
    w, _ = fisher_spectrum(x=X, backend=model, k=5)
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
    np.testing.assert_allclose(F[:, :3], fisher_spectrum(x=X, backend=model, k=3)[0], rtol=1e-12)
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
    lam_t = fisher_spectrum(x=X + r.eta, backend=model, k=1)[0][:, 0]
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


@pytest.mark.parametrize("make, error, match", [
    (lambda m: FisherSpectrumFeatures(m, k=2.5), TypeError, "k must be a positive int, got 2.5"),
    (lambda m: FisherSpectrumFeatures(m, growth_step=0.0), ValueError, "growth_step must be a positive number, got 0.0"),
    (lambda m: KernelDensityFeatures(m, bandwidth=np.inf), ValueError, "bandwidth must be a positive number, got inf"),
    (lambda m: KernelDensityFeatures(m, layer="logits"), ValueError, r"layer must be one of \['hidden0'\]"),
    (lambda m: KernelDensityFeatures(m, y_train=[0, 1]), ValueError, "y_train was given without X_train"),
    (lambda m: BayesianUncertaintyFeatures(m, n_samples=1), ValueError, "n_samples must be an int >= 2, got 1"),
    (lambda m: LIDFeatures(m, k=0), ValueError, "k must be a positive int, got 0"),
    (lambda m: LIDFeatures(m, batch_size=True), TypeError, "batch_size must be an int >= 2, got True"),
    (lambda m: LIDFeatures(m, layers=["bogus"]), ValueError, r"layers must be names from \['hidden0'\]"),
])
def test_baseline_features_bad_parameters_raise_at_fit(make, error, match):
    f = make(small_model(dropout=0.3))
    with pytest.raises(error, match=match):
        f.fit(np.zeros((3, 6)))
