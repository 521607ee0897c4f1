"""Slow: the detection evaluation on a small MNIST subset (the bundled MLP and images).
Run with `pytest -m slow`."""

import pytest

pytest.importorskip("sklearn")

pytestmark = pytest.mark.slow


def test_detection_on_bundled_mnist(tmp_path):
    from fisher_ref.detection import FisherDetector, KernelDensityDetector, evaluate_detection
    from fisher_ref.backends import MLPModel, bundled_mnist_mlp
    from fisher_ref.datasets import load_bundled_mnist, load_mnist

    base = bundled_mnist_mlp()
    model = MLPModel(list(zip(base.weights, base.biases)), input_shape=base.input_shape)
    X, y = load_bundled_mnist()
    Xtr, ytr = load_mnist(split="train", limit=2000)
    Xtr = (Xtr / 255.0)[:, None]
    rep = evaluate_detection(X, model, y, attacks=("fgm", "ossa"),
                             detectors={"Fisher": FisherDetector(model, random_state=0),
                                        "KD": KernelDensityDetector(model, bandwidth=1.2, X_train=Xtr, y_train=ytr)},
                             random_state=0, progress=False, roc_png=str(tmp_path / "roc.png"))
    auc = {r: dict(zip(rep.auc.columns, row)) for r, row in zip(rep.auc.rows, rep.auc.values)}
    # far better than chance on both attacks (about 0.75-0.9 measured on 1500 images)
    assert auc["Fisher"]["fgm"] > 0.65 and auc["Fisher"]["ossa"] > 0.65, rep.auc.to_markdown()
    assert auc["KD"]["fgm"] > 0.65, rep.auc.to_markdown()
    assert set(rep.train_inputs).isdisjoint(rep.test_inputs)
    assert (tmp_path / "roc.png").stat().st_size > 10_000
