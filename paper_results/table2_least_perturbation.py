"""Table 2: mean least l2 perturbation and fooling rate of FGM and OSSA (MNIST LeNet-5, CIFAR-10 VGG).

For every correctly classified test input, the least l2 budget in [0, 6] at which the attack
fools the model is found by binary search (``fisher_ref.least_perturbation``, bracket width 1e-3;
the direction, gradient or top Fisher eigenvector, is computed once per input). Success is not
always monotone in the budget (clipped to [0, 1], a direction can fool at 0.5 and not at 6), so
the search first scans 24 budgets of [0, 6] and bisects below the first that fools. "mean" is the
mean of the least budgets over the inputs fooled within 6, "rate" the fraction fooled within 6.

    python -m paper_results table2 [--quick]
"""

from __future__ import annotations

import numpy as np

from paper_results import _common as C

SIZES = C.Sizes(full={"mnist": None, "cifar": 2000}, quick={"mnist": 40, "cifar": 16})
CHUNK = {"mnist": 500, "cifar": 100}
LO, HI, TOL = 0.0, 6.0, 1e-3


def least_perturbations(run: C.Run, dataset: str, n: int | None, rng: np.random.Generator) -> dict:
    """Least FGM and OSSA budgets on ``n`` random test inputs of ``dataset`` (all when None)."""
    import fisher_ref as fr

    key = run.model_key(dataset)
    backend, spec, _ = C.load_model(key)
    x, y = C.load_dataset(dataset, "test", run.args.data_dir)
    idx = C.random_subset(len(x), n, rng)

    def compute(sub):
        xs, ys = x[sub], y[sub]
        pred = C.predictions(backend, xs)
        out = {"index": sub, "label": ys, "pred": pred}
        ok = pred == ys
        for a in ("fgm", "ossa"):
            lp = np.full(len(sub), np.nan)
            if ok.any():
                lp[ok] = fr.least_perturbation(xs[ok], backend, a, labels=ys[ok], lo=LO, hi=HI, tol=TOL)
            out[a] = lp
        return out

    res = run.chunked(compute, idx, chunk=CHUNK[dataset], desc=f"{dataset} least perturbation",
                      key=("table2", C.model_tag(key), LO, HI, TOL, "scan24"))
    res["model"] = spec.name
    return res


def summarize(res: dict) -> dict:
    ok = res["pred"] == res["label"]
    out = {"n_inputs": int(len(ok)), "n_correct": int(ok.sum()), "accuracy": float(ok.mean())}
    for a in ("fgm", "ossa"):
        lp = res[a][ok]
        fin = np.isfinite(lp)
        out[a] = {"mean": float(lp[fin].mean()) if fin.any() else float("nan"),
                  "median": float(np.median(lp[fin])) if fin.any() else float("nan"),
                  "rate": float(fin.mean()), "n_fooled": int(fin.sum())}
    both = np.isfinite(res["fgm"][ok]) & np.isfinite(res["ossa"][ok])
    out["ossa_smaller_fraction"] = float(np.mean(res["ossa"][ok][both] < res["fgm"][ok][both])) if both.any() else None
    return out


def main(argv=None) -> dict:
    args = C.parser(__doc__.split("\n\n")[0]).parse_args(argv)
    run = C.Run("table2", args)
    rng = np.random.default_rng(args.seed)
    summary, rows = {}, []
    for ds in run.datasets:
        res = least_perturbations(run, ds, SIZES.get(run, ds), rng)
        s = summarize(res)
        s["model"] = res["model"]
        summary[ds] = s
        for a in ("fgm", "ossa"):
            pm, pr = C.PAPER["table2"][ds][a]
            rows.append([ds, a, s[a]["mean"], s[a]["median"], s[a]["rate"], s[a]["n_fooled"], s["n_correct"], pm, pr / 100])
    run.write_table("table2_least_perturbation", ["dataset", "attack", "mean_least_l2", "median_least_l2",
                                                  "fooling_rate", "n_fooled", "n_correct", "paper_mean",
                                                  "paper_rate"], rows)
    md = ["# Table 2: least l2 perturbation (binary search in [0, 6]) and fooling rate", "",
          "| attack | " + " | ".join(f"{n} mean (ours) | {n} mean (paper) | {n} rate % (ours) | {n} rate % (paper)"
                                     for n in (("MNIST" if ds == "mnist" else "CIFAR") for ds in run.datasets)) + " |",
          "|---|" + "---:|" * (4 * len(run.datasets))]
    for a in ("fgm", "ossa"):
        cells = []
        for ds in run.datasets:
            s, (pm, pr) = summary[ds][a], C.PAPER["table2"][ds][a]
            cells += [f"{s['mean']:.2f}", f"{pm:.2f}", C.pct(s["rate"]), f"{pr:.2f}"]
        md.append(f"| {C.ATTACK_LABEL[a]} | " + " | ".join(cells) + " |")
    md += ["", *(f"- {C.DATASET_LABEL[ds]}: {summary[ds]['model']}, {summary[ds]['n_inputs']} test inputs "
                 f"({'all' if SIZES.get(run, ds) is None else 'random'}), accuracy {C.pct(summary[ds]['accuracy'])}%, "
                 f"{summary[ds]['n_correct']} correctly classified inputs attacked; median least perturbation "
                 f"FGM {summary[ds]['fgm']['median']:.3f}, OSSA {summary[ds]['ossa']['median']:.3f}; OSSA needs less "
                 f"than FGM on {C.pct(summary[ds]['ossa_smaller_fraction'], 1)}% of the inputs both fool"
                 for ds in run.datasets),
           f"- {C.CIFAR_NOTE}."]
    run.write_markdown("table2_least_perturbation", "\n".join(md))
    return run.finish(summary)


if __name__ == "__main__":
    main()
