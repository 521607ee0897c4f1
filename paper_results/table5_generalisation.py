"""Table 5: the Fisher detector trained on one attack and tested on each (AUC, MNIST, LeNet-5).

The detector is the paper's (top-20 eigenvalues of G_x, random forest of depth 5 with 50 trees),
trained on the training inputs' samples of the row's attack and scored on the held-out inputs'
samples of the column's attack; the split is by input and shared by all attacks, so no test input
was seen in training. The data are exactly those of Table 4's MNIST part (the same cached
``evaluate_detection`` run when Table 4 ran first with the same settings).

    python -m paper_results table5 [--quick]
"""

from __future__ import annotations

import numpy as np

from paper_results import _common as C
from paper_results.table4_detection import detection_report


def main(argv=None) -> dict:
    args = C.parser(__doc__.split("\n\n")[0]).parse_args(argv)
    run = C.Run("table5", args)
    rep = detection_report(run, "mnist")
    cross = rep.cross
    if cross is None:
        raise RuntimeError("the detection report has no Fisher detector to cross over attacks")
    rows = []
    for i, a in enumerate(cross.rows):
        for j, t in enumerate(cross.columns):
            rows.append([a, t, float(cross.values[i, j]), C.PAPER["table5"][a][C.ATTACKS.index(t)] / 100])
    run.write_table("table5_generalisation", ["trained_on", "tested_on", "auc", "paper_auc"], rows)
    head = ["trained on \\ tested on", *(C.ATTACK_LABEL[t] for t in cross.columns)]
    ours = [[C.ATTACK_LABEL[a], *(C.pct(v) for v in cross.values[i])] for i, a in enumerate(cross.rows)]
    paper = [[C.ATTACK_LABEL[a], *(f"{v:.2f}" for v in C.PAPER["table5"][a])] for a in cross.rows]
    off = ~np.eye(len(cross.rows), dtype=bool)
    worst = cross.rows[int(np.nanargmin(np.nanmean(np.where(off, cross.values, np.nan), axis=1)))]
    md = ["# Table 5: generalisation of the Fisher detector across attacks (AUC %, MNIST)", "",
          f"Detector: `{rep.cross_detector}` of Table 4 (top-20 eigenvalues, random forest), "
          f"{rep.extra['model']}, {len(rep.extra['test_indices'])} random MNIST test inputs.", "",
          "Ours:", "", C.md_table(head, ours), "Paper:", "", C.md_table(head, paper),
          f"Off-diagonal mean: ours {C.pct(np.nanmean(cross.values[off]))}, paper "
          f"{np.mean([C.PAPER['table5'][a][j] for i, a in enumerate(cross.rows) for j in range(5) if i != j]):.2f}. "
          f"Worst generalising training attack: ours {C.ATTACK_LABEL[worst]}, paper OSSA."]
    run.write_markdown("table5_generalisation", "\n".join(md))
    return run.finish(dict(cross=cross.to_dict(), detector=rep.cross_detector, worst_training_attack=worst))


if __name__ == "__main__":
    main()
