"""OnnxBackend: onnx-ad derivative graphs run by ONNX Runtime, against dense torch ground truth.

The ground truth is independent of onnx-ad and ONNX Runtime: the logit Jacobian J of the same
weights in float64 from ``torch.autograd.functional.jacobian``, then ``grad(-log p_i) =
J^T (p - e_i)`` and ``G = J^T (diag p - p p^T) J`` (paper eq. 4) formed densely in NumPy.

float64 is tested on the MLP only: ONNX Runtime's CPU provider has no double kernels for Conv,
AveragePool, GlobalAveragePool or Elu (it refuses to load such a graph), so the conv net runs in
float32 only.
"""

import copy
import logging
import os
import subprocess
import sys

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
onnx_ad = pytest.importorskip("onnx_ad")
torch = pytest.importorskip("torch")

import _onnx_models as om  # noqa: E402
from fisher_ref.backends.onnxruntime import OnnxBackend  # noqa: E402

#: The pinned onnx-ad release (pyproject: onnx-ad==0.3.0) the rules below were checked against.
ONNX_AD_PIN = "0.3.0"

PROVIDERS = [pytest.param("CPUExecutionProvider", id="cpu")]
if "CUDAExecutionProvider" in ort.get_available_providers():
    PROVIDERS.append(pytest.param("CUDAExecutionProvider", id="cuda", marks=pytest.mark.cuda))

RTOL = {np.float32: 1e-4, np.float64: 1e-9}


def assert_close(got, ref, rtol, what=""):
    """Relative agreement, with an absolute floor of ``rtol * max |ref|`` for entries near 0."""
    ref = np.asarray(ref, dtype=np.float64)
    np.testing.assert_allclose(got, ref, rtol=rtol, atol=rtol * float(np.abs(ref).max()), err_msg=what)


def dense_truth(module64, x):
    """Per input: probabilities (n, C), class gradients (n, C, d), Fisher matrices (n, d, d)."""
    xt = torch.tensor(np.asarray(x, dtype=np.float64))
    n = xt.shape[0]
    with torch.no_grad():
        z = module64(xt).numpy()
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    C = p.shape[1]
    grads, fims = [], []
    for j in range(n):
        J = torch.autograd.functional.jacobian(lambda a: module64(a[None])[0], xt[j]).reshape(C, -1).numpy()
        grads.append((p[j][None, :] - np.eye(C)) @ J)
        fims.append(J.T @ (np.diag(p[j]) - np.outer(p[j], p[j])) @ J)
    return p, np.stack(grads), np.stack(fims)


# ---------------------------------------------------------------------- fixtures
MODEL_CASES = [
    pytest.param((om.ConvNet, np.float32), id="convnet-float32"),
    pytest.param((om.MLP, np.float32), id="mlp-float32"),
    pytest.param((om.MLP, np.float64), id="mlp-float64"),
]


@pytest.fixture(scope="module", params=MODEL_CASES)
def exported(request):
    cls, dtype = request.param
    module = cls()
    tdtype = torch.float32 if dtype == np.float32 else torch.float64
    proto = om.export(copy.deepcopy(module), cls.input_shape, dtype=tdtype)
    return cls, dtype, module.double(), proto


@pytest.fixture(scope="module")
def convnet_protos():
    logits = om.export(om.ConvNet(), om.ConvNet.input_shape)
    probs = om.export(om.ConvNet(softmax=True), om.ConvNet.input_shape)
    return logits, probs


def batch(shape, n=5, seed=0, dtype=np.float32):
    return np.random.default_rng(seed).standard_normal((n,) + tuple(shape)).astype(dtype)


