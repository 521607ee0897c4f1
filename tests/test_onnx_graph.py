"""What OnnxBackend reads from a graph: a softmax behind shape-only nodes, and graphs that mix the
inputs of a batch (issues 16.10 and 17.6).

Ground truth is exact: every model here is an affine map z = W x + b followed by nodes whose effect
on log p is known, so ``grad_x(-log p_c) = W^T (p - e_c)`` and ``G = W^T (diag p - p p^T) W`` in
float64; where a model is not affine in its logits, central finite differences of one-input runs
of the graph (in float64) are the reference.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx_ad")

import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import fisher_ref  # noqa: E402
from fisher_ref.backends import OnnxBackend  # noqa: E402

D, C = 6, 5


def weights(scale: float = 1.0, seed: int = 0):
    rng = np.random.default_rng(seed)
    return scale * rng.standard_normal((C, D)), rng.standard_normal(C)


def model(tail, *, W, b, dtype=np.float32, batch="N", opset: int = 17, out_dims=None, extra=()):
    """``z = Gemm(x)`` followed by ``tail``: a list of (op, inputs, outputs, attrs) ending in "y"."""
    elem = TensorProto.FLOAT if dtype == np.float32 else TensorProto.DOUBLE
    inits = [numpy_helper.from_array(np.asarray(W, dtype), "W"), numpy_helper.from_array(np.asarray(b, dtype), "b"),
             *extra]
    nodes = [helper.make_node("Gemm", ["x", "W", "b"], ["z"], transB=1, name="gemm")]
    nodes += [helper.make_node(op, ins, outs, name=outs[0] + "_node", **attrs) for op, ins, outs, attrs in tail]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", elem, [batch, D])],
                              [helper.make_tensor_value_info("y", elem, out_dims or [batch, C])], inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


def ints(name, values):
    return numpy_helper.from_array(np.array(values, np.int64), name)


def exact(W, b, x):
    """float64 (p, per-class gradients W^T (p - e_c), dense G = sum_c p_c g_c g_c^T) of the affine
    logits; p_c - 1 is summed from the other classes' p, so a saturated input loses no digits."""
    z = x @ W.T + b
    logp = z - z.max(1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(1, keepdims=True))
    p = np.exp(logp)
    q = p[:, None, :] - np.eye(C)[None]  # (n, c, k): p_k - [k == c]
    for c in range(C):
        q[:, c, c] = -(p.sum(1) - p[:, c])
    grads = np.einsum("nck,kd->ncd", q, W)  # (n, c, d): W^T (p - e_c)
    G = np.einsum("nc,ncd,nce->nde", p, grads, grads)
    return p, grads, G


# --------------------------------------------------------------------- 16.10: Softmax -> shape-only nodes
SOFTMAX_TAILS = {
    "Softmax -> Reshape": [("Softmax", ["z"], ["s"], dict(axis=-1)), ("Reshape", ["s", "shape"], ["y"], {})],
    "Softmax -> Identity -> Flatten": [("Softmax", ["z"], ["s"], dict(axis=1)), ("Identity", ["s"], ["t"], {}),
                                       ("Flatten", ["t"], ["y"], dict(axis=1))],
    "Unsqueeze -> Softmax over (N, 1, C) -> Squeeze": [
        ("Unsqueeze", ["z", "one"], ["u"], {}), ("Softmax", ["u"], ["s"], dict(axis=2)),
        ("Squeeze", ["s", "one"], ["y"], {})],
}
EXTRA = [ints("shape", [-1, C]), ints("one", [1])]


@pytest.mark.parametrize("tail", list(SOFTMAX_TAILS))
def test_a_softmax_behind_shape_only_nodes_gives_exact_gradients_on_confident_inputs(tail):
    """Logits ~100 apart: in float32 some probabilities are exactly 0, so Log(probs) would give
    NaN gradients. The softmax is found through the shape-only nodes and its input taken as logits."""
    W, b = weights(scale=40.0)
    x = np.random.default_rng(1).standard_normal((4, D))
    be = OnnxBackend(model(SOFTMAX_TAILS[tail], W=W, b=b, extra=EXTRA))
    p_ref, g_ref, G = exact(W, b, x)
    assert be.output_kind_ == "probabilities"
    assert (be.probabilities(x.astype(np.float32)) == 0).any()  # the case that gave NaN
    p, g = be.class_gradients(x.astype(np.float32))
    assert np.all(np.isfinite(g))
    scale = np.abs(g_ref).max()
    np.testing.assert_allclose(g, g_ref, rtol=0, atol=1e-5 * scale)
    lam_ref = np.linalg.eigvalsh(G)[:, ::-1][:, :3]
    lam, _ = fisher_ref.fisher_spectrum(x.astype(np.float32), be, k=3)
    assert np.all(np.abs(lam - lam_ref) <= 1e-4 * lam_ref[:, :1])  # float32 precision relative to lambda_1


