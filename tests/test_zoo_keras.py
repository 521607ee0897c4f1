"""Keras models exported by tf2onnx (NHWC inputs, a Loop for the GRU, Erf for the exact GELU), read by
OnnxBackend, against TensorFlow's float64 class gradients saved beside them.

The files were made by ``python -m fisher_ref.validation.zoo_keras --fixtures tests/data/keras`` in an
environment with TensorFlow and tf2onnx (versions in fixtures.json); TensorFlow is not needed here.
"""

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx_ad")

import fisher_ref as fr  # noqa: E402
from fisher_ref.backends import OnnxBackend  # noqa: E402

HERE = Path(__file__).resolve().parent / "data" / "keras"
FIXTURES = json.loads((HERE / "fixtures.json").read_text())


@pytest.fixture(params=FIXTURES, ids=[f["name"] for f in FIXTURES])
def fixture(request):
    f = request.param
    with np.load(HERE / f["reference"]) as ref:
        return f, OnnxBackend(HERE / f["file"]), {k: ref[k] for k in ref.files}


def test_keras_export_agrees_with_tensorflow_float64(fixture, recwarn):
    f, b, ref = fixture
    assert b.input_shape == tuple(f["input_shape"]) and b.output_kind_ == "probabilities"
    assert not [w for w in recwarn if "mixes the inputs" in str(w.message)]  # shape arithmetic mixes no rows
    p, g = b.class_gradients(ref["x"])
    np.testing.assert_allclose(p, ref["probs"], rtol=1e-5, atol=1e-7)
    assert np.abs(g - ref["grads"]).max() <= 1e-4 * np.abs(ref["grads"]).max()
    k = min(5, p.shape[1] - 1)
    lam, V = fr.fisher_spectrum(ref["x"], b, k=k)
    for i in range(len(ref["x"])):
        w, U = np.linalg.eigh(fr.fisher_matrix(ref["probs"][i], ref["grads"][i]))
        assert np.abs(lam[i] - w[::-1][:k]).max() <= 1e-4 * w[-1]
        assert abs(float(V[i, 0].reshape(-1) @ U[:, -1])) > 0.999


def test_an_nhwc_keras_export_audits_nchw_pixels_with_mean_and_std(tmp_path):
    """The README's recipe for an NHWC model on NCHW data: --layout nchw, --mean/--std per channel."""
    import csv

    from fisher_ref.__main__ import main

    f = next(f for f in FIXTURES if len(f["input_shape"]) == 3)
    h, w, c = f["input_shape"]
    pixels = np.random.default_rng(0).random((4, c, h, w)).astype(np.float32)
    np.save(tmp_path / "pixels.npy", pixels)
    mean, std = ["0.485", "0.456", "0.406"], ["0.229", "0.224", "0.225"]
    code = main(["audit", str(HERE / f["file"]), "--data", str(tmp_path / "pixels.npy"), "--layout", "nchw",
                 "--mean", *mean, "--std", *std, "--out", str(tmp_path / "a"), "--no-report", "--no-progress",
                 "--k", "3"])
    assert code == 0
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())["data"]
    assert summary["layout"] == "NCHW -> NHWC"
    with open(tmp_path / "a" / "results.csv") as fh:
        rows = list(csv.DictReader(fh))
    # the audit's lambda_1 is the spectrum of the model at the normalised NHWC inputs
    x = (pixels.transpose(0, 2, 3, 1) - np.array(mean, np.float32)) / np.array(std, np.float32)
    b = OnnxBackend(HERE / f["file"])
    lam, _ = fr.fisher_spectrum(x.astype(np.float32), b, k=3)
    # the audit works in pixel space: G_pixels = S G S with S = diag(1/std) per channel; compare the trace
    got = np.array([float(r["lambda_1"]) for r in rows])
    assert got.shape == (4,) and np.all(np.isfinite(got)) and np.all(got > 0)
    assert np.all(got <= lam[:, 0] / min(float(s) for s in std) ** 2 * (1 + 1e-4))
    assert np.all(got >= lam[:, 0] / max(float(s) for s in std) ** 2 * (1 - 1e-4))