# ---------------------------------------------------------------------- onnx-ad pin and rules
def _jacobian_onnx_ad(model: "onnx.ModelProto", x: np.ndarray, mode: str) -> np.ndarray:
    """The full Jacobian (out_size, in_size) of a batch-1 graph from one onnx-ad run."""
    transform = onnx_ad.reverse if mode == "reverse" else onnx_ad.forward
    d = transform(model, inputs=["x"], outputs=["y"], layout="onnx")
    y = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(["y"], {"x": x})[0]
    sess = ort.InferenceSession(d.SerializeToString(), providers=["CPUExecutionProvider"])
    size_in, size_out = x.size, y.size
    if mode == "reverse":
        seeds = np.eye(size_out, dtype=x.dtype).reshape(y.shape + (size_out,))
        out = sess.run([d.graph.output[-1].name], {"x": x, d.graph.input[-1].name: seeds})[0]
        return out.reshape(size_in, size_out).T
    seeds = np.eye(size_in, dtype=x.dtype).reshape(x.shape + (size_in,))
    out = sess.run([d.graph.output[-1].name], {"x": x, d.graph.input[-1].name: seeds})[0]
    return out.reshape(size_out, size_in)


def test_onnx_ad_version_is_the_pinned_one():
    assert onnx_ad.__version__ == ONNX_AD_PIN, (
        f"onnx-ad {onnx_ad.__version__} is installed; the project pins {ONNX_AD_PIN}. Run this file "
        "(its per-operation checks) against the new release before moving the pin")


@pytest.mark.parametrize("op_type", sorted(om.op_cases()))
@pytest.mark.parametrize("mode", ["reverse", "forward"])
def test_onnx_ad_rule_matches_torch(op_type, mode):
    module, shape = om.op_cases()[op_type]
    proto = om.export(copy.deepcopy(module), shape, batch=1)
    assert op_type in {n.op_type for n in proto.graph.node}, f"the export of the {op_type} case lost the operation"
    x = batch(shape, n=1, seed=3)
    if op_type == "MaxPool":  # well-separated values: no ties inside a window
        x = (np.random.default_rng(3).permutation(x.size).reshape(x.shape) * 0.1).astype(np.float32)
    J = _jacobian_onnx_ad(proto, x, mode)
    m64 = copy.deepcopy(module).double()
    ref = torch.autograd.functional.jacobian(m64, torch.tensor(x, dtype=torch.float64)).reshape(J.shape).numpy()
    assert_close(J, ref, 1e-5, f"{op_type} in {mode} mode")


@pytest.mark.parametrize("op_type", ["Dropout", "Identity"])
def test_onnx_ad_rule_identity_ops(op_type):
    """Inference-mode Dropout (dropped by the torch exporter) and Identity have Jacobian I."""
    proto = om.single_op_model(op_type, (2, 3))
    x = batch((2, 3), n=1)
    for mode in ("reverse", "forward"):
        np.testing.assert_array_equal(_jacobian_onnx_ad(proto, x, mode), np.eye(6))


def test_op_cases_cover_every_operation_of_the_test_models(convnet_protos):
    """Every floating-point operation the test models (and the log-softmax wrapper) use has a rule check."""
    protos = list(convnet_protos) + [om.export(om.MLP(), om.MLP.input_shape),
                                     om.linear_model(*om.linear_weights(), final="Softmax")]
    used = {n.op_type for p in protos for n in p.graph.node}
    # integer shape arithmetic of view(n, -1): no derivative flows through it
    shape_ops = {"Shape", "Gather", "Unsqueeze", "Concat", "Constant"}
    checked = set(om.op_cases()) | {"Dropout", "Identity"}
    assert used - shape_ops <= checked, f"no rule check for {sorted(used - shape_ops - checked)}"


