"""OSSA (Algorithm 1) and the baseline attacks, on NumPy reference models."""

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

import fisher_ref as fr
from fisher_ref import DegenerateSpectrumWarning, fisher_spectrum, least_perturbation
from fisher_ref.backends import LogisticRegressionModel, MLPModel

from _strategies import numpy_models


def loss(model, x, y):
    return -np.log(model.probabilities(x)[np.arange(len(y)), y])


@given(numpy_models(), st.floats(0.01, 3.0))
def test_ossa_eta_is_epsilon_times_top_eigenvector_and_increases_loss(model_x, eps):
    model, x = model_x
    r = fr.ossa(x, model, epsilon=eps, bounds=None)
    assert isinstance(r, fr.OSSAResult)
    np.testing.assert_allclose(np.linalg.norm(r.eta), eps, rtol=1e-12)
    w, V = fisher_spectrum(x, model, k=1)
    np.testing.assert_allclose(r.eigenvalue, w[0], rtol=1e-12)
    assert abs(abs(r.eigenvector.ravel() @ V[0].ravel()) - 1) < 1e-9
    np.testing.assert_allclose(r.eta, eps * r.eigenvector, rtol=1e-12, atol=0)
    y = np.array([r.labels])
    l0, lp, lm = loss(model, x[None], y)[0], loss(model, (x + r.eta)[None], y)[0], loss(model, (x - r.eta)[None], y)[0]
    # Algorithm 1 line 8: the loss increases, unless it increases in neither direction
    assert lp > l0 or lm <= l0
    assert r.success == (model.probabilities(r.x_adv)[0].argmax() != r.labels)


def test_ossa_batched_equals_loop_and_epsilon_sequences():
    model = MLPModel.random((1, 5, 5), 6, (12,), activation="elu", scale=2.0, rng=3)
    X = np.random.default_rng(0).uniform(0, 1, (7, 1, 5, 5))
    batch = fr.ossa(X, model, epsilon=[0.3, 1.0, 2.5])
    assert isinstance(batch, list) and len(batch) == 3
    for e, rb in zip([0.3, 1.0, 2.5], batch):
        assert rb.x_adv.shape == X.shape and rb.success.shape == (7,) and rb.epsilon == e
        assert np.all((rb.x_adv >= 0) & (rb.x_adv <= 1))  # clipped to bounds
        for j in range(7):
            r1 = fr.ossa(X[j], model, epsilon=e)
            np.testing.assert_allclose(r1.x_adv, rb.x_adv[j], atol=1e-12)
            assert r1.success == rb.success[j]
    # fooling rate grows with epsilon on this model
    rates = [r.fooling_rate for r in batch]
    assert rates[0] <= rates[-1]


def test_ossa_with_given_labels_and_call_styles():
    model = LogisticRegressionModel.random((8,), 4, scale=2.0, rng=1)
    x = np.full(8, 0.5)
    a = fr.ossa(x, model, epsilon=1.0, labels=2)
    b = fr.ossa(backend=model, x=x, epsilon=1.0, labels=[2])
    assert a.labels == 2 and np.array_equal(a.x_adv, b.x_adv)


@given(numpy_models(), st.floats(0.01, 2.0))
def test_fgm_is_normalised_loss_gradient(model_x, eps):
    model, x = model_x
    r = fr.fgm(x, model, epsilon=eps, bounds=None)
    # grad(-log p_y) = J^T (p - e_y), J the logit Jacobian by central differences (the loss itself
    # is too flat to difference when p_y is close to 1)
    h = 1e-6
    J = np.array([(model.logits(x + h * e.reshape(x.shape))[0] - model.logits(x - h * e.reshape(x.shape))[0]) / (2 * h)
                  for e in np.eye(x.size)]).T
    p = model.probabilities(x)[0]
    g = J.T @ (p - np.eye(p.size)[r.labels])
    # the differences carry an absolute error ~1e-10 |z| per entry of J: skip the inputs where
    # that is not small against the gradient (saturated ELU units, p_y ~ 1)
    assume(np.linalg.norm(g) > 1e-4 * max(1.0, np.abs(model.logits(x)).max()))
    np.testing.assert_allclose(r.eta.ravel(), eps * g / np.linalg.norm(g), rtol=1e-5, atol=1e-7 * eps)


