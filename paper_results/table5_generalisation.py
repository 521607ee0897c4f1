"""Table 5: the Fisher detector trained on one attack and tested on each (AUC, MNIST, LeNet-5).

The detector is the paper's (top-20 eigenvalues of G_x, random forest of depth 5 with 50 trees),
trained on the training inputs' samples of the row's attack and scored on the held-out inputs'
samples of the column's attack; the split is by input and shared by all attacks, so no test input
was seen in training. The data are exactly those of Table 4's MNIST part (the same cached
``evaluate_detection`` run when Table 4 ran first with the same settings).

    python -m paper_results table5 [--quick]
"""

from __future__ import annotations

import dataclasses

import numpy as np

from paper_results import _common as C
from paper_results.table4_detection import detection_report, table_attacks

RUNS_ON = ("mnist",)  #: the data sets this script has a part for (C.parser refuses a choice without them)


def paper_auc(trained_on: str, tested_on: str) -> float:
    """The paper's Table 5 AUC (%); its one BIM row and column stand for both BIM runs."""
    return C.PAPER["table5"][C.paper_attack(trained_on)][C.ATTACKS.index(C.paper_attack(tested_on))]


def in_table_order(cross):
    """The cross-attack matrix with rows and columns in Table 4's order (the two BIM runs side by side)."""
    order = [a for a in table_attacks() if a in cross.rows] + [a for a in cross.rows if a not in table_attacks()]
    r = [cross.rows.index(a) for a in order]
    c = [cross.columns.index(a) for a in order if a in cross.columns]
    return dataclasses.replace(cross, rows=order, columns=[cross.columns[j] for j in c],
                               values=np.asarray(cross.values)[np.ix_(r, c)])


def main(argv=None) -> dict:
    args = C.parser(__doc__.split("\n\n")[0], runs_on=RUNS_ON).parse_args(argv)
    run = C.Run("table5", args)
    rep = detection_report(run, "mnist")
    if rep.cross is None:
        raise RuntimeError("the detection report has no Fisher detector to cross over attacks")
    cross = in_table_order(rep.cross)
    rows = []
    for i, a in enumerate(cross.rows):
        for j, t in enumerate(cross.columns):
            rows.append([a, t, float(cross.values[i, j]), paper_auc(a, t) / 100])
    run.write_table("table5_generalisation", ["trained_on", "tested_on", "auc", "paper_auc"], rows)
    head = ["trained on \\ tested on", *(C.DETECTION_LABEL[t] for t in cross.columns)]
    ours = [[C.DETECTION_LABEL[a], *(C.pct(v) for v in cross.values[i])] for i, a in enumerate(cross.rows)]
    paper = [[C.DETECTION_LABEL[a], *(f"{paper_auc(a, t):.2f}" for t in cross.columns)] for a in cross.rows]
    off = ~np.eye(len(cross.rows), dtype=bool)
    worst = cross.rows[int(np.nanargmin(np.nanmean(np.where(off, cross.values, np.nan), axis=1)))]
    md = ["# Table 5: generalisation of the Fisher detector across attacks (AUC %, MNIST)", "",
          f"Detector: `{rep.cross_detector}` of Table 4 (top-20 eigenvalues, random forest), "
          f"{rep.extra['model']}, {len(rep.extra['test_indices'])} random MNIST test inputs.", "",
          "Ours:", "", C.md_table(head, ours), "Paper:", "", C.md_table(head, paper),
          f"Off-diagonal mean: ours {C.pct(np.nanmean(cross.values[off]))}, paper "
          f"{np.mean([C.PAPER['table5'][a][j] for i, a in enumerate(C.ATTACKS) for j in range(5) if i != j]):.2f} "
          "(its 5 attacks; its one BIM stands for both of ours). "
          f"Worst generalising training attack: ours {C.DETECTION_LABEL[worst]}, paper OSSA."]
    run.write_markdown("table5_generalisation", "\n".join(md))
    return run.finish(dict(cross=cross.to_dict(), detector=rep.cross_detector, worst_training_attack=worst))


if __name__ == "__main__":
    main()