def test_a_softmax_over_groups_of_classes_is_not_taken_for_the_final_softmax():
    """(N, C) unsqueezed to (N, 1, C) and normalised over axis 1 (of size 1): a Softmax, but not
    over the classes, so the output is read as it is, not as probabilities."""
    W, b = weights()
    tail = [("Unsqueeze", ["z", "one"], ["u"], {}), ("Softmax", ["u"], ["s"], dict(axis=1)),
            ("Squeeze", ["s", "one"], ["y"], {})]
    be = OnnxBackend(model(tail, W=W, b=b, extra=EXTRA))
    assert be.output_kind_ == "logits"  # every entry is 1: rows sum to C, not 1
    x = np.random.default_rng(2).standard_normal((3, D)).astype(np.float32)
    _, g = be.class_gradients(x)
    np.testing.assert_allclose(g, 0.0, atol=1e-6)  # a constant output: the exact gradient is 0


def test_probabilities_without_a_softmax_node_stay_finite_when_one_underflows():
    """Exp / ReduceSum / Div: no Softmax to find; log max(p, tiny) keeps the gradients finite and
    the Fisher matrix exact to float32 (an underflowed class has weight below float32's tiny)."""
    W, b = weights(scale=40.0)
    tail = [("Exp", ["zc"], ["e"], {}), ("ReduceSum", ["e", "one"], ["s"], dict(keepdims=1)),
            ("Div", ["e", "s"], ["y"], {})]
    # centre the logits so that Exp does not overflow: zc = z - max(z)
    tail = [("ReduceMax", ["z"], ["m"], dict(axes=[1], keepdims=1)), ("Sub", ["z", "m"], ["zc"], {}), *tail]
    x = np.random.default_rng(1).standard_normal((4, D))
    be = OnnxBackend(model(tail, W=W, b=b, extra=EXTRA, opset=13))
    assert be.output_kind_ == "probabilities" and (be.probabilities(x.astype(np.float32)) == 0).any()
    _, _, G = exact(W, b, x)
    lam_ref = np.linalg.eigvalsh(G)[:, ::-1][:, :2]
    lam, _ = fisher_ref.fisher_spectrum(x.astype(np.float32), be, k=2)
    assert np.all(np.isfinite(lam))
    assert np.all(np.abs(lam - lam_ref) <= 1e-4 * lam_ref[:, :1])  # float32 precision relative to lambda_1


# --------------------------------------------------------------------- 17.6: rows that are not independent
def coupled_by_softmax_over_batch(W, b, dtype=np.float64, batch="N"):
    """y = z + Softmax(z, axis=0): alone, an input's scores are z + 1 (the same softmax as z);
    stacked with others, its scores depend on them."""
    return model([("Softmax", ["z"], ["s"], dict(axis=0)), ("Add", ["z", "s"], ["y"], {})],
                 W=W, b=b, dtype=dtype, batch=batch)


def coupled_by_mean_over_batch(W, b, dtype=np.float64):
    """y = z + 0.5 * ReduceMean(z, axes=[0]) ** 2: a ReduceMean over the batch axis."""
    return model([("ReduceMean", ["z"], ["m"], dict(axes=[0], keepdims=1)), ("Mul", ["m", "m"], ["m2"], {}),
                  ("Mul", ["m2", "half"], ["h"], {}), ("Add", ["z", "h"], ["y"], {})],
                 W=W, b=b, dtype=dtype, extra=[numpy_helper.from_array(np.array(0.5, dtype), "half")])