def test_otcm_targets_an_incorrect_class_and_raises_its_probability():
    model = MLPModel.random((10,), 5, (8,), scale=2.0, rng=2)
    X = np.random.default_rng(1).uniform(0, 1, (20, 10))
    t = (model.probabilities(X).argmax(1) + 1) % 5
    r = fr.otcm(X, model, epsilon=1e-3, targets=t, bounds=None)
    p0, p1 = model.probabilities(X), model.probabilities(r.x_adv)
    assert np.all(p1[np.arange(20), t] > p0[np.arange(20), t])
    np.testing.assert_allclose(np.linalg.norm(r.eta, axis=1), 1e-3)
    r2 = fr.otcm(X, model, epsilon=0.5, rng=0)  # random targets: a step of the budget's length each
    np.testing.assert_allclose(np.linalg.norm(r2.eta, axis=1), 0.5, rtol=1e-6)
    with pytest.raises(ValueError, match="targets must differ from labels"):
        fr.otcm(X, model, epsilon=0.5, targets=model.probabilities(X).argmax(1))


@pytest.mark.parametrize("attack", [fr.bim, fr.iterative_ossa])
def test_iterative_attacks_stay_in_the_ball_and_record_history(attack):
    model = MLPModel.random((12,), 4, (8,), scale=2.0, rng=5)
    X = np.random.default_rng(2).uniform(0.2, 0.8, (6, 12))
    r = attack(X, model, epsilon=0.4, step_size=0.1, n_steps=8)
    assert np.all(np.linalg.norm(r.x_adv - X, axis=1) <= 0.4 + 1e-12)
    assert r.success_history.shape == (8, 6)
    assert np.array_equal(r.success_history[-1], r.success)
    y = r.labels
    assert np.all(loss(model, r.x_adv, y) >= loss(model, X, y) - 1e-12)


def test_least_perturbation_matches_brute_force_on_a_linear_model():
    """On logistic regression without bounds FGM success is monotone in epsilon: the binary search
    must land within tol of the first successful epsilon on a fine grid."""
    model = LogisticRegressionModel.random((6,), 4, scale=3.0, rng=7)
    X = np.random.default_rng(3).uniform(0, 1, (10, 6))
    tol = 1e-3
    lp = least_perturbation(X, model, "fgm", tol=tol, bounds=None)
    grid = np.arange(0, 6, tol / 4)
    results = fr.fgm(X, model, epsilon=grid, bounds=None)
    succ = np.array([r.success for r in results])  # (grid, n)
    for j in range(10):
        first = grid[np.argmax(succ[:, j])] if succ[:, j].any() else np.inf
        if np.isinf(first):
            assert np.isinf(lp[j])
        else:
            assert first - tol / 4 <= lp[j] <= first + tol + 1e-12, (j, lp[j], first)


def test_least_perturbation_finds_the_first_success_when_it_is_not_monotone():
    """An attack that fools only for epsilon in [0.7, 1.9]: a plain binary search on [0, 6] tests 6
    first and reports "never"; the scan finds the first crossing, within tol."""
    model = LogisticRegressionModel.random((4,), 3, rng=0)
    X = np.random.default_rng(0).uniform(0, 1, (3, 4))
    windows = np.array([[0.7, 1.9], [2.6, 2.9], [7.0, 8.0]])  # the last: never within [0, 6]
    seen = {}

    def window_attack(x, backend, *, epsilon, labels, bounds):
        rows = [int(np.flatnonzero(np.all(X == xi, axis=1))[0]) for xi in np.atleast_2d(x)]
        seen.setdefault("calls", 0)
        seen["calls"] += 1
        ok = (windows[rows, 0] <= epsilon) & (epsilon <= windows[rows, 1])
        return type("R", (), {"success": ok})()

    lp = least_perturbation(X, model, window_attack, n_scan=24, tol=1e-3)
    assert lp[0] == pytest.approx(0.7, abs=1e-3) and lp[0] >= 0.7
    assert lp[1] == pytest.approx(2.6, abs=1e-3) and lp[1] >= 2.6
    assert np.isinf(lp[2])
    plain = least_perturbation(X, model, window_attack, tol=1e-3)  # callables default to n_scan=1
    assert np.all(np.isinf(plain))
    with pytest.raises(ValueError, match="n_scan must be a positive int"):
        least_perturbation(X, model, "fgm", n_scan=0)


