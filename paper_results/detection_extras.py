"""Measure the effect of the extra spectral statistics on the Fisher detector's AUC (MNIST, bundled MLP).
Usage: python paper_results/detection_extras.py [N_TEST_IMAGES=1500] [SEEDS=0,1,2]
Output: stdout (the helper's run is kept in paper_results/results/detection_extras_mnist_mlp.txt);
ROC curves of the first seed in paper_results/results/detection_extras_roc.png.
"""
import sys
import time
from pathlib import Path

import numpy as np

from fisher_ref.detection import (BayesianUncertaintyDetector, FisherDetector, KDBUDetector, KernelDensityDetector,
                                  LIDDetector, evaluate_detection)
from fisher_ref.backends import MLPModel, bundled_mnist_mlp
from fisher_ref.datasets import load_mnist

OUT = Path(__file__).resolve().parent / "results"

N = int(sys.argv[1]) if len(sys.argv) > 1 else 1500
seeds = [int(s) for s in sys.argv[2].split(",")] if len(sys.argv) > 2 else [0, 1, 2]
m0 = bundled_mnist_mlp()
model = MLPModel(list(zip(m0.weights, m0.biases)), activation=m0.activation, input_shape=m0.input_shape, dropout=0.3)
Xte, yte = load_mnist(split="test", limit=N)
Xte = (Xte.astype(np.float64) / 255.0)[:, None]
Xtr, ytr = load_mnist(split="train", limit=5000)
Xtr = (Xtr.astype(np.float64) / 255.0)[:, None]
print("model", model, "acc", np.mean(model.probabilities(Xte).argmax(1) == yte), flush=True)

def dets(rs):
    d = {
        "KD": KernelDensityDetector(model, bandwidth=1.2, X_train=Xtr, y_train=ytr),
        "BU": BayesianUncertaintyDetector(model, random_state=rs),
        "KD+BU": KDBUDetector(model, bandwidth=1.2, X_train=Xtr, y_train=ytr, random_state=rs),
        "LID": LIDDetector(model, random_state=rs),
        "Fisher": FisherDetector(model, random_state=rs),
        "F+trace": FisherDetector(model, extra=("trace",), random_state=rs),
        "F+ratios": FisherDetector(model, extra=("ratios",), random_state=rs),
        "F+growth": FisherDetector(model, extra=("growth",), random_state=rs),
        "F+all": FisherDetector(model, extra=("trace", "ratios", "growth"), random_state=rs),
        "F log": FisherDetector(model, log=True, random_state=rs),
        "F log+all": FisherDetector(model, log=True, extra=("trace", "ratios", "growth"), random_state=rs),
        "F NB": FisherDetector(model, classifier="naive_bayes", random_state=rs),
        "F NB log": FisherDetector(model, classifier="naive_bayes", log=True, random_state=rs),
        "F NB log+all": FisherDetector(model, classifier="naive_bayes", log=True, extra=("trace", "ratios", "growth"), random_state=rs),
    }
    return d

tabs = []
for rs in seeds:
    t = time.time()
    rep = evaluate_detection(Xte, model, yte, detectors=dets(rs), random_state=rs, progress=False,
                             roc_png=str(OUT / "detection_extras_roc.png") if rs == seeds[0] else None)
    print(f"seed {rs}: {time.time()-t:.0f}s eps {rep.epsilon} fooling {rep.fooling_rate}", flush=True)
    print(rep.n_samples, flush=True)
    print(rep.auc.to_markdown(), flush=True)
    print(rep.cross.to_markdown(), flush=True)
    tabs.append(rep.auc)
vals = np.stack([t.values for t in tabs])
mean, sd = vals.mean(0), vals.std(0)
print("mean over seeds", seeds)
cols = tabs[0].columns
print("| detector | " + " | ".join(cols) + " | mean |")
for i, r in enumerate(tabs[0].rows):
    print(f"| {r} | " + " | ".join(f"{100*mean[i,j]:.2f} ± {100*sd[i,j]:.2f}" for j in range(len(cols))) + f" | {100*mean[i].mean():.2f} |")