def coupled_only_at_run_time(W, b, dtype=np.float64):
    """y = z + 0.1 * mean_j (z z^T)_ij: a Gram matrix over the batch; no node works on axis 0 by
    its attributes, so only the probe sees the coupling."""
    return model([("Transpose", ["z"], ["t"], dict(perm=[1, 0])), ("MatMul", ["z", "t"], ["gram"], {}),
                  ("ReduceMean", ["gram"], ["r"], dict(axes=[1], keepdims=1)), ("Mul", ["r", "tenth"], ["q"], {}),
                  ("Add", ["z", "q"], ["y"], {})],
                 W=W, b=b, dtype=dtype, extra=[numpy_helper.from_array(np.array(0.1, dtype), "tenth")])


def one_input_fd_gradients(proto, x, h=1e-6):
    """Central finite differences of -log softmax(model(x_i)) run on each input ALONE (float64)."""
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])

    def neg_logp(xi):
        y = sess.run(None, {"x": xi[None]})[0][0]
        return -(y - y.max() - np.log(np.exp(y - y.max()).sum()))

    out = np.empty((len(x), C, D))
    for n, xi in enumerate(x):
        for j in range(D):
            e = np.zeros(D)
            e[j] = h
            out[n, :, j] = (neg_logp(xi + e) - neg_logp(xi - e)) / (2 * h)
    return out


COUPLED = {"Softmax over axis 0": coupled_by_softmax_over_batch, "ReduceMean over axis 0": coupled_by_mean_over_batch,
           "a Gram matrix over the batch": coupled_only_at_run_time}


@pytest.mark.parametrize("name", list(COUPLED))
def test_a_graph_that_mixes_the_batch_is_run_one_input_at_a_time(name):
    W, b = weights()
    proto = COUPLED[name](W, b)
    x = np.random.default_rng(3).standard_normal((7, D))
    ref = one_input_fd_gradients(proto, x)
    results = []
    for batch_size in (1, 3, 64):
        if batch_size == 1:
            be = OnnxBackend(proto, batch_size=1)
        else:
            with pytest.warns(UserWarning, match=r"mixes the inputs of a batch .*batch_size=1 instead of"):
                be = OnnxBackend(proto, batch_size=batch_size)
        assert be.batch_size == 1 and be.batch_coupling_
        _, g = be.class_gradients(x)
        np.testing.assert_allclose(g, ref, rtol=0, atol=1e-6 * np.abs(ref).max())
        results.append((g, fisher_ref.fisher_spectrum(x, be, k=2)[0]))
    for g, lam in results[1:]:
        np.testing.assert_array_equal(g, results[0][0])
        np.testing.assert_allclose(lam, results[0][1], rtol=1e-10)


def test_the_static_scan_names_the_node():
    W, b = weights()
    with pytest.warns(UserWarning):
        be = OnnxBackend(coupled_by_softmax_over_batch(W, b))
    assert be.batch_coupling_ == "Softmax 's_node' over axis 0 (the batch axis)"
    with pytest.warns(UserWarning):
        be = OnnxBackend(coupled_only_at_run_time(W, b))
    assert "on a probe" in be.batch_coupling_


def test_a_fixed_batch_that_mixes_its_inputs_is_refused():
    W, b = weights()
    with pytest.raises(ValueError, match=r"model mixes the inputs of a batch \(Softmax 's_node' over axis 0 "
                                         r"\(the batch axis\)\).*fixed batch size 4.*dynamic \(or size-1\) batch axis"):
        OnnxBackend(coupled_by_softmax_over_batch(W, b, batch=4))


@pytest.mark.parametrize("tail", [[("Softmax", ["z"], ["y"], dict(axis=-1))],
                                  [("ReduceMean", ["z"], ["m"], dict(axes=[1], keepdims=1)),
                                   ("Sub", ["z", "m"], ["y"], {})]])
def test_independent_rows_keep_the_batch_size(tail, recwarn):
    W, b = weights()
    be = OnnxBackend(model(tail, W=W, b=b), batch_size=16)
    assert be.batch_coupling_ is None and be.batch_size == 16
    assert not [w for w in recwarn if "mixes the inputs" in str(w.message)]


