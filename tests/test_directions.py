"""Attack directions as values: computed once, reused by the attacks and the least-perturbation search."""

import numpy as np
import pytest

import fisher_ref as fr
from fisher_ref.backends import LogisticRegressionModel, MLPModel


class CountingModel(MLPModel):
    """An MLP that counts its backend calls: gradient calls (what a direction costs) and forward
    passes, as calls and as rows (inputs evaluated)."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.calls = {"class_gradients": 0, "loss_gradient": 0}
        self.forward_calls = 0
        self.forward_rows = 0

    def _class_gradients(self, x, classes):
        self.calls["class_gradients"] += 1
        return super()._class_gradients(x, classes)

    def _loss_gradient(self, x, labels):
        self.calls["loss_gradient"] += 1
        return super()._loss_gradient(x, labels)

    def _probabilities(self, x):
        self.forward_calls += 1
        self.forward_rows += x.shape[0]
        return super()._probabilities(x)

    def reset_forward_count(self):
        self.forward_calls = self.forward_rows = 0


def _counting(base, input_shape):
    return CountingModel([(w, b) for w, b in zip(base.weights, base.biases)], activation=base.activation,
                         input_shape=input_shape)


def _model_and_x(n=6, seed=0):
    model = _counting(MLPModel.random((1, 4, 4), 5, (10,), activation="elu", scale=2.0, rng=seed), (1, 4, 4))
    x = np.random.default_rng(seed).uniform(0.1, 0.9, (n, 1, 4, 4))
    return model, x


def test_ossa_direction_is_the_top_eigenpair():
    model, x = _model_and_x()
    lam, v = fr.ossa_direction(x, model)
    w, V = fr.fisher_spectrum(x, model, k=1)
    np.testing.assert_array_equal(lam, w[:, 0])
    np.testing.assert_array_equal(v, V[:, 0])
    lam1, v1 = fr.ossa_direction(x[0], model)
    assert isinstance(lam1, float) and v1.shape == x.shape[1:]
    np.testing.assert_allclose(v1, v[0], atol=1e-14)


@pytest.mark.parametrize("given", ["pair", "spectrum"])
def test_ossa_with_a_given_direction_equals_ossa_without_and_does_no_eigensolve(given):
    model, x = _model_and_x()
    eps = [0.3, 1.5]
    plain = fr.ossa(x, model, epsilon=eps)
    d = fr.ossa_direction(x, model) if given == "pair" else fr.fisher_spectrum(x, model, k=4)
    before = model.calls["class_gradients"]
    reused = fr.ossa(x, model, epsilon=eps, direction=d)
    assert model.calls["class_gradients"] == before  # no eigensolve
    # the top pair of a top-4 spectrum equals the top-1 one up to the last bit (other BLAS blocking)
    tol = 0 if given == "pair" else 1e-13
    for a, b in zip(plain, reused):
        np.testing.assert_allclose(a.x_adv, b.x_adv, rtol=0, atol=tol)
        np.testing.assert_allclose(a.eigenvalue, b.eigenvalue, rtol=tol, atol=0)
        np.testing.assert_allclose(a.eigenvector, b.eigenvector, rtol=0, atol=tol)
        np.testing.assert_array_equal(a.success, b.success)


def test_fgm_and_otcm_with_given_directions():
    model, x = _model_and_x()
    u = fr.fgm_direction(x, model)
    before = model.calls["loss_gradient"]
    r = fr.fgm(x, model, epsilon=0.7, direction=u)
    assert model.calls["loss_gradient"] == before
    np.testing.assert_array_equal(r.x_adv, fr.fgm(x, model, epsilon=0.7).x_adv)
    t = (model.probabilities(x).argmax(1) + 1) % 5
    ut = fr.otcm_direction(x, model, targets=t)
    np.testing.assert_array_equal(fr.otcm(x, model, epsilon=0.7, direction=ut).x_adv,
                                  fr.otcm(x, model, epsilon=0.7, targets=t).x_adv)
    np.testing.assert_allclose(np.linalg.norm(u.reshape(6, -1), axis=1), 1.0, rtol=1e-12)


@pytest.mark.parametrize("attack", ["ossa", "fgm"])
def test_least_perturbation_reuses_the_direction(attack):
    model, x = _model_and_x(n=8, seed=1)
    plain = fr.least_perturbation(x, model, attack, tol=1e-3)
    d = fr.ossa_direction(x, model) if attack == "ossa" else fr.fgm_direction(x, model)
    before = dict(model.calls)
    reused = fr.least_perturbation(x, model, attack, tol=1e-3, direction=d)
    assert model.calls == before  # only forward passes
    np.testing.assert_array_equal(plain, reused)


def test_least_perturbation_returns_the_adversarial_examples():
    model, x = _model_and_x(n=8, seed=2)
    lp, res = fr.least_perturbation(x, model, "ossa", tol=1e-3, return_result=True)
    assert isinstance(res, fr.AttackResult) and np.isnan(res.epsilon)
    found = np.isfinite(lp) & (lp > 0)
    assert found.any()
    np.testing.assert_allclose(np.linalg.norm(res.eta.reshape(8, -1), axis=1)[found], lp[found], rtol=1e-12)
    assert np.all(res.success[found])
    assert np.all(res.eta[~found] == 0)
    for j in np.flatnonzero(found):  # the same example as OSSA at that budget
        np.testing.assert_allclose(res.x_adv[j], fr.ossa(x[j], model, epsilon=lp[j]).x_adv, atol=1e-12)
    lp_b, res_b = fr.least_perturbation(x, model, "bim", tol=1e-2, return_result=True, n_steps=3, step_size=0.5)
    fb = np.isfinite(lp_b) & (lp_b > 0)
    assert np.all(res_b.success[fb])


def test_bad_directions_are_refused():
    model, x = _model_and_x()
    lam, v = fr.ossa_direction(x, model)
    with pytest.raises(TypeError, match="direction for OSSA must be the pair"):
        fr.ossa(x, model, epsilon=1.0, direction=v)
    with pytest.raises(ValueError, match=r"direction for OSSA has eigenvalues of shape \(5,\)"):
        fr.ossa(x, model, epsilon=1.0, direction=(lam[:5], v[:5]))
    with pytest.raises(ValueError, match="must have unit l2 norm per input.*input 0 has norm 2"):
        fr.ossa(x, model, epsilon=1.0, direction=(lam, 2 * v))
    with pytest.raises(ValueError, match="negative eigenvalue"):
        fr.ossa(x, model, epsilon=1.0, direction=(-lam, v))
    with pytest.raises(ValueError, match=r"direction for FGM has shape \(1, 4, 4\), expected \(6, 1, 4, 4\)"):
        fr.fgm(x, model, epsilon=1.0, direction=v[0])
    with pytest.raises(TypeError, match="direction= applies to the one-step attacks"):
        fr.least_perturbation(x, model, "bim", direction=v)


def test_a_zero_spectrum_gives_a_zero_direction_with_a_warning():
    fn = lambda x: (np.array([1.0, 0.0, 0.0]), np.zeros((3,) + x.shape))
    with pytest.warns(fr.DegenerateSpectrumWarning, match="OSSA has no direction there"):
        lam, v = fr.ossa_direction(np.full(4, 0.5), fn)
    assert lam == 0 and np.all(v == 0)


def test_a_custom_attack_must_return_a_result_with_success():
    model = LogisticRegressionModel.random((4,), 3, rng=0)
    x = np.full((2, 4), 0.5)
    with pytest.raises(TypeError, match="returned tuple; least_perturbation needs an object with a boolean `success`"):
        fr.least_perturbation(x, model, lambda x, b, **kw: (True, False))
    bad_shape = lambda x, b, **kw: type("R", (), {"success": np.array([True])})()
    with pytest.raises(TypeError, match=r"success of dtype bool and shape \(1,\).*shape \(2,\)"):
        fr.least_perturbation(x, model, bad_shape)


# ---------------------------------------------------------------------------------------------
# what the attacks cost, in backend calls (counted, never timed)


def _loss(model, x, y):
    return -np.log(model.probabilities(x)[np.arange(len(y)), y])


@pytest.mark.parametrize("bounds, eps", [(None, 0.8), ((0.0, 1.0), 0.3)])
def test_ossa_costs_one_jacobian_and_one_forward_pass_where_the_sign_test_is_the_prediction(bounds, eps):
    model, x = _model_and_x(n=12, seed=3)
    lam, v = fr.ossa_direction(x, model)
    y = model.probabilities(x).argmax(1)
    # which inputs need a second forward pass, worked out independently: the loss does not rise
    # along +v, or x + eps v leaves the bounds
    up = x + eps * v
    flipped = _loss(model, up, y) <= _loss(model, x, y)
    outside = np.zeros(len(x), dtype=bool) if bounds is None else np.any((up < 0) | (up > 1), axis=(1, 2, 3))
    second = flipped | outside
    assert second.any() and not second.all()
    before = dict(model.calls)
    model.reset_forward_count()
    r = fr.ossa(x, model, epsilon=eps, bounds=bounds)
    assert model.calls["class_gradients"] == before["class_gradients"] + 1  # one batched Jacobian
    assert model.calls["loss_gradient"] == before["loss_gradient"]
    assert model.forward_rows == len(x) + int(second.sum())
    assert model.forward_calls == 2
    np.testing.assert_array_equal(r.labels, y)
    np.testing.assert_allclose(r.eta, eps * np.where(flipped, -1.0, 1.0)[:, None, None, None] * v, atol=1e-15)


def test_fgm_costs_one_loss_gradient_and_one_forward_pass():
    model, x = _model_and_x(n=8, seed=4)
    y = model.probabilities(x).argmax(1)
    before = dict(model.calls)
    model.reset_forward_count()
    r = fr.fgm(x, model, epsilon=0.5, labels=y)
    assert model.calls["loss_gradient"] == before["loss_gradient"] + 1
    assert model.calls["class_gradients"] == before["class_gradients"]
    assert (model.forward_calls, model.forward_rows) == (1, 8)  # the prediction at x_adv only
    model.reset_forward_count()
    r2 = fr.fgm(x, model, epsilon=0.5)  # labels = predictions: one more forward pass at x for them
    assert (model.forward_calls, model.forward_rows) == (2, 16)
    np.testing.assert_array_equal(r2.x_adv, r.x_adv)


def _budgets_tried(x, model, attack, **kw):
    """The least budgets of a search over ``attack`` called as a plain callable (the generic path,
    which runs the attack once per budget on the inputs still searched), and the number of
    (input, budget) pairs it tried."""
    tried = [0]

    def counted(xs, backend, **akw):
        tried[0] += xs.shape[0]
        return attack(xs, backend, **akw)

    lp = fr.least_perturbation(x, model, counted, n_scan=24, **kw)
    return lp, tried[0]


def test_least_perturbation_costs_one_forward_pass_per_input_and_budget_for_fgm():
    model, x = _model_and_x(n=10, seed=5)
    y = model.probabilities(x).argmax(1)
    ref, tried = _budgets_tried(x, model, fr.fgm, labels=y, tol=1e-3)
    before = dict(model.calls)
    model.reset_forward_count()
    lp, res = fr.least_perturbation(x, model, "fgm", labels=y, tol=1e-3, return_result=True)
    np.testing.assert_array_equal(lp, ref)
    assert model.calls["loss_gradient"] == before["loss_gradient"] + 1  # one direction for the batch
    assert model.forward_rows == tried  # one forward pass per input and budget, none for the result
    assert np.all(res.success[np.isfinite(lp) & (lp > 0)])


def test_least_perturbation_ossa_is_one_forward_pass_per_budget_where_exactly_equivalent():
    """A linear model's loss is convex along any line, so along its own gradient it rises at every
    budget: OSSA's sign test gives +1 everywhere and, without bounds, its forward pass is the
    success test; each budget then costs one forward pass per input."""
    base = LogisticRegressionModel.random((1, 4, 4), 5, scale=2.0, rng=2)
    model = _counting(base, (1, 4, 4))
    x = np.random.default_rng(2).uniform(0.1, 0.9, (9, 1, 4, 4))
    y = model.probabilities(x).argmax(1)
    d = (np.ones(9), fr.fgm_direction(x, model, labels=y))
    ref, tried = _budgets_tried(x, model, fr.fgm, labels=y, tol=1e-3, bounds=None)
    model.reset_forward_count()
    lp = fr.least_perturbation(x, model, "ossa", labels=y, tol=1e-3, bounds=None, direction=d)
    np.testing.assert_array_equal(lp, ref)  # the same search as FGM's along the same direction
    assert model.forward_rows == tried + 9  # + p(x), which a given direction does not bring along


@pytest.mark.parametrize("bounds", [None, (0.0, 1.0)])
def test_least_perturbation_ossa_equals_the_search_over_full_ossa_runs(bounds):
    """The one-step path (one direction, then forward passes) against the generic path that runs
    the whole of OSSA (eigensolve, sign test, clipping) at every budget: the same budgets, the same
    examples; at most two forward passes per input and budget."""
    model, x = _model_and_x(n=10, seed=6)
    ref, tried = _budgets_tried(x, model, fr.ossa, tol=1e-3, bounds=bounds)
    before = dict(model.calls)
    model.reset_forward_count()
    lp, res = fr.least_perturbation(x, model, "ossa", tol=1e-3, bounds=bounds, return_result=True)
    np.testing.assert_array_equal(lp, ref)
    assert np.isfinite(lp).sum() >= 5
    assert model.calls["class_gradients"] == before["class_gradients"] + 1
    assert tried <= model.forward_rows <= 2 * tried
    for j in np.flatnonzero(np.isfinite(lp) & (lp > 0)):
        r = fr.ossa(x[j], model, epsilon=lp[j], bounds=bounds)  # alone: its eigenvector to the last bits
        np.testing.assert_allclose(res.x_adv[j], r.x_adv, rtol=0, atol=1e-13)
        assert res.predictions[j] == r.predictions
