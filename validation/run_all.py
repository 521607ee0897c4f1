"""``fisher-ref validate``: run the validation suite and print what agreed to what tolerance.

Each check compares fisher_ref with a computation that shares no code with it, writes a JSON
record into ``--out`` and ends in assertions:

* ``golden`` - the golden cases (closed-form NumPy and dense torch float64 answers);
* ``cross_backend`` - NumPy, torch float32/float64 and ONNX Runtime against a dense float64 FIM
  from ``torch.autograd.functional.jacobian``;
* ``kl_finite_differences`` - eq. 3: second differences of the KL divergence along random
  directions and the top eigenvector against v^T G v;
* ``alias_monte_carlo`` - the alias Monte-Carlo operator against the exact one, with error bars.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
import traceback
from pathlib import Path

from fisher_ref._text import count

CHECKS = {
    "golden": "golden reference cases vs closed-form / dense float64 answers",
    "cross_backend": "NumPy, torch f32/f64, ONNX Runtime vs dense float64 Jacobian FIM",
    "kl_finite_differences": "eq. 3: second differences of KL vs v^T G v",
    "alias_monte_carlo": "alias Monte-Carlo operator vs exact, z-test with exact error bars",
}


def _summary(name: str, records) -> tuple[str, str]:
    if name == "golden":
        out = []
        for dt in ("float64", "float32"):
            rs = [r for r in records if r["dtype"] == dt]
            if rs:
                worst = max(max(r[q] for q in ("probs", "grads", "eigenvalues", "eigenvectors", "ossa_eta")) for r in rs)
                out.append(f"{dt} {worst:.1e} ({count(len(rs), 'case')})")
        return ", ".join(out), "1e-8..1e-12 (float64), 1e-3..1e-5 (float32)"
    if name == "cross_backend":
        out = []
        for dt in ("float64", "float32"):
            rs = [r for r in records if r["dtype"] == dt]
            worst = max(max(r[q] for q in ("probabilities", "class_gradients", "fisher_vector_product",
                                             "eigenvalues_gram", "eigenvalues_matrix_free")) for r in rs)
            out.append(f"{dt} {worst:.1e}")
        cos = min(r["ossa_cos"] for r in records)
        return ", ".join(out) + f", min |cos v1| {cos:.6f}", "1e-9 (float64), 1e-4 (float32), |cos| > 0.999"
    if name == "kl_finite_differences":
        return f"{max(r['best_rel_error'] for r in records):.1e} ({len(records)} directions)", "1e-5"
    if name == "alias_monte_carlo":
        tested = [r for r in records if r["tail_draws"] >= 100]
        b = [r for r in records if r["draws"] == max(1, round(r["n_classes"] / 5))]
        bias = ", ".join(f"C={r['n_classes']}: {r['relative_bias']:+.2f}+-{r['lambda_1_bias_se'] / r['lambda_1']:.2f}"
                         for r in b)
        return (f"max |z| {max(r['max_abs_z_GV'] for r in tested):.2f}; lambda_1 bias at C/5 draws {bias}",
                "|z| <= 5.5")
    return "", ""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="fisher-ref validate", description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="fisher-ref-validation", help="folder for the JSON records")
    ap.add_argument("--only", nargs="+", choices=sorted(CHECKS), help="run only these checks")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows, failed = [], 0
    for name in args.only or list(CHECKS):
        mod = importlib.import_module(f"fisher_ref.validation.{name}")
        t0 = time.perf_counter()
        try:
            records = mod.check_library() if name == "golden" else mod.run(verbose=False)
            if name != "golden":
                mod.check(records)
            status = "ok"
        except ImportError as exc:
            records, status = [], f"skipped ({exc})"
        except AssertionError as exc:
            records, status = getattr(exc, "records", []), f"FAILED: {exc}"
            failed += 1
        except Exception as exc:  # report and go on with the other checks
            records, status = [], f"ERROR: {type(exc).__name__}: {exc}"
            traceback.print_exc()
            failed += 1
        dt = time.perf_counter() - t0
        (out / f"{name}.json").write_text(json.dumps({"check": name, "status": status, "records": records},
                                                     indent=1, default=float))
        worst, tol = _summary(name, records) if status == "ok" else ("", "")
        rows.append((name, CHECKS[name], worst, tol, status, dt))
    w = max(len(r[0]) for r in rows)
    print(f"\n{'check':{w}s}  status  seconds  worst error (tolerance)   what")
    for name, what, worst, tol, status, dt in rows:
        print(f"{name:{w}s}  {status if status == 'ok' else status[:60]:6s}  {dt:7.1f}  {worst} ({tol})   {what}")
    print(f"\nrecords written to {out}/")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