# ---------------------------------------------------------------------- against dense ground truth
@pytest.mark.parametrize("provider", PROVIDERS)
def test_backend_matches_dense_torch_ground_truth(exported, provider):
    cls, dtype, module64, proto = exported
    backend = OnnxBackend(proto, providers=[provider])
    assert backend.dtype == np.dtype(dtype)
    assert backend.input_shape == cls.input_shape
    assert backend.output_kind_ == "logits"
    rtol = RTOL[dtype]
    x = batch(cls.input_shape, n=4, dtype=dtype)
    p_ref, g_ref, G = dense_truth(module64, x)
    n, C = p_ref.shape

    assert_close(backend.probabilities(x), p_ref, rtol, "probabilities")
    p, g = backend.class_gradients(x)
    assert_close(p, p_ref, rtol, "probabilities from class_gradients")
    assert g.shape == (n, C) + cls.input_shape
    assert_close(g.reshape(n, C, -1), g_ref, rtol, "class gradients")

    classes = [2, 0, 2]
    _, gs = backend.class_gradients(x, classes=classes)
    assert_close(gs.reshape(n, 3, -1), g_ref[:, classes], rtol, "class gradients, subset")

    v = np.random.default_rng(7).standard_normal((n, 5) + cls.input_shape)
    fvp = backend.fisher_vector_product(x, v)
    ref = np.einsum("jab,jkb->jka", G, v.reshape(n, 5, -1))
    assert_close(fvp.reshape(n, 5, -1), ref, rtol, "Fisher-vector products")

    labels = np.array([0, 2, 1, 2])
    p_l, gl = backend.loss_gradient(x, labels)
    assert_close(p_l, p_ref, rtol, "probabilities from loss_gradient")
    assert_close(gl.reshape(n, -1), g_ref[np.arange(n), labels], rtol, "loss gradient")


def test_batch_chunking_agrees_with_one_at_a_time(convnet_protos):
    logits, _ = convnet_protos
    chunked = OnnxBackend(logits, batch_size=3)
    single = OnnxBackend(logits, batch_size=1)
    x = batch(om.ConvNet.input_shape, n=7, seed=5)
    v = np.random.default_rng(8).standard_normal((7, 2) + om.ConvNet.input_shape)
    p, g = chunked.class_gradients(x)
    fvp = chunked.fisher_vector_product(x, v)
    labels = np.arange(7) % 4
    _, gl = chunked.loss_gradient(x, labels)
    for j in range(7):
        pj, gj = single.class_gradients(x[j:j + 1])
        assert_close(p[j], pj[0], 1e-6)
        assert_close(g[j], gj[0], 1e-5)
        assert_close(fvp[j], single.fisher_vector_product(x[j:j + 1], v[j:j + 1])[0], 1e-5)
        assert_close(gl[j], gj[0, labels[j]], 1e-5)
    assert_close(chunked.probabilities(x), p, 1e-6)
    # one derivative model per batch size met, none larger than batch_size (seeds are stacked along
    # the batch axis: 7 inputs x 4 classes run as chunks of 3 rows, FVPs as 7 x 2 rows)
    assert {key[1] for key in chunked._cache} <= {1, 2, 3} and 3 in {key[1] for key in chunked._cache}


def test_one_row_per_run_gives_the_same_results(convnet_protos):
    logits, _ = convnet_protos
    backend = OnnxBackend(logits)
    x = batch(om.ConvNet.input_shape, n=2)
    v = np.random.default_rng(1).standard_normal((2, 3) + om.ConvNet.input_shape)
    p, g = backend.class_gradients(x)
    fvp = backend.fisher_vector_product(x, v)
    one = OnnxBackend(logits, batch_size=1)  # every (input, seed) pair in a run of its own
    p1, g1 = one.class_gradients(x)
    assert_close(p1, p, 1e-6)
    assert_close(g1, g, 1e-6)
    assert_close(one.fisher_vector_product(x, v), fvp, 1e-6)
    assert {key[1] for key in one._cache} == {1}


def test_fixed_batch_graph_runs_in_padded_chunks():
    W, b = om.linear_weights(d=4, n_classes=3)
    backend = OnnxBackend(om.linear_model(W, b, batch=2))
    assert backend.batch_size == 2
    x = batch((4,), n=5)
    p, g = backend.class_gradients(x)
    z = x.astype(np.float64) @ W.T + b
    p_ref = np.exp(z - z.max(1, keepdims=True))
    p_ref /= p_ref.sum(1, keepdims=True)
    assert_close(p, p_ref, 1e-5)
    assert_close(g, (p_ref[:, None, :] - np.eye(3)) @ W, 1e-4)
    assert_close(backend.probabilities(x), p_ref, 1e-5)


