"""Table 3: cross-model fooling rates of OSSA at eps = 2.0 among LeNet, VGG, LeNet-adv and VGG-adv (MNIST).

OSSA examples (l2 norm 2.0, clipped to [0, 1]) are crafted on each source model from the test
inputs that all four models classify correctly; the entry (tested on T, crafted from S) is the
fraction of S's successful examples that T misclassifies. The diagonal is 100% by construction, as
in the paper's table (which this definition reproduces). Also reported: each model's test accuracy
and its white-box OSSA fooling rate at eps = 2.0.

The models: LeNet is the bundled LeNet-5; VGG, LeNet-adv and VGG-adv are trained by
``paper_results/train_mnist_models.py`` (ELU and l2-FGM adversarial training for the -adv ones,
as the paper's Section 3.4).

    python -m paper_results table3 [--quick]
"""

from __future__ import annotations

import json

import numpy as np

from paper_results import _common as C

RUNS_ON = ("mnist",)  #: the data sets this script has a part for (C.parser refuses a choice without them)
KEYS = ("lenet", "vgg-mnist", "lenet-adv", "vgg-adv")
NAMES = ("LeNet", "VGG", "LeNet-adv", "VGG-adv")
SIZES = C.Sizes(full={"n": None}, quick={"n": 40})
EPS = 2.0
CHUNK = 500


def main(argv=None) -> dict:
    import fisher_ref as fr

    args = C.parser(__doc__.split("\n\n")[0], runs_on=RUNS_ON).parse_args(argv)
    run = C.Run("table3", args)
    rng = np.random.default_rng(args.seed)
    backends = [C.load_model(k)[0] for k in KEYS]
    tags = [C.model_tag(k) for k in KEYS]
    x, y = C.load_dataset("mnist", "test", args.data_dir)
    idx = C.random_subset(len(x), SIZES.get(run, "n"), rng)

    def compute(sub):
        xs, ys = x[sub], y[sub]
        correct = np.stack([C.predictions(b, xs) == ys for b in backends], axis=1)  # (n, 4)
        success = np.zeros((len(sub), 4), dtype=bool)
        fooled = np.zeros((len(sub), 4, 4), dtype=bool)  # [input, source, target]
        for s, b in enumerate(backends):
            r = fr.ossa(xs, b, epsilon=EPS, labels=ys)
            success[:, s] = r.success
            for t, bt in enumerate(backends):  # on the source itself: the attack's own verdict
                fooled[:, s, t] = r.success if t == s else C.predictions(bt, r.x_adv) != ys
        return {"correct": correct, "success": success, "fooled": fooled}

    res = run.chunked(compute, idx, chunk=CHUNK, desc="OSSA on 4 models", key=("table3", tags, EPS))
    correct, success, fooled = res["correct"], res["success"], res["fooled"]
    all_ok = correct.all(axis=1)
    rate = np.full((4, 4), np.nan)  # [target, source]
    n_src = np.zeros(4, dtype=int)
    for s in range(4):
        sel = all_ok & success[:, s]
        n_src[s] = sel.sum()
        for t in range(4):
            rate[t, s] = fooled[sel, s, t].mean() if sel.any() else np.nan
    acc = correct.mean(axis=0)
    white = np.array([success[all_ok, s].mean() for s in range(4)])
    meta = {}
    for k in KEYS[1:]:
        jp = C.REPO / C.MODELS[k].weights.replace(".pt", ".json")
        meta[k] = json.loads(jp.read_text()) if jp.is_file() else {}

    rows = [[NAMES[t], NAMES[s], float(rate[t, s]), C.PAPER["table3"][NAMES[t]][s] / 100, int(n_src[s])]
            for t in range(4) for s in range(4)]
    run.write_table("table3_transfer", ["tested_on", "crafted_from", "fooling_rate", "paper", "n_source_examples"], rows)
    head = ["tested on \\ crafted from", *NAMES]
    ours = [[NAMES[t], *(C.pct(rate[t, s]) for s in range(4))] for t in range(4)]
    paper = [[NAMES[t], *(f"{v:.2f}" for v in C.PAPER["table3"][NAMES[t]])] for t in range(4)]
    diff = [[NAMES[t], *(f"{100 * rate[t, s] - C.PAPER['table3'][NAMES[t]][s]:+.1f}" if np.isfinite(rate[t, s])
                         else "-" for s in range(4))] for t in range(4)]
    adv_on_plain = np.nanmean([rate[t, s] for t in (0, 1) for s in (2, 3)])
    plain_on_adv = np.nanmean([rate[t, s] for t in (2, 3) for s in (0, 1)])
    md = ["# Table 3: cross-model fooling rates of OSSA (eps = 2.0), MNIST", "",
          "Ours (%):", "", C.md_table(head, ours),
          "Paper (%):", "", C.md_table(head, paper),
          "Ours minus paper (points):", "", C.md_table(head, diff),
          C.md_table(["model", "architecture", f"accuracy on the {len(idx)} test inputs", "white-box OSSA fooling at eps 2",
                      "OSSA examples crafted"],
                     [[NAMES[i], f"`{C.MODELS[k].factory}({', '.join(f'{a}={v!r}' for a, v in C.MODELS[k].kwargs.items())})`",
                       C.pct(acc[i]) + "%", C.pct(white[i]) + "%", int(n_src[i])] for i, k in enumerate(KEYS)]),
          f"{int(all_ok.sum())} of {len(idx)} test inputs are classified correctly by all four models. "
          f"Examples of the adversarially trained models fool the plain ones at {C.pct(adv_on_plain, 1)}% on average "
          f"(paper 80.52%), the plain models' examples fool the adversarially trained ones at "
          f"{C.pct(plain_on_adv, 1)}% (paper 22.51%).",
          "Adversarial training: " + "; ".join(f"{NAMES[KEYS.index(k)]}: {m.get('adversarial_training') or 'none'}"
                                               for k, m in meta.items()) + "."]
    run.write_markdown("table3_transfer", "\n".join(md))
    return run.finish(dict(rate=rate, n_source=n_src, accuracy=acc, white_box=white, n_all_correct=int(all_ok.sum()),
                           adv_on_plain=adv_on_plain, plain_on_adv=plain_on_adv, models=dict(zip(KEYS, NAMES))))


if __name__ == "__main__":
    main()
