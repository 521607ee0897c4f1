"""Small ONNX models for the ONNX Runtime backend tests.

Two kinds:

* torch models exported with the TorchScript exporter (``torch.onnx.export(..., dynamo=False)``):
  the dynamo exporter needs ``onnxscript``, which the test environment does not install, while
  the TorchScript one works offline in torch 2.13 (with a DeprecationWarning, silenced here).
  ``do_constant_folding=False`` keeps ``BatchNormalization`` as its own node instead of folding
  it into the preceding ``Conv``; eval-mode ``Dropout`` is dropped by the exporter whatever the
  options, so the Dropout rule is checked on a hand-built node (:func:`single_op_model`).
* hand-built graphs (``onnx.helper``) for the error paths and the output-kind detection.

Weights are tiny and seeded; everything runs in well under a second on two CPU cores.
"""

from __future__ import annotations


import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


# ---------------------------------------------------------------------- torch models
class ConvNet(torch.nn.Module):
    """Conv, BatchNorm (eval), ReLU, MaxPool, a residual ELU block, AvgPool, Dropout (eval),
    global average pooling, Flatten, Linear; input (1, 8, 8)."""

    input_shape = (1, 8, 8)

    def __init__(self, n_classes: int = 4, softmax: bool = False, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.conv1 = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(4)
        self.pool = torch.nn.MaxPool2d(2)
        self.conv2 = torch.nn.Conv2d(4, 4, 3, padding=1)
        self.avg = torch.nn.AvgPool2d(2)
        self.drop = torch.nn.Dropout(0.3)
        self.gap = torch.nn.AdaptiveAvgPool2d(1)
        self.flat = torch.nn.Flatten()
        self.fc = torch.nn.Linear(4, n_classes)
        self.softmax = softmax
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.8)
            self.bn.running_mean.copy_(torch.randn(4, generator=g) * 0.2)
            self.bn.running_var.copy_(torch.rand(4, generator=g) + 0.5)
        self.eval()

    def forward(self, x):
        h = self.pool(torch.relu(self.bn(self.conv1(x))))
        h = h + torch.nn.functional.elu(self.conv2(h))  # residual add
        h = self.gap(self.drop(self.avg(h)))
        z = self.fc(self.flat(h))
        return torch.softmax(z, dim=-1) if self.softmax else z


class MLP(torch.nn.Module):
    """Reshape (``view(n, -1)``, exported as Shape/Gather/Concat/Reshape), Linear, Tanh, ReLU;
    input (2, 3). Every operation has a float64 kernel in ONNX Runtime's CPU provider."""

    input_shape = (2, 3)

    def __init__(self, n_classes: int = 3, softmax: bool = False, seed: int = 1):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.fc1 = torch.nn.Linear(6, 8)
        self.fc2 = torch.nn.Linear(8, 8)
        self.fc3 = torch.nn.Linear(8, n_classes)
        self.softmax = softmax
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.7)
        self.eval()

    def forward(self, x):
        h = torch.tanh(self.fc1(x.view(x.size(0), -1)))
        h = torch.relu(self.fc2(h))
        z = self.fc3(h)
        return torch.softmax(z, dim=-1) if self.softmax else z


def export(module: torch.nn.Module, input_shape, *, dtype=torch.float32, batch: int | None = None,
           opset: int = OPSET) -> onnx.ModelProto:
    """Export with the TorchScript exporter; a dynamic batch axis unless ``batch`` is given."""
    from fisher_ref.backends.torch import export_onnx

    return export_onnx(module.to(dtype), input_shape, dtype=dtype, batch=batch, opset=opset)


# ---------------------------------------------------------------------- one operation at a time
class _Lambda(torch.nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


def _seeded(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        for name, b in module.named_buffers():
            if name.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=g) + 0.5)
            elif name.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=g) * 0.2)
    return module.eval()