def test_shape_arithmetic_mixes_no_rows(recwarn):
    """tf2onnx sizes a Reshape with ReduceProd over a Shape (all axes): a shape, not the rows' values."""
    W, b = weights()
    tail = [("Shape", ["z"], ["s"], {}), ("ReduceProd", ["s"], ["total"], dict(keepdims=1)),
            ("Div", ["total", "n_classes"], ["rows"], {}), ("Concat", ["rows", "n_classes"], ["target"], dict(axis=0)),
            ("Reshape", ["z", "target"], ["y"], {})]
    extra = [numpy_helper.from_array(np.array([C], np.int64), "n_classes")]
    be = OnnxBackend(model(tail, W=W, b=b, extra=extra), batch_size=16)
    x = np.random.default_rng(2).standard_normal((5, D))
    ref = one_input_fd_gradients(model(tail, W=W, b=b, dtype=np.float64, extra=extra), x)
    np.testing.assert_allclose(be.class_gradients(x)[1], ref, rtol=0, atol=1e-4 * np.abs(ref).max())
    assert be.batch_coupling_ is None and be.batch_size == 16
    assert not [w for w in recwarn if "mixes the inputs" in str(w.message)]


# --------------------------------------------------------------------- the audit command on both
def audit_lambda(tmp_path, proto, x, name, *extra):
    """``fisher-ref audit`` of ``proto`` on ``x``: its lambda_1 .. lambda_k columns (k = C - 1)."""
    import csv

    from fisher_ref.__main__ import main

    onnx.save(proto, str(tmp_path / f"{name}.onnx"))
    np.save(tmp_path / f"{name}.npy", x)
    out = tmp_path / f"{name}-out"
    code = main(["audit", str(tmp_path / f"{name}.onnx"), "--data", str(tmp_path / f"{name}.npy"), "--out", str(out),
                 "--no-report", "--no-progress", "--k", str(C - 1), *extra])
    assert code == 0
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    return np.array([[float(r[f"lambda_{i}"]) for i in range(1, C)] for r in rows])


def test_the_audit_takes_a_softmax_reshape_model_and_one_that_mixes_its_batch(tmp_path, capsys):
    """Before: the audit refused the Softmax -> Reshape model (NaN gradients) and gave batch-size
    dependent eigenvalues for the Softmax-over-axis-0 one. Now both equal the exact spectrum."""
    W, b = weights(scale=40.0)
    x = np.random.default_rng(0).random((6, D))
    lam = audit_lambda(tmp_path, model(SOFTMAX_TAILS["Softmax -> Reshape"], W=W, b=b, extra=EXTRA),
                       x.astype(np.float32), "reshape")
    ref = np.linalg.eigvalsh(exact(W, b, x)[2])[:, ::-1][:, :C - 1]
    assert np.all(np.abs(lam - ref) <= 1e-4 * ref[:, :1])
    W, b = weights()
    with pytest.warns(UserWarning, match="mixes the inputs of a batch"):
        lam = audit_lambda(tmp_path, coupled_by_softmax_over_batch(W, b), x, "coupled", "--batch-size", "8")
    ref = np.linalg.eigvalsh(exact(W, b, x)[2])[:, ::-1][:, :C - 1]
    np.testing.assert_allclose(lam, ref, rtol=1e-9, atol=1e-12 * ref.max())
    capsys.readouterr()


