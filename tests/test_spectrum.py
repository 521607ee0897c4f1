"""Top eigenpairs: every method against numpy.linalg.eigh of the dense FIM (eq. 4), float64."""

import numpy as np
import pytest
import scipy.sparse.linalg as spla
from hypothesis import assume, given
from hypothesis import strategies as st

import fisher_ref as fr
from fisher_ref import FisherOperator, NoConvergence, fisher_matrix, fisher_spectrum, top_eigenpairs
from fisher_ref.backends import MLPModel

from _strategies import fisher_problems, numpy_models

EPS = np.finfo(np.float64).eps
METHODS = ["gram", "dense", "lanczos", "power", "block-lanczos"]


def eigh_top(G, k):
    w, V = np.linalg.eigh(G)
    return w[::-1][:k], V[:, ::-1][:, :k]


def tol_for(method, w0, d):
    # direct methods: backward stable, error ~ d eps ||G||; iterative: the tolerance asked
    return {"gram": 1e3, "dense": 1e3, "lanczos": 1e3, "power": 1e5, "block-lanczos": 1e5}[method] * d * EPS * max(w0, 1e-300)


@given(fisher_problems(), st.integers(1, 12), st.sampled_from(METHODS))
def test_eigenvalues_match_dense(problem, k, method):
    p, g = problem
    d = g.shape[1]
    k = min(k, d)
    A = FisherOperator(p, g)
    w_ref, V_ref = eigh_top(fisher_matrix(p, g), k)
    w, V = top_eigenpairs(A, k, method=method, tol=1e-14 if method in ("power", "block-lanczos") else None, rng=0,
                          maxiter=100000 if method == "power" else None)
    assert w.shape == (k,) and V.shape == (d, k)
    assert np.all(np.diff(w) <= 0) and np.all(w >= 0)
    np.testing.assert_allclose(w, np.maximum(w_ref, 0), rtol=0, atol=tol_for(method, w_ref[0], d))
    # orthonormal columns
    np.testing.assert_allclose(V.T @ V, np.eye(k), atol=1e-7)
    # eigenvectors up to sign, where the eigenvalue is simple (gap relative to ||G||)
    gaps = np.abs(np.subtract.outer(w_ref, np.linalg.eigvalsh(fisher_matrix(p, g))))
    for i in range(k):
        gap = np.sort(gaps[i])[1]
        if w_ref[i] > 1e-8 * w_ref[0] and gap > 1e-3 * w_ref[0]:
            assert abs(abs(V[:, i] @ V_ref[:, i]) - 1) < 1e-6, (i, method)


@given(fisher_problems(softmax=True), st.sampled_from(METHODS))
def test_past_the_rank_eigenvalues_are_exact_zeros(problem, method):
    p, g = problem
    C, d = g.shape
    assume(d > C + 2)
    k = min(C + 2, d)
    w, V = top_eigenpairs(FisherOperator(p, g), k, method=method, rng=1, tol=1e-13 if method in ("power", "block-lanczos") else None,
                          maxiter=100000 if method == "power" else None)
    assert np.all(w[C - 1:] == 0.0)  # exact zeros, never solver noise
    np.testing.assert_allclose(V.T @ V, np.eye(k), atol=1e-8)


def test_sign_convention_is_deterministic():
    p, g = np.array([0.6, 0.3, 0.1]), np.random.default_rng(0).standard_normal((3, 8))
    for method in METHODS:
        _, V = top_eigenpairs(FisherOperator(p, g), 2, method=method, rng=0, tol=1e-13 if method in ("power", "block-lanczos") else None)
        idx = np.argmax(np.abs(V), axis=0)
        assert np.all(V[idx, [0, 1]] > 0)


def test_dense_array_and_generic_operator_inputs():
    r = np.random.default_rng(0)
    B = r.standard_normal((5, 30))
    G = B.T @ B
    w_ref, _ = eigh_top(G, 3)
    for A in (G, spla.aslinearoperator(G)):
        for method in ("auto", "dense", "lanczos", "power"):
            w, _ = top_eigenpairs(A, 3, method=method, rng=0, tol=1e-13 if method == "power" else None)
            np.testing.assert_allclose(w, w_ref, rtol=1e-9)


