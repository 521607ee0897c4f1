"""scikit-learn classifiers exported by skl2onnx, as users export them (``label`` + ``probabilities``
outputs, ZipMap or not; LinearClassifier / Normalizer / Scaler from ai.onnx.ml), through OnnxBackend
and ``fisher-ref audit`` (issue 12.1).

Ground truth is scikit-learn itself: central finite differences, in float64, of ``log
predict_proba`` of the fitted estimator, and for the linear models the dense Fisher matrix from
``coef_`` and ``intercept_``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx_ad")
pytest.importorskip("sklearn")
skl2onnx = pytest.importorskip("skl2onnx")

import fisher_ref  # noqa: E402
from fisher_ref.backends import OnnxBackend  # noqa: E402
from fisher_ref.validation import zoo, zoo_sklearn  # noqa: E402
from fisher_ref.validation.zoo_sklearn import export, fd_gradients, fitted  # noqa: E402

ESTIMATORS = list(zoo_sklearn._estimators())


@pytest.mark.parametrize("zipmap", [True, False], ids=["ZipMap", "tensor"])
@pytest.mark.parametrize("name", ESTIMATORS)
def test_skl2onnx_classifiers_give_scikit_learns_gradients(name, zipmap):
    est, X = fitted(name)
    be = OnnxBackend(export(est, X, zipmap))  # no output_name: the probabilities are chosen
    assert be.n_classes == len(est.classes_)
    x = X[:5].astype(np.float32).astype(np.float64)  # what the float32 graph sees
    p, g = be.class_gradients(x.astype(np.float32))
    np.testing.assert_allclose(p, est.predict_proba(x), rtol=0, atol=1e-5)
    ref = fd_gradients(est, x)
    # the classes whose p is not negligible (an FD of log p is noisy where p ~ 1e-12)
    keep = est.predict_proba(x) > 1e-6
    np.testing.assert_allclose(g[keep], ref[keep], rtol=0, atol=2e-4 * np.abs(ref[keep]).max())


def dense_linear_fisher(W, b, x):
    """float64 G = W^T (diag p - p p^T) W of softmax(W x + b), per input."""
    z = x @ W.T + b
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    return np.einsum("ci,nc,cj->nij", W, p, W) - np.einsum("nc,ci,nk,kj->nij", p, W, p, W)


@pytest.mark.parametrize("name", ["logistic regression, 3 classes", "logistic regression, binary",
                                  "scaler + logistic regression"])
def test_linear_models_have_the_dense_fisher_spectrum(name):
    est, X = fitted(name)
    lr = est.steps[-1][1] if hasattr(est, "steps") else est
    W, b = lr.coef_, lr.intercept_
    if hasattr(est, "steps"):  # standardised inputs: x -> (x - mean) / scale
        sc = est.steps[0][1]
        W, b = W / sc.scale_, b - (W / sc.scale_) @ sc.mean_
    if W.shape[0] == 1:  # binary: p1 = sigmoid(w x + b) = softmax([0, w x + b])
        W, b = np.vstack([np.zeros_like(W), W]), np.r_[0.0, b]
    x = X[:6].astype(np.float32).astype(np.float64)
    ref = np.linalg.eigvalsh(dense_linear_fisher(W, b, x))[:, ::-1][:, :2]
    lam, _ = fisher_ref.fisher_spectrum(x.astype(np.float32), OnnxBackend(export(est, X, True)), k=2)
    assert np.all(np.abs(lam - ref) <= 1e-4 * ref[:, :1])


def test_the_probability_output_is_chosen_and_can_be_named():
    est, X = fitted("logistic regression, 3 classes")
    for zipmap, names in ((True, ["output_label", "output_probability"]), (False, ["label", "probabilities"])):
        model = export(est, X, zipmap)
        assert [o.name for o in model.graph.output] == names
        chosen = OnnxBackend(model)
        named = OnnxBackend(model, output_name=names[1])
        assert chosen.output_kind_ == named.output_kind_ == "probabilities"
        assert chosen.output_name == named.output_name  # a ZipMap output names the tensor it is made from
        assert chosen.output_name in [n.input[0] for n in model.graph.node if n.op_type == "ZipMap"] or not zipmap
        x = X[:4].astype(np.float32)
        np.testing.assert_allclose(named.probabilities(x), est.predict_proba(x), atol=1e-6)
        with pytest.raises(ValueError, match="element type INT64; expected float32 or float64 class scores"):
            OnnxBackend(model, output_name=names[0])


def test_the_audit_takes_a_skl2onnx_export(tmp_path, capsys):
    from fisher_ref.__main__ import main

    est, X = fitted("scaler + logistic regression")
    (tmp_path / "lr.onnx").write_bytes(export(est, X, True).SerializeToString())
    np.save(tmp_path / "x.npy", X[:20].astype(np.float32))
    out = tmp_path / "audit"
    code = main(["audit", str(tmp_path / "lr.onnx"), "--data", str(tmp_path / "x.npy"), "--no-clip", "--out", str(out),
                 "--no-report", "--no-progress"])
    assert code == 0, capsys.readouterr().err
    s = json.loads((out / "summary.json").read_text())
    assert s["n_inputs"] == 20 and s["model"]["output_kind"] == "probabilities"
    assert np.isfinite(s["top_eigenvalue"]["median"])


def test_the_zoo_row_of_a_skl2onnx_export_agrees_and_audits(tmp_path):
    row = zoo_sklearn.check("MLP (tanh)", True, audit=True, folder=tmp_path)
    assert row.status == "ok", row.error
    assert row.gradient_error <= zoo.TOL_GRADIENTS and row.eigenvalue_error <= zoo.TOL_EIGENVALUES
    assert row.min_cos >= zoo.COS_MIN and row.audit_seconds > 0 and 0 < row.audit_peak_gb < 24
    assert "ZipMap" in row.exporter and "| MLP (tanh) | scikit-learn |" in zoo.markdown([row])
