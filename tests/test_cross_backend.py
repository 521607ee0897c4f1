"""Torch, ONNX Runtime, NumPy and a dense float64 Jacobian agree (validation/cross_backend.py)."""

import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnx_ad")

from fisher_ref.validation import cross_backend  # noqa: E402


def test_cross_backend_agreement(tmp_path):
    records = cross_backend.run(n_inputs=2, verbose=False)
    backends = {(r["model"], r["backend"], r["dtype"]) for r in records}
    assert ("mlp_tanh", "numpy", "float64") in backends and ("cnn", "onnx", "float32") in backends
    assert ("residual", "torch", "float64") in backends
    cross_backend.check(records)


def test_check_catches_a_disagreement():
    rec = {"model": "m", "backend": "onnx", "dtype": "float64", "input": 0, "probabilities": 1e-6,
           "class_gradients": 0, "fisher_vector_product": 0, "eigenvalues_gram": 0, "eigenvalues_matrix_free": 0,
           "ossa_cos": 1.0, "eigengap": 0.5}
    with pytest.raises(AssertionError, match="probabilities off by 1.00e-06 > 1e-09"):
        cross_backend.check([rec])
    with pytest.raises(AssertionError, match="OSSA"):
        cross_backend.check([dict(rec, probabilities=0, ossa_cos=0.9)])
