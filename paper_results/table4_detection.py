"""Table 4: AUC of detecting FGM, OTCM, Opt, BIM and OSSA examples with KD, BU, KD+BU, LID and the
Fisher-eigenvalue detector (random forest), MNIST (LeNet-5) and CIFAR-10 (VGG).

Data as the paper (after Feinman et al. 2017), built by ``fisher_ref.detection.evaluate_detection``: random
test inputs the model classifies correctly are attacked; for each input an attack fools, the clean
input and a noisy copy (Gaussian noise of the same l2 norm as the perturbation) are negatives and
the adversarial example the positive. The inputs are split 70/30 into train and test (all copies of
an input on the same side, the same split for every attack); each detector is trained per attack
and its AUC measured on the held-out inputs. The paper does not state its budgets; here one l2
budget per data set serves FGM, OTCM, BIM (10 steps of eps/5) and OSSA: the 90th percentile of
FGM's least perturbation over the inputs FGM fools within [0, 6] (binary search, the paper's
interval), so FGM fools about 90% of the inputs it can fool at all - the operating point the paper
quotes for its one-step attacks (Section 3.4: 90% at l2 2.1 on MNIST, 1.4 on CIFAR-10). Opt
(C&W-style l2) has no budget. BIM is run twice: "BIM, all steps" takes all 10 steps (Kurakin et
al.), "BIM, stopped at success" stops each input at its first adversarial iterate (as Feinman et
al. and Ma et al. run iterative attacks); the paper does not say which it ran.

Detectors: KD (Gaussian KDE of the last hidden layer on 5,000 clean training images of the
predicted class, bandwidth 1.20 MNIST / 0.26 CIFAR-10 as Feinman et al.), BU (variance under 50
Monte-Carlo dropout samples), KD+BU (logistic regression on both), LID (Ma et al. 2018, k = 20, all
activation layers), "Ours" = the paper's detector: the top-20 eigenvalues of G_x, random forest of
depth 5 with 50 trees, and "Ours + growth": the same plus the growth of lambda_1 along the OSSA
direction (fisher_ref's default ``FisherDetector``). The ROC curves are drawn in a PNG.

    python -m paper_results table4 [--quick]
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle

import numpy as np

from paper_results import _common as C

SIZES = C.Sizes(full={"mnist": 1000, "cifar": 500, "train": 5000},
                quick={"mnist": 60, "cifar": 48, "train": 200})
# the Opt attack (6 values of c x 100 Adam steps by default) dominates the cost: fewer on the CPU
OPT_OPTIONS = {"mnist": {"binary_search_steps": 5, "max_iter": 60}, "cifar": {"binary_search_steps": 4, "max_iter": 50}}
OPT_OPTIONS_QUICK = {"binary_search_steps": 2, "max_iter": 10}
DETECTORS = ("KD", "BU", "KD+BU", "LID", "Ours", "Ours + growth")
# 4: the report's classes moved to fisher_ref.detection (a pickle of version 3 names fisher_ref._detection)
# 5: BIM stopped at success is a sixth attack
CACHE_VERSION = 5


def detectors(backend, spec, X_train, y_train, seed):
    from fisher_ref import detection as fd

    return {
        "KD": fd.KernelDensityDetector(backend, bandwidth=spec.kd_bandwidth, X_train=X_train, y_train=y_train),
        "BU": fd.BayesianUncertaintyDetector(backend, random_state=seed),
        "KD+BU": fd.KDBUDetector(backend, bandwidth=spec.kd_bandwidth, X_train=X_train, y_train=y_train,
                                 random_state=seed),
        "LID": fd.LIDDetector(backend, random_state=seed),
        # the first Fisher detector is the one evaluate_detection crosses over attacks (Table 5)
        "Ours": fd.FisherDetector(backend, k=20, extra=(), random_state=seed),
        "Ours + growth": fd.FisherDetector(backend, k=20, random_state=seed),
    }


def detection_report(run: C.Run, ds: str):
    """The :class:`~fisher_ref.detection.DetectionReport` of ``ds`` (cached: Tables 4 and 5 share the MNIST one)."""
    import fisher_ref as fr
    from fisher_ref.detection import evaluate_detection

    key = run.model_key(ds)
    seed = run.args.seed
    n, n_train = SIZES.get(run, ds), SIZES.get(run, "train")
    opt_options = OPT_OPTIONS_QUICK if run.quick else OPT_OPTIONS[ds]
    ident = json.dumps(dict(v=CACHE_VERSION, model=C.model_tag(key), n=n, n_train=n_train, seed=seed,
                            opt=opt_options, data=str(run.args.data_dir)), sort_keys=True)
    cache = None
    if run.cache is not None:
        cache = run.cache.parent / "detection" / f"{ds}-{hashlib.sha256(ident.encode()).hexdigest()[:20]}.pkl"
        if cache.is_file():
            with open(cache, "rb") as f:
                print(f"{run.script}: {ds} detection results from the cache {cache}", flush=True)
                return pickle.load(f)
    backend, spec, _ = C.load_model(key)
    rng = np.random.default_rng(seed)
    x, y = C.load_dataset(ds, "test", run.args.data_dir)
    xtr, ytr = C.load_dataset(ds, "train", run.args.data_dir)
    idx = C.random_subset(len(x), n, rng)
    tr = C.random_subset(len(xtr), n_train, rng)
    ok = C.predictions(backend, x[idx]) == y[idx]
    lp = fr.least_perturbation(x[idx][ok], backend, "fgm", labels=y[idx][ok], lo=0.0, hi=6.0, tol=1e-3)
    eps = float(np.percentile(lp[np.isfinite(lp)], 90))
    print(f"{run.script}: {ds} detection on {len(idx)} test inputs ({spec.name}), l2 budget {eps:.3f}; this takes "
          "a while", flush=True)
    rep = evaluate_detection(x[idx], backend, y[idx], detectors=detectors(backend, spec, xtr[tr], ytr[tr], seed),
                             attacks={a: C.paper_attack(a) for a in C.DETECTION_ATTACKS},
                             epsilon={a: eps for a in C.DETECTION_ATTACKS},  # (Opt ignores it)
                             attack_options={"opt": opt_options, "bim_stop": {"early_stop": True}}, random_state=seed,
                             progress=not run.args.no_progress)
    rep.extra = {"test_indices": idx, "model": spec.name, "n_train": n_train, "opt_options": opt_options,
                 "fgm_fooled_within_6": float(np.isfinite(lp).mean())}
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(f".{cache.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            pickle.dump(rep, f)
        os.replace(tmp, cache)
    return rep


def plot_roc(run: C.Run, reports: dict, name: str) -> None:
    plt = C.plt()
    attacks = table_attacks()
    fig, axes = plt.subplots(len(reports), len(attacks), figsize=(3.3 * len(attacks), 3.2 * len(reports)),
                             squeeze=False)
    for i, (ds, rep) in enumerate(reports.items()):
        for j, a in enumerate(attacks):
            ax = axes[i, j]
            for det in rep.auc.rows:
                if (det, a) in rep.roc:
                    fpr, tpr = rep.roc[det, a]
                    ax.plot(fpr, tpr, lw=1.2, label=f"{det} {100 * rep.auc[det, a]:.1f}")
            ax.plot([0, 1], [0, 1], color="grey", lw=0.5, ls=":")
            ax.set_title(f"{C.DATASET_LABEL[ds]}: {C.DETECTION_LABEL[a]}", fontsize=9)
            ax.set_xlabel("false positive rate", fontsize=8)
            ax.set_ylabel("true positive rate", fontsize=8)
            ax.legend(fontsize=6, loc="lower right")
    fig.suptitle("ROC curves of the detectors (AUC % in the legends)")
    fig.tight_layout()
    run.save_figure(fig, name)


def table_attacks() -> tuple[str, ...]:
    """The columns of Table 4: the paper's order, the two BIM runs side by side."""
    return ("fgm", "otcm", "opt", "bim", "bim_stop", "ossa")


