"""The FIM (eq. 4) dense and as operators, against dense float64 ground truth."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy.sparse.linalg import LinearOperator

from fisher_ref import FisherOperator, MatrixFreeFisherOperator, SampledFisherOperator, fisher_matrix
from fisher_ref.backends import MLPModel

from _strategies import fisher_problems, numpy_models

EPS = np.finfo(np.float64).eps


def dense_reference(p, g):
    """eq. 4 written as the plain sum of outer products (shares no code with the library)."""
    G = np.zeros((g.shape[1], g.shape[1]))
    for pi, gi in zip(p, g):
        G += pi * np.outer(gi, gi)
    return G


@given(fisher_problems())
def test_fisher_matrix_is_eq4_symmetric_psd(problem):
    p, g = problem
    G = fisher_matrix(p, g)
    ref = dense_reference(p, g)
    scale = max(1.0, np.abs(ref).max())
    np.testing.assert_allclose(G, ref, rtol=0, atol=64 * EPS * scale * p.size)
    assert np.array_equal(G, G.T)
    w = np.linalg.eigvalsh(G)
    assert w.min() >= -64 * EPS * max(w.max(), 1e-300) * G.shape[0]
    # trace(G) = sum_i p_i ||g_i||^2
    np.testing.assert_allclose(np.trace(G), np.sum(p * (g * g).sum(1)), rtol=1e-12)


@given(fisher_problems(), st.integers(1, 5))
def test_operator_matches_dense(problem, k):
    p, g = problem
    A = FisherOperator(p, g)
    assert isinstance(A, LinearOperator) and A.dtype == np.float64 and A.shape == (g.shape[1],) * 2
    G = dense_reference(p, g)
    V = np.random.default_rng(0).standard_normal((g.shape[1], k))
    scale = np.abs(G).max() * np.abs(V).max() * g.shape[1] + 1e-300
    np.testing.assert_allclose(A @ V, G @ V, rtol=0, atol=64 * EPS * scale)
    np.testing.assert_allclose(A.matvec(V[:, 0]), G @ V[:, 0], rtol=0, atol=64 * EPS * scale)
    np.testing.assert_allclose(A.rmatvec(V[:, 0]), G @ V[:, 0], rtol=0, atol=64 * EPS * scale)
    assert A.H is A
    np.testing.assert_allclose(A.trace(), np.trace(G), rtol=1e-12, atol=1e-300)


@given(fisher_problems(softmax=True))
def test_softmax_rank_at_most_C_minus_1(problem):
    p, g = problem
    A = FisherOperator(p, g)
    assert A.rank_bound == min(np.count_nonzero(p) - 1, g.shape[1])
    w = np.linalg.eigvalsh(dense_reference(p, g))[::-1]
    if g.shape[1] >= p.size:
        assert abs(w[p.size - 1]) <= 1e3 * EPS * w[0] * g.shape[1]


@given(fisher_problems(softmax=False))
def test_generic_gradients_rank_bound_is_C(problem):
    p, g = problem
    A = FisherOperator(p, g)
    assert A.rank_bound >= np.linalg.matrix_rank(dense_reference(p, g))


@given(numpy_models())
def test_G_equals_Jt_diag_p_minus_ppT_J(model_x):
    """For softmax models G = J^T (diag p - p p^T) J, J the logit Jacobian (finite differences)."""
    model, x = model_x
    d = x.size
    h = 1e-6
    J = np.empty((model.n_classes, d))
    for j in range(d):
        e = np.zeros(d); e[j] = h
        J[:, j] = (model.logits(x + e.reshape(x.shape))[0] - model.logits(x - e.reshape(x.shape))[0]) / (2 * h)
    p = model.probabilities(x)[0]
    G_ref = J.T @ (np.diag(p) - np.outer(p, p)) @ J
    _, g = model.class_gradients(x)
    G = fisher_matrix(p, g[0])
    np.testing.assert_allclose(G, G_ref, rtol=1e-6, atol=1e-7 * max(1.0, np.abs(G_ref).max()))


@given(fisher_problems(), st.randoms(use_true_random=False))
def test_class_permutation_changes_nothing(problem, rnd):
    p, g = problem
    perm = list(range(p.size)); rnd.shuffle(perm)
    np.testing.assert_allclose(fisher_matrix(p[perm], g[perm]), fisher_matrix(p, g),
                               rtol=1e-12, atol=1e-14 * np.abs(fisher_matrix(p, g)).max())


def test_sampled_operator_is_unbiased_and_converges():
    r = np.random.default_rng(3)
    C, d = 12, 7
    p = r.dirichlet(np.ones(C))
    g = r.standard_normal((C, d))
    G = dense_reference(p, g)
    errs = []
    for m in (10, 100, 1000, 10000):
        A = SampledFisherOperator(p, g, n_samples=m, rng=r)
        errs.append(np.linalg.norm(A.todense() - G) / np.linalg.norm(G))
        # a fixed matrix: two applications agree exactly
        v = r.standard_normal(d)
        assert np.array_equal(A @ v, A @ v)
    assert errs[-1] < 0.05
    assert errs[-1] < errs[0] / 5  # O(1/sqrt(m)): 1000x draws, error ~30x smaller
    # the mean of many small-sample estimates is G (unbiased)
    mean = np.mean([SampledFisherOperator(p, g, n_samples=3, rng=r).todense() for _ in range(4000)], axis=0)
    assert np.linalg.norm(mean - G) / np.linalg.norm(G) < 0.05


def test_sampled_operator_default_draws_and_classes():
    p = np.full(50, 0.02)
    g = np.random.default_rng(0).standard_normal((50, 4))
    A = SampledFisherOperator(p, g, rng=0)
    assert A.n_samples == 10  # C / 5, as the paper
    np.testing.assert_allclose(A.weights.sum(), 1.0)
    B = SampledFisherOperator(p, g[A.unique_classes], classes=A.classes)
    np.testing.assert_allclose(B.todense(), A.todense())
    with pytest.raises(ValueError, match="n_samples must be a positive int"):
        SampledFisherOperator(p, g, n_samples=0)
    with pytest.raises(ValueError, match=r"classes must be a non-empty array of indices in \[0, 49\]"):
        SampledFisherOperator(p, g, classes=[50])


def test_sampled_from_backend_asks_only_drawn_classes():
    model = MLPModel.random((10,), 30, (6,), rng=1)
    calls = []
    orig = model._class_gradients
    model._class_gradients = lambda x, classes: calls.append(classes) or orig(x, classes)
    x = np.random.default_rng(0).uniform(size=10)
    A = SampledFisherOperator.from_backend(x, model, n_samples=4, rng=0)
    assert calls and calls[0] is not None and len(calls[0]) <= 4
    p, g = model.class_gradients(x)
    np.testing.assert_allclose(A.todense(), SampledFisherOperator(p[0], g[0], classes=A.classes).todense())


@given(numpy_models())
def test_matrix_free_operator_matches_exact(model_x):
    model, x = model_x
    A = MatrixFreeFisherOperator(x, model)
    B = FisherOperator.from_backend(x, model)
    V = np.random.default_rng(0).standard_normal((x.size, 3))
    ref = B @ V
    np.testing.assert_allclose(A @ V, ref, rtol=1e-9, atol=1e-12 * np.abs(ref).max())
    assert A.n_products == 3
    assert A.rank_bound == B.rank_bound == min(np.count_nonzero(A.probs) - 1, x.size)


def test_operator_input_errors():
    p = np.array([0.5, 0.5])
    with pytest.raises(ValueError, match="probs rows must sum to 1"):
        FisherOperator([0.5, 0.6], np.ones((2, 3)))
    with pytest.raises(ValueError, match="probs has negative entries"):
        FisherOperator([1.5, -0.5], np.ones((2, 3)))
    with pytest.raises(ValueError, match=r"grads must have shape \(n_classes, \*input_shape\) with n_classes = 2"):
        FisherOperator(p, np.ones((3, 4)))
    with pytest.raises(ValueError, match="grads contains 1 NaN"):
        FisherOperator(p, np.array([[np.nan, 1.0], [1.0, 1.0]]))
    with pytest.raises(ValueError, match="probs contains 0 NaN and 1 Inf"):
        FisherOperator([np.inf, 0.5], np.ones((2, 2)))
    with pytest.raises(TypeError, match="probs must hold real numbers"):
        FisherOperator(["a", "b"], np.ones((2, 2)))
    with pytest.raises(TypeError, match="does not provide 'fisher_vector_product'"):
        from fisher_ref import as_backend
        MatrixFreeFisherOperator(np.zeros(3), as_backend(lambda x: (p, np.ones((2, 3)))))


@given(fisher_problems(softmax=True))
def test_rank_bounds_of_a_batch_equal_the_single_input_bound(problem):
    from fisher_ref._operators import SOFTMAX_SUM_RTOL, rank_bounds

    p, g = problem
    P = np.stack([p, np.roll(p, 1), np.eye(p.size)[0]])  # softmax, not softmax, one class only
    Gr = np.stack([g, g, g])
    got = rank_bounds(P, Gr)
    assert got.dtype == np.int64
    for j in range(3):  # the definition, input by input: classes with p > 0, less one when sum p g = 0
        scale = P[j] @ np.linalg.norm(g, axis=1)
        softmax = scale == 0 or np.linalg.norm(P[j] @ g) <= SOFTMAX_SUM_RTOL * scale
        assert got[j] == max(0, min(np.count_nonzero(P[j]) - softmax, g.shape[1]))
    assert got[0] == FisherOperator(p, g).rank_bound
