"""The backend protocol, the callable wrapper and the NumPy reference models."""

import numpy as np
import pytest
from hypothesis import given

import fisher_ref as fr
from fisher_ref import CallableBackend, MissingCapabilityError, as_backend
from fisher_ref.backends import LogisticRegressionModel, MLPModel

from _strategies import numpy_models


def fd_logit_jacobian(model, x, h=1e-6):
    J = np.empty((model.n_classes, x.size))
    for j in range(x.size):
        e = np.zeros(x.size); e[j] = h
        e = e.reshape(x.shape)
        J[:, j] = (model.logits(x + e)[0] - model.logits(x - e)[0]) / (2 * h)
    return J


@given(numpy_models())
def test_numpy_model_derivatives_match_finite_differences(model_x):
    model, x = model_x
    J = fd_logit_jacobian(model, x)
    p = model.probabilities(x)[0]
    np.testing.assert_allclose(p.sum(), 1.0, rtol=1e-14)
    p2, g = model.class_gradients(x)
    np.testing.assert_array_equal(p2[0], p)
    ref = (p[None, :] - np.eye(model.n_classes)) @ J  # grad(-log p_i) = J^T (p - e_i)
    # central differences of the logits carry an absolute error of about eps |z| / h
    fd_err = 1e-8 * max(1.0, np.abs(model.logits(x)).max())
    np.testing.assert_allclose(g[0].reshape(model.n_classes, -1), ref, rtol=1e-6, atol=fd_err)
    # a subset of classes, in the order asked
    _, gs = model.class_gradients(x, classes=[1, 0, 1])
    np.testing.assert_allclose(gs[0], g[0][[1, 0, 1]], rtol=1e-13, atol=1e-16)
    # loss gradient = the label's class gradient
    _, gl = model.loss_gradient(x, 1)
    np.testing.assert_allclose(gl[0], g[0][1], rtol=1e-12, atol=1e-15)
    # JVP/VJP Fisher-vector product = J^T (diag p - pp^T) J v
    v = np.random.default_rng(0).standard_normal((1, 3) + x.shape)
    G = J.T @ (np.diag(p) - np.outer(p, p)) @ J
    fvp = model.fisher_vector_product(x[None], v)
    ref = (G @ v[0].reshape(3, -1).T).T.reshape(v.shape)
    np.testing.assert_allclose(fvp, ref, rtol=1e-6, atol=3 * fd_err * np.abs(J).max() + 1e-7 * np.abs(ref).max())


def test_saturated_class_gradient_keeps_relative_accuracy():
    """p_c close to 1: grad(-log p_c) = J^T (p - e_c) with p_c - 1 taken as expm1(log p_c)."""
    W = np.array([[40.0, 0.0], [0.0, 0.0]])
    model = LogisticRegressionModel(W, np.zeros(2))
    x = np.array([1.0, 0.0])  # logits (40, 0): p_0 = 1 - 4.25e-18, which rounds to 1.0
    _, g = model.class_gradients(x)
    q = np.exp(-40.0) / (1 + np.exp(-40.0))  # 1 - p_0, exactly
    np.testing.assert_allclose(g[0, 0], W.T @ np.array([-q, q]), rtol=1e-14)
    _, gl = model.loss_gradient(x, 0)
    np.testing.assert_allclose(gl[0], g[0, 0], rtol=1e-14)


def test_batches_and_single_inputs():
    model = MLPModel.random((2, 3), 4, (5,), rng=0)
    X = np.random.default_rng(0).uniform(size=(5, 2, 3))
    p, g = model.class_gradients(X)
    assert p.shape == (5, 4) and g.shape == (5, 4, 2, 3)
    for j in range(5):
        pj, gj = model.class_gradients(X[j])
        np.testing.assert_allclose(gj[0], g[j], rtol=1e-13)
    with pytest.raises(ValueError, match=r"x has shape \(3, 2\), expected \(2, 3\) or a batch \(n, 2, 3\)"):
        model.probabilities(np.zeros((3, 2)))
    with pytest.raises(ValueError, match="x is an empty batch"):
        model.probabilities(np.zeros((0, 2, 3)))
    with pytest.raises(ValueError, match=r"v has shape \(5, 1, 6\), expected \(n, k, \*input_shape\)"):
        model.fisher_vector_product(X, np.zeros((5, 1, 6)))


def test_load_and_weights_validation(tmp_path):
    model = MLPModel.random((1, 2, 2), 3, (4,), activation="elu", rng=0)
    np.savez(tmp_path / "m.npz", W0=model.weights[0], b0=model.biases[0], W1=model.weights[1],
             b1=model.biases[1], activation="elu", input_shape=np.array([1, 2, 2]))
    loaded = MLPModel.load(tmp_path / "m.npz")
    x = np.full((1, 2, 2), 0.3)
    np.testing.assert_array_equal(loaded.probabilities(x), model.probabilities(x))
    with pytest.raises(ValueError, match="activation must be one of"):
        MLPModel([(np.ones((2, 3)), np.ones(2))], activation="relu")
    with pytest.raises(ValueError, match=r"layers\[1\] W has 4 inputs but layers\[0\] has 5 outputs"):
        MLPModel([(np.ones((5, 3)), np.ones(5)), (np.ones((2, 4)), np.ones(2))])
    with pytest.raises(ValueError, match="the last layer must have n_classes >= 2"):
        LogisticRegressionModel(np.ones((1, 3)), np.ones(1))
    with pytest.raises(ValueError, match="input_shape .* has 4 features, the first layer expects 3"):
        LogisticRegressionModel(np.ones((2, 3)), np.ones(2), input_shape=(2, 2))
    with pytest.raises(ValueError, match=r"layers must be names from \['hidden0'\]"):
        model.features(x, layers=["fc9"])
    f = model.features(x)
    assert list(f) == ["hidden0"] and f["hidden0"].shape == (1, 4)
    with pytest.raises(MissingCapabilityError, match="does not provide 'stochastic_probabilities'"):
        model.stochastic_probabilities(x, 3)
    with pytest.raises(MissingCapabilityError, match="does not provide 'features'"):
        LogisticRegressionModel.random((3,), 2, rng=0).features(np.zeros(3))


