"""The demo: spectrum and OSSA on the bundled MNIST model, with a ground-truth check."""

from __future__ import annotations

import time
import numpy as np

from .attacks import fgm, least_perturbation, ossa
from ._operators import fisher_matrix
from ._spectrum import fisher_spectrum

def run_demo(n: int = 200, epsilons=(0.5, 1.0, 2.0, 3.0), k: int = 10, seed: int = 0, out=print) -> dict:
    """Run the demo on ``n`` bundled MNIST test images and print what it did; returns the numbers."""
    from .datasets import load_bundled_mnist

    from .backends import bundled_mnist_mlp

    model = bundled_mnist_mlp()
    x, y = load_bundled_mnist()
    idx = np.random.default_rng(seed).choice(len(x), size=min(n, len(x)), replace=False)
    x, y = x[idx], y[idx]
    correct = model.probabilities(x).argmax(1) == y
    acc = float(np.mean(correct))
    out(f"model: {model!r} (bundled, trained on MNIST by paper_results/train_bundled_model.py)")
    out(f"data:  {len(x)} bundled MNIST test images, pixels in [0, 1]; model accuracy on them {acc:.1%}")
    x, y = x[correct], y[correct]  # attack what the model gets right: fooling rate = predictions changed

    t0 = time.perf_counter()
    w, V, info = fisher_spectrum(x, model, k=k, return_info=True)
    t_spec = time.perf_counter() - t0
    out(f"\nFisher spectrum (k = {k}): method {info.method!r} on the {info.operator!r} operator ({info.reason})")
    out(f"  {t_spec / len(x) * 1e3:.2f} ms per input; rank(G) <= C - 1 = 9, so eigenvalue 10 is exactly 0: "
        f"{bool(np.all(w[:, 9] == 0))}")
    out(f"  top eigenvalue: median {np.median(w[:, 0]):.4g}, min {w[:, 0].min():.4g}, max {w[:, 0].max():.4g}")

    # ground truth: the dense d x d FIM (eq. 4) and numpy.linalg.eigh on the first input
    p, g = model.class_gradients(x[0])
    ref = np.linalg.eigvalsh(fisher_matrix(p[0], g[0]))[::-1][:9]
    rel = np.max(np.abs(w[0, :9] - ref)) / ref[0]
    out(f"  check against dense eigh of the 784 x 784 FIM (input 0): max |diff| / lambda_1 = {rel:.1e}")

    out(f"\nOne-step attacks on the {len(x)} correctly classified inputs: fooling rate at l2 budget epsilon")
    res_o = ossa(x, model, epsilon=list(epsilons), labels=y)
    res_f = fgm(x, model, epsilon=list(epsilons), labels=y)
    out("  epsilon " + "".join(f"{e:>8g}" for e in epsilons))
    out("  OSSA    " + "".join(f"{r.fooling_rate:>8.1%}" for r in res_o))
    out("  FGM     " + "".join(f"{r.fooling_rate:>8.1%}" for r in res_f))

    m = min(len(x), 100)
    t0 = time.perf_counter()
    lp_o = least_perturbation(x[:m], model, "ossa", labels=y[:m])
    lp_f = least_perturbation(x[:m], model, "fgm", labels=y[:m])
    t_lp = time.perf_counter() - t0
    fin = np.isfinite(lp_o) & np.isfinite(lp_f)
    out(f"\nLeast l2 perturbation (binary search in [0, 6], tol 1e-3, {m} inputs, {t_lp:.2f} s for both attacks):")
    out(f"  OSSA mean {lp_o[np.isfinite(lp_o)].mean():.3f} (fools {np.isfinite(lp_o).mean():.1%}), "
        f"FGM mean {lp_f[np.isfinite(lp_f)].mean():.3f} (fools {np.isfinite(lp_f).mean():.1%})")
    from scipy.stats import spearmanr

    rho = spearmanr(np.log(w[:m, 0][fin]), lp_o[fin]).statistic
    out(f"  Spearman correlation of log lambda_1 with the OSSA least perturbation: {rho:.3f} "
        "(the paper's Figure 3: larger eigenvalue, smaller perturbation)")
    return {"accuracy": acc, "eigenvalues": w, "ossa_rates": [r.fooling_rate for r in res_o],
            "fgm_rates": [r.fooling_rate for r in res_f], "least_ossa": lp_o, "least_fgm": lp_f,
            "dense_check": rel, "spearman": rho}