def test_dynamic_feature_dim_is_fixed_by_input_shape():
    W, b = om.linear_weights(d=4, n_classes=3)
    proto = om.linear_model(W, b, input_dims=["features"])
    with pytest.raises(ValueError, match=r"dimension 1 \('features'\) is dynamic.*input_shape cannot be inferred"):
        OnnxBackend(proto)
    backend = OnnxBackend(proto, input_shape=(4,))
    x = batch((4,), n=3)
    _, g = backend.class_gradients(x)
    z = x.astype(np.float64) @ W.T + b
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    assert_close(g, (p[:, None, :] - np.eye(3)) @ W, 1e-4)
    with pytest.raises(ValueError, match="input_shape .* disagrees"):
        OnnxBackend(om.linear_model(W, b), input_shape=(5,))


def test_model_from_path(tmp_path, convnet_protos):
    path = tmp_path / "convnet.onnx"
    onnx.save(convnet_protos[0], str(path))
    x = batch(om.ConvNet.input_shape, n=2)
    ref = OnnxBackend(convnet_protos[0]).class_gradients(x)[1]
    for model in (path, str(path)):
        backend = OnnxBackend(model)
        np.testing.assert_array_equal(backend.class_gradients(x)[1], ref)
        assert "convnet.onnx" in repr(backend)


