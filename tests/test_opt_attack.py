"""The optimisation-based l2 attack (Opt; Liu et al. 2016 / Carlini-Wagner) on NumPy reference models."""

import math

import numpy as np
import pytest

import fisher_ref as fr
from fisher_ref import OptResult, opt
from fisher_ref.backends import LogisticRegressionModel, MLPModel


def margins(model, x, y):
    logp = np.log(model.probabilities(x))
    rows = np.arange(len(y))
    other = logp.copy()
    other[rows, y] = -np.inf
    return logp[rows, y] - other.max(axis=1)


def boundary_distance(model, X):
    """Exact l2 distance to the nearest decision boundary of a linear softmax model (no bounds)."""
    W, b = model.weights[0], model.biases[0]
    z = X @ W.T + b
    y = z.argmax(axis=1)
    out = np.full(len(X), np.inf)
    for j in range(W.shape[0]):
        dw = np.linalg.norm(W[y] - W[j], axis=1)
        d = np.where(y == j, np.inf, (z[np.arange(len(X)), y] - z[:, j]) / np.where(dw > 0, dw, 1))
        out = np.minimum(out, d)
    return out


def test_opt_fools_where_fgm_at_a_larger_epsilon_fools_and_with_a_smaller_perturbation():
    model = MLPModel.random((10,), 5, (12,), scale=2.0, rng=2)
    X = np.random.default_rng(1).uniform(0, 1, (40, 10))
    r_fgm = fr.fgm(X, model, epsilon=1.5)
    assert r_fgm.success.sum() >= 10
    r = opt(X, model, rng=0)
    assert isinstance(r, OptResult) and math.isnan(r.epsilon)
    assert np.all(r.success[r_fgm.success])
    assert np.all(r.l2[r_fgm.success] < 1.5)
    # success is the model's verdict at x_adv, and eta is x_adv - x
    np.testing.assert_array_equal(r.success, model.probabilities(r.x_adv).argmax(1) != r.labels)
    np.testing.assert_allclose(r.x_adv, np.clip(X + r.eta, 0, 1), atol=0)


def test_opt_beats_fgm_least_perturbation_on_a_linear_model_and_nears_the_exact_minimum():
    model = LogisticRegressionModel.random((20,), 10, scale=10.0, rng=1)
    X = np.random.default_rng(0).uniform(0.2, 0.8, (60, 20))
    r = opt(X, model, bounds=None, learning_rate=0.01, rng=0)
    assert np.all(r.success)
    lp = fr.least_perturbation(X, model, "fgm", bounds=None, hi=50, tol=1e-5)
    assert np.all(np.isfinite(lp))
    assert r.l2.mean() < lp.mean()
    exact = boundary_distance(model, X)
    # nothing fools the model closer than the nearest boundary; Adam gets within a few percent
    assert np.all(r.l2 >= exact * (1 - 1e-9))
    assert np.median(r.l2 / exact) < 1.05


def test_opt_respects_bounds_and_returns_one_result_for_one_input():
    model = MLPModel.random((1, 4, 4), 4, (10,), activation="elu", scale=3.0, rng=5)
    X = np.random.default_rng(2).uniform(0, 1, (15, 1, 4, 4))
    X[:, 0, 0, :] = 0.0  # inputs on the boundary of the domain
    X[:, 0, 1, :] = 1.0
    r = opt(X, model, bounds=(0.0, 1.0), max_iter=50, rng=0)
    assert r.x_adv.shape == X.shape and r.success.shape == (15,)
    assert np.all((r.x_adv >= 0) & (r.x_adv <= 1))
    assert r.success.mean() > 0.5
    # failures are returned unperturbed
    assert np.all(r.eta[~r.success] == 0) and np.all(np.isnan(r.const[~r.success]))
    assert np.all(np.isfinite(r.const[r.success]))
    r1 = opt(X[3], model, max_iter=50, rng=0)
    assert r1.x_adv.shape == X.shape[1:] and np.ndim(r1.success) == 0 and isinstance(r1.l2, float)
    np.testing.assert_allclose(r1.x_adv, r.x_adv[3], atol=1e-7)


def test_opt_confidence_and_given_labels():
    model = MLPModel.random((8,), 4, (10,), scale=2.0, rng=3)
    X = np.random.default_rng(4).uniform(0, 1, (20, 8))
    y = model.probabilities(X).argmax(1)
    r0 = opt(X, model, labels=y, rng=0)
    r1 = opt(X, model, labels=y, confidence=1.0, rng=0)
    ok = r1.success
    assert ok.sum() >= 10
    assert np.all(margins(model, r1.x_adv[ok], y[ok]) < -1.0)
    assert r1.l2[ok & r0.success].mean() > r0.l2[ok & r0.success].mean()  # confidence costs distance
    # untargeted away from a label the model does not predict: already "fooled" at x
    other = (y + 1) % 4
    r2 = opt(X, model, labels=other, max_iter=10, binary_search_steps=1, rng=0)
    assert np.all(r2.success) and np.all(r2.l2 < 1e-6)


class CountingModel(LogisticRegressionModel):
    calls = 0

    def _probabilities(self, x):
        type(self).calls += 1
        return super()._probabilities(x)

    def _loss_gradient(self, x, labels):
        type(self).calls += 1
        return super()._loss_gradient(x, labels)


def test_opt_backend_calls_do_not_grow_with_the_batch():
    base = LogisticRegressionModel.random((6,), 3, scale=1.0, rng=0)
    model = CountingModel(base.weights[0], base.biases[0])
    counts = []
    for n in (2, 16):
        X = np.random.default_rng(n).uniform(0.45, 0.55, (n, 6))  # all near the boundaries: always active
        CountingModel.calls = 0
        opt(X, model, max_iter=5, binary_search_steps=2, c_range=(1e-3, 1e-3), rng=0)
        counts.append(CountingModel.calls)
    assert counts[0] == counts[1] <= 2 * (3 * 6 + 1) + 3


@pytest.mark.parametrize("kwargs, match", [
    ({"c_range": (0.0, 1.0)}, "c_range"),
    ({"c_range": (2.0, 1.0)}, "c_range"),
    ({"c_range": (1.0, math.inf)}, "c_range"),
    ({"c": 1e3}, "c must lie in c_range"),
    ({"c": -1.0}, "c must be"),
    ({"binary_search_steps": 0}, "binary_search_steps"),
    
    ({"learning_rate": 0.0}, "learning_rate"),
    ({"learning_rate": math.nan}, "learning_rate"),
    ({"confidence": -0.1}, "confidence"),
])
def test_opt_bad_parameters_raise(kwargs, match):
    model = LogisticRegressionModel.random((4,), 3, rng=0)
    with pytest.raises(ValueError, match=match):
        opt(np.full(4, 0.5), model, **kwargs)


def test_opt_bad_inputs_raise():
    model = LogisticRegressionModel.random((4,), 3, rng=0)
    with pytest.raises(ValueError, match="outside bounds"):
        opt(np.full(4, 2.0), model)
    with pytest.raises(ValueError, match="x has shape"):
        opt(np.zeros((2, 5)), model)
    with pytest.raises(ValueError, match="NaN"):
        opt(np.full(4, np.nan), model)
    with pytest.raises(ValueError, match="labels"):
        opt(np.full((2, 4), 0.5), model, labels=[0, 7])
    with pytest.raises(TypeError, match="c_range"):
        opt(np.full(4, 0.5), model, c_range=1.0)
