"""Eq. 3: KL(p(x) || p(x + eta)) = 1/2 eta^T G eta + O(||eta||^3), against the models' own logits."""

import numpy as np
from hypothesis import assume, given
from hypothesis import strategies as st

from fisher_ref import FisherOperator, fisher_spectrum

from _strategies import numpy_models


def kl(model, x, eta):
    """KL(p(x) || p(x + eta)) from the logits, written to keep relative accuracy when p is nearly
    one-hot: log p_i = (z_i - z_top) - log1p(sum_{j != top} exp(z_j - z_top))."""
    z, w = model.logits(x)[0], model.logits(x + eta)[0]
    top = int(np.argmax(z))

    def parts(v):
        u = v - v[top]
        e = np.exp(u)
        e[top] = 0.0
        return u, np.log1p(e.sum())

    u, a = parts(z)
    v, b = parts(w)
    logp = u - a
    return float(np.sum(np.exp(logp) * ((u - v) - (a - b))))


def ratio(model, G, x, v, t):
    eta = t * v
    return kl(model, x, eta) / (0.5 * float(eta.ravel() @ (G @ eta.ravel())))


@given(numpy_models(), st.integers(0, 2**31), st.booleans())
def test_kl_quadratic_form_ratio_tends_to_one(model_x, seed, top):
    model, x = model_x
    G = FisherOperator.from_backend(x, model)
    if top:
        _, V = fisher_spectrum(x, model, k=1)
        v = V[0]
    else:
        v = np.random.default_rng(seed).standard_normal(x.shape)
        v /= np.linalg.norm(v)
    quad = float(v.ravel() @ (G @ v.ravel()))
    lam = fisher_spectrum(x, model, k=1)[0][0]
    # a direction (nearly) in the kernel of G (rank <= C - 1): KL is then quartic in ||eta|| and the
    # ratio tends to 1 only for eta far below what double precision resolves
    assume(quad > 1e-3 * lam)
    # ||eta|| from 1e-1 down to 1e-5. The remainder is O(||eta||^3), so |ratio - 1| falls about 10x per
    # decade until it meets the rounding floor of the logit differences (~1e-16 |z| / (||eta|| |J|)).
    r = [ratio(model, G, x, v, t) for t in (1e-1, 1e-2, 1e-3, 1e-4, 1e-5)]
    errs = np.abs(np.array(r) - 1)
    # the ratio tends to 1: within 0.5% for some ||eta|| <= 1e-3 ...
    assert errs[2:].min() < 5e-3, r
    # ... and closer to 1 at 1e-3 than at 1e-1 (unless already within 0.1% there: at a single
    # ||eta|| the cubic and quartic terms may cancel by chance)
    assert errs[2] < errs[0] or errs[0] < 1e-3, r
