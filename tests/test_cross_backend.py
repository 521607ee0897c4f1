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


def _small_cnn():
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3, padding=1), torch.nn.BatchNorm2d(6), torch.nn.GELU(),
                               torch.nn.MaxPool2d(2), torch.nn.Flatten(), torch.nn.Linear(6 * 4 * 4, 5))


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_export_onnx_gives_a_graph_the_onnx_backend_reads_as_torch_does(exporter, tmp_path, capsys):
    import numpy as np

    from fisher_ref.backends import OnnxBackend, TorchBackend, export_onnx

    if exporter == "dynamo":
        pytest.importorskip("onnxscript")
    net = _small_cnn()
    path = export_onnx(net, (3, 8, 8), tmp_path / "net.onnx", exporter=exporter)
    assert capsys.readouterr().out == ""  # the dynamo exporter's progress lines are not printed
    ob, tb = OnnxBackend(path), TorchBackend(net, input_shape=(3, 8, 8))
    assert ob.batch_coupling_ is None and ob.input_shape == (3, 8, 8)
    x = np.random.default_rng(0).random((5, 3, 8, 8), dtype=np.float32)  # 5: the dynamic batch axis
    _, go = ob.class_gradients(x)
    _, gt = tb.class_gradients(x)
    assert np.abs(go - gt).max() <= 1e-5 * np.abs(gt).max()


def test_export_onnx_names_a_bad_exporter_and_the_missing_onnxscript(monkeypatch):
    import importlib.util

    from fisher_ref.backends import export_onnx

    with pytest.raises(ValueError, match="exporter must be one of"):
        export_onnx(_small_cnn(), (3, 8, 8), exporter="jit")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxscript" else real(name, *a))
    with pytest.raises(ImportError, match=r"needs onnxscript: pip install 'fisher-ref\[export\]'"):
        export_onnx(_small_cnn(), (3, 8, 8), exporter="dynamo")
