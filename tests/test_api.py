"""The public API: one argument order, the earlier order with a FutureWarning, models wrapped for you."""

import warnings

import numpy as np
import pytest

import fisher_ref as fr
from fisher_ref.backends import MLPModel


def _model_x():
    model = MLPModel.random((6,), 4, (8,), scale=2.0, rng=0)
    return model, np.random.default_rng(0).uniform(0, 1, (5, 6))


def test_the_maths_namespace_exports_only_the_maths_api():
    assert 25 <= len(fr.__all__) <= 32
    for name in ("audit", "AuditError", "choose_method"):
        assert name not in fr.__all__
    assert all(hasattr(fr, n) for n in fr.__all__)
    pytest.importorskip("sklearn")
    assert fr.FisherDetector.__name__ == "FisherDetector"  # still importable, lazily


@pytest.mark.parametrize("call", [
    lambda m, x: fr.fisher_spectrum(x, m, k=3),
    lambda m, x: fr.fisher_spectrum(x=x, backend=m, k=3),
    lambda m, x: fr.fisher_spectrum(backend=m, x=x, k=3),
])
def test_fisher_spectrum_takes_x_then_backend(call):
    model, x = _model_x()
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        w, V = call(model, x)
    assert w.shape == (5, 3) and V.shape == (5, 3, 6)


def test_the_earlier_orders_still_work_with_a_future_warning():
    model, x = _model_x()
    w, _ = fr.fisher_spectrum(x, model, k=3)
    with pytest.warns(FutureWarning, match=r"fisher_spectrum\(backend, x\) is the order of earlier releases"):
        w_old, _ = fr.fisher_spectrum(model, x, k=3)
    np.testing.assert_array_equal(w, w_old)
    lp = fr.least_perturbation(x, model, "fgm")
    with pytest.warns(FutureWarning, match=r"least_perturbation\(attack, x, backend\)"):
        lp_old = fr.least_perturbation("fgm", x, model)
    np.testing.assert_array_equal(lp, lp_old)
    np.testing.assert_array_equal(lp, fr.least_perturbation(attack="fgm", x=x, backend=model))
    with pytest.warns(FutureWarning, match=r"FisherOperator.from_backend\(backend, x\)"):
        A = fr.FisherOperator.from_backend(model, x[0])
    np.testing.assert_array_equal(A.todense(), fr.FisherOperator.from_backend(x[0], model).todense())
    with pytest.warns(FutureWarning, match=r"MatrixFreeFisherOperator\(backend, x\)"):
        fr.MatrixFreeFisherOperator(model, x[0])


def test_attacks_take_x_and_backend_by_keyword():
    model, x = _model_x()
    a = fr.ossa(x, model, epsilon=1.0)
    b = fr.ossa(backend=model, x=x, epsilon=1.0)
    np.testing.assert_array_equal(a.x_adv, b.x_adv)
    np.testing.assert_array_equal(fr.fgm(x=x, backend=model, epsilon=1.0).x_adv, fr.fgm(x, model, epsilon=1.0).x_adv)


def test_something_that_is_no_backend_gets_an_error_naming_the_wrappers():
    _, x = _model_x()
    with pytest.raises(TypeError, match=r"got int; other models need a wrapper: fisher_ref.backends.TorchBackend"):
        fr.ossa(x, 3, epsilon=1.0)


def test_a_torch_module_is_wrapped_in_a_torch_backend():
    torch = pytest.importorskip("torch")
    from fisher_ref.backends import TorchBackend

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 8), torch.nn.Tanh(), torch.nn.Linear(8, 4))
    x = np.random.default_rng(1).uniform(0, 1, (3, 3, 4))
    b = fr.as_backend(net)
    assert isinstance(b, TorchBackend)
    explicit = TorchBackend(net, input_shape=(3, 4))
    np.testing.assert_allclose(fr.fisher_spectrum(x, net, k=3)[0], fr.fisher_spectrum(x, explicit, k=3)[0], rtol=1e-6)
    r = fr.ossa(backend=net, x=x, epsilon=1.0)
    np.testing.assert_allclose(r.x_adv, fr.ossa(x, explicit, epsilon=1.0).x_adv, atol=1e-6)
    assert all(not p.requires_grad or p.grad is None for p in net.parameters())  # the caller's model untouched


def test_an_onnx_model_is_wrapped_in_an_onnx_backend(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx_ad")
    import onnx

    from fisher_ref.backends import OnnxBackend, bundled_path

    path = bundled_path("mnist_lenet.onnx")
    x = np.random.default_rng(2).uniform(0, 1, (2, 1, 28, 28))
    w_path, _ = fr.fisher_spectrum(x, str(path), k=3)
    w_ref, _ = fr.fisher_spectrum(x, OnnxBackend(path), k=3)
    np.testing.assert_array_equal(w_path, w_ref)
    assert fr.as_backend(str(path)) is fr.as_backend(path)  # kept while the file is unchanged
    w_proto, _ = fr.fisher_spectrum(x, onnx.load(str(path)), k=3)
    np.testing.assert_array_equal(w_proto, w_ref)
    with pytest.raises(ValueError, match="no such ONNX file"):
        fr.ossa(x, str(tmp_path / "missing.onnx"), epsilon=1.0)