def op_cases() -> dict:
    """``{onnx op type: (torch module, input shape without batch)}``: each module exports to a
    graph containing that operation, and is its own ground truth in float64.

    ``x > 0`` is arranged where the operation needs it (Log).
    """
    return {
        "Conv": (_seeded(torch.nn.Conv2d(2, 3, 3, padding=1)), (2, 5, 5)),
        "BatchNormalization": (_seeded(torch.nn.BatchNorm2d(2)), (2, 3, 3)),
        "Relu": (torch.nn.ReLU(), (7,)),
        "Elu": (torch.nn.ELU(), (7,)),
        "Tanh": (torch.nn.Tanh(), (7,)),
        "MaxPool": (torch.nn.MaxPool2d(2), (2, 4, 4)),
        "AveragePool": (torch.nn.AvgPool2d(2), (2, 4, 4)),
        "GlobalAveragePool": (torch.nn.AdaptiveAvgPool2d(1), (2, 3, 3)),
        "Flatten": (torch.nn.Flatten(), (2, 2, 2)),
        "Reshape": (_Lambda(lambda x: x.view(x.size(0), -1)), (2, 3)),
        "Gemm": (_seeded(torch.nn.Linear(5, 3)), (5,)),
        "Add": (_Lambda(lambda x: x + torch.tanh(x)), (5,)),
        "Softmax": (torch.nn.Softmax(dim=-1), (5,)),
        "LogSoftmax": (torch.nn.LogSoftmax(dim=-1), (5,)),
        "Log": (_Lambda(lambda x: torch.log(x * x + 0.5)), (5,)),
        "ReduceLogSumExp": (_Lambda(lambda x: x - torch.logsumexp(x, dim=-1, keepdim=True)), (5,)),
    }


def single_op_model(op_type: str, shape, dtype=TensorProto.FLOAT, **attrs) -> onnx.ModelProto:
    """A one-node graph ``y = op(x)`` with a fixed batch of 1 (for Dropout and Identity)."""
    inputs = ["x"]
    initializers = []
    if op_type == "Dropout":  # inference mode: ratio given, training_mode absent
        initializers.append(numpy_helper.from_array(np.array(0.3, np.float32), "ratio"))
        inputs.append("ratio")
    node = helper.make_node(op_type, inputs, ["y"], name=op_type.lower(), **attrs)
    graph = helper.make_graph([node], op_type.lower(),
                              [helper.make_tensor_value_info("x", dtype, [1, *shape])],
                              [helper.make_tensor_value_info("y", dtype, [1, *shape])], initializers)
    return _model(graph)


# ---------------------------------------------------------------------- hand-built classifiers
def _model(graph, opset: int = OPSET) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = min(model.ir_version, 8)  # loadable by older onnxruntime releases too
    onnx.checker.check_model(model)
    return model


def linear_weights(d: int = 4, n_classes: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n_classes, d)), rng.standard_normal(n_classes)


def linear_model(W, b, *, final: str | None = None, dtype=np.float32, batch: int | str = "N",
                 input_dims=None, n_classes_dim: int | str | None = None, opset: int = OPSET) -> onnx.ModelProto:
    """``z = x W^T + b`` (Gemm), then ``final``: None (logits), ``"Softmax"``, ``"LogSoftmax"``,
    or ``"ExpNormalize"`` (probabilities as Exp / ReduceSum / Div: no Softmax node to see)."""
    elem = TensorProto.FLOAT if dtype == np.float32 else TensorProto.DOUBLE
    C, d = W.shape
    inits = [numpy_helper.from_array(np.asarray(W, dtype), "W"), numpy_helper.from_array(np.asarray(b, dtype), "b")]
    nodes = [helper.make_node("Gemm", ["x", "W", "b"], ["z" if final else "y"], transB=1, name="gemm")]
    if final in ("Softmax", "LogSoftmax"):
        nodes.append(helper.make_node(final, ["z"], ["y"], axis=1 if opset < 13 else -1, name=final.lower()))
    elif final == "ExpNormalize":
        nodes += [helper.make_node("Exp", ["z"], ["e"]),
                  helper.make_node("ReduceSum", ["e", "axes"], ["s"], keepdims=1),
                  helper.make_node("Div", ["e", "s"], ["y"])]
        inits.append(numpy_helper.from_array(np.array([1], np.int64), "axes"))
    dims = [batch, *(input_dims if input_dims is not None else [d])]
    graph = helper.make_graph(nodes, "linear", [helper.make_tensor_value_info("x", elem, dims)],
                              [helper.make_tensor_value_info("y", elem, [batch, n_classes_dim or C])], inits)
    return _model(graph, opset)