def test_power_reports_iterations_and_raises_on_no_convergence():
    p = np.array([0.5, 0.3, 0.2])
    g = np.random.default_rng(2).standard_normal((3, 20))
    w, V, info = top_eigenpairs(FisherOperator(p, g), 1, method="power", return_info=True, rng=0)
    assert info.method == "power" and info.n_iter >= 1 and info.n_products == info.n_iter
    with pytest.raises(NoConvergence, match="power iteration did not reach tol") as exc:
        top_eigenpairs(FisherOperator(p, g), 2, method="power", maxiter=2, tol=1e-15, rng=0)
    assert exc.value.eigenvalues.shape == (2,) and exc.value.n_iter == 2


def test_lanczos_propagates_arpack_no_convergence():
    r = np.random.default_rng(0)
    p = r.dirichlet(np.ones(300))
    g = r.standard_normal((300, 400))
    with pytest.raises(spla.ArpackNoConvergence):
        top_eigenpairs(FisherOperator(p, g), 20, method="lanczos", maxiter=1, rng=0)


def test_zero_matrix_gives_zeros_and_orthonormal_vectors():
    p = np.array([1.0, 0.0, 0.0])
    g = np.zeros((3, 6))
    for method in METHODS:
        w, V = top_eigenpairs(FisherOperator(p, g), 3, method=method, rng=0)
        assert np.all(w == 0)
        np.testing.assert_allclose(V.T @ V, np.eye(3), atol=1e-12)


def test_errors():
    A = FisherOperator([0.5, 0.5], np.ones((2, 4)))
    with pytest.raises(ValueError, match=r"k must satisfy 1 <= k <= 4 \(the dimension\), got 5"):
        top_eigenpairs(A, 5)
    with pytest.raises(ValueError, match=r"k must satisfy 1 <= k <= 4 \(the dimension\), got 0"):
        top_eigenpairs(A, 0)
    with pytest.raises(TypeError, match="k must be an int"):
        top_eigenpairs(A, 1.5)
    with pytest.raises(ValueError, match="method must be one of 'auto', 'gram'"):
        top_eigenpairs(A, 1, method="arnoldi")
    with pytest.raises(ValueError, match="method='gram' needs a FisherOperator"):
        top_eigenpairs(np.eye(3), 1, method="gram")
    with pytest.raises(ValueError, match=r"A must be a square \(d, d\) matrix or LinearOperator, got shape \(3, 4\)"):
        top_eigenpairs(np.ones((3, 4)), 1)
    with pytest.raises(ValueError, match="A must be symmetric"):
        top_eigenpairs(np.triu(np.ones((3, 3))), 1)
    with pytest.raises(ValueError, match="significantly negative eigenvalue"):
        top_eigenpairs(np.diag([3.0, 1.0, -1.0]), 3, method="dense")
    with pytest.raises(ValueError, match="only negative eigenvalues"):
        top_eigenpairs(-np.eye(3), 1, method="dense")
    with pytest.raises(ValueError, match="A contains 2 NaN"):
        top_eigenpairs(np.array([[1.0, np.nan], [np.nan, 1.0]]), 1)


@given(numpy_models(), st.sampled_from(["gram", "dense", "lanczos", "power", "block-lanczos"]),
       st.sampled_from(["auto", "exact", "matrix-free", "sampled"]))
def test_fisher_spectrum_per_input(model_x, method, operator):
    model, x = model_x
    assume(not (method == "gram" and operator == "matrix-free"))
    xb = np.stack([x, np.clip(x[::-1] if x.ndim == 1 else x + 0.1, 0, 1)])
    k = min(4, x.size)
    kw = dict(tol=1e-13, maxiter=100000) if method in ("power", "block-lanczos") else {}
    w, V, info = fisher_spectrum(xb, model, k=k, method=method, operator=operator, rng=0, return_info=True, **kw)
    assert w.shape == (2, k) and V.shape == (2, k) + x.shape
    if operator == "sampled":
        return
    for j in range(2):
        p, g = model.class_gradients(xb[j])
        w_ref, V_ref = eigh_top(fisher_matrix(p[0], g[0]), k)
        np.testing.assert_allclose(w[j], np.maximum(w_ref, 0), rtol=0, atol=1e-6 * w_ref[0] + 1e-300)
        if w_ref[0] - w_ref[1] > 1e-3 * w_ref[0]:
            assert abs(abs(V[j, 0].ravel() @ V_ref[:, 0]) - 1) < 1e-6
    # one input in, one result out
    w1, V1 = fisher_spectrum(xb[0], model, k=k, method=method, operator=operator, rng=0, **kw)
    assert w1.shape == (k,) and V1.shape == (k,) + x.shape


