"""Run the reproduction of the paper's tables and figures.

    python -m paper_results all [--quick] [--data-dir DIR] [--out DIR] [--seed N]
    python -m paper_results table2 fig3          # some of them
    python -m paper_results list                 # what there is
    python -m paper_results adaptive             # beyond the paper, slow: not part of "all"

Each name runs ``paper_results/<name>_*.py`` (also runnable on its own); results go to
``paper_results/results/`` (``results/quick/`` with ``--quick``). Computations are cached per chunk
in ``~/.cache/fisher_ref/paper_results`` (``$FISHER_REF_CACHE``), so an interrupted run resumes;
``--no-cache`` recomputes. A script with no part for the asked ``--datasets`` / ``--cifar-model``
(Tables 3 and 5 are MNIST only) is refused when named and skipped, with a line, by ``all``.
"""

from __future__ import annotations

import importlib
import sys
import textwrap
import time

SCRIPTS = {
    "table1": "table1_timing",
    "fig2": "fig2_fooling_curves",
    "table2": "table2_least_perturbation",
    "table3": "table3_transfer",
    "fig3": "fig3_eigenvalue_scatter",
    "fig4": "fig4_eigenvalue_distribution",
    "table4": "table4_detection",
    "table5": "table5_generalisation",
    "budgets": "budget_rules",
    "adaptive": "adaptive",
}
#: beyond the paper and slow: run only when named, not by "all"
NOT_IN_ALL = ("adaptive",)


def summary(doc: str | None) -> str:
    """The first paragraph of a docstring as one line (a description cut nowhere)."""
    first = (doc or "").strip().split("\n\n")[0]
    return " ".join(line.strip() for line in first.splitlines())


def idle_scripts(names: list[str], rest: list[str]) -> dict[str, str]:
    """The scripts among ``names`` that have no part for the asked ``--datasets`` / ``--cifar-model``, and why."""
    if "-h" in rest or "--help" in rest:
        return {}
    from paper_results import _common as C

    ns, _ = C.parser("paper_results").parse_known_args(rest)  # a bad value exits 2 here, naming its flag
    idle = {}
    for name in names:
        runs_on = getattr(importlib.import_module(f"paper_results.{SCRIPTS[name]}"), "RUNS_ON", C.DATASETS)
        why = C.nothing_to_do(runs_on, ns.datasets, ns.cifar_model)
        if why:
            idle[name] = why
    return idle


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    names = [a for a in argv if not a.startswith("-") and (a in SCRIPTS or a in ("all", "list"))]
    rest = [a for a in argv if a not in names]
    if not names:
        print(__doc__)
        return 0 if ("-h" in rest or "--help" in rest) else 2
    if "list" in names:
        for k, v in SCRIPTS.items():
            print(f"{k:7s} {v}.py")
            print(textwrap.fill(summary(importlib.import_module(f"paper_results.{v}").__doc__), width=100,
                                initial_indent="        ", subsequent_indent="        "))
        return 0
    todo = [k for k in SCRIPTS if k not in NOT_IN_ALL] if "all" in names else names
    idle = idle_scripts(todo, rest)
    if idle and "all" not in names:  # asked by name for work it cannot do: refuse before running any
        for name, why in idle.items():
            print(f"paper_results: {name}: {why}", file=sys.stderr)
        return 2
    for name, why in idle.items():
        print(f"== {name}: skipped ({why})", flush=True)
    todo = [k for k in todo if k not in idle]
    try:
        from fisher_ref._extras import require_extras

        require_extras("torch", "onnx", "detect", "plot", "progress", what="the paper reproduction")
    except ImportError as exc:
        print(f"paper_results: {exc}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    failed = []
    for name in todo:
        t = time.perf_counter()
        print(f"== {name} ({SCRIPTS[name]}.py)", flush=True)
        mod = importlib.import_module(f"paper_results.{SCRIPTS[name]}")
        try:
            mod.main(rest)
        except SystemExit as exc:  # argparse errors
            if exc.code:
                return int(exc.code)
        except Exception as exc:  # go on with the others, report at the end
            import traceback

            traceback.print_exc()
            failed.append(f"{name}: {type(exc).__name__}: {exc}")
        print(f"== {name}: {time.perf_counter() - t:.0f} s", flush=True)
    print(f"paper_results: {len(todo) - len(failed)} of {len(todo)} done in {time.perf_counter() - t0:.0f} s")
    for f in failed:
        print(f"FAILED {f}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