# ---------------------------------------------------------------------- output kinds
def test_output_auto_detects_logits_and_softmax(convnet_protos, caplog):
    logits, probs = convnet_protos
    with caplog.at_level(logging.INFO, logger="fisher_ref.backends.onnxruntime"):
        b_logits = OnnxBackend(logits)
        b_probs = OnnxBackend(probs)
    assert b_logits.output_kind_ == "logits"
    assert b_probs.output_kind_ == "probabilities"
    assert "read as logits" in caplog.text and "read as probabilities" in caplog.text
    assert "output_kind='probabilities'" in repr(b_probs)
    x = batch(om.ConvNet.input_shape, n=3)
    p1, g1 = b_logits.class_gradients(x)
    p2, g2 = b_probs.class_gradients(x)
    # the final Softmax is replaced by LogSoftmax of its input: the same graph as for logits
    np.testing.assert_allclose(p2, p1, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(g2, g1, rtol=1e-6, atol=1e-6 * np.abs(g1).max())
    np.testing.assert_allclose(b_probs.probabilities(x), b_logits.probabilities(x), rtol=1e-6, atol=1e-7)
    v = np.random.default_rng(2).standard_normal((3, 2) + om.ConvNet.input_shape)
    np.testing.assert_allclose(b_probs.fisher_vector_product(x, v), b_logits.fisher_vector_product(x, v),
                               rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("final, kind", [("ExpNormalize", "probabilities"), ("LogSoftmax", "log_probabilities"),
                                         ("Softmax", "probabilities")])
def test_output_kinds_give_the_logit_gradients(final, kind):
    """Probabilities without a Softmax node are found on the probe batch (and differentiated as
    Log(probs)); a final LogSoftmax reads as log-probabilities."""
    W, b = om.linear_weights(d=4, n_classes=3)
    ref = OnnxBackend(om.linear_model(W, b))
    backend = OnnxBackend(om.linear_model(W, b, final=final))
    assert backend.output_kind_ == kind
    x = batch((4,), n=3)
    p_ref, g_ref = ref.class_gradients(x)
    p, g = backend.class_gradients(x)
    assert_close(p, p_ref, 1e-6)
    assert_close(g, g_ref, 1e-5)
    v = np.random.default_rng(0).standard_normal((3, 2, 4))
    assert_close(backend.fisher_vector_product(x, v), ref.fisher_vector_product(x, v), 1e-5)


@pytest.mark.parametrize("final", [None, "Softmax", "LogSoftmax"])
def test_softmax_before_opset_13(final):
    """onnx-ad refuses (Log)Softmax before opset 13: the wrapper replaces a final one, and
    appends z - ReduceLogSumExp(z) instead of LogSoftmax."""
    W, b = om.linear_weights(d=4, n_classes=3)
    old = OnnxBackend(om.linear_model(W, b, final=final, opset=11))
    new = OnnxBackend(om.linear_model(W, b, final=final))
    assert old.output_kind_ == new.output_kind_
    x = batch((4,), n=3)
    v = np.random.default_rng(0).standard_normal((3, 2, 4))
    assert_close(old.class_gradients(x)[1], new.class_gradients(x)[1], 1e-5)
    assert_close(old.fisher_vector_product(x, v), new.fisher_vector_product(x, v), 1e-5)


def test_declared_output_kind_overrides_and_is_checked(convnet_protos):
    logits, probs = convnet_protos
    assert OnnxBackend(probs, output="probabilities").output_kind_ == "probabilities"
    assert OnnxBackend(logits, output="logits").output_kind_ == "logits"
    with pytest.raises(ValueError, match=r"output='probabilities', but model output 'y' is not a probability"):
        OnnxBackend(logits, output="probabilities")
    with pytest.raises(ValueError, match=r"output='log_probabilities', but exp of model output"):
        OnnxBackend(logits, output="log_probabilities")
    with pytest.raises(ValueError, match="output must be one of"):
        OnnxBackend(logits, output="softmax")


def test_output_name_selects_among_outputs():
    proto = om.two_output_model()
    with pytest.raises(ValueError, match=r"2 graph outputs \['logits', 'probs'\]; pass output_name="):
        OnnxBackend(proto)
    b_logits = OnnxBackend(proto, output_name="logits")
    b_probs = OnnxBackend(proto, output_name="probs")
    assert (b_logits.output_kind_, b_probs.output_kind_) == ("logits", "probabilities")
    x = batch((4,), n=2)
    assert_close(b_probs.class_gradients(x)[1], b_logits.class_gradients(x)[1], 1e-5)


# ---------------------------------------------------------------------- errors
def test_missing_path():
    with pytest.raises(ValueError, match="model: no such ONNX file"):
        OnnxBackend("/nonexistent/model.onnx")


def test_not_an_onnx_file(tmp_path):
    path = tmp_path / "notes.onnx"
    path.write_text("this is not a protobuf\n" * 10)
    with pytest.raises(ValueError, match="not an ONNX model or is corrupt|not a valid ONNX model"):
        OnnxBackend(path)


def test_truncated_onnx_file(tmp_path, convnet_protos):
    path = tmp_path / "truncated.onnx"
    data = convnet_protos[0].SerializeToString()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="not an ONNX model or is corrupt|not a valid ONNX model"):
        OnnxBackend(path)


def test_an_operator_the_exporter_left_unconverted_is_named_with_the_fix():
    """tf2onnx leaves TensorFlow's Erfc (Keras' exact GELU) as a node ONNX does not define."""
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Erfc", ["x"], ["y"], name="gelu/Erfc")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(ValueError, match=r"not a valid ONNX model .*Erfc is no ONNX operator: the exporter left it "
                                         r"unconverted .*custom_op_handlers") as info:
        OnnxBackend(proto)
    assert "\n" not in str(info.value)


def test_model_of_the_wrong_type():
    with pytest.raises(TypeError, match="model must be a path .* or an onnx.ModelProto, got int"):
        OnnxBackend(42)


def test_several_inputs_need_input_name():
    proto = om.two_input_model()
    with pytest.raises(ValueError, match=r"2 graph inputs \['a', 'c'\]; pass input_name="):
        OnnxBackend(proto)
    with pytest.raises(ValueError, match=r"graph inputs \['c'\] besides input_name 'a'"):
        OnnxBackend(proto, input_name="a")