def test_auto_chooses_by_cost_and_says_why():
    small = MLPModel.random((20,), 10, (8,), rng=0)
    _, _, info = fisher_spectrum(np.full(20, 0.5), small, k=5, return_info=True)
    assert (info.operator, info.method) == ("exact", "gram") and "Gram" in info.reason
    big = MLPModel.random((20,), 400, (8,), rng=0)
    _, _, info = fisher_spectrum(np.full(20, 0.5), big, k=5, return_info=True)
    assert (info.operator, info.method) == ("matrix-free", "lanczos") and "Lanczos" in info.reason
    callable_backend = fr.as_backend(lambda x: tuple(a[0] for a in small.class_gradients(x)), input_shape=(20,))
    _, _, info = fisher_spectrum(np.full(20, 0.5), callable_backend, k=3, return_info=True)
    assert info.operator == "exact" and "no Fisher-vector product" in info.reason


def test_alias_spectrum_is_biased_upwards_at_paper_draws():
    """At C/5 draws the alias estimate of lambda_1 is biased: measure, do not hide it."""
    model = MLPModel.random((30,), 50, (10,), scale=3.0, rng=4)
    x = np.random.default_rng(0).uniform(size=30)
    w_exact, _ = fisher_spectrum(x, model, k=1, method="gram")
    est = [fisher_spectrum(x, model, k=1, operator="sampled", method="gram", rng=s)[0][0] for s in range(200)]
    assert np.isfinite(np.mean(est))
    # many draws converge to the exact value
    w_many, _ = fisher_spectrum(x, model, k=1, operator="sampled", n_samples=20000, method="gram", rng=0)
    np.testing.assert_allclose(w_many, w_exact, rtol=0.05)


def test_fisher_spectrum_errors():
    model = MLPModel.random((4,), 3, (5,), rng=0)
    with pytest.raises(ValueError, match="operator must be one of"):
        fisher_spectrum(np.zeros(4), model, k=2, operator="fast")
    with pytest.raises(ValueError, match="method='gram' needs class gradients"):
        fisher_spectrum(np.zeros(4), model, k=2, method="gram", operator="matrix-free")
    with pytest.raises(ValueError, match=r"x has shape \(3,\), expected \(4,\) or a batch \(n, 4\)"):
        fisher_spectrum(np.zeros(3), model, k=2)
    with pytest.raises(ValueError, match="x contains 1 NaN"):
        fisher_spectrum(np.array([0, np.nan, 0, 0]), model, k=2)
    with pytest.raises(ValueError, match=r"k must satisfy 1 <= k <= 4 \(the dimension\), got 20"):
        fisher_spectrum(np.zeros(4), model)


def test_matrix_free_default_tolerance_follows_the_backend_precision():
    from fisher_ref._spectrum import matrix_free_tol

    class B32:
        dtype = np.dtype(np.float32)

    assert matrix_free_tol(B32()) == 8 * float(np.finfo(np.float32).eps)
    assert matrix_free_tol(object()) == 0.0  # no dtype: float64 semantics