def paper_auc(ds: str, det: str, attack: str) -> float | None:
    """The paper's AUC (%) of detector ``det`` against ``attack`` on ``ds``, None where it has no such row."""
    row = C.PAPER["table4"][ds].get(det)
    return None if row is None else row[C.ATTACKS.index(C.paper_attack(attack))]


def main(argv=None) -> dict:
    args = C.parser(__doc__.split("\n\n")[0]).parse_args(argv)
    run = C.Run("table4", args)
    reports = {ds: detection_report(run, ds) for ds in run.datasets}
    rows, summary = [], {}
    for ds, rep in reports.items():
        summary[ds] = dict(model=rep.extra["model"], auc=rep.auc.to_dict(), epsilon=rep.epsilon,
                           fooling_rate=rep.fooling_rate, n_samples=rep.n_samples, skipped=rep.skipped,
                           n_inputs=len(rep.extra["test_indices"]), opt_options=rep.extra["opt_options"])
        for det in rep.auc.rows:
            for a in table_attacks():
                paper = paper_auc(ds, det, a)
                rows.append([ds, det, a, float(rep.auc[det, a]), paper / 100 if paper is not None else None])
    run.write_table("table4_detection", ["dataset", "detector", "attack", "auc", "paper_auc"], rows)
    plot_roc(run, reports, "table4_roc")
    md = ["# Table 4: detection AUC (%), random forest on the Fisher eigenvalues against KD, BU, KD+BU, LID", ""]
    for ds, rep in reports.items():
        md += [f"## {C.DATASET_LABEL[ds]} ({rep.extra['model']}, {len(rep.extra['test_indices'])} random test inputs)",
               "", "Each cell: ours / paper (a dash: the paper has no such row).", ""]
        tab = []
        for det in rep.auc.rows:
            tab.append([det, *(f"{C.pct(rep.auc[det, a])} / " + ("-" if paper_auc(ds, det, a) is None
                                                                 else f"{paper_auc(ds, det, a):.2f}")
                               for a in table_attacks())])
        md += [C.md_table(["detector", *(C.DETECTION_LABEL[a] for a in table_attacks())], tab)]
        md += ["The paper's one BIM column stands beside both BIM runs.", ""]
        md += ["Budgets (l2): " + ", ".join(f"{C.DETECTION_LABEL[a]} {rep.epsilon[a]:.3f}" for a in table_attacks()
                                            if a != "opt")
               + "; fooling rates: " + ", ".join(f"{C.DETECTION_LABEL[a]} {C.pct(rep.fooling_rate[a], 1)}%"
                                                 for a in table_attacks())
               + f"; Opt: {rep.extra['opt_options']}.", ""]
        md += ["Samples (train / test, negatives + positives): " + ", ".join(
            f"{C.DETECTION_LABEL[a]} {v['train_negative'] + v['train_positive']} / {v['test_negative'] + v['test_positive']}"
            for a, v in rep.n_samples.items()), ""]
    md += ["![ROC curves](table4_roc.png)", "", f"{C.CIFAR_NOTE}."]
    run.write_markdown("table4_detection", "\n".join(md))
    return run.finish(summary)


if __name__ == "__main__":
    main()
