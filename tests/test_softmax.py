"""The softmax algebra (fisher_ref._softmax) against closed forms, and the torch twin pinned to it."""

import numpy as np
import pytest
from scipy.special import log_softmax as scipy_log_softmax

from fisher_ref._softmax import fisher_weights, log_softmax, softmax_seeds


def _logits(rng, n=6, C=7, scale=3.0):
    return scale * rng.standard_normal((n, C))


def test_log_softmax_matches_scipy_on_ordinary_logits():
    s = _logits(np.random.default_rng(0))
    np.testing.assert_allclose(log_softmax(s), scipy_log_softmax(s, axis=1), rtol=1e-14, atol=1e-15)


def test_saturated_class_keeps_relative_accuracy():
    # logits (40, 0): log p_0 = -log1p(e^-40) and p_0 - 1 = -e^-40 / (1 + e^-40), both ~ -4.2e-18
    s = np.array([[40.0, 0.0]])
    logp = log_softmax(s)
    t = np.exp(-40.0)
    assert logp[0, 0] == pytest.approx(-np.log1p(t), rel=1e-15)
    assert logp[0, 0] != 0.0  # a naive log(softmax) rounds this to 0
    seeds = softmax_seeds(logp, np.array([0, 1]))
    assert seeds[0, 0, 0] == pytest.approx(-t / (1 + t), rel=1e-15)
    assert seeds[0, 0, 1] == pytest.approx(t / (1 + t), rel=1e-15)
    assert seeds[0, 1, 1] == pytest.approx(-1 / (1 + t), rel=1e-15)


def test_seeds_are_p_minus_e_c_for_shared_and_per_input_classes():
    rng = np.random.default_rng(1)
    logp = log_softmax(_logits(rng))
    p = np.exp(logp)
    cls = np.array([3, 0, 6])
    seeds = softmax_seeds(logp, cls)
    expected = p[:, None, :] - np.eye(7)[cls][None]
    np.testing.assert_allclose(seeds, expected, rtol=1e-12, atol=1e-15)
    per = rng.integers(0, 7, size=(6, 2))
    np.testing.assert_allclose(softmax_seeds(logp, per), p[:, None, :] - np.eye(7)[per], rtol=1e-12, atol=1e-15)


def test_fisher_weights_is_the_softmax_jacobian_times_u():
    rng = np.random.default_rng(2)
    logp = log_softmax(_logits(rng))
    p = np.exp(logp)
    u = rng.standard_normal((6, 4, 7))
    H = np.einsum("nc,cd->ncd", p, np.eye(7)) - p[:, :, None] * p[:, None, :]  # diag p - p p^T
    np.testing.assert_allclose(fisher_weights(logp, u), np.einsum("ncd,nkd->nkc", H, u), rtol=1e-12, atol=1e-15)


def test_fisher_weights_free_of_cancellation_when_nearly_one_hot():
    # p = (1 - t, t) with t = e^-30: (diag p - pp^T) u = t (1 - t) (u0 - u1) (1, -1) exactly
    s = np.array([[30.0, 0.0]])
    logp = log_softmax(s)
    t = np.exp(-30.0) / (1 + np.exp(-30.0))
    u = np.array([[[1.0, 0.25]]])
    w = fisher_weights(logp, u)[0, 0]
    exact = t * (1 - t) * 0.75
    np.testing.assert_allclose(w, [exact, -exact], rtol=1e-14)


@pytest.mark.parametrize("saturated", [False, True])
def test_torch_twin_agrees_with_numpy(saturated):
    torch = pytest.importorskip("torch")
    from fisher_ref.backends.torch import fisher_weights_t, log_softmax_t, softmax_seeds_t

    rng = np.random.default_rng(3)
    s = _logits(rng, scale=3.0)
    if saturated:
        s[:, 2] += 60.0  # class 2 dominates every row: p_2 - 1 ~ -1e-26
    st = torch.tensor(s, dtype=torch.float64)
    logp_t, top = log_softmax_t(torch, st)
    logp = log_softmax(s)
    np.testing.assert_allclose(logp_t.numpy(), logp, rtol=1e-14, atol=0)
    assert np.array_equal(top.numpy()[:, 0], logp.argmax(axis=1))
    cls = np.array([2, 0, 5])
    np.testing.assert_allclose(softmax_seeds_t(torch, logp_t, torch.tensor(cls)).numpy(),
                               softmax_seeds(logp, cls), rtol=1e-14, atol=0)
    per = rng.integers(0, 7, size=(6, 1))
    np.testing.assert_allclose(softmax_seeds_t(torch, logp_t, torch.tensor(per)).numpy(),
                               softmax_seeds(logp, per), rtol=1e-14, atol=0)
    u = rng.standard_normal((6, 3, 7))
    w_t = fisher_weights_t(torch, torch.exp(logp_t), top, torch.tensor(u)).numpy()
    np.testing.assert_allclose(w_t, fisher_weights(logp, u), rtol=1e-13, atol=1e-300)