@pytest.mark.parametrize("attack", ["ossa", "otcm", "bim", fr.fgm, fr.iterative_ossa])
def test_least_perturbation_result_fools(attack):
    model = MLPModel.random((9,), 3, (6,), scale=3.0, rng=11)
    X = np.random.default_rng(4).uniform(0, 1, (5, 9))
    kw = {"n_steps": 4, "step_size": 0.5} if attack in ("bim", fr.iterative_ossa) else {}
    lp = least_perturbation(X, model, attack, tol=1e-2, rng=0, **kw)
    assert lp.shape == (5,) and np.all((lp >= 0) & (lp <= 6) | np.isinf(lp))
    name = attack if isinstance(attack, str) else attack.__name__
    fn = getattr(fr, name)
    for j in np.flatnonzero(np.isfinite(lp)):
        extra = {"rng": 0} if name == "otcm" else {}
        if name == "otcm":
            continue  # the target drawn inside the search depends on the batch
        r = fn(X[j], model, epsilon=lp[j], **kw, **extra)
        assert r.success
    single = least_perturbation(X[0], model, "fgm")
    assert isinstance(single, float)


def test_degenerate_spectrum_warns_and_leaves_input_unchanged():
    fn = lambda x: (np.array([1.0, 0.0, 0.0]), np.zeros((3,) + x.shape))
    with pytest.warns(DegenerateSpectrumWarning, match="OSSA has no direction there"):
        r = fr.ossa(np.full(4, 0.5), fn, epsilon=1.0)
    assert np.all(r.eta == 0) and not r.success
    with pytest.warns(DegenerateSpectrumWarning, match="the loss gradient is zero"):
        fr.fgm(np.full(4, 0.5), fn, epsilon=1.0)


def test_attack_input_errors():
    model = LogisticRegressionModel.random((4,), 3, rng=0)
    x = np.full(4, 0.5)
    with pytest.raises(ValueError, match="epsilon must be >= 0, got -1"):
        fr.ossa(x, model, epsilon=-1.0)
    with pytest.raises(ValueError, match="epsilon contains 1 NaN"):
        fr.fgm(x, model, epsilon=np.nan)
    with pytest.raises(ValueError, match=r"x lies outside bounds = \(0, 1\): its values span \[0.5, 2\]"):
        fr.ossa(np.array([0.5, 2.0, 0.5, 0.5]), model, epsilon=1.0)
    with pytest.raises(ValueError, match=r"bounds must be a pair \(lo, hi\) of finite numbers with lo < hi"):
        fr.fgm(x, model, epsilon=1.0, bounds=(1.0, 0.0))
    with pytest.raises(ValueError, match=r"labels must have shape \(1,\)"):
        fr.ossa(x, model, epsilon=1.0, labels=[0, 1])
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\]"):
        fr.ossa(x, model, epsilon=1.0, labels=3)
    with pytest.raises(TypeError, match="labels must be integer class indices"):
        fr.ossa(x, model, epsilon=1.0, labels=0.5)
    with pytest.raises(ValueError, match="method must be one of"):
        fr.ossa(x, model, epsilon=1.0, method="svd")
    with pytest.raises(ValueError, match="attack must be one of"):
        least_perturbation(x, model, "deepfool")
    with pytest.raises(ValueError, match="lo and hi must satisfy 0 <= lo < hi"):
        least_perturbation(x, model, "fgm", lo=3, hi=1)
    with pytest.raises(ValueError, match="n_steps must be a positive int"):
        fr.bim(x, model, epsilon=1.0, n_steps=0)
    with pytest.raises(ValueError, match="step_size must be a positive number"):
        fr.bim(x, model, epsilon=1.0, step_size=-0.1)
    with pytest.raises(TypeError, match="backend must be a fisher_ref Backend or a callable.*got str 'model.pt'"):
        fr.ossa(x, "model.pt", epsilon=1.0)