def two_input_model() -> onnx.ModelProto:
    W, b = linear_weights()
    nodes = [helper.make_node("Add", ["a", "c"], ["s"]),
             helper.make_node("Gemm", ["s", "W", "b"], ["y"], transB=1)]
    graph = helper.make_graph(nodes, "two_inputs",
                              [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 4]),
                               helper.make_tensor_value_info("c", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
                              [numpy_helper.from_array(W.astype(np.float32), "W"),
                               numpy_helper.from_array(b.astype(np.float32), "b")])
    return _model(graph)


def two_output_model() -> onnx.ModelProto:
    W, b = linear_weights()
    nodes = [helper.make_node("Gemm", ["x", "W", "b"], ["logits"], transB=1),
             helper.make_node("Softmax", ["logits"], ["probs"], axis=-1)]
    graph = helper.make_graph(nodes, "two_outputs", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3]),
                               helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", 3])],
                              [numpy_helper.from_array(W.astype(np.float32), "W"),
                               numpy_helper.from_array(b.astype(np.float32), "b")])
    return _model(graph)


def int_input_model() -> onnx.ModelProto:
    W, b = linear_weights()
    nodes = [helper.make_node("Cast", ["x"], ["xf"], to=TensorProto.FLOAT),
             helper.make_node("Gemm", ["xf", "W", "b"], ["y"], transB=1)]
    graph = helper.make_graph(nodes, "int_input", [helper.make_tensor_value_info("x", TensorProto.INT64, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
                              [numpy_helper.from_array(W.astype(np.float32), "W"),
                               numpy_helper.from_array(b.astype(np.float32), "b")])
    return _model(graph)


def wrong_rank_output_model(declare_shape: bool = True) -> onnx.ModelProto:
    """Class scores of shape (N, 2, 2) instead of (N, C); declared as such, or (falsely) as
    (N, C), so that only running the graph finds out."""
    W, b = linear_weights(n_classes=4)
    nodes = [helper.make_node("Gemm", ["x", "W", "b"], ["z"], transB=1),
             helper.make_node("Reshape", ["z", "shape"], ["y"])]
    out_shape = ["N", 2, 2] if declare_shape else ["N", "C"]
    graph = helper.make_graph(nodes, "wrong_rank", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
                              [numpy_helper.from_array(W.astype(np.float32), "W"),
                               numpy_helper.from_array(b.astype(np.float32), "b"),
                               numpy_helper.from_array(np.array([-1, 2, 2], np.int64), "shape")])
    return _model(graph)


def undifferentiable_model() -> onnx.ModelProto:
    """A round trip through a tensor sequence (SplitToSequence, ConcatFromSequence): ONNX Runtime
    runs it, onnx-ad 0.3.0 differentiates no Sequence-typed value."""
    W, b = linear_weights(d=4, n_classes=3)
    nodes = [helper.make_node("SplitToSequence", ["x"], ["seq"], axis=1, name="to_sequence"),
             helper.make_node("ConcatFromSequence", ["seq"], ["f"], axis=1, name="from_sequence"),
             helper.make_node("Gemm", ["f", "W", "b"], ["y"], transB=1)]
    graph = helper.make_graph(nodes, "sequence", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
                              [numpy_helper.from_array(W.astype(np.float32), "W"),
                               numpy_helper.from_array(b.astype(np.float32), "b")])
    return _model(graph)
