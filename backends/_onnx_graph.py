"""Reading an ONNX classifier's graph: where its softmax is, and whether its inputs are independent.

Two questions :class:`~fisher_ref.backends.OnnxBackend` asks of a graph before it differentiates it:

* :func:`final_softmax`: is the output a ``Softmax`` (or ``LogSoftmax``) over the classes, possibly
  followed by nodes that only change the shape (``Softmax -> Reshape``)? Then the softmax's input
  is the logits, and ``log p`` is computed from them without ``Log(0)``.
* :func:`batch_coupled_nodes`: does any node mix the inputs of a batch (a softmax or a reduction over
  the batch axis, batch normalisation in training mode)? The backend stacks (input, seed) pairs
  along the batch axis, which is only right when the rows are independent.

Both work on shapes inferred by ONNX's shape inference for a given batch size; a dimension that
inference cannot fix is ``None``.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

#: Nodes that only change the shape of a tensor (row-major element order kept).
SHAPE_ONLY = frozenset({"Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze"})

#: Nodes that normalise over one axis (``axis`` attribute).
_NORMALISERS = frozenset({"Softmax", "LogSoftmax", "Hardmax"})
#: Nodes that work along one axis (``axis`` attribute, default 0 unless given in _AXIS_DEFAULT).
_ALONG_AXIS = frozenset({"ArgMax", "ArgMin", "TopK", "LpNormalization", "LayerNormalization"})
_AXIS_DEFAULT = {"TopK": -1, "LpNormalization": -1, "LayerNormalization": -1}
_REDUCE = frozenset({"ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1",
                     "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare"})


def attribute(node, name: str, default: Any = None) -> Any:
    """The value of attribute ``name`` of ``node`` (int, float, string, or list of ints), or ``default``."""
    for a in node.attribute:
        if a.name == name:
            if a.ints:
                return list(a.ints)
            if a.type == a.INT:
                return a.i
            if a.type == a.FLOAT:
                return a.f
            if a.type == a.STRING:
                return a.s.decode()
            return list(a.ints)
    return default


def inferred_dims(onnx, model) -> dict[str, list | None]:
    """``{tensor name: dims}`` from ONNX shape inference (ints; ``None`` for an unknown dimension,
    ``None`` instead of a list for an unknown rank); empty when inference fails."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception:  # inference is best effort: the callers treat unknown shapes conservatively
        return {}
    graph = inferred.graph
    out = {}
    for value in list(graph.input) + list(graph.value_info) + list(graph.output):
        tt = value.type.tensor_type
        out[value.name] = ([d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
                           if tt.HasField("shape") else None)
    for t in graph.initializer:
        out[t.name] = list(t.dims)
    return out


def _producers(graph) -> dict:
    return {name: node for node in graph.node for name in node.output if name}


def final_softmax(graph, output_name: str, opset: int, dims: dict, n_classes: int):
    """``(node, chain)``: the ``Softmax``/``LogSoftmax`` node over the classes that ``output_name``
    is, up to the shape-only nodes ``chain`` after it (output side first); ``(None, chain)`` when
    the output does not come from one."""
    producer = _producers(graph)
    chain = []
    node = producer.get(output_name)
    while node is not None and node.op_type in SHAPE_ONLY:
        chain.append(node)
        node = producer.get(node.input[0])
    if node is not None and node.op_type in ("Softmax", "LogSoftmax") and \
            normalises_over_classes(node, opset, dims, n_classes, direct=not chain):
        return node, chain
    return None, chain


def normalises_over_classes(node, opset: int, dims: dict, n_classes: int, *, direct: bool = True) -> bool:
    """Whether a ``Softmax``-like ``node`` normalises each input's ``n_classes`` scores together:
    its axis is not the batch axis and every other non-batch dimension has size 1.

    ``direct``: the node produces the (batch, C) output itself; then an unknown input shape is
    read from the output's rank 2.
    """
    shape = dims.get(node.input[0])
    axis = attribute(node, "axis", -1 if opset >= 13 else 1)
    if shape is None or any(d is None for d in shape[1:]):
        return direct and axis in (-1, 1)
    rank = len(shape)
    axis = axis + rank if axis < 0 else axis
    if not 1 <= axis < rank:
        return False
    if opset >= 13:  # one axis
        others = [d for i, d in enumerate(shape) if i not in (0, axis)]
        return shape[axis] == n_classes and math.prod(others) == 1
    # before opset 13: the input is coerced to 2-D at `axis`, normalised over prod(shape[axis:])
    return math.prod(shape[1:axis]) == 1 and math.prod(shape[axis:]) == n_classes


#: nodes whose output describes their input's shape, not its values (shape arithmetic after them, such
#: as tf2onnx's ReduceProd of a Shape, mixes no rows)
_METADATA = ("Shape", "Size")


def batch_coupled_nodes(graph, input_name: str, opset: int, dims: dict) -> list[str]:
    """Descriptions of the nodes downstream of ``input_name`` that mix the rows of a batch, e.g.
    ``"Softmax 'sm' over axis 0"``: softmax-like and along-axis nodes on the batch axis, reductions
    whose axes include it (all axes when none are given), batch normalisation in training mode and
    MeanVarianceNormalization over the batch axis."""
    constants = {t.name: t for t in graph.initializer}
    constants.update({n.output[0]: n for n in graph.node if n.op_type == "Constant" and n.output})
    live, found = {input_name}, []
    for node in graph.node:
        if node.op_type in _METADATA or not any(i in live for i in node.input if i):
            continue  # a tensor's shape or size carries none of its rows' values
        live.update(o for o in node.output if o)
        why = _couples_batch(node, opset, dims, constants)
        if why:
            found.append(f"{node.op_type} {node.name or node.output[0]!r} {why}")
    return found


def _couples_batch(node, opset: int, dims: dict, constants: dict) -> str | None:
    shape = dims.get(node.input[0]) if node.input else None
    rank = len(shape) if shape is not None else None
    op = node.op_type
    if op in _NORMALISERS or op in _ALONG_AXIS or op == "CumSum":
        if op == "CumSum":
            axes = _constant_ints(node.input[1] if len(node.input) > 1 else "", constants)
            axis = axes[0] if axes else None
        else:
            default = (-1 if opset >= 13 else 1) if op in _NORMALISERS else _AXIS_DEFAULT.get(op, 0)
            axis = attribute(node, "axis", default)
        if axis is None:
            return "along an axis not known before running"
        if axis == 0 or (rank is not None and axis + rank == 0):
            return "over axis 0 (the batch axis)"
        return None
    if op in _REDUCE:
        return _reduction_couples(node, opset, rank, constants)
    if op == "BatchNormalization" and attribute(node, "training_mode", 0):
        return "in training mode (batch statistics)"
    if op == "MeanVarianceNormalization" and 0 in (attribute(node, "axes", [0, 2, 3]) or []):
        return "over axis 0 (the batch axis)"
    return None


def _reduction_couples(node, opset: int, rank: int | None, constants: dict) -> str | None:
    axes = attribute(node, "axes")
    if axes is None and len(node.input) > 1 and node.input[1]:
        axes = _constant_ints(node.input[1], constants)
        if axes is None:
            return "over axes not known before running"
    if not axes:
        if attribute(node, "noop_with_empty_axes", 0):
            return None
        return "over all axes, the batch axis among them"
    if any(a == 0 or (rank is not None and a + rank == 0) for a in axes):
        return "over axis 0 (the batch axis)"
    return None


def _constant_ints(name: str, constants: dict) -> list[int] | None:
    """The int values of a constant tensor (initializer or Constant node), or None."""
    from onnx import numpy_helper

    source = constants.get(name)
    if source is None:
        return None
    if hasattr(source, "op_type"):  # a Constant node
        value = next((a.t for a in source.attribute if a.name == "value"), None)
        if value is None:
            return None
        source = value
    return [int(v) for v in numpy_helper.to_array(source).reshape(-1)]


#: onnx-ad differentiates Gather and MaxPool in reverse mode with ScatterND(reduction="add"), opset 16
UPGRADE_BELOW, UPGRADE_TO = 16, 17


def opset_of(model) -> int:
    """The model's version of the default (ai.onnx) operator set."""
    return max([o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] or [1])


def upgraded(onnx, model):
    """``model`` converted by ``onnx.version_converter`` to opset :data:`UPGRADE_TO` when it is below
    :data:`UPGRADE_BELOW` (so that onnx-ad's reverse rules for Gather and MaxPool apply); None when it
    needs no conversion or the converter cannot convert it."""
    if opset_of(model) >= UPGRADE_BELOW:
        return None
    try:
        out = onnx.version_converter.convert_version(model, UPGRADE_TO)
        onnx.checker.check_model(out)
    except Exception:  # an operator the converter has no adapter for: differentiate as it is
        return None
    return out


def describe(found: Sequence[str], limit: int = 3) -> str:
    """``"Softmax 'a' over axis 0, ReduceMean 'b' ..."``: the first ``limit`` findings and a count of the rest."""
    text = ", ".join(found[:limit])
    return text + (f" and {len(found) - limit} more" if len(found) > limit else "")


# ------------------------------------------------------------------------- building replacement nodes
class NodeBuilder:
    """Nodes and constants that replace one node of a graph, under fresh names derived from it."""

    def __init__(self, onnx, node, dtype=None):
        self.helper, self.numpy_helper = onnx.helper, onnx.numpy_helper
        self.node, self.dtype = node, dtype or np.int64
        self.nodes: list = []
        self.inits: list = []
        self._stem = (node.name or node.output[0] or node.op_type) + "_fisher_ref"
        self._i = 0

    def name(self, what: str) -> str:
        self._i += 1
        return f"{self._stem}_{what}_{self._i}"

    def const(self, value, what: str, dtype=None) -> str:
        """An initializer holding ``value`` (in ``dtype``, default the builder's)."""
        name = self.name(what)
        self.inits.append(self.numpy_helper.from_array(np.asarray(value, dtype or self.dtype), name))
        return name

    def op(self, op_type: str, inputs: list, output: str | None = None, **attrs) -> str:
        output = output or self.name(op_type.lower())
        self.nodes.append(self.helper.make_node(op_type, inputs, [output], name=output, **attrs))
        return output


# ------------------------------------------------------------------------- race-free scatter-add
def race_free_scatters(onnx, model):
    """``(model, n, unsafe)``: a copy with ``n`` ``ScatterND(reduction="add")`` nodes replaced by the
    same sum through ``ScatterElements(reduction="add")`` (the model itself when there are none);
    ``unsafe`` counts those left as they are.

    ONNX Runtime's CPU ScatterND adds the slices of different threads into the output without
    synchronisation, so duplicate indices (onnx-ad's reverse of a Gather that repeats an index, as
    adaptive pooling and upsampling do) give a different, wrong sum from run to run
    (microsoft/onnxruntime#23396, #18048); its ScatterElements kernel adds in order. The indices
    ``(..., k)`` are flattened to rows of ``data`` reshaped to ``(prod(shape[:k]), rest)``, negative
    ones first counted from the end; ``k`` must be known from the indices' inferred shape (a node
    whose ``k`` is not is left as it is, and counted in ``unsafe``).
    """
    targets = [n for n in model.graph.node if n.op_type == "ScatterND" and _reduction(n) == "add"]
    if not targets:
        return model, 0, 0
    dims = inferred_dims(onnx, model)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    nodes, inits, done, unsafe = [], [], 0, 0
    for node in out.graph.node:
        k = None
        if node.op_type == "ScatterND" and _reduction(node) == "add":
            shape = dims.get(node.input[1])
            k = shape[-1] if shape and isinstance(shape[-1], int) else None
            unsafe += k is None
        if k is None:
            nodes.append(node)
            continue
        new_nodes, new_inits = _scatter_elements_add(onnx, node, k)
        nodes += new_nodes
        inits += new_inits
        done += 1
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    out.graph.initializer.extend(inits)
    return out, done, unsafe


def _reduction(node) -> str:
    value = attribute(node, "reduction", "none")
    return value.decode() if isinstance(value, bytes) else value


def _scatter_elements_add(onnx, node, k: int):
    """Nodes computing ``ScatterND(data, indices, updates, reduction="add")`` with ScatterElements."""
    data, indices, updates = node.input[:3]
    b = NodeBuilder(onnx, node)  # int64 constants
    shape = b.op("Shape", [data])
    head = b.op("Slice", [shape, b.const([0], "zero"), b.const([k], "k")])
    rows = b.op("ReduceProd", [b.op("Concat", [b.const([1], "one"), head], axis=0)], keepdims=1)
    rest = b.op("ReduceProd", [b.op("Concat", [b.const([1], "one"), b.op("Slice", [shape, b.const([k], "k"),
                                                                                  b.const([2**62], "end")])], axis=0)],
                keepdims=1)
    flat = None  # sum_j idx_j * prod(head[j+1:]), each idx_j counted from the end when negative
    for j in range(k):
        dim = b.op("Gather", [head, b.const([j], "j")])
        idx = b.op("Gather", [indices, b.const(j, "j")], axis=-1)
        idx = b.op("Where", [b.op("Less", [idx, b.const(0, "zero")]), b.op("Add", [idx, dim]), idx])
        flat = idx if flat is None else b.op("Add", [b.op("Mul", [flat, dim]), idx])
    upd = b.op("Reshape", [updates, b.op("Concat", [b.const([-1], "minus_one"), rest], axis=0)])
    where = b.op("Expand", [b.op("Reshape", [flat, b.const([-1, 1], "column")]), b.op("Shape", [upd])])
    table = b.op("Reshape", [data, b.op("Concat", [rows, rest], axis=0)])
    summed = b.op("ScatterElements", [table, where, upd], axis=0, reduction="add")
    b.op("Reshape", [summed, shape], node.output[0])
    return b.nodes, b.inits


def pin_loop_state_shapes(onnx, model, shapes: dict) -> list[str]:
    """Declare, in place, the shapes of the loop-carried inputs of every top-level ``Loop`` body from
    ``shapes`` (``{name: dims}``, as one run gave them), where the body leaves them unknown.

    Exporters (tf2onnx's Keras RNNs) declare a body's state without its batch dimension, so shape
    inference cannot size anything inside the body and onnx-ad cannot differentiate a ``Slice``
    there. A state is pinned only where its initial value and the loop's final value had the same
    shape in the run (a state whose shape changes between iterations stays as it is). Returns the
    names of the Loop nodes changed.
    """
    changed = []
    for node in model.graph.node:
        if node.op_type != "Loop":
            continue
        body = next((a.g for a in node.attribute if a.name == "body"), None)
        n_state = len(node.input) - 2
        if body is None or n_state <= 0 or len(body.input) < 2 + n_state:
            continue
        pinned = False
        for j in range(n_state):
            initial, final = node.input[2 + j], node.output[j] if j < len(node.output) else ""
            dims = shapes.get(initial)
            if dims is None or shapes.get(final) != dims:
                continue
            value = body.input[2 + j]
            declared = value.type.tensor_type
            if declared.HasField("shape") and all(d.HasField("dim_value") for d in declared.shape.dim):
                continue
            elem = declared.elem_type or onnx.TensorProto.FLOAT
            value.CopyFrom(onnx.helper.make_tensor_value_info(value.name, elem, list(dims)))
            pinned = True
        if pinned:
            changed.append(node.name or node.op_type)
    return changed


# ------------------------------------------------------------------------- asymmetric Conv padding
def explicit_asymmetric_conv_pads(onnx, model):
    """``(model, names)``: a copy in which every top-level ``Conv`` whose ``pads`` differ between the
    start and the end of an axis (TensorFlow's "same" padding at stride 2, as tf2onnx writes it:
    ``pads=[0, 0, 1, 1]``) reads its input through an explicit zero ``Pad`` and pads nothing itself;
    ``names`` lists the nodes changed (the model itself when there are none).

    The same function, differentiated differently: onnx-ad's reverse of a Conv is a ConvTranspose
    given the input's ``output_shape``, and ONNX then places the padding by its own rule (the larger
    half first), not where the Conv had it, so the input gradient of a Conv padded ``(0, 1)`` came out
    shifted (errors of the order of the gradient itself). A Conv without padding, or with the same
    padding at both ends, has the ConvTranspose it needs; the Pad's reverse is a Slice.
    """
    targets = [n for n in model.graph.node if n.op_type == "Conv" and _asymmetric(attribute(n, "pads"))]
    if not targets:
        return model, []
    out = onnx.ModelProto()
    out.CopyFrom(model)
    nodes, inits, names = [], [], []
    for node in out.graph.node:
        pads = attribute(node, "pads") if node.op_type == "Conv" else None
        if not _asymmetric(pads) or attribute(node, "auto_pad", "NOTSET") not in ("NOTSET", b"NOTSET"):
            nodes.append(node)
            continue
        b = NodeBuilder(onnx, node)
        half = len(pads) // 2
        full = [0, 0, *pads[:half], 0, 0, *pads[half:]]  # no padding of the batch and channel axes
        padded = b.op("Pad", [node.input[0], b.const(full, "pads")], mode="constant")
        conv = onnx.NodeProto()
        conv.CopyFrom(node)
        conv.input[0] = padded
        for a in conv.attribute:
            if a.name == "pads":
                del a.ints[:]
                a.ints.extend([0] * len(pads))
        nodes += b.nodes + [conv]
        inits += b.inits
        names.append(f"Conv {node.name or node.output[0]!r}")
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    out.graph.initializer.extend(inits)
    return out, names


def _asymmetric(pads) -> bool:
    if not pads:
        return False
    half = len(pads) // 2
    return list(pads[:half]) != list(pads[half:])