def test_monte_carlo_dropout_of_the_numpy_mlp():
    model = MLPModel.random((5,), 3, (50,), rng=0)
    drop = MLPModel(list(zip(model.weights, model.biases)), dropout=0.5)
    x = np.random.default_rng(1).uniform(size=(4, 5))
    s1 = drop.stochastic_probabilities(x, 200, rng=0)
    s2 = drop.stochastic_probabilities(x, 200, rng=0)
    assert s1.shape == (200, 4, 3) and np.array_equal(s1, s2)
    assert s1.var(axis=0).sum() > 0
    np.testing.assert_array_equal(drop.probabilities(x), model.probabilities(x))
    with pytest.raises(ValueError, match="n_samples must be a positive int"):
        drop.stochastic_probabilities(x, 0)
    with pytest.raises(ValueError, match=r"dropout must be in \[0, 1\)"):
        MLPModel(list(zip(model.weights, model.biases)), dropout=1.0)


def test_callable_backend_single_and_batched():
    model = MLPModel.random((3,), 4, (5,), rng=1)

    def fn(x):
        p, g = model.class_gradients(x)
        return p[0], g[0]

    b = as_backend(fn)
    assert isinstance(b, CallableBackend) and b.input_shape is None
    p, g = b.class_gradients(np.full(3, 0.2))
    assert b.input_shape == (3,) and p.shape == (1, 4) and g.shape == (1, 4, 3)
    # with input_shape a leading batch axis is recognised
    bb = as_backend(fn, input_shape=(3,))
    X = np.random.default_rng(0).uniform(size=(4, 3))
    pb, gb = bb.class_gradients(X)
    np.testing.assert_allclose(gb, model.class_gradients(X)[1], rtol=1e-13)
    # the callable works everywhere a backend does
    w, _ = fr.fisher_spectrum(np.full(3, 0.2), fn, k=2)
    w2, _ = fr.fisher_spectrum(np.full(3, 0.2), model, k=2)
    np.testing.assert_allclose(w, w2, rtol=1e-12)
    assert as_backend(model) is model
    with pytest.raises(ValueError, match="disagrees with the backend's"):
        as_backend(model, input_shape=(4,))


def test_capabilities_are_declared_and_enforced():
    b = as_backend(lambda x: (np.array([0.5, 0.5]), np.zeros((2,) + x.shape)), input_shape=(3,))
    assert b.supports("class_gradients") and not b.supports("fisher_vector_product")
    with pytest.raises(MissingCapabilityError, match="CallableBackend does not provide 'fisher_vector_product'"):
        b.fisher_vector_product(np.zeros(3), np.zeros((1, 3)))
    with pytest.raises(ValueError, match="capability must be one of"):
        b.supports("hessian")
    # loss_gradient falls back to class_gradients when not declared
    p, g = b.loss_gradient(np.zeros((2, 3)), [0, 1])
    assert g.shape == (2, 3)
    assert MLPModel.random((3,), 2, rng=0).supports("fisher_vector_product")


@pytest.mark.parametrize("bad, match", [
    (lambda x: (np.array([0.7, 0.7]), np.zeros((2, 3))), "probs returned by the callable rows must sum to 1"),
    (lambda x: (np.array([2.0, -1.0]), np.zeros((2, 3))), "probs returned by the callable has negative entries"),
    (lambda x: (np.array([np.nan, 1.0]), np.zeros((2, 3))), "probs returned by the callable contains 1 NaN"),
    (lambda x: (np.array([0.5, 0.5]), np.full((2, 3), np.inf)), "grads returned by the callable contains 0 NaN and 6 Inf"),
    (lambda x: (np.array([0.5, 0.5]), np.zeros((3, 3))), r"grads returned by the callable have shape \(3, 3\), expected"),
    (lambda x: (np.array([1.0]), np.zeros((1, 3))), r"must have shape \(n_classes,\) or \(n, n_classes\) with n_classes >= 2"),
    (lambda x: np.array([0.5, 0.5]), "the callable must return a tuple"),
    (lambda x: (np.array([3.0, -1.0, 0.1]) + 5, np.zeros((3, 3))), "Are these logits"),
])
def test_bad_backend_outputs_are_refused(bad, match):
    with pytest.raises((ValueError, TypeError), match=match):
        fr.fisher_spectrum(np.zeros(3), bad, k=1)


def test_bad_inputs_are_refused():
    model = LogisticRegressionModel.random((3,), 2, rng=0)
    with pytest.raises(ValueError, match="x contains 1 NaN and 1 Inf"):
        model.probabilities(np.array([np.nan, np.inf, 0.0]))
    with pytest.raises(TypeError, match="x must hold real numbers, got an array of dtype <U1"):
        model.probabilities(np.array(["a", "b", "c"]))
    with pytest.raises(TypeError, match="fn must be callable"):
        CallableBackend(3)
    with pytest.raises(ValueError, match="input_shape must be a non-empty tuple of positive ints"):
        as_backend(lambda x: x, input_shape=(0, 3))
    with pytest.raises(ValueError, match=r"classes must lie in \[0, 1\]"):
        model.class_gradients(np.zeros(3), classes=[5])