@pytest.mark.parametrize("attack", [fr.bim, fr.iterative_ossa])
def test_success_history_is_the_success_after_each_step(attack):
    """The history is read from the next step's gradient call; check it against runs that stop
    after t steps (their final success is measured by a forward pass of its own)."""
    model = MLPModel.random((10,), 4, (8,), scale=3.0, rng=8)
    X = np.random.default_rng(5).uniform(0.1, 0.9, (8, 10))
    full = attack(X, model, epsilon=1.5, step_size=0.3, n_steps=6)
    assert 0 < full.success_history.sum() < full.success_history.size
    for t in range(1, 7):
        r = attack(X, model, epsilon=1.5, step_size=0.3, n_steps=t)
        np.testing.assert_array_equal(full.success_history[t - 1], r.success)
        np.testing.assert_array_equal(full.success_history[:t], r.success_history)


@pytest.mark.parametrize("attack", [fr.bim, fr.iterative_ossa])
def test_early_stop_returns_the_first_adversarial_iterate(attack):
    model = MLPModel.random((10,), 4, (8,), scale=3.0, rng=8)
    X = np.random.default_rng(5).uniform(0.1, 0.9, (8, 10))
    y = model.probabilities(X).argmax(1)
    y[0] = (y[0] + 1) % 4  # misclassified already: left unchanged
    full = attack(X, model, epsilon=1.5, step_size=0.3, n_steps=6, labels=y)
    stop = attack(X, model, epsilon=1.5, step_size=0.3, n_steps=6, labels=y, early_stop=True)
    assert np.all(stop.eta[0] == 0) and np.all(stop.success_history[:, 0])
    for j in range(1, 8):
        h = full.success_history[:, j]
        if not h.any():  # never fooled: the same six steps
            np.testing.assert_array_equal(stop.x_adv[j], full.x_adv[j])
            assert not stop.success_history[:, j].any()
            continue
        first = int(np.argmax(h))  # the first step after which it is fooled
        ref = attack(X[j], model, epsilon=1.5, step_size=0.3, n_steps=first + 1, labels=y[j])
        np.testing.assert_allclose(stop.x_adv[j], ref.x_adv, rtol=0, atol=1e-13)  # alone: BLAS rounding
        np.testing.assert_array_equal(stop.success_history[:, j], np.arange(6) >= first)
    assert stop.fooling_rate == 1 - np.mean([not full.success_history[:, j].any() for j in range(8)])
    with pytest.raises(TypeError, match="early_stop must be True or False, got str"):
        attack(X, model, epsilon=1.0, early_stop="yes")


def test_bim_early_stop_takes_fewer_gradient_steps():
    from test_directions import _counting

    model = _counting(MLPModel.random((10,), 4, (8,), activation="tanh", scale=3.0, rng=8), (10,))
    X = np.random.default_rng(5).uniform(0.1, 0.9, (8, 10))
    fr.bim(X, model, epsilon=1.5, step_size=0.3, n_steps=6)
    all_steps = model.calls["loss_gradient"]
    model.reset_forward_count()
    r = fr.bim(X, model, epsilon=1.5, step_size=0.3, n_steps=6, early_stop=True)
    assert r.x_adv.shape == X.shape and np.all(np.linalg.norm(r.eta, axis=1) <= 1.5 + 1e-9)
    assert model.calls["loss_gradient"] - all_steps <= 6
    # forward passes: one at x for the labels, one at the end for the inputs that took the last step
    assert model.forward_calls <= 2