# --------------------------------------------------------------------- shapes shape inference cannot follow
def conv_after_reshape(static: bool):
    """x (N, 32) -> Reshape (N, 2, 4, 4) -> Conv (stride 2) -> Flatten -> Gemm (N, C). ``static``: the
    target shape is a constant; else it is computed at run time, so the Conv's input shape is
    unknown to onnx-ad (as in some exporters' Shape -> Reshape arithmetic, e.g. torchvision's
    ShuffleNetV2 through the TorchScript exporter)."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((3, 2, 3, 3)).astype(np.float32), "K"),
             numpy_helper.from_array(rng.standard_normal((C, 12)).astype(np.float32), "W"),
             numpy_helper.from_array(rng.standard_normal(C).astype(np.float32), "b"),
             ints("channels", [2]), ints("zero", [0]), ints("one", [1]), ints("zero2", [0, 0]), ints("one2", [1, 1]), ints("static_shape", [-1, 2, 4, 4]),
             numpy_helper.from_array(np.array(0.0, np.float32), "zero_f"),
             numpy_helper.from_array(np.array(4.0, np.float32), "four")]
    if static:
        nodes = [helper.make_node("Reshape", ["x", "static_shape"], ["r"])]
    else:
        # n = Shape(x)[0]; h = round(0 * x[0, 0] + 4): a value of the data, so neither shape inference
        # nor onnx-ad's constant folding knows the Reshape's output shape
        nodes = [helper.make_node("Shape", ["x"], ["sx"]), helper.make_node("Gather", ["sx", "zero"], ["n"], axis=0),
                 helper.make_node("Slice", ["x", "zero2", "one2"], ["x00"]), helper.make_node("Reshape", ["x00", "one"], ["v"]),
                 helper.make_node("Mul", ["v", "zero_f"], ["z0"]), helper.make_node("Add", ["z0", "four"], ["hf"]),
                 helper.make_node("Round", ["hf"], ["hr"]), helper.make_node("Cast", ["hr"], ["h"], to=TensorProto.INT64),
                 helper.make_node("Concat", ["n", "channels", "h", "h"], ["shape"], axis=0),
                 helper.make_node("Reshape", ["x", "shape"], ["r"])]
    nodes += [helper.make_node("Conv", ["r", "K"], ["c"], pads=[1, 1, 1, 1], strides=[2, 2], name="conv"),
              helper.make_node("Relu", ["c"], ["a"]), helper.make_node("Flatten", ["a"], ["f"], axis=1),
              helper.make_node("Gemm", ["f", "W", "b"], ["y"], transB=1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", C])], inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def test_shapes_from_one_run_let_onnx_ad_differentiate_what_inference_cannot_follow(monkeypatch):
    x = np.random.default_rng(1).standard_normal((4, 32)).astype(np.float32)
    ref = OnnxBackend(conv_after_reshape(static=True))
    got = OnnxBackend(conv_after_reshape(static=False))
    np.testing.assert_allclose(got.class_gradients(x)[1], ref.class_gradients(x)[1], rtol=1e-6, atol=1e-7)
    v = np.random.default_rng(2).standard_normal((4, 3, 32)).astype(np.float32)
    np.testing.assert_allclose(got.fisher_vector_product(x, v), ref.fisher_vector_product(x, v), rtol=1e-5, atol=1e-7)
    # without the shapes of a run, onnx-ad's error names the Conv
    monkeypatch.setattr(OnnxBackend, "_with_run_shapes", lambda self, base, batch: None)
    with pytest.raises(ValueError, match=r"cannot differentiate operator Conv \(node 'conv'\)"):
        OnnxBackend(conv_after_reshape(static=False))


# --------------------------------------------------------------------- ScatterND(add) without the race
def gather_with_repeats(D=64, R=256, M=4000, seed=0):
    """x (N, D*R) viewed as (N, D, R), gathered at M indices in [0, D) (each about M/D times, as
    adaptive pooling and upsampling repeat pixels), then a linear map to C classes: the reverse of
    the Gather is a ScatterND(reduction="add") with many duplicate indices. Returns the model and
    A (C, D*R) with logits = A x, the exact Jacobian."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, D, M).astype(np.int64)
    W = (0.01 * rng.standard_normal((C, M * R))).astype(np.float32)
    nodes = [helper.make_node("Reshape", ["x", "s1"], ["xr"]), helper.make_node("Gather", ["xr", "idx"], ["g"], axis=1),
             helper.make_node("Reshape", ["g", "s2"], ["f"]), helper.make_node("Gemm", ["f", "W"], ["y"], transB=1)]
    inits = [ints("s1", [-1, D, R]), numpy_helper.from_array(idx, "idx"), ints("s2", [-1, M * R]),
             numpy_helper.from_array(W, "W")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", D * R])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", C])], inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    A = np.zeros((C, D, R))
    for c in range(C):
        np.add.at(A[c], idx, W.reshape(C, M, R)[c].astype(np.float64))
    return m, A.reshape(C, -1)


def test_repeated_indices_give_the_same_exact_gradients_on_every_run():
    """Before: ONNX Runtime's multi-threaded ScatterND(add) lost updates, so the class gradients were
    off by ~10% and different on each run (2 cores suffice). Now the same, exact, every run."""
    model, A = gather_with_repeats()
    x = np.random.default_rng(1).random((2, A.shape[1])).astype(np.float32)
    z = x.astype(np.float64) @ A.T
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    ref = (p @ A)[:, None, :] - A[None]  # grad_x(-log p_c) = A^T (p - e_c)
    be = OnnxBackend(model)
    runs = [be.class_gradients(x)[1] for _ in range(4)]
    for g in runs:
        assert np.abs(g - ref).max() <= 1e-5 * np.abs(ref).max()
        np.testing.assert_array_equal(g, runs[0])