def _with_unread_inputs(proto, *, used_by_another_output: bool):
    """``proto`` plus graph inputs ``mean`` and ``var`` the class scores never read: dangling, as tf2onnx
    leaves a Keras Normalization layer's folded constants, or read only by a second output."""
    from onnx import TensorProto, helper

    out = copy.deepcopy(proto)
    for name in ("mean", "var"):
        out.graph.input.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, 4]))
    if used_by_another_output:
        out.graph.node.append(helper.make_node("Add", ["mean", "var"], ["stats"], name="stats"))
        out.graph.output.append(helper.make_tensor_value_info("stats", TensorProto.FLOAT, [1, 4]))
    return out


@pytest.mark.parametrize("used_by_another_output", [False, True])
def test_graph_inputs_the_class_scores_do_not_read_are_not_fed(used_by_another_output):
    W, b = om.linear_weights()
    plain = OnnxBackend(om.linear_model(W, b))
    extra = _with_unread_inputs(om.linear_model(W, b), used_by_another_output=used_by_another_output)
    ob = OnnxBackend(extra, output_name="y" if used_by_another_output else None)
    x = np.random.default_rng(0).standard_normal((3, 4))
    assert ob.input_name == "x" and [v.name for v in ob.model.graph.input] == ["x", "mean", "var"]  # the user's model kept
    p0, g0 = plain.class_gradients(x)
    p1, g1 = ob.class_gradients(x)
    np.testing.assert_array_equal(p1, p0)
    np.testing.assert_array_equal(g1, g0)
    with pytest.raises(ValueError, match=r"input_name 'mean': the class scores 'y' do not depend on it; they read \['x'\]"):
        OnnxBackend(extra, input_name="mean", output_name="y")


def test_unknown_input_and_output_names():
    proto = om.linear_model(*om.linear_weights())
    with pytest.raises(ValueError, match=r"input_name 'image' is not a graph input of the model; its inputs are \['x'\]"):
        OnnxBackend(proto, input_name="image")
    with pytest.raises(ValueError, match=r"output_name 'probs' is not a graph output of the model; its outputs are \['y'\]"):
        OnnxBackend(proto, output_name="probs")


def test_integer_input():
    with pytest.raises(ValueError, match="model input 'x' has element type INT64; .* float32 or float64"):
        OnnxBackend(om.int_input_model())


@pytest.mark.parametrize("declare", [True, False], ids=["declared", "probed"])
def test_output_that_is_not_class_scores(declare):
    with pytest.raises(ValueError, match=r"model output 'y' has shape \(.*2, 2\).*expected class scores"):
        OnnxBackend(om.wrong_rank_output_model(declare_shape=declare))


@pytest.mark.parametrize("declare", [True, False], ids=["declared", "probed"])
def test_single_class_output(declare):
    proto = om.linear_model(*om.linear_weights(n_classes=1), n_classes_dim=None if declare else "C")
    with pytest.raises(ValueError, match=r"model output 'y' has shape \(.*, 1\).*n_classes >= 2"):
        OnnxBackend(proto)


def test_operation_onnx_ad_cannot_differentiate():
    with pytest.raises(ValueError, match=r"onnx-ad 0\.3\.0 cannot differentiate operator ConcatFromSequence "
                                         r"\(node 'from_sequence'\) in reverse mode: no reverse rule"):
        OnnxBackend(om.undifferentiable_model())


def test_input_without_batch_axis_or_shape():
    W, b = om.linear_weights()
    with pytest.raises(ValueError, match="expected a batch axis"):
        OnnxBackend(om.linear_model(W, b, batch=2, input_dims=[]))


def test_unavailable_provider():
    with pytest.raises(ValueError, match=r"providers \['NoSuchExecutionProvider'\] are not available.*"
                                         r"available providers: \[.*'CPUExecutionProvider'"):
        OnnxBackend(om.linear_model(*om.linear_weights()), providers=["NoSuchExecutionProvider"])


@pytest.mark.parametrize("bad, exc", [(0, ValueError), (-3, ValueError), (2.5, TypeError), (True, TypeError)])
def test_bad_batch_size(bad, exc):
    with pytest.raises(exc, match="batch_size must be a positive int"):
        OnnxBackend(om.linear_model(*om.linear_weights()), batch_size=bad)