def test_blas_threads_are_limited_only_around_backend_products():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    from fisher_ref._spectrum import _backend_driven
    from fisher_ref.backends import bundled_mnist_mlp
    from fisher_ref.datasets import load_bundled_mnist

    model = bundled_mnist_mlp()
    x = load_bundled_mnist()[0][0]
    seen = []

    class Spy(fr.MatrixFreeFisherOperator):
        def _matmat(self, V):
            seen.append(max(i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"))
            return super()._matmat(V)

    op = Spy(x, model)
    w, _ = fr.top_eigenpairs(op, 3, method="lanczos")
    assert seen and set(seen) == {1}
    with _backend_driven(fr.FisherOperator(*[a[0] for a in model.class_gradients(x)])):
        pass  # a NumPy operator: nothing limited (no error, no effect)
    w_ref = np.linalg.eigvalsh(fr.fisher_matrix(*[a[0] for a in model.class_gradients(x)]))[::-1][:3]
    np.testing.assert_allclose(w, w_ref, rtol=1e-9)


@pytest.mark.parametrize("d, r, m", [(2, 1, 1), (6, 3, 3), (50, 9, 11)])
def test_null_completion_is_orthonormal_even_when_the_seed_lies_in_span_v(d, r, m):
    from fisher_ref._spectrum import _null_completion, _null_seed_block

    rng = np.random.default_rng(d)
    V = np.stack([np.linalg.qr(rng.standard_normal((d, r)))[0].T for _ in range(4)])  # orthonormal rows
    # the worst case for the seeded start: it lies inside span(V) of the first input
    V[0, :min(r, m)] = _null_seed_block(d, m)[:min(r, m)]
    V[0] = np.linalg.qr(V[0].T)[0].T
    seed = _null_seed_block(d, m)
    np.testing.assert_allclose(seed @ seed.T, np.eye(m), atol=1e-15)  # orthonormal by construction
    N = _null_completion(V, d, m)
    for j in range(4):
        Q = np.concatenate([V[j], N[j]], axis=0)
        np.testing.assert_allclose(Q @ Q.T, np.eye(r + m), atol=1e-12)
    with pytest.raises(ValueError, match="cannot complete"):
        _null_completion(V, d, d - r + 1)


EPS32 = float(np.finfo(np.float32).eps)


@given(numpy_models(), st.integers(1, 6))
def test_float32_gram_agrees_with_dense_eigh_to_float32_precision(model_x, k):
    model, x = model_x
    d = x.size
    k = min(k, d)
    p, g = model.class_gradients(x)
    G = fisher_matrix(p[0], g[0])
    w_ref, V_ref = eigh_top(G, k)
    w64, V64 = fisher_spectrum(x, model, k=k, method="gram")
    w32, V32 = fisher_spectrum(x, model, k=k, method="gram", precision="float32")
    top = max(w_ref[0], 1e-300)
    np.testing.assert_allclose(w64, np.maximum(w_ref, 0), rtol=0, atol=1e3 * d * EPS * top)  # the reference path
    np.testing.assert_allclose(w32, np.maximum(w_ref, 0), rtol=0, atol=8 * d * EPS32 * top)
    # float32 cannot resolve eigenvalues below its rounding band: those come out as exact zeros
    assert np.all((w32 == 0) | (w32 > 4 * d * EPS32 * top * 0.5))
    V32 = V32.reshape(k, -1)
    # orthonormal to float32 precision of the lift F^T u / sqrt(mu): its error grows as sqrt(top / mu);
    # the null-space padding is orthogonal to the lifted vectors to their precision
    scale = np.sqrt(top / np.where(w32 > 0, w32, top))
    scale[w32 == 0] = scale.max()
    np.testing.assert_array_less(np.abs(V32 @ V32.T - np.eye(k)), 10 * d * EPS32 * np.outer(scale, scale) + 1e-12)
    full = np.linalg.eigvalsh(G)[::-1]
    for i in range(k):
        gap = min(abs(w_ref[i] - full[j]) for j in range(len(full)) if j != i)
        if w32[i] > 0 and gap > 1e-2 * top:
            assert abs(abs(V32[i] @ V_ref[:, i]) - 1) < 1e3 * d * EPS32 * top / gap


def test_float32_gram_on_a_float32_torch_backend():
    """The float32 option on the float32 LeNet-5 against the float64 reference path and dense eigh
    of the same gradients: the top eigenpairs agree to float32 precision."""
    torch = pytest.importorskip("torch")
    from fisher_ref.backends import TorchBackend, bundled_path, torch_models
    from fisher_ref.datasets import load_bundled_mnist

    net = torch_models.lenet5(dropout=0.5)
    net.load_state_dict(torch.load(str(bundled_path("mnist_lenet.pt")), map_location="cpu"))
    b = TorchBackend(net, input_shape=(1, 28, 28), device="cpu")
    X = load_bundled_mnist()[0][:6]
    w64, V64 = fisher_spectrum(X, b, k=20, method="gram")
    w32, V32 = fisher_spectrum(X, b, k=20, method="gram", precision="float32")
    p, g = b.class_gradients(X)
    for j in range(6):
        w_ref, V_ref = eigh_top(fisher_matrix(p[j], g[j]), 3)
        np.testing.assert_allclose(w64[j, :3], w_ref, rtol=1e-9)
        np.testing.assert_allclose(w32[j, :3], w_ref, rtol=0, atol=8 * 784 * EPS32 * w_ref[0])
        assert abs(abs(V32[j, 0].ravel() @ V_ref[:, 0]) - 1) < 1e-5
    with pytest.raises(ValueError, match="precision='float32' is an option of the Gram method"):
        fisher_spectrum(X[0], b, k=2, method="lanczos", operator="matrix-free", precision="float32")
    with pytest.raises(ValueError, match="precision must be one of"):
        fisher_spectrum(X[0], b, k=2, precision="half")


@given(numpy_models(), st.sampled_from(["gram", "dense", "lanczos", "power"]))
def test_pad_null_space_false_gives_zero_vectors_past_the_rank(model_x, method):
    model, x = model_x
    k = x.size
    kw = dict(tol=1e-13, maxiter=100000) if method == "power" else {}
    w, V = fisher_spectrum(x, model, k=k, method=method, rng=0, **kw)
    w0, V0 = fisher_spectrum(x, model, k=k, method=method, rng=0, pad_null_space=False, **kw)
    np.testing.assert_array_equal(w0, w)
    pos = w > 0
    np.testing.assert_array_equal(V0[pos], V[pos])
    assert np.all(V0[~pos] == 0)
    # padded: orthonormal, to the precision of the eigenvectors (a tiny eigenvalue's vector, lifted
    # from the Gram matrix, is orthogonal to the others only to about eps sqrt(lambda_1 / lambda))
    Vp = V.reshape(k, -1)
    scale = np.sqrt(w[0] / np.where(pos, w, w[0])) if w[0] > 0 else np.ones(k)
    scale[~pos] = scale.max()
    np.testing.assert_array_less(np.abs(Vp @ Vp.T - np.eye(k)), 1e-8 + 1e3 * EPS * np.outer(scale, scale))


def test_pad_null_space_false_never_builds_the_padding(monkeypatch):
    from fisher_ref import _spectrum

    model = MLPModel.random((30,), 4, (6,), rng=1)
    x = np.random.default_rng(0).uniform(size=(3, 30))

    def refuse(*a, **kw):
        raise AssertionError("null-space completion called")

    monkeypatch.setattr(_spectrum, "_null_completion", refuse)
    w, V = fisher_spectrum(x, model, k=12, pad_null_space=False)
    assert w.shape == (3, 12) and np.all(w[:, 3:] == 0) and np.all(V[:, 3:] == 0)
    with pytest.raises(AssertionError, match="null-space completion called"):
        fisher_spectrum(x, model, k=12)
    with pytest.raises(TypeError, match="pad_null_space must be True or False, got int"):
        fisher_spectrum(x, model, k=12, pad_null_space=1)


def test_k_far_above_the_rank_on_a_large_input_costs_memory_of_the_result_only():
    """Issue 16, case 12 (3 x 512 x 512, k = 300 took 3.5 GB): the padding is written in place into
    the result (peak about the size of V), and without padding the zero rows are never touched."""
    from fisher_ref.backends import LogisticRegressionModel
    from fisher_ref.validation.memory import reset_peak, resident_kb

    try:
        reset_peak()
    except OSError:
        pytest.skip("needs Linux /proc/self/clear_refs to reset the peak resident memory")

    shape, k = (3, 256, 256), 100
    model = LogisticRegressionModel.random(shape, 10, scale=0.01, rng=0)
    x = np.random.default_rng(0).uniform(0, 1, shape)
    model.class_gradients(x)

    def peak_extra_mb(**kw):
        reset_peak()
        base = resident_kb("VmRSS")
        out = fisher_spectrum(x, model, k=k, **kw)
        return (resident_kb("VmHWM") - base) / 1024, out

    v_mb = k * x.size * 8 / 2**20  # 150 MB; before the in-place padding the peak was 6x that
    mem_pad, (w, V) = peak_extra_mb()
    mem_nopad, (w0, V0) = peak_extra_mb(pad_null_space=False)
    assert np.count_nonzero(w) == 9 and np.array_equal(w, w0)
    assert mem_pad < 1.6 * v_mb + 64, mem_pad  # the result, blocks of temporaries, fixed overheads
    assert mem_nopad < 0.2 * v_mb + 64, mem_nopad
    Vr = V.reshape(k, -1)
    np.testing.assert_allclose(Vr @ Vr.T, np.eye(k), atol=1e-12)
