"""Problems with a trained model and known detection data, shared by the tests of fisher_ref.detection."""

import numpy as np

import fisher_ref as fr
from fisher_ref.backends import MLPModel


def gaussian_problem(n_classes, *, n=300, d=10, seed=0, dropout=0.3):
    """Gaussian classes in R^d and a tanh MLP (d-16-C) trained on them, as a NumPy backend."""
    from sklearn.neural_network import MLPClassifier

    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 1.2, (n_classes, d))
    y = rng.integers(0, n_classes, n)
    X = centers[y] + rng.normal(0, 0.6, (n, d))
    clf = MLPClassifier((16,), activation="tanh", max_iter=2000, random_state=seed).fit(X, y)
    W, B = [c.T for c in clf.coefs_], list(clf.intercepts_)
    if n_classes == 2:  # one logistic output unit = softmax over the logits (0, z)
        W[-1], B[-1] = np.vstack([np.zeros_like(W[-1]), W[-1]]), np.r_[0.0, B[-1]]
    return MLPModel(list(zip(W, B)), activation="tanh", dropout=dropout), X, y


def fgm_detection_data(model, X, y, seed=0, factor=1.1):
    """Per input: clean copy, noisy copy (same l2 norm), FGM adversarial just past the boundary
    (``factor`` times the least FGM perturbation). Returns the inputs of the fooled inputs."""
    lp = fr.least_perturbation(x=X, backend=model, attack="fgm", labels=y, bounds=None, hi=20.0, tol=1e-3)
    ok = np.isfinite(lp) & (lp > 0)
    eps = factor * np.where(ok, lp, 0.0)
    u = fr.fgm(X, model, epsilon=1.0, labels=y, bounds=None).eta
    adv = X + eps[:, None] * u
    ok &= model.probabilities(adv).argmax(1) != y
    z = np.random.default_rng(seed).standard_normal(X.shape)
    noisy = X + eps[:, None] * z / np.linalg.norm(z, axis=1, keepdims=True)
    return np.flatnonzero(ok), noisy, adv


def stack(X, noisy, adv, idx):
    """The clean, noisy and adversarial copies of the inputs ``idx``, labelled 0, 0, 1."""
    return (np.concatenate([X[idx], noisy[idx], adv[idx]]),
            np.r_[np.zeros(2 * idx.size), np.ones(idx.size)].astype(np.int64))


def small_model(d=6, C=4, dropout=0.0, rng=0):
    """A random d-8-C MLP (steep: scale 2), with dropout when asked."""
    m = MLPModel.random((d,), C, (8,), scale=2.0, rng=rng)
    return MLPModel(list(zip(m.weights, m.biases)), dropout=dropout) if dropout else m
