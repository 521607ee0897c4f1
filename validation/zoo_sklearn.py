"""scikit-learn classifiers through skl2onnx: OnnxBackend against scikit-learn's own float64 model.

skl2onnx writes what users export: a ``label`` and a ``probabilities`` output (the latter as a
ZipMap of dictionaries unless ``zipmap=False``) and the ai.onnx.ml operators LinearClassifier,
Normalizer and Scaler, which OnnxBackend rewrites in standard ONNX to differentiate them. Ground
truth is the fitted estimator itself: central differences, in float64, of ``-log predict_proba``
(the class gradients; compared on the classes with p > 1e-6, where a difference quotient of log p
is not noise), and the dense Fisher matrix built from them (the top eigenvalues, relative to
lambda_1, and |cos| of the top eigenvectors). With ``--audit``, ``fisher-ref audit`` runs on the
export (``--no-clip``: the features are standardised, not pixels).

    python -m fisher_ref.validation.zoo_sklearn [--audit] [--markdown zoo_sklearn.md]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

from .zoo import AUDITABLE, K, Row, agrees, audit_in_child, eigenvalue_error, exported_backend, finish, outcome, select

D = 6  # features
#: below this probability a class's difference quotient of log p is left out of the gradient figure
P_MIN = 1e-6


def _estimators() -> dict:
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return {
        "logistic regression, 3 classes": lambda: LogisticRegression(max_iter=1000),
        "logistic regression, binary": lambda: LogisticRegression(max_iter=1000),
        "scaler + logistic regression": lambda: make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)),
        "MLP (relu)": lambda: MLPClassifier((16,), max_iter=2000, random_state=0),
        "MLP (tanh)": lambda: MLPClassifier((12, 8), activation="tanh", max_iter=2000, random_state=0),
    }


def data(n: int = 300, classes: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian features with labels from linear thresholds (2 or 3 classes)."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, D))
    if classes == 3:
        y = (X[:, 0] + X[:, 1] > 0).astype(int) + (X[:, 2] > 0.5)
    else:
        y = (X[:, 0] - X[:, 3] > 0).astype(int)
    return X, y


def fitted(name: str):
    """``(estimator fitted on data(), its training features)``."""
    X, y = data(classes=2 if "binary" in name else 3)
    return _estimators()[name]().fit(X, y), X


def export(est, X: np.ndarray, zipmap: bool):
    """skl2onnx's ONNX of ``est`` (ZipMap probabilities or a tensor), opset 17, ai.onnx.ml 3."""
    import skl2onnx

    last = est.steps[-1][1] if hasattr(est, "steps") else est
    return skl2onnx.to_onnx(est, X[:1].astype(np.float32), options={id(last): {"zipmap": zipmap}},
                            target_opset={"": 17, "ai.onnx.ml": 3})


def fd_gradients(est, x: np.ndarray, h: float = 1e-6) -> np.ndarray:
    """Central differences of -log predict_proba (float64): (n, C, d)."""
    n, d = x.shape
    out = np.empty((n, len(est.classes_), d))
    for j in range(d):
        e = np.zeros(d)
        e[j] = h
        out[:, :, j] = -(np.log(est.predict_proba(x + e)) - np.log(est.predict_proba(x - e))) / (2 * h)
    return out


def check(name: str, zipmap: bool, *, n: int = 2, audit: bool = False, folder: Path) -> Row:
    """One estimator, exported with or without ZipMap, against its float64 finite differences."""
    import skl2onnx

    import fisher_ref as fr

    est, X = fitted(name)
    row = Row(name, "scikit-learn", f"skl2onnx {skl2onnx.__version__}" + (", ZipMap" if zipmap else ""), (D,),
              len(est.classes_), 17, None, n)
    path = folder / f"{abs(hash((name, zipmap))):x}.onnx"
    ob = exported_backend(row, lambda: path.write_bytes(export(est, X, zipmap).SerializeToString()), path)
    if ob is None:
        return row
    x = X[:n].astype(np.float32)
    x64 = x.astype(np.float64)  # what the float32 graph sees
    p64, g64 = est.predict_proba(x64), fd_gradients(est, x64)
    _, go = ob.class_gradients(x)
    keep = p64 > P_MIN
    row.gradient_error = float(np.abs(go - g64)[keep].max() / np.abs(g64[keep]).max())
    k = min(K, row.n_classes - 1)
    w_ref, v_ref = [], []
    for i in range(n):
        w, U = np.linalg.eigh(fr.fisher_matrix(p64[i], g64[i]))
        w_ref.append(w[::-1][:k])
        v_ref.append(U[:, -1])
    wo, vo = fr.fisher_spectrum(x, ob, k=k)
    row.eigenvalue_error = eigenvalue_error(wo, np.array(w_ref))
    row.min_cos = float(np.min(np.abs(np.einsum("nd,nd->n", vo[:, 0].reshape(n, -1), np.array(v_ref)))))
    if not agrees(row):
        row.status = "disagrees"
    if audit and row.status in AUDITABLE:
        audit_in_child(row, path, x, folder, "--no-clip")
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m fisher_ref.validation.zoo_sklearn",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", nargs="+", help="estimators whose name contains one of these strings")
    ap.add_argument("--audit", action="store_true", help="also run `fisher-ref audit` on each export")
    ap.add_argument("--out", help="write the rows as JSON here")
    ap.add_argument("--markdown", help="write the table as Markdown here")
    args = ap.parse_args(argv)
    try:
        import skl2onnx  # noqa: F401
    except ImportError:
        print("zoo_sklearn: needs scikit-learn and skl2onnx: pip install skl2onnx", file=sys.stderr)
        return 2
    names = select(dict.fromkeys(_estimators()), args.only, ap)
    rows = []
    with tempfile.TemporaryDirectory(prefix="fisher_ref_zoo_sklearn_") as tmp:
        for i, name in enumerate(names, 1):
            for zipmap in (True, False):
                row = check(name, zipmap, audit=args.audit, folder=Path(tmp))
                rows.append(row)
                print(f"[{i}/{len(names)}] {name} ({row.exporter}): {outcome(row)}", flush=True)
    return finish("zoo_sklearn", rows, args.out, args.markdown)


if __name__ == "__main__":
    sys.exit(main())
