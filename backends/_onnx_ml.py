"""scikit-learn exports (skl2onnx) for OnnxBackend: the class-probability tensor, and the ai.onnx.ml
operators rewritten as standard ONNX that onnx-ad can differentiate.

skl2onnx writes a classifier as ``label`` (int64) and ``probabilities`` outputs, the latter often a
``ZipMap`` (a sequence of maps, not a tensor); its linear models use ``LinearClassifier``,
``Normalizer`` and ``Scaler`` from the ``ai.onnx.ml`` domain, for which onnx-ad has no rules:

* :func:`scores_output` picks the class-score tensor: the one float output, or the tensor a
  ``ZipMap`` output is made from;
* :func:`with_only_output` copies the model with that tensor as its one graph output;
* :func:`rewrite_ml_operators` replaces ``LinearClassifier`` (scores ``X W^T + b`` and its
  ``NONE`` / ``LOGISTIC`` / ``SOFTMAX`` post-transform), ``Normalizer`` (``L1``, ``L2``, ``MAX``;
  an ``L1`` one right after a ``Softmax`` is the identity) and ``Scaler`` by the same arithmetic in
  standard operators. OnnxBackend checks the rewritten graph against ONNX Runtime's own kernels on
  a probe batch, so a rewrite that differs from the runtime is refused rather than used.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._onnx_graph import NodeBuilder

ML_DOMAIN = "ai.onnx.ml"
_FLOAT_TYPES = (1, 11)  # float32, float64 (TensorProto codes)


# ------------------------------------------------------------------------- which output
def scores_output(graph, output_name: str | None) -> tuple[str, str | None]:
    """``(tensor name, note)``: the class scores to differentiate. ``output_name`` may name a
    ``ZipMap`` output (its input is taken) or that input itself; without it, the one float tensor output, else the one
    ``ZipMap`` output, is chosen (``note`` says which and why; None when there was nothing to choose)."""
    producer = {o: n for n in graph.node for o in n.output if o}
    names = [v.name for v in graph.output]
    zipped = {v.name: producer[v.name].input[0] for v in graph.output
              if v.name in producer and producer[v.name].op_type == "ZipMap"}
    if output_name is not None:
        if output_name in zipped.values():  # the tensor a ZipMap output is made from, chosen before
            return output_name, None
        if not isinstance(output_name, str) or output_name not in names:
            raise ValueError(f"output_name {output_name!r} is not a graph output of the model; its outputs are {names}")
        if output_name in zipped:
            return zipped[output_name], (f"output {output_name!r} is a ZipMap; its input {zipped[output_name]!r} "
                                         "holds the same probabilities as a tensor")
        return output_name, None
    if len(names) == 1:
        name = names[0]
        return (zipped[name], f"the output is a ZipMap of {zipped[name]!r}") if name in zipped else (name, None)
    floats = [v.name for v in graph.output if v.type.WhichOneof("value") == "tensor_type"
              and v.type.tensor_type.elem_type in _FLOAT_TYPES]
    if len(floats) == 1:
        return floats[0], f"the only float tensor among the outputs {names}"
    if not floats and len(zipped) == 1:
        (name, source), = zipped.items()
        return source, f"the only class-score output among {names} is the ZipMap {name!r} of {source!r}"
    raise ValueError(f"model has {len(names)} graph outputs {names}; pass output_name= to choose the class scores")


def with_only_output(onnx, model, name: str):
    """A copy of ``model`` whose one graph output is the tensor ``name`` (typed by shape inference)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    current = {v.name: v for v in graph.output}
    if list(current) == [name]:
        return out
    value = current.get(name) or _inferred_value(onnx, model, name)
    del graph.output[:]
    graph.output.append(value)
    return out


def _inferred_value(onnx, model, name: str):
    try:
        inferred = onnx.shape_inference.infer_shapes(model).graph
        for v in list(inferred.value_info) + list(inferred.output):
            if v.name == name and v.type.tensor_type.elem_type:
                return v
    except Exception:  # inference is best effort: the element type of the input is the fallback
        pass
    elem = model.graph.input[0].type.tensor_type.elem_type or 1
    return onnx.helper.make_tensor_value_info(name, elem, None)


# ------------------------------------------------------------------------- the rewrite
def rewrite_ml_operators(onnx, model) -> tuple[Any, list[str]]:
    """``(model, rewritten)``: a copy with each ``LinearClassifier``, ``Normalizer`` and ``Scaler``
    node replaced by standard operators (``rewritten`` names them, e.g. ``"LinearClassifier 'lc'"``);
    the model itself when it has none. Other ``ai.onnx.ml`` nodes are left for onnx-ad to name."""
    graph = model.graph
    todo = [n for n in graph.node if n.domain == ML_DOMAIN and n.op_type in _RULES]
    if not todo:
        return model, []
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    opset = max([o.version for o in out.opset_import if o.domain in ("", "ai.onnx")] or [1])
    elem = {v.name: v.type.tensor_type.elem_type for v in graph.input}
    producer = {o: n for n in graph.node for o in n.output if o}
    nodes, inits, done = [], [], []
    for node in graph.node:
        if node.domain == ML_DOMAIN and node.op_type in _RULES:
            dtype = np.float64 if elem.get(node.input[0]) == 11 else np.float32
            ctx = _Context(onnx, node, opset, dtype, producer)
            _RULES[node.op_type](ctx)
            nodes += ctx.nodes
            inits += ctx.inits
            for o in node.output:
                if o:
                    elem[o] = 11 if dtype == np.float64 else 1
            done.append(f"{node.op_type} {node.name or node.output[0]!r}")
        else:
            nodes.append(node)
            if node.op_type == "Cast":
                for o in node.output:
                    elem[o] = next((a.i for a in node.attribute if a.name == "to"), 1)
            else:
                for o in node.output:
                    elem.setdefault(o, elem.get(node.input[0]) if node.input else None)
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(inits)
    del graph.value_info[:]
    return out, done


