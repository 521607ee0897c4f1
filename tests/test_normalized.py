"""NormalizedBackend: a model behind ``(x - mean) / std``, every derivative in x.

Ground truths: central finite differences of -log p_i in x; the same MLP with the normalisation
folded into its first layer (W' = W diag(1/std), b' = b - W (mean/std)), an independent model
computing the same function; and the chain rule G_x = D G_u D on the dense Fisher matrix.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import fisher_ref as fr
from fisher_ref.backends import MLPModel, NormalizedBackend

SHAPE = (3, 2, 2)
MEAN = np.array([0.49, 0.48, 0.45]).reshape(3, 1, 1)
STD = np.array([0.25, 0.24, 0.26]).reshape(3, 1, 1)


def _model(seed: int = 0) -> MLPModel:
    return MLPModel.random(SHAPE, n_classes=4, hidden=(6,), scale=1.5, rng=seed)


def _folded(inner: MLPModel, mean, std) -> MLPModel:
    """The same function of x with the normalisation inside the first layer."""
    m = np.broadcast_to(mean, SHAPE).ravel()
    s = np.broadcast_to(std, SHAPE).ravel()
    (w0, b0), rest = (inner.weights[0], inner.biases[0]), list(zip(inner.weights[1:], inner.biases[1:]))
    return MLPModel([(w0 / s, b0 - w0 @ (m / s)), *rest], activation=inner.activation, input_shape=SHAPE)


@pytest.fixture
def x():
    return np.random.default_rng(1).random((5, *SHAPE))


def test_probabilities_are_the_inner_models_at_the_normalised_input(x):
    inner = _model()
    b = NormalizedBackend(inner, MEAN, STD)
    np.testing.assert_array_equal(b.probabilities(x), inner.probabilities((x - MEAN) / STD))
    assert b.n_classes == 4 and b.input_shape == SHAPE and b.dtype == inner.dtype


def test_class_gradients_match_finite_differences(x):
    b = NormalizedBackend(_model(), MEAN, STD)
    _, g = b.class_gradients(x[:2])
    h = 1e-6
    for j in range(2):
        for flat in range(int(np.prod(SHAPE))):
            e = np.zeros(SHAPE)
            e.flat[flat] = h
            fd = (-np.log(b.probabilities(x[j] + e)[0]) + np.log(b.probabilities(x[j] - e)[0])) / (2 * h)
            np.testing.assert_allclose(g[(j, slice(None), *np.unravel_index(flat, SHAPE))], fd, rtol=1e-6, atol=1e-8)


def test_every_derivative_equals_the_folded_model(x):
    inner = _model(2)
    b, ref = NormalizedBackend(inner, MEAN, STD), _folded(inner, MEAN, STD)
    np.testing.assert_allclose(b.probabilities(x), ref.probabilities(x), rtol=1e-12)
    np.testing.assert_allclose(b.class_gradients(x)[1], ref.class_gradients(x)[1], rtol=1e-10, atol=1e-12)
    y = np.array([0, 1, 2, 3, 0])
    np.testing.assert_allclose(b.loss_gradient(x, y)[1], ref.loss_gradient(x, y)[1], rtol=1e-10, atol=1e-12)
    v = np.random.default_rng(3).standard_normal((5, 2, *SHAPE))
    np.testing.assert_allclose(b.fisher_vector_product(x, v), ref.fisher_vector_product(x, v), rtol=1e-10,
                               atol=1e-12)
    w_b, _ = fr.fisher_spectrum(x=x, backend=b, k=3)
    w_r, _ = fr.fisher_spectrum(x=x, backend=ref, k=3)
    np.testing.assert_allclose(w_b, w_r, rtol=1e-9, atol=1e-12)


def test_fisher_vector_product_is_the_chain_rule_on_the_dense_matrix(x):
    inner = _model(4)
    b = NormalizedBackend(inner, MEAN, STD)
    d = int(np.prod(SHAPE))
    D = np.diag(1.0 / np.broadcast_to(STD, SHAPE).ravel())
    p_u, g_u = inner.class_gradients((x[:1] - MEAN) / STD)
    G_x = D @ fr.fisher_matrix(p_u[0], g_u[0]) @ D  # G_x = D G_u D
    V = np.random.default_rng(5).standard_normal((1, 3, *SHAPE))
    got = b.fisher_vector_product(x[:1], V).reshape(3, d)
    np.testing.assert_allclose(got, (G_x @ V.reshape(3, d).T).T, rtol=1e-10, atol=1e-12)
    p, g = b.class_gradients(x[:1])
    np.testing.assert_allclose(fr.fisher_matrix(p[0], g[0]), G_x, rtol=1e-10, atol=1e-12)


@given(st.floats(0.05, 3.0), st.floats(-1.0, 1.0))
def test_scalar_normalisation_scales_the_spectrum(std, mean):
    """With one std s, G_x = G_u / s^2: the eigenvalues scale by 1/s^2 (any mean shifts the point only)."""
    inner = _model(6)
    x = np.random.default_rng(7).random((2, *SHAPE))
    b = NormalizedBackend(inner, mean, std)
    w_x, _ = fr.fisher_spectrum(x=x, backend=b, k=3)
    w_u, _ = fr.fisher_spectrum(x=(x - mean) / std, backend=inner, k=3)
    np.testing.assert_allclose(w_x, w_u / std**2, rtol=1e-9, atol=1e-12 * max(1.0, w_u.max() / std**2))


def test_capabilities_and_features_pass_through(x):
    inner = _model()
    b = NormalizedBackend(inner, MEAN, STD)
    assert b.capabilities == inner.capabilities
    assert b.feature_layers == inner.feature_layers
    got, ref = b.features(x), inner.features((x - MEAN) / STD)
    assert got.keys() == ref.keys() and all(np.array_equal(got[k], ref[k]) for k in got)
    assert "NormalizedBackend(MLPModel" in repr(b)


def test_attacks_run_through_it(x):
    inner = _model()
    b, ref = NormalizedBackend(inner, MEAN, STD), _folded(inner, MEAN, STD)
    r_b = fr.ossa(x, b, epsilon=0.5, bounds=(0, 1))
    r_r = fr.ossa(x, ref, epsilon=0.5, bounds=(0, 1))
    np.testing.assert_allclose(r_b.x_adv, r_r.x_adv, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("mean, std, error, message", [
    (0.5, 0.0, ValueError, "std must be positive"),
    (0.5, -1.0, ValueError, "std must be positive"),
    (np.zeros(3), 1.0, ValueError, r"mean has shape \(3,\), which does not broadcast to the input shape \(3, 2, 2\)"),
    (np.zeros((2, 3, 1, 1)), 1.0, ValueError, "which would enlarge the input shape"),
    (0.5, np.nan, ValueError, "std must be finite"),
    ("a", 1.0, TypeError, "mean must be a number or an array of numbers"),
])
def test_bad_normalisation(mean, std, error, message):
    with pytest.raises(error, match=message):
        NormalizedBackend(_model(), mean, std)


def test_inner_needs_an_input_shape():
    from fisher_ref import CallableBackend

    with pytest.raises(ValueError, match="inner.input_shape is not known"):
        NormalizedBackend(CallableBackend(lambda x: (np.array([0.5, 0.5]), np.zeros((2, 3)))), 0.0, 1.0)
