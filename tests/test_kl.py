"""Eq. 3: KL(p(x) || p(x + eta)) = 1/2 eta^T G eta + O(||eta||^3), against the models' own logits."""

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from fisher_ref import FisherOperator, fisher_spectrum

from _strategies import numpy_models


def kl(model, x, eta):
    def logp(z):
        z = z - z.max()
        return z - np.log(np.exp(z).sum())
    a, b = logp(model.logits(x)[0]), logp(model.logits(x + eta)[0])
    return float(np.sum(np.exp(a) * (a - b)))


def ratio(model, G, x, v, t):
    eta = t * v
    return kl(model, x, eta) / (0.5 * float(eta.ravel() @ (G @ eta.ravel())))


@given(numpy_models(), st.integers(0, 2**31), st.booleans())
def test_kl_quadratic_form_ratio_tends_to_one(model_x, seed, top):
    model, x = model_x
    G = FisherOperator.from_backend(model, x)
    if top:
        _, V = fisher_spectrum(model, x, k=1)
        v = V[0]
    else:
        v = np.random.default_rng(seed).standard_normal(x.shape)
        v /= np.linalg.norm(v)
    quad = float(v.ravel() @ (G @ v.ravel()))
    lam = fisher_spectrum(model, x, k=1)[0][0]
    if quad <= 1e-6 * lam:  # a direction (nearly) in the kernel: the ratio is not defined
        return
    # step sizes that put 1/2 eta^T G eta at 1e-2 ... 1e-10 (so ||eta|| shrinks 10x per step and the
    # KL stays far above its rounding error ~ 1e-16 |log p|)
    targets = (1e-2, 1e-4, 1e-6, 1e-8, 1e-10)
    r = [ratio(model, G, x, v, np.sqrt(2 * kl_target / quad)) for kl_target in targets]
    errs = np.abs(np.array(r) - 1)
    assert errs[-1] < 1e-2, r
    # the error shrinks with ||eta|| (O(||eta||^3) remainder over O(||eta||^2)): 100x smaller steps
    # give a much smaller error, unless it is already at rounding level
    assert errs[-1] <= 0.2 * errs[-3] + 1e-5, r
