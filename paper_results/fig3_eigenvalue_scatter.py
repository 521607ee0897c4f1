"""Figure 3: least l2 perturbation of OSSA against the top Fisher eigenvalue (log axis), 800 random
correctly classified test inputs of MNIST (LeNet-5) and CIFAR-10 (VGG), with the rank correlation.

The least perturbation is found by binary search in [0, 6] (``fisher_ref.least_perturbation``);
inputs not fooled within 6 are drawn at 6 with open markers and left out of the fit. The paper:
"the least perturbations linearly decrease with the exponential increasing of eigenvalues".

    python -m paper_results fig3 [--quick]
"""

from __future__ import annotations

import numpy as np

from paper_results import _common as C

SIZES = C.Sizes(full={"n": 800}, quick={"n": 24})
CHUNK = {"mnist": 400, "cifar": 100}
HI = 6.0


def scatter_data(run: C.Run, dataset: str, n: int, rng: np.random.Generator) -> dict:
    import fisher_ref as fr

    key = run.model_key(dataset)
    backend, spec, _ = C.load_model(key)
    x, y = C.load_dataset(dataset, "test", run.args.data_dir)
    pool = np.arange(len(x)) if not run.quick else C.random_subset(len(x), 10 * n, rng)
    pred = run.chunked(lambda s: {"pred": C.predictions(backend, x[s])}, pool, chunk=2000,
                       desc=f"{dataset} predictions", key=("fig3-pred", C.model_tag(key)))["pred"]
    correct = pool[pred == y[pool]]
    idx = np.sort(rng.choice(correct, size=min(n, len(correct)), replace=False))

    def compute(sub):
        w, _ = fr.fisher_spectrum(x[sub], backend, k=1)
        lp = fr.least_perturbation(x[sub], backend, "ossa", labels=y[sub], lo=0.0, hi=HI, tol=1e-3)
        return {"index": sub, "lambda1": w[:, 0], "least": lp}

    res = run.chunked(compute, idx, chunk=CHUNK[dataset], desc=f"{dataset} spectra", key=("fig3", C.model_tag(key), HI, "scan24"))
    res["model"] = spec.name
    res["accuracy"] = float(np.mean(pred == y[pool]))
    return res


def main(argv=None) -> dict:
    from scipy import stats

    args = C.parser(__doc__.split("\n\n")[0]).parse_args(argv)
    run = C.Run("fig3", args)
    rng = np.random.default_rng(args.seed)
    plt = C.plt()
    fig, axes = plt.subplots(1, len(run.datasets), figsize=(5.5 * len(run.datasets), 4.4), squeeze=False)
    summary, rows = {}, []
    for j, (ax, ds) in enumerate(zip(axes[0], run.datasets)):
        r = scatter_data(run, ds, SIZES.get(run, "n"), rng)
        lam, lp = r["lambda1"], r["least"]
        pos = lam > 0
        fin = np.isfinite(lp) & pos
        loglam = np.log10(np.where(pos, lam, np.nan))
        rho, pval = stats.spearmanr(loglam[fin], lp[fin]) if fin.sum() > 2 else (np.nan, np.nan)
        slope, icpt = np.polyfit(loglam[fin], lp[fin], 1) if fin.sum() > 2 else (np.nan, np.nan)
        # Spearman over all inputs, with "not fooled within 6" ranked as the largest perturbation
        rho_all = stats.spearmanr(loglam[pos], np.where(np.isfinite(lp[pos]), lp[pos], np.inf)).statistic \
            if pos.sum() > 2 else np.nan
        ax.scatter(loglam[fin], lp[fin], s=9, alpha=0.6, color="tab:blue", label="fooled within 6")
        nf = ~np.isfinite(lp) & pos
        if nf.any():
            ax.scatter(loglam[nf], np.full(nf.sum(), HI), s=14, facecolors="none", edgecolors="tab:red",
                       label=f"not fooled within 6 ({nf.sum()})")
        if np.isfinite(slope):
            xs = np.linspace(np.nanmin(loglam[fin]), np.nanmax(loglam[fin]), 50)
            ax.plot(xs, slope * xs + icpt, color="k", lw=1, label=f"least squares: {slope:.2f} per decade")
        ax.set_xlabel(r"$\log_{10} \lambda_1$ (top eigenvalue of $G_x$)")
        ax.set_ylabel(r"least $\ell_2$ perturbation of OSSA")
        ax.set_title(f"({'ab'[j]}) {C.DATASET_LABEL[ds]}, {r['model']}:\n{len(lam)} inputs, "
                     f"Spearman $\\rho$ = {rho:.3f}", fontsize=10)
        ax.set_ylim(0, HI + 0.6)
        ax.legend(fontsize=8, loc="best", framealpha=0.9)
        s = dict(model=r["model"], n=int(len(lam)), n_fooled=int(fin.sum()), spearman_rho=float(rho),
                 spearman_p=float(pval), spearman_rho_all=float(rho_all), slope_per_decade=float(slope),
                 intercept=float(icpt), test_accuracy_of_pool=r["accuracy"],
                 lambda1_median=float(np.median(lam)), least_median=float(np.nanmedian(np.where(fin, lp, np.nan))))
        summary[ds] = s
        rows += [[ds, int(i), float(a), float(b)] for i, a, b in zip(r["index"], lam, lp)]
    fig.suptitle("Figure 3: least perturbation against the top Fisher eigenvalue", fontsize=11)
    fig.tight_layout()
    run.save_figure(fig, "fig3_eigenvalue_scatter")
    run.write_table("fig3_eigenvalue_scatter", ["dataset", "test_index", "lambda1", "least_l2_ossa"], rows)
    md = ["# Figure 3: least OSSA perturbation against log top eigenvalue", "",
          "![Figure 3](fig3_eigenvalue_scatter.png)", "",
          C.md_table(["data", "model", "inputs", "fooled within 6", "Spearman rho (fooled)",
                      "Spearman rho (all, unfooled ranked last)", "slope (l2 per decade of lambda_1)"],
                     [[C.DATASET_LABEL[d], s["model"], s["n"], s["n_fooled"], f"{s['spearman_rho']:.3f}",
                       f"{s['spearman_rho_all']:.3f}", f"{s['slope_per_decade']:.3f}"] for d, s in summary.items()]),
          "The paper shows the scatter (no correlation coefficient): the least perturbation falls linearly in "
          "log lambda_1.", f"{C.CIFAR_NOTE}."]
    run.write_markdown("fig3_eigenvalue_scatter", "\n".join(md))
    return run.finish(summary)


if __name__ == "__main__":
    main()