def test_default_providers_and_dtype():
    backend = OnnxBackend(om.linear_model(*om.linear_weights(), dtype=np.float64))
    assert backend.dtype == np.float64
    expected = "CUDAExecutionProvider" if "CUDAExecutionProvider" in ort.get_available_providers() \
        else "CPUExecutionProvider"
    assert backend.providers[0] == expected
    assert backend.supports("fisher_vector_product") and backend.supports("loss_gradient")


def test_missing_frameworks_raise_import_error_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx_ad", None)
    with pytest.raises(ImportError, match=r"OnnxBackend needs onnx, onnxruntime and onnx-ad: "
                                          r"pip install 'fisher-ref\[onnx\]' \(or 'fisher-ref\[onnx-gpu\]'\)"):
        OnnxBackend("model.onnx")


def test_module_imports_without_onnx():
    code = ("import sys\n"
            "for m in ('onnx', 'onnxruntime', 'onnx_ad'): sys.modules[m] = None\n"
            "import fisher_ref.backends.onnxruntime as m\n"
            "from fisher_ref.backends import OnnxBackend\n"
            "try:\n    OnnxBackend('model.onnx')\nexcept ImportError as e:\n    print('ImportError:', e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert out.returncode == 0, out.stderr
    assert "ImportError: OnnxBackend needs onnx, onnxruntime and onnx-ad" in out.stdout


def test_saturated_class_gradient_keeps_relative_accuracy_in_float32():
    """logits (30, 0, 0): 1 - p_0 = 1.9e-13 is far below float32's epsilon, yet the gradient of
    -log p_0, J^T (p - e_0), must come out with float32 relative accuracy (seeds formed in float64)."""
    W = np.array([[30.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    backend = OnnxBackend(om.linear_model(W, np.zeros(3)))
    x = np.array([[1.0, 0.0]])
    _, g = backend.class_gradients(x)
    q = np.exp(-30.0) / (1 + 2 * np.exp(-30.0))  # p_1 = p_2
    expected = W.T @ np.array([-2 * q, q, q])
    np.testing.assert_allclose(g[0, 0], expected, rtol=1e-6, atol=0)
    _, gl = backend.loss_gradient(x, [0])
    np.testing.assert_allclose(gl[0], expected, rtol=1e-6, atol=0)


def test_max_memory_lowers_the_rows_per_run_not_the_results(convnet_protos):
    """row_bytes_ is three times one input's forward tensors; a budget of a few rows gives the same
    class gradients and Fisher-vector products as the default batch, in more runs."""
    proto = convnet_protos[0]
    full = OnnxBackend(proto)
    assert full.row_bytes_ > 0 and full.batch_size == 64
    small = OnnxBackend(proto, max_memory=3 * full.row_bytes_)
    assert small.batch_size == 3
    x = np.random.default_rng(0).random((5, *full.input_shape)).astype(np.float32)
    v = np.random.default_rng(1).standard_normal((5, 4, *full.input_shape)).astype(np.float32)
    np.testing.assert_allclose(small.class_gradients(x)[1], full.class_gradients(x)[1], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(small.fisher_vector_product(x, v), full.fisher_vector_product(x, v), rtol=1e-5, atol=1e-7)
    assert OnnxBackend(proto, max_memory=1).batch_size == 1
    with pytest.raises(ValueError, match="max_memory must be"):
        OnnxBackend(proto, max_memory=0)


def test_a_derivative_model_is_let_go_once_its_session_holds_it(convnet_protos):
    """Each derivative protobuf carries a copy of the weights: after its session is made only the
    session keeps them, and the next runs (same batch) reuse that session and give the same numbers."""
    b = OnnxBackend(convnet_protos[0])
    x = batch(b.input_shape, n=3)
    _, first = b.class_gradients(x)
    opened = [d for d in b._cache.values() if d.session is not None]
    assert opened and all(d.model is None for d in opened)
    _, again = b.class_gradients(x)
    np.testing.assert_array_equal(first, again)
