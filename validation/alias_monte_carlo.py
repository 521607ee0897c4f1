"""Monte-Carlo (alias) Fisher operators against the exact one, with error bars.

``SampledFisherOperator`` with m draws is an unbiased estimate of G: over R independent draws, the
mean of ``G_hat @ V`` must match ``G @ V`` within its exact standard error (a z-test on every entry;
the variance of one draw, sum_i p_i (g_i g_i^T v)^2 - (G v)^2, is known in closed form).
Its top eigenvalue is biased upwards (lambda_max is convex, so E lambda_max(G_hat) >= lambda_1 by
Jensen's inequality); the bias at the paper's m = C / 5 draws is measured with its error bar and must
shrink as m grows. The tests apply where, over all replicates, classes other than the top one are
expected to be drawn at least 100 times: for a saturated prediction the estimator is dominated by
rare, heavy terms and no error bar is Gaussian (reported, not tested). Models: the bundled MNIST MLP (C = 10) and a 100-class NumPy MLP.

Run: ``python -m fisher_ref.validation.alias_monte_carlo [--out FILE.json]``; ends in assertions.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

Z_MAX = 5.5  # largest |z| allowed over all entries (a few thousand roughly Gaussian z-scores)


def run(replicates: int = 300, seed: int = 0, verbose: bool = True) -> list[dict]:
    from fisher_ref import FisherOperator, SampledFisherOperator, top_eigenpairs
    from fisher_ref.backends import MLPModel, bundled_mnist_mlp
    from fisher_ref.datasets import load_bundled_mnist

    rng = np.random.default_rng(seed)
    x_mnist, _ = load_bundled_mnist()
    big = MLPModel.random((40,), 100, (30,), scale=4.0, rng=5)
    mnist = bundled_mnist_mlp()
    # the two least confident bundled images: where a Monte-Carlo estimate has something to estimate
    order = np.argsort(mnist.probabilities(x_mnist).max(axis=1))
    setups = [("bundled MNIST MLP, C = 10", mnist, x_mnist[order[:2]]),
              ("NumPy MLP 40-30-100, C = 100", big, rng.uniform(0, 1, (2, 40)))]
    records = []
    for name, model, X in setups:
        for j, x in enumerate(X):
            p, g = model.class_gradients(x)
            p, g = p[0], g[0]
            exact = FisherOperator(p, g)
            lam1 = float(top_eigenpairs(exact, 1)[0][0])
            V = rng.standard_normal((exact.shape[0], 3))
            GV = exact @ V
            C = p.size
            for m in sorted({max(1, round(C / 5)), C, 5 * C, 25 * C}):
                prods, lams = [], []
                for _ in range(replicates):
                    A = SampledFisherOperator(p, g, n_samples=m, rng=rng)
                    prods.append(A @ V)
                    lams.append(top_eigenpairs(A, 1)[0][0])
                prods, lams = np.array(prods), np.array(lams)
                # the exact standard error of the mean of R * m i.i.d. terms g_y (g_y^T V), y ~ p: the
                # sample SD would miss rare classes with large gradients (a heavy-tailed estimator)
                terms = g.reshape(C, -1)[:, :, None] * (g.reshape(C, -1) @ V)[:, None, :]  # (C, d, 3)
                var = np.einsum("c,cdk->dk", p, terms ** 2) - GV ** 2
                se = np.sqrt(np.maximum(var, 0.0) / (replicates * m))
                mask = se > 1e-12 * np.abs(GV).max()
                z = np.abs(prods.mean(axis=0) - GV)[mask] / se[mask] if mask.any() else np.zeros(1)
                bias = float(lams.mean() - lam1)
                bias_se = float(lams.std(ddof=1) / np.sqrt(replicates))
                # expected draws, over all replicates, of classes other than the top one: below ~100 the
                # estimator is dominated by rare heavy terms and neither z nor error bars are Gaussian
                tail_draws = replicates * m * (1 - p.max())
                rec = {"model": name, "input": j, "n_classes": C, "draws": m, "replicates": replicates,
                       "p_max": float(p.max()), "tail_draws": float(tail_draws),
                       "max_abs_z_GV": float(z.max()), "lambda_1": lam1, "lambda_1_bias": bias,
                       "lambda_1_bias_se": bias_se, "relative_bias": bias / lam1,
                       "relative_rmse_lambda_1": float(np.sqrt(np.mean((lams - lam1) ** 2)) / lam1)}
                records.append(rec)
                if verbose:
                    print(f"{name} input {j}: m = {m:5d} draws: max|z| of mean(G_hat V) - G V = {rec['max_abs_z_GV']:.2f}; "
                          f"lambda_1 bias {rec['relative_bias']:+.3f} +- {bias_se / lam1:.3f} (relative), "
                          f"rel. RMSE {rec['relative_rmse_lambda_1']:.3f}")
    return records


def check(records: list[dict]) -> None:
    for r in records:
        if r["tail_draws"] < 100:
            continue
        assert r["max_abs_z_GV"] <= Z_MAX, f"{r['model']} m={r['draws']}: G_hat V biased, |z| = {r['max_abs_z_GV']:.1f}"
        # Jensen: E lambda_max(G_hat) >= lambda_1
        assert r["lambda_1_bias"] >= -4 * r["lambda_1_bias_se"], (
            f"{r['model']} m={r['draws']}: lambda_1 of G_hat biased downwards ({r['lambda_1_bias']:.3g}), "
            "impossible for a convex lambda_max")
    for key in {(r["model"], r["input"]) for r in records}:
        rs = sorted((r for r in records if (r["model"], r["input"]) == key), key=lambda r: r["draws"])
        assert rs[-1]["relative_rmse_lambda_1"] < rs[0]["relative_rmse_lambda_1"], f"{key}: no convergence in m"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", help="write the records as JSON here")
    ap.add_argument("--replicates", type=int, default=300)
    args = ap.parse_args(argv)
    records = run(replicates=args.replicates)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"z_max": Z_MAX, "records": records}, f, indent=1)
    check(records)
    print(f"alias Monte Carlo: {len(records)} settings unbiased within |z| <= {Z_MAX}, lambda_1 bias measured")
    return 0


if __name__ == "__main__":
    sys.exit(main())
