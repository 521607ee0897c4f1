"""Hypothesis strategies shared by the core tests."""

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from fisher_ref.backends import LogisticRegressionModel, MLPModel


@st.composite
def probability_vectors(draw, min_classes=2, max_classes=12, allow_zero=False):
    C = draw(st.integers(min_classes, max_classes))
    logits = draw(arrays(np.float64, C, elements=st.floats(-6, 6)))
    p = np.exp(logits - logits.max())
    if allow_zero and C > 2 and draw(st.booleans()):
        p[draw(st.integers(0, C - 1))] = 0.0
        if p.sum() == 0:
            p[0] = 1.0
    return p / p.sum()


@st.composite
def fisher_problems(draw, max_classes=10, max_d=40, softmax=None):
    """(probs (C,), grads (C, d)); softmax-consistent (sum_i p_i g_i = 0) or generic."""
    p = draw(probability_vectors(max_classes=max_classes))
    C = p.size
    d = draw(st.integers(2, max_d))
    seed = draw(st.integers(0, 2**32 - 1))
    r = np.random.default_rng(seed)
    g = r.standard_normal((C, d)) * draw(st.sampled_from([1e-2, 1.0, 30.0]))
    if softmax if softmax is not None else draw(st.booleans()):
        # g_i = J^T (p - e_i): the structure of -grad log p_i for a softmax model
        J = r.standard_normal((C, d))
        g = (p[None, :] - np.eye(C)) @ J
    return p, g


@st.composite
def numpy_models(draw, max_classes=8):
    C = draw(st.integers(2, max_classes))
    shape = draw(st.sampled_from([(6,), (2, 3), (1, 4, 4), (13,)]))
    seed = draw(st.integers(0, 2**32 - 1))
    kind = draw(st.sampled_from(["logreg", "tanh", "elu"]))
    scale = draw(st.sampled_from([0.5, 1.0, 3.0]))
    if kind == "logreg":
        model = LogisticRegressionModel.random(shape, C, scale=scale, rng=seed)
    else:
        hidden = draw(st.sampled_from([(5,), (8, 6)]))
        model = MLPModel.random(shape, C, hidden, activation=kind, scale=scale, rng=seed)
    x = np.random.default_rng(seed + 1).uniform(0, 1, shape)
    return model, x