def test_the_scatter_rewrite_sums_duplicates_for_any_index_depth():
    from fisher_ref.backends._onnx_graph import race_free_scatters

    rng = np.random.default_rng(0)
    for data_shape, index_shape, k in [((64, 512), (3000, 1), 1), ((8, 8, 16), (300, 2), 2), ((6, 5, 4), (7, 3, 3), 3)]:
        idx = np.stack([rng.integers(-d, d, index_shape[:-1]) for d in data_shape[:k]], -1).astype(np.int64)
        upd = rng.standard_normal(index_shape[:-1] + data_shape[k:]).astype(np.float32)
        ref = rng.standard_normal(data_shape).astype(np.float32).astype(np.float64)
        data = ref.astype(np.float32)
        np.add.at(ref, tuple(np.moveaxis(idx % np.array(data_shape[:k]), -1, 0)), upd.astype(np.float64))
        node = helper.make_node("ScatterND", ["data", "ind", "upd"], ["y"], reduction="add")
        graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("data", TensorProto.FLOAT, list(data_shape)),
                                                helper.make_tensor_value_info("upd", TensorProto.FLOAT, list(upd.shape))],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(data_shape))],
                                  [numpy_helper.from_array(idx, "ind")])
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
        m.ir_version = 8
        fixed, n, unsafe = race_free_scatters(onnx, m)
        assert (n, unsafe) == (1, 0) and not any(nd.op_type == "ScatterND" for nd in fixed.graph.node)
        sess = ort.InferenceSession(fixed.SerializeToString(), providers=["CPUExecutionProvider"])
        for _ in range(3):
            got = sess.run(None, {"data": data, "upd": upd})[0]
            np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------- Conv padded more at one end
@pytest.mark.parametrize("pads,strides", [([0, 0, 1, 1], [2, 2]), ([0, 1, 1, 0], [1, 1]), ([1, 0, 2, 1], [2, 1]),
                                          ([1, 1, 1, 1], [2, 2])])
def test_conv_padded_asymmetrically_has_the_exact_gradient(pads, strides):
    """TensorFlow's 'same' padding at stride 2 is pads (0, 1): onnx-ad's ConvTranspose placed it (1, 0)
    until the backend moved the padding into a Pad node (tf2onnx's Keras MobileNet: 118% wrong)."""
    rng = np.random.default_rng(0)
    h = 7
    rows = (h + pads[0] + pads[2] - 3) // strides[0] + 1
    cols = (h + pads[1] + pads[3] - 3) // strides[1] + 1
    Wc = rng.standard_normal((3, 2, 3, 3)).astype(np.float32)
    Wg = rng.standard_normal((C, 3 * rows * cols)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "Wc"], ["c"], pads=pads, strides=strides, kernel_shape=[3, 3], name="conv"),
             helper.make_node("Flatten", ["c"], ["f"], axis=1, name="flat"),
             helper.make_node("Gemm", ["f", "Wg"], ["y"], transB=1, name="head")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, h, h])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", C])],
                              [numpy_helper.from_array(Wc, "Wc"), numpy_helper.from_array(Wg, "Wg")])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    be = OnnxBackend(proto)
    assert ("asymmetric Conv pads" in " ".join(be.rewritten_)) == (pads[:2] != pads[2:])
    # the model is linear, logits = M x: M column by column from ONNX Runtime, the gradients M^T (p - e_c)
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    d = 2 * h * h
    M = sess.run(None, {"x": np.eye(d, dtype=np.float32).reshape(d, 2, h, h)})[0].T.astype(np.float64)
    x = rng.random((3, 2, h, h)).astype(np.float32)
    p, g = be.class_gradients(x)
    ref = np.stack([(M.T @ (p[n][:, None] - np.eye(C))).T for n in range(len(x))])
    assert np.abs(g.reshape(len(x), C, -1) - ref).max() <= 1e-5 * np.abs(ref).max()