class _Context(NodeBuilder):
    """What one rule needs: the node, its opset, dtype and the producers of the graph, and a builder
    of the nodes and constants it adds (constants in the node's dtype unless told)."""

    def __init__(self, onnx, node, opset: int, dtype, producer: dict):
        super().__init__(onnx, node, dtype)
        self.opset, self.producer = opset, producer

    def reduce(self, op_type: str, x: str, output: str | None = None) -> str:
        """``op_type`` over axis 1, keeping it (axes as an input from opset 13 / 18 on)."""
        axes_as_input = self.opset >= (13 if op_type == "ReduceSum" else 18)
        if axes_as_input:
            return self.op(op_type, [x, self.const([1], "axes", np.int64)], output, keepdims=1)
        return self.op(op_type, [x], output, axes=[1], keepdims=1)

    def attr(self, name: str, default: Any = None) -> Any:
        for a in self.node.attribute:
            if a.name == name:
                value = self.helper.get_attribute_value(a)
                return value.decode() if isinstance(value, bytes) else value
        return default


def _linear_classifier(ctx: _Context) -> None:
    coef = np.asarray(ctx.attr("coefficients", []), np.float64)
    intercepts = np.asarray(ctx.attr("intercepts", []), np.float64)
    rows = len(intercepts) if len(intercepts) else 1
    n_labels = len(ctx.attr("classlabels_ints", []) or ctx.attr("classlabels_strings", []) or [])
    if coef.size % rows:
        raise ValueError(f"LinearClassifier {ctx.node.name!r}: {coef.size} coefficients do not split into {rows} rows")
    W = coef.reshape(rows, -1)
    b = intercepts if len(intercepts) else np.zeros(rows)
    transform = ctx.attr("post_transform", "NONE")
    scores = ctx.node.output[1] if len(ctx.node.output) > 1 and ctx.node.output[1] else ctx.name("scores")
    if transform == "LOGISTIC" and rows == 2 and np.array_equal(W[0], -W[1]) and b[0] == -b[1]:
        # skl2onnx's binary logistic regression: [sigmoid(-s), sigmoid(s)] = softmax([0, s]), exact
        # in log p through the Softmax where 1 - sigmoid(s) would cancel
        W, b, rows = W[1:], b[1:], 1
    z = ctx.op("Gemm", [ctx.node.input[0], ctx.const(W, "W"), ctx.const(b, "b")], transB=1)
    if rows == 1 and (n_labels == 2 or transform == "LOGISTIC"):  # two columns from one score s
        if transform == "LOGISTIC":  # [1 - sigmoid(s), sigmoid(s)] = softmax([0, s])
            logits = ctx.op("Concat", [ctx.op("Mul", [z, ctx.const(0.0, "zero")]), z], axis=1)
            ctx.op("Softmax", [logits], scores, axis=1 if ctx.opset < 13 else -1)
        elif transform == "NONE":  # ONNX Runtime's one-row binary form: [1 - s, s]
            ctx.op("Concat", [ctx.op("Sub", [ctx.const(1.0, "one"), z]), z], scores, axis=1)
        else:
            raise ValueError(f"LinearClassifier {ctx.node.name!r}: a one-row binary classifier with "
                             f"post_transform {transform!r} has no rewrite (NONE and LOGISTIC have)")
        return
    if transform == "NONE":
        ctx.op("Identity", [z], scores)
    elif transform == "LOGISTIC":
        ctx.op("Sigmoid", [z], scores)
    elif transform == "SOFTMAX":
        ctx.op("Softmax", [z], scores, axis=1 if ctx.opset < 13 else -1)
    else:
        raise ValueError(f"LinearClassifier {ctx.node.name!r}: post_transform {transform!r} has no rewrite "
                         "(NONE, LOGISTIC and SOFTMAX have)")


def _normalizer(ctx: _Context) -> None:
    x, y = ctx.node.input[0], ctx.node.output[0]
    norm = ctx.attr("norm", "MAX")
    source = ctx.producer.get(x)
    if norm == "L1" and source is not None and source.op_type == "Softmax":  # already sums to 1
        ctx.op("Identity", [x], y)
        return
    if norm == "L1":
        denominator = ctx.reduce("ReduceSum", ctx.op("Abs", [x]))
    elif norm == "L2":
        denominator = ctx.op("Sqrt", [ctx.reduce("ReduceSum", ctx.op("Mul", [x, x]))])
    elif norm == "MAX":
        denominator = ctx.reduce("ReduceMax", x)
    else:
        raise ValueError(f"Normalizer {ctx.node.name!r}: norm {norm!r} has no rewrite (MAX, L1 and L2 have)")
    ctx.op("Div", [x, denominator], y)


def _scaler(ctx: _Context) -> None:
    offset = ctx.const(np.asarray(ctx.attr("offset", [0.0]), np.float64), "offset")
    scale = ctx.const(np.asarray(ctx.attr("scale", [1.0]), np.float64), "scale")
    ctx.op("Mul", [ctx.op("Sub", [ctx.node.input[0], offset]), scale], ctx.node.output[0])


_RULES = {"LinearClassifier": _linear_classifier, "Normalizer": _normalizer, "Scaler": _scaler}
