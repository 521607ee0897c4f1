"""The model zoo (fisher_ref.validation.zoo): the building blocks of the production families, exported
to ONNX and read by OnnxBackend, agree with TorchBackend on the same network (issue 12.1).

The fast subset here runs every block through the TorchScript exporter, a few through the dynamo
exporter, at opset 13 (converted to 17 for onnx-ad's Gather and MaxPool rules) and with a fixed
batch axis, and one audit. The torchvision / timm networks themselves run in the slow test and in
``python -m fisher_ref.validation.zoo --library`` (README, "Model zoo").
"""

from __future__ import annotations

import importlib.util

import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnx_ad")

from fisher_ref.validation import zoo  # noqa: E402

BLOCKS = zoo._blocks()


def run(name, exporter="torchscript", **kw):
    family, builder, shape = BLOCKS[name]
    return zoo.check(name, family, builder, shape, exporter, **kw)


def agrees(row):
    assert row.status == "ok", f"{row.model} ({row.exporter}): {row.status} {row.error}"
    assert row.gradient_error <= zoo.TOL_GRADIENTS and row.eigenvalue_error <= zoo.TOL_EIGENVALUES
    assert row.min_cos >= zoo.COS_MIN
    return row


def test_the_blocks_cover_every_family_the_zoo_names():
    assert list(BLOCKS) == list(zoo.BLOCKS)
    families = {f for f, _, _ in BLOCKS.values()}
    assert {"ResNet", "MobileNetV2", "MobileNetV3", "EfficientNet", "ShuffleNet", "DenseNet", "RegNet", "ConvNeXt",
            "ViT/DeiT", "Swin", "Inception/GoogLeNet", "VGG-BN", "MLP", "GRU", "LSTM"} <= families


@pytest.mark.parametrize("name", zoo.BLOCKS)
def test_each_block_agrees_through_the_torchscript_exporter(name, tmp_path):
    agrees(run(name, folder=tmp_path))


@pytest.mark.skipif(importlib.util.find_spec("onnxscript") is None, reason="the dynamo exporter needs onnxscript")
@pytest.mark.parametrize("name", ["ResNet basic block", "ViT encoder (class token, MHA)", "LSTM sequence classifier",
                                  "softmax head"])
def test_blocks_agree_through_the_dynamo_exporter(name, tmp_path):
    agrees(run(name, "dynamo", folder=tmp_path))


@pytest.mark.parametrize("name", ["ResNet basic block", "GRU sequence classifier"])
def test_opset_13_exports_are_converted_for_the_reverse_rules(name, tmp_path):
    """At opset 13 onnx-ad cannot reverse MaxPool or Gather (it needs ScatterND reduction='add', opset
    16): the backend converts the graph to opset 17 first, and says so."""
    row = agrees(run(name, opset=13, folder=tmp_path))
    assert "rewritten: opset 13 -> 17 (onnx.version_converter)" in row.notes


def test_a_fixed_batch_export_agrees_and_audits(tmp_path):
    row = agrees(run("MobileNetV3 SE + hard-swish", batch=2, audit=True, folder=tmp_path))
    assert row.audit_seconds is not None and row.batch == 2


def test_a_failure_is_a_row_with_its_message(tmp_path, monkeypatch):
    import fisher_ref.backends as fb

    def refuse(*a, **k):
        raise RuntimeError("Exporting the operator 'aten::x' to ONNX opset version 17 is not supported")

    monkeypatch.setattr(fb, "export_onnx", refuse)
    row = run("VGG-BN", folder=tmp_path)
    assert row.status == "export failed" and "aten::x" in row.error
    table = zoo.markdown([row])
    assert table.count("\n") == 3 and "export failed: RuntimeError: Exporting the operator 'aten::x'" in table


@pytest.mark.slow
def test_the_library_networks_agree(tmp_path):
    models = zoo.library_models(64)
    if not models:
        pytest.skip("neither torchvision nor timm is installed")
    rows = [zoo.check(n, f, b, s, "torchscript", folder=tmp_path) for n, (f, b, s) in models.items()]
    bad = [(r.model, r.status, r.error) for r in rows if r.status not in ("ok", "export failed")]
    assert not bad, bad


def _softmax_backend(W, b, *, scale=1.0):
    """A linear softmax classifier as a gradient callable, its class gradients scaled by ``scale``."""
    import numpy as np

    import fisher_ref as fr

    def grads(x):
        z = W @ np.asarray(x, np.float64) + b
        p = np.exp(z - z.max())
        p /= p.sum()
        return p, scale * (p @ W - W)  # grad of -log p_i: (sum_j p_j W_j) - W_i

    return fr.as_backend(grads, input_shape=(W.shape[1],))


@pytest.mark.parametrize("scale, expected", [(1.0, "disagrees"), (1 + 9e-5, "float32 ill-conditioned")])
def test_float32_ill_conditioning_is_told_by_the_eigenvalues_too(scale, expected):
    """A float32 reference whose class gradients are within tolerance of float64 (9e-5) but whose
    eigenvalues are not (about 1.8e-4): the model is float32 ill-conditioned, not a disagreement."""
    import numpy as np

    import fisher_ref as fr

    rng = np.random.default_rng(0)
    W, b = rng.standard_normal((4, 6)), rng.standard_normal(4)
    x = rng.standard_normal((2, 6))
    row = zoo.Row("m", "f", "e", (6,), 4, status="disagrees")
    zoo.mark_float32_ill_conditioned(row, x, fr, _softmax_backend(W, b, scale=scale), _softmax_backend(W, b))
    assert row.status == expected
    assert row.torch_float32_error == pytest.approx(abs(scale - 1), abs=1e-12)
    assert row.torch_float32_eigenvalue_error == pytest.approx(abs(scale ** 2 - 1), rel=1e-6, abs=1e-12)


def test_the_count_tells_ill_conditioned_models_from_those_that_could_not_be_run(capsys):
    rows = [zoo.Row("a", "A", "x", (3,), 2, status=s) for s in
            ("ok", "float32 ill-conditioned", "float32 ill-conditioned", "backend failed", "disagrees")]
    assert zoo.finish("zoo", rows, None, None) == 1
    line = capsys.readouterr().out.strip()
    assert line.startswith("zoo: 1 of 5 agree; 1 disagree; 2 float32 ill-conditioned") and line.endswith(
        "; 1 could not be run"), line
