"""ONNX Runtime backend: the Fisher information of an exported classifier, without autograd.

ONNX Runtime runs graphs but cannot differentiate them. :class:`OnnxBackend` differentiates the
graph itself with `onnx-ad <https://github.com/yacoda/onnx-ad>`_ (source transformation over the
ONNX protobuf) and runs the derivative graphs in ordinary :class:`onnxruntime.InferenceSession` s:

* a wrapper graph appends ``log p = LogSoftmax(logits)`` to the classifier (or ``Log(probs)`` when
  it outputs probabilities; a final ``Softmax``, also one followed by shape-only nodes such as
  ``Reshape``, is replaced by ``LogSoftmax`` of its input);
* ``onnx_ad.reverse`` of the wrapper computes ``J_logp^T s`` for any number of seed directions
  ``s`` in one run: seeding ``-e_i`` for every class gives all per-class gradients
  ``g_i = grad_x(-log p_i)`` of a batch at once (paper eq. 6);
* ``onnx_ad.forward`` of the wrapper computes ``u = J_logp v`` for a block of directions ``v``;
  then ``G v = J_logp^T (p * u)`` is one reverse run with seeds ``p * u``. Since
  ``J_logp = (I - 1 p^T) J``, this is ``J^T (diag p - p p^T) J v`` (paper eq. 4) whatever C is.

onnx, onnxruntime and onnx-ad are imported when a backend is constructed, never at import time.
"""

from __future__ import annotations

import importlib
import logging
import math
import os
import warnings
from collections import OrderedDict
from typing import Any, Sequence

import numpy as np

from .._backend import Backend, _check_shape
from .._softmax import fisher_weights, log_softmax, softmax_seeds
from .._validation import check_int, check_method, shape_str
from ._onnx_graph import (batch_coupled_nodes, describe, explicit_asymmetric_conv_pads, final_softmax,
                          inferred_dims, opset_of, pin_loop_state_shapes, race_free_scatters, upgraded)
from ._onnx_ml import rewrite_ml_operators, scores_output, with_only_output

__all__ = ["OnnxBackend"]

logger = logging.getLogger(__name__)

_MISSING = ("OnnxBackend needs onnx, onnxruntime and onnx-ad: pip install 'fisher-ref[onnx]' "
            "(or 'fisher-ref[onnx-gpu]')")

#: What ``output=`` accepts; ``"auto"`` chooses between the others.
OUTPUT_KINDS = ("auto", "logits", "probabilities", "log_probabilities")

#: Element types of the graph input the backend computes in (ONNX TensorProto codes).
_FLOAT, _DOUBLE = 1, 11
_DTYPES = {_FLOAT: np.dtype(np.float32), _DOUBLE: np.dtype(np.float64)}


def _frameworks():
    """``(onnx, onnxruntime, onnx_ad)``, imported on first use (ImportError names the extra)."""
    try:
        onnx = importlib.import_module("onnx")
        ort = importlib.import_module("onnxruntime")
        onnx_ad = importlib.import_module("onnx_ad")
    except ImportError as exc:
        raise ImportError(_MISSING) from exc
    return onnx, ort, onnx_ad


def _version(module) -> tuple[int, ...]:
    parts = []
    for p in str(getattr(module, "__version__", "0")).split(".")[:2]:
        digits = "".join(c for c in p if c.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


class _Derivative:
    """One derivative model at a fixed batch size; its session is created on first use, and the
    model (a protobuf with its own copy of the weights) is let go once the session holds it."""

    __slots__ = ("model", "seed", "output", "session")

    def __init__(self, model, seed: str, output: str):
        self.model, self.seed, self.output, self.session = model, seed, output, None

    def open(self, make_session, what: str):
        """The session, made from the model on the first call."""
        if self.session is None:
            self.session = make_session(self.model, what)
            self.model = None
        return self.session


class OnnxBackend(Backend):
    """A classifier stored as an ONNX graph, differentiated with onnx-ad, run by ONNX Runtime.

    Parameters
    ----------
    model : str, os.PathLike or onnx.ModelProto
        The classifier: one floating-point input of shape ``(batch, *input_shape)`` and an output
        of class scores ``(batch, n_classes)`` with ``n_classes >= 2``.
    providers : str or sequence, optional
        ONNX Runtime execution providers, in order of preference (names, or ``(name, options)``
        pairs). Default: ``["CUDAExecutionProvider", "CPUExecutionProvider"]`` when
        ``onnxruntime-gpu`` sees a GPU, else ``["CPUExecutionProvider"]``.
    input_name : str, optional
        The graph input to differentiate; required when the graph has several inputs.
    output_name : str, optional
        The graph output holding the class scores; required when the graph has several float
        outputs. Without it the one float tensor output is taken (a scikit-learn export's
        ``probabilities`` beside its int64 ``label``); a ``ZipMap`` output (a sequence of maps)
        stands for the tensor it is made from.
    output : {"auto", "logits", "probabilities", "log_probabilities"}, default "auto"
        What the output holds. ``"auto"`` reads probabilities when the output comes from a
        ``Softmax`` node or, on a probe batch, is non-negative with rows summing to 1 (and
        log-probabilities when it comes from a ``LogSoftmax`` node), logits otherwise; the
        choice is stored in :attr:`output_kind_` and logged at INFO level.
    batch_size : int, default 64
        Inputs per ``InferenceSession.run``; larger batches are processed in chunks.
    input_shape : tuple of int, optional
        Shape of one input. Needed only when the graph leaves dimensions other than the batch
        dimension symbolic (or declares no input shape); otherwise it must agree with the graph.
    max_memory : int, optional
        Bytes a derivative run may hold: ``batch_size`` is lowered to ``max_memory //
        row_bytes_`` (at least 1) for a graph with a dynamic batch axis.

    Attributes
    ----------
    model : onnx.ModelProto
        The classifier as loaded.
    input_name, output_name : str
    output_kind_ : str
        ``"logits"``, ``"probabilities"`` or ``"log_probabilities"``, as chosen or declared.
    input_shape : tuple of int
    n_classes : int
    dtype : numpy.dtype
        float32 or float64, the element type of the graph input.
    providers : list of str
        The providers the sessions were created with.
    batch_size : int
        Inputs per run (the graph's own batch size when it declares a fixed one; 1 for a graph
        that mixes the inputs of a batch).
    row_bytes_ : int or None
        Estimated bytes of one row of a derivative run: three times the tensors of one input's
        forward pass (activations and their adjoints or tangents), from ONNX shape inference;
        None when inference gives no sizes.
    rewritten_ : list of str
        How the graph that is differentiated differs from the one loaded: the ``ai.onnx.ml``
        nodes (``LinearClassifier``, ``Normalizer``, ``Scaler``: scikit-learn exports) rewritten
        in standard ONNX operators, and an opset below 16 converted to 17 by
        ``onnx.version_converter`` (onnx-ad's reverse rules for ``Gather`` and ``MaxPool`` need
        opset 16). Each rewrite is checked against ONNX Runtime on the loaded graph on a probe batch.
    batch_coupling_ : str or None
        What mixes the inputs of a batch in the graph (e.g. ``"Softmax 'sm' over axis 0 (the batch
        axis)"``), None when the inputs are independent.

    Raises
    ------
    ImportError
        If onnx, onnxruntime or onnx-ad is missing.
    TypeError
        If ``model`` is neither a path nor an ``onnx.ModelProto``.
    ValueError
        If the file is missing or not a valid ONNX model; the graph has several inputs and no
        ``input_name`` (or ``input_name`` / ``output_name`` is not in the graph); the input is
        not float32/float64; a dimension other than the batch dimension is symbolic and
        ``input_shape`` is not given; the output is not ``(batch, n_classes)`` with
        ``n_classes >= 2``; a declared ``output`` kind contradicts what the graph computes; an
        operation cannot be differentiated by onnx-ad (the message names its type and node); the
        graph mixes the inputs of a batch and fixes the batch size above 1; or a provider is not
        available (the message lists those that are).

    Notes
    -----
    **Derivative models.** onnx-ad needs declared shapes (a ``Conv`` in reverse mode, pooling
    windows), so the wrapper graph is differentiated with every input dimension fixed, batch
    included. One reverse and one forward model are built per batch size met -- the full
    ``batch_size`` and the size of a smaller last chunk -- and kept in a small LRU cache (the
    last chunk is *not* padded: padding a single input to ``batch_size`` would multiply the
    cost of the one-input calls a spectrum computation makes). A graph that declares a fixed
    batch size ``b`` is run in chunks of exactly ``b``, the last one padded by repeating its
    last input.

    **Runs per call.** Derivative runs stack one (input, seed) pair per row along the batch
    axis, ``batch_size`` rows per run: ``class_gradients`` of n inputs and m classes takes
    ``ceil(n m / batch_size)`` reverse runs, a block of k Fisher-vector products
    ``ceil(n k / batch_size)`` forward and as many reverse runs, ``loss_gradient`` and
    ``probabilities`` ``ceil(n / batch_size)`` runs. (onnx-ad can also carry many seeds on a
    trailing axis of one run; ONNX Runtime executes that layout several times slower on
    convolutions, so it is not used.)

    **Precision.** The graphs run in :attr:`dtype`; the derivatives are taken of the scores s
    (the logits, or the input of a final Softmax) and the softmax algebra is done in float64
    outside the graph, as in the torch backend: the gradient of ``-log p_c`` is ``J^T (p - e_c)``
    with ``p_c - 1 = expm1(log p_c)`` from a log-softmax that keeps a dominant class's
    ``log p_c`` accurate, so a saturated class's gradient keeps its relative accuracy.
    ``output="probabilities"`` without a final ``Softmax`` node (looked for through shape-only
    nodes: ``Reshape``, ``Flatten``, ``Squeeze``, ``Unsqueeze``, ``Identity``) differentiates
    ``Log(Max(probs, tiny))``: a probability that underflows to 0 in the graph's dtype counts as
    ``tiny`` (its weight in G is below the dtype's resolution) and its class's gradient lacks the
    part that flows through that probability.

    **Inputs of a batch are independent.** Derivative runs stack different (input, seed) rows
    along the batch axis, which is right only when no node mixes the rows. A graph that does (a
    softmax, a reduction or a cumulative sum over axis 0, batch normalisation in training mode,
    found in the graph or, for a dynamic batch axis, by a probe whose row 0 changes with the
    other rows) is run one input per run (``batch_size`` 1, with a warning) and described in
    :attr:`batch_coupling_`; with a fixed batch size above 1 it is refused.

    References
    ----------
    .. [1] C. Zhao, P. T. Fletcher, M. Yu, Y. Peng, G. Zhang, C. Shen, "The Adversarial Attack
       and Detection under the Fisher Information Metric", AAAI 2019, eqs. 4 and 6.
    """

    capabilities = frozenset({"probabilities", "class_gradients", "fisher_vector_product",
                              "loss_gradient"})

    #: Derivative models (with their sessions) kept per backend.
    cache_size: int = 16

    def __init__(self, model: Any, *, providers: str | Sequence[Any] | None = None,
                 input_name: str | None = None, output_name: str | None = None,
                 output: str = "auto", batch_size: int = 64,
                 input_shape: Sequence[int] | None = None, max_memory: int | None = None):
        onnx, ort, onnx_ad = _frameworks()
        self._onnx, self._ort, self._onnx_ad = onnx, ort, onnx_ad
        output = check_method(output, OUTPUT_KINDS, "output")
        batch_size = check_int(batch_size, "batch_size", min_val=1)
        max_memory = check_int(max_memory, "max_memory", min_val=1, allow_none=True)
        self.model, self._source = _load(onnx, model)
        self._providers = _check_providers(ort, providers)

        served = self._scores_model(output_name)
        self.input_name, dims, elem = _select_input(served.graph, input_name, self.model.graph, self.output_name)
        if elem not in _DTYPES:
            raise ValueError(f"model input {self.input_name!r} has element type {_type_name(onnx, elem)}; "
                             "OnnxBackend differentiates a float32 or float64 input")
        self.dtype = _DTYPES[elem]
        batch, shape = _input_dims(self.input_name, dims, input_shape)
        super().__init__(shape)
        self._fixed_batch = batch
        self.batch_size = int(batch if batch is not None else batch_size)
        self.output = output

        # the classifier itself (its one output the class scores), for probabilities and the probe batch
        self._primal = self._session(_with_input_dims(onnx, served, self.input_name,
                                                      [batch if batch is not None else "batch", *shape]),
                                     "the model", ValueError)
        self.providers = list(self._primal.get_providers())
        # what is differentiated: the same with ai.onnx.ml operators in standard ONNX, at opset >= 16
        self._work, self.rewritten_ = rewrite_ml_operators(onnx, served)
        newer = upgraded(onnx, self._work)
        if newer is not None:
            self.rewritten_.append(f"opset {opset_of(self._work)} -> {opset_of(newer)} (onnx.version_converter)")
            self._work = newer
        self._work, padded = explicit_asymmetric_conv_pads(onnx, self._work)
        if padded:
            self.rewritten_.append(f"asymmetric Conv pads as Pad nodes ({describe(padded)})")
        self._opset = opset_of(self._work)
        self._dims = inferred_dims(onnx, _with_input_dims(onnx, self._work, self.input_name,
                                                          [self._fixed_batch or 2, *shape]))
        self.row_bytes_ = self._row_bytes()
        if max_memory is not None and self._fixed_batch is None and self.row_bytes_:
            self.batch_size = max(1, min(self.batch_size, max_memory // self.row_bytes_))
        self.batch_coupling_ = self._batch_coupling()
        if self.batch_coupling_:
            self._one_input_per_run()
        probe = self._probe()
        self.n_classes = int(probe.shape[1])
        self._softmax, _ = final_softmax(self._work.graph, self.output_name, self._opset, self._dims, self.n_classes)
        self.output_kind_, reason = self._output_kind(output, probe)
        if output == "auto":
            logger.info("OnnxBackend: output %r read as %s (%s)", self.output_name, self.output_kind_, reason)

        self._log_p = _fresh_name(self._work.graph, "fisher_ref_log_p")
        self._cache: OrderedDict = OrderedDict()
        if self.rewritten_:
            self._check_rewrite(probe)
        # differentiate now, so that an operation onnx-ad cannot handle fails the constructor
        first = batch if batch is not None else 1
        for mode in ("reverse", "forward"):
            self._derivative(mode, first)

    # ------------------------------------------------------------------ construction helpers
    def _scores_model(self, output_name: str | None):
        """The model with one graph output, the class scores (a ZipMap's input tensor for a ZipMap
        output; pruned to what the scores need); sets ``output_name`` and the output's element type."""
        onnx = self._onnx
        self.output_name, note = scores_output(self.model.graph, output_name)
        if note:
            logger.info("OnnxBackend: class scores %r: %s", self.output_name, note)
        served = with_only_output(onnx, self.model, self.output_name)
        _prune(onnx, served.graph, self.output_name)
        value = served.graph.output[0]
        out_dims, out_elem = _dims(value), value.type.tensor_type.elem_type
        if out_elem not in _DTYPES:
            raise ValueError(f"model output {self.output_name!r} has element type "
                             f"{_type_name(onnx, out_elem)}; expected float32 or float64 class scores")
        if out_dims is not None and (len(out_dims) != 2 or (isinstance(out_dims[1], int) and out_dims[1] < 2)):
            raise ValueError(f"model output {self.output_name!r} has shape {_dims_str(out_dims)}; expected "
                             "class scores of shape (batch, n_classes) with n_classes >= 2")
        self._out_elem = out_elem
        return served

    #: a derivative run holds about this many times a forward pass's tensors (activations and adjoints)
    _DERIVATIVE_FACTOR = 3

    def _row_bytes(self) -> int | None:
        """Estimated bytes one row of a derivative run holds: the tensors of the differentiated graph
        that carry the batch axis (shapes from inference at the probe batch), per row, times
        :attr:`_DERIVATIVE_FACTOR`; None where shape inference gave no sizes."""
        b = self._fixed_batch or 2
        produced = {o for node in self._work.graph.node for o in node.output if o}
        total = 0
        for name, dims in self._dims.items():
            if name in produced and dims and dims[0] == b and all(isinstance(d, int) for d in dims):
                total += math.prod(dims[1:])
        return int(self._DERIVATIVE_FACTOR * total * self.dtype.itemsize) or None

    def _check_rewrite(self, probe: np.ndarray) -> None:
        """The rewritten ai.onnx.ml operators give ONNX Runtime's own outputs on the probe batch."""
        n = probe.shape[0]
        x = self._probe_batch(n)  # the inputs of the probe
        mine = self._session(_with_input_dims(self._onnx, self._work, self.input_name, [n, *self.input_shape]),
                             "the rewritten model", ValueError)
        got = np.asarray(mine.run([self.output_name], {self.input_name: x})[0], np.float64)
        tol = 100 * float(np.finfo(self.dtype).eps) * max(1.0, float(np.abs(probe).max()))
        if got.shape != probe.shape or not np.all(np.abs(got - probe) <= tol):
            diff = float(np.abs(got - probe).max()) if got.shape == probe.shape else float("nan")
            raise ValueError(f"model: {', '.join(self.rewritten_)} rewritten in standard ONNX operators disagree "
                             f"with ONNX Runtime on a probe batch (largest difference {diff:.3g}); OnnxBackend "
                             "cannot differentiate this model")

    def _session(self, model, what: str, error: type = RuntimeError):
        ort = self._ort
        options = ort.SessionOptions()
        options.log_severity_level = 3  # ORT warns about every constant it folds away
        # ScatterND(reduction="add") races between threads on duplicate indices: summed in order
        # instead, or, where the rewrite cannot be made, the whole session on one thread
        model, _, unsafe = race_free_scatters(self._onnx, model)
        if unsafe:
            options.intra_op_num_threads = 1
        kwargs = {}
        if _version(ort) < (1, 19):
            # onnx-ad's README: EliminateIdentity miscompiles some derivative models before 1.19
            kwargs["disabled_optimizers"] = ["EliminateIdentity"]
        if self.dtype == np.float64 and _version(ort) < (1, 30):
            # FusedMatMul (Transpose -> MatMul fusion) has no double kernel before 1.30
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        try:
            return ort.InferenceSession(model.SerializeToString(), sess_options=options,
                                        providers=self._providers, **kwargs)
        except Exception as exc:
            raise error(f"ONNX Runtime cannot load {what} (providers {self._providers}): {exc}") from exc

    def _batch_coupling(self) -> str | None:
        """What mixes the rows of a batch in this graph (None when the rows are independent): nodes
        found by :func:`~._onnx_graph.batch_coupled_nodes`, or, on a probe, row 0 of the output
        changing when the other rows of the batch change."""
        found = batch_coupled_nodes(self._work.graph, self.input_name, self._opset, self._dims)
        if found:
            return describe(found)
        n = self._fixed_batch or 2
        if n < 2:
            return None
        x = self._probe_batch(n, seed=1)
        y = x.copy()
        y[1:] = self._probe_batch(n - 1, seed=2)
        try:
            a, b = (np.asarray(self._primal.run([self.output_name], {self.input_name: z})[0][0], np.float64)
                    for z in (x, y))
        except Exception:  # the probe batch of _probe reports a model that cannot run
            return None
        scale = max(1.0, float(np.abs(a).max()) if np.all(np.isfinite(a)) else 1.0)
        if np.all(np.isfinite(a)) and np.all(np.isfinite(b)) and np.abs(a - b).max() > 1e-4 * scale:
            return "on a probe, one input's output changes with the other inputs of its batch"
        return None

    def _one_input_per_run(self) -> None:
        """Run a batch-coupled graph one input (and one seed) per run, or refuse a fixed batch > 1."""
        if self._fixed_batch not in (None, 1):
            raise ValueError(f"model mixes the inputs of a batch ({self.batch_coupling_}), and its input "
                             f"{self.input_name!r} has a fixed batch size {self._fixed_batch}: one input's "
                             "scores depend on the others, so per-input gradients are undefined; export the "
                             "model with a dynamic (or size-1) batch axis")
        if self.batch_size != 1:
            warnings.warn(f"OnnxBackend: the model mixes the inputs of a batch ({self.batch_coupling_}); "
                          f"each input is run alone (batch_size=1 instead of {self.batch_size}), which is "
                          "slower but makes every input's results its own", stacklevel=3)
        self.batch_size = 1

    def _probe_batch(self, n: int, seed: int = 0) -> np.ndarray:
        """``n`` seeded inputs in [0, 1) of the graph's dtype: what every probe run feeds."""
        return np.random.default_rng(seed).random((n,) + self.input_shape).astype(self.dtype)

    def _probe(self) -> np.ndarray:
        n = self._fixed_batch or (1 if self.batch_coupling_ else 2)
        x = self._probe_batch(n)
        try:
            out = self._primal.run([self.output_name], {self.input_name: x})[0]
        except Exception as exc:
            raise ValueError(f"ONNX Runtime cannot run the model on a probe batch of shape "
                             f"{shape_str(x.shape)}: {exc}") from exc
        out = np.asarray(out)
        if out.ndim != 2 or out.shape[0] != n or out.shape[1] < 2:
            raise ValueError(f"model output {self.output_name!r} has shape {shape_str(out.shape)} on a batch of "
                             f"{n} inputs; expected class scores of shape ({n}, n_classes) with n_classes >= 2")
        if not np.all(np.isfinite(out)):
            raise ValueError(f"model output {self.output_name!r} is not finite on a probe batch")
        return out.astype(np.float64)

    def _output_kind(self, output: str, probe: np.ndarray) -> tuple[str, str]:
        node = self._softmax
        final = node.op_type if node is not None else None
        tol = 10 * self.n_classes * float(np.finfo(self.dtype).eps)
        sums_to_one = bool(np.all(probe >= 0) and np.all(np.abs(probe.sum(axis=1) - 1) <= tol))
        if output == "auto":
            if final == "Softmax":
                return "probabilities", f"it comes from the Softmax node {node.name or node.output[0]!r}"
            if final == "LogSoftmax":
                return "log_probabilities", f"it comes from the LogSoftmax node {node.name or node.output[0]!r}"
            if sums_to_one:
                return "probabilities", "on a probe batch it is non-negative with rows summing to 1"
            return "logits", "no final Softmax, and on a probe batch its rows are not probabilities"
        if output == "probabilities" and not sums_to_one:
            raise ValueError(f"output='probabilities', but model output {self.output_name!r} is not a probability "
                             f"vector on a probe batch (min {probe.min():.3g}, row sums in "
                             f"[{probe.sum(1).min():.6g}, {probe.sum(1).max():.6g}]); declare output='logits'")
        if output == "log_probabilities":
            lse = np.log(np.exp(probe - probe.max(1, keepdims=True)).sum(1)) + probe.max(1)
            if not np.all(np.abs(lse) <= tol * max(1.0, float(np.abs(probe).max()))):
                raise ValueError(f"output='log_probabilities', but exp of model output {self.output_name!r} does "
                                 "not sum to 1 on a probe batch; declare output='logits'")
        return output, "declared"

    # ------------------------------------------------------------------ derivative models
    def _log_prob_model(self, batch: int):
        """The classifier with input dims fixed and one output, the scores s with
        ``log p = log_softmax(s)``, shape (batch, C): the logits (also those feeding a final
        Softmax / LogSoftmax node), the log of probabilities, or log-probabilities.

        The derivatives are taken of s, and the softmax algebra (seeds ``p - e_c`` with
        ``p_c - 1 = expm1(log p_c)``, ``(diag p - pp^T) u``) is done in float64 outside the graph,
        as the torch backend does: the gradient of a saturated class keeps its relative accuracy.
        """
        onnx = self._onnx
        helper = onnx.helper
        model = _with_input_dims(onnx, self._work, self.input_name, [batch, *self.input_shape])
        graph = model.graph
        z, node, kind = self.output_name, self._softmax, self.output_kind_
        final = node.op_type if node is not None else None
        if (kind, final) in (("probabilities", "Softmax"), ("log_probabilities", "LogSoftmax")):
            # the final (Log)Softmax's input, flattened to (batch, C) as the shape-only nodes after it
            # do: no log(0), and no (Log)Softmax node for onnx-ad
            graph.node.append(helper.make_node("Flatten", [node.input[0]], [self._log_p], name=self._log_p, axis=1))
        elif kind == "probabilities":  # log max(p, tiny): a probability that underflowed has log p = log tiny
            tiny = helper.make_tensor(self._log_p + "_tiny", self._out_elem, [],
                                      [float(np.finfo(_DTYPES[self._out_elem]).tiny)])
            graph.initializer.append(tiny)
            graph.node.append(helper.make_node("Max", [z, tiny.name], [self._log_p + "_p"], name=self._log_p + "_p"))
            graph.node.append(helper.make_node("Log", [self._log_p + "_p"], [self._log_p], name=self._log_p))
        else:  # logits; log-probabilities are scores too (log_softmax renormalises them)
            graph.node.append(helper.make_node("Identity", [z], [self._log_p], name=self._log_p))
        del graph.output[:]
        graph.output.append(helper.make_tensor_value_info(self._log_p, self._out_elem, [batch, self.n_classes]))
        _prune(onnx, graph, self._log_p)  # forward mode would differentiate dead nodes too
        try:  # shapes through Shape -> Reshape chains help onnx-ad place its seed axis
            model = onnx.shape_inference.infer_shapes(model, data_prop=True)
        except Exception:  # pragma: no cover - inference is a convenience
            pass
        return model

    def _derivative(self, mode: str, batch: int) -> _Derivative:
        key = (mode, batch)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        base = self._log_prob_model(batch)
        if mode == "scores":  # the scores themselves, no derivative
            d = _Derivative(base, None, self._log_p)
        else:
            model = self._differentiated(base, mode, batch)
            d = _Derivative(model, model.graph.input[-1].name, model.graph.output[-1].name)
        self._cache[key] = d
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return d

    def _differentiated(self, base, mode: str, batch: int):
        """onnx-ad's ``mode`` derivative of ``base``. Where it fails, once more with every tensor's
        shape as one run of the graph at this batch size gives it (ONNX shape inference cannot
        follow some exporters' Shape -> Reshape arithmetic, and onnx-ad needs the shapes a
        transposed convolution or a pooling window takes); the first error stands if that fails too."""
        transform = self._onnx_ad.reverse if mode == "reverse" else self._onnx_ad.forward
        try:
            return transform(base, inputs=[self.input_name], outputs=[self._log_p], layout="onnx")
        except Exception as exc:
            annotated = self._with_run_shapes(base, batch)
            if annotated is None:
                raise _ad_error(self._onnx_ad, exc, mode) from exc
            try:
                return transform(annotated, inputs=[self.input_name], outputs=[self._log_p], layout="onnx")
            except Exception:
                raise _ad_error(self._onnx_ad, exc, mode) from exc

    def _with_run_shapes(self, base, batch: int):
        """``base`` with the shape and type of every node output set from one ONNX Runtime run on a
        probe batch of ``batch`` inputs; None when the graph cannot be run that way."""
        onnx = self._onnx
        probe = onnx.ModelProto()
        probe.CopyFrom(base)
        graph = probe.graph
        known = {v.name for v in graph.output}
        names = [o for node in graph.node for o in node.output if o and o not in known]
        types = {v.name: v.type.tensor_type.elem_type for v in graph.value_info}
        graph.output.extend(onnx.helper.make_tensor_value_info(n, types.get(n) or self._out_elem, None)
                            for n in names)
        x = self._probe_batch(batch)
        try:
            session = self._session(probe, "the graph with every tensor as an output")
            values = session.run(names, {self.input_name: x})
        except Exception:  # a tensor of another element type than guessed, or no runnable graph
            return None
        out = onnx.ModelProto()
        out.CopyFrom(base)
        del out.graph.value_info[:]
        shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in graph.input}
        for name, value in zip(names, values):
            value = np.asarray(value)
            elem = onnx.helper.np_dtype_to_tensor_dtype(value.dtype)
            out.graph.value_info.append(onnx.helper.make_tensor_value_info(name, elem, list(value.shape)))
            shapes[name] = list(value.shape)
        pin_loop_state_shapes(onnx, out, shapes)
        return out

    def _run(self, mode: str, x: np.ndarray, seeds: np.ndarray,
             pad_to: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(log p (rows, C), derivative)`` of one derivative run on a chunk of inputs, padded (last
        input repeated, zero seeds) to the graph's fixed batch or to ``pad_to`` rows."""
        rows = x.shape[0]
        target = self._fixed_batch or pad_to
        if target is not None and rows < target:
            fill = target - rows
            x = np.concatenate([x, np.repeat(x[-1:], fill, axis=0)])
            seeds = np.concatenate([seeds, np.zeros((fill,) + seeds.shape[1:], seeds.dtype)])
        d = self._derivative(mode, x.shape[0])
        log_p, out = d.open(self._session, f"the {mode}-mode derivative model").run([self._log_p, d.output], {
            self.input_name: np.ascontiguousarray(x, dtype=self.dtype),
            d.seed: np.ascontiguousarray(seeds, dtype=self.dtype)})
        return np.asarray(log_p[:rows], dtype=np.float64), out[:rows]

    def _scores(self, x: np.ndarray) -> np.ndarray:
        """The scores s (log p = log_softmax(s)) of one chunk of inputs."""
        rows = x.shape[0]
        if self._fixed_batch is not None and rows < self._fixed_batch:
            x = np.concatenate([x, np.repeat(x[-1:], self._fixed_batch - rows, axis=0)])
        d = self._derivative("scores", x.shape[0])
        session = d.open(self._session, "the scores model")
        out = session.run([self._log_p], {self.input_name: np.ascontiguousarray(x, dtype=self.dtype)})[0]
        return np.asarray(out[:rows], dtype=np.float64)

    def _chunks(self, n: int):
        for start in range(0, n, self.batch_size):
            yield slice(start, min(start + self.batch_size, n))

    # ------------------------------------------------------------------ the protocol
    def _probabilities(self, x: np.ndarray) -> np.ndarray:
        out = np.empty((x.shape[0], self.n_classes))
        for sl in self._chunks(x.shape[0]):
            xc = x[sl].astype(self.dtype)
            rows = xc.shape[0]
            if self._fixed_batch is not None and rows < self._fixed_batch:
                xc = np.concatenate([xc, np.repeat(xc[-1:], self._fixed_batch - rows, axis=0)])
            z = np.asarray(self._primal.run([self.output_name], {self.input_name: xc})[0][:rows], np.float64)
            if self.output_kind_ == "probabilities":
                out[sl] = z
            else:
                out[sl] = np.exp(log_softmax(z))
        return out

    def _run_stacked(self, mode: str, x: np.ndarray, seeds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Derivative runs with ONE seed per row: ``x`` (N, *input_shape) holds each input repeated
        once per seed, ``seeds`` (N, ..., 1). Runs in chunks of ``batch_size`` rows (the last one
        padded to that size when there are several).

        ONNX Runtime runs the derivative graphs with the seeds along the batch axis as ordinary
        batched convolutions; a trailing seed axis (onnx-ad's multi-seed layout) makes the reverse
        graph several times slower on convolutional models (measured: 20 seeds through a VGG, 0.10 s
        stacked against 0.38 s trailing).
        """
        n = x.shape[0]
        step = self._fixed_batch or min(self.batch_size, n)
        # a last, shorter chunk of several runs is padded to the others' size: one derivative
        # session (compiled once, with its own memory arena) serves all of them
        pad_to = step if n > step else None
        parts_lp, parts = [], []
        for s in range(0, n, step):
            lp, out = self._run(mode, x[s:s + step], seeds[s:s + step], pad_to)
            parts_lp.append(lp)
            parts.append(out[..., 0])
        return np.concatenate(parts_lp), np.concatenate(parts)

    def _log_softmax(self, x: np.ndarray) -> np.ndarray:
        """float64 log p of a batch from one run of the scores graph (chunked)."""
        out = np.empty((x.shape[0], self.n_classes))
        for sl in self._chunks(x.shape[0]):
            out[sl] = log_softmax(self._scores(x[sl]))
        return out

    def _class_gradients(self, x: np.ndarray, classes: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        C = self.n_classes
        cls = np.arange(C) if classes is None else np.asarray(classes, dtype=np.int64)
        n, m = x.shape[0], cls.size
        logp = self._log_softmax(x)
        grads = np.empty((n, m) + self.input_shape, dtype=self.dtype)
        rows_per = max(1, self.batch_size // m)  # inputs per block of stacked (input, class) rows
        for s in range(0, n, rows_per):
            xs, lp = x[s:s + rows_per], logp[s:s + rows_per]
            rows = xs.shape[0]
            seeds = softmax_seeds(lp, cls)  # (rows, m, C): p - e_c, the score-gradient of -log p_c
            _, adj = self._run_stacked("reverse", np.repeat(xs, m, axis=0), seeds.reshape(rows * m, C, 1))
            grads[s:s + rows] = adj.reshape((rows, m) + self.input_shape)
        return np.exp(logp), grads

    def _loss_gradient(self, x: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logp = self._log_softmax(x)
        seeds = softmax_seeds(logp, labels[:, None])  # (n, 1, C): p - e_label
        _, adj = self._run_stacked("reverse", x, seeds.reshape(x.shape[0], -1, 1))
        return np.exp(logp), adj

    def _fisher_vector_product(self, x: np.ndarray, v: np.ndarray) -> np.ndarray:
        n, k = v.shape[:2]
        out = np.empty(v.shape, dtype=self.dtype)
        rows_per = max(1, self.batch_size // k)
        for s in range(0, n, rows_per):
            xs, vs = x[s:s + rows_per], v[s:s + rows_per]
            rows = xs.shape[0]
            xr = np.repeat(xs, k, axis=0)
            scores, u = self._run_stacked("forward", xr, vs.reshape((rows * k,) + self.input_shape + (1,)))
            w = fisher_weights(log_softmax(scores), np.asarray(u)[:, None, :])[:, 0]  # (diag p - pp^T) u per row
            _, gv = self._run_stacked("reverse", xr, w[..., None])
            out[s:s + rows] = gv.reshape((rows, k) + self.input_shape)
        return out

    def __repr__(self) -> str:
        return (f"OnnxBackend({self._source}, input_name={self.input_name!r}, output_name={self.output_name!r}, "
                f"output_kind={self.output_kind_!r}, input_shape={shape_str(self.input_shape)}, "
                f"n_classes={self.n_classes}, dtype={self.dtype.name}, providers={self.providers})")


# ---------------------------------------------------------------------- graph helpers
def _unknown_operator_hint(exc: Exception) -> str:
    """What to do when the checker found an operator ONNX does not define (an exporter left it)."""
    import re

    found = re.search(r"No Op registered for (\w+)", str(exc))
    if not found:
        return ""
    return (f"; {found.group(1)} is no ONNX operator: the exporter left it unconverted (tf2onnx says "
            "'Unsupported ops'); convert it there, e.g. tf2onnx's custom_op_handlers (for Erfc, "
            "fisher_ref.validation.zoo_keras.CUSTOM_OPS writes 1 - Erf(x))")


def _load(onnx, model):
    """``(ModelProto, description)`` from a path or a ModelProto, checked."""
    if isinstance(model, onnx.ModelProto):
        proto, source = model, f"<ModelProto {model.graph.name or 'graph'!r}>"
        path = None
    elif isinstance(model, (str, os.PathLike)):
        path = os.fspath(model)
        if not os.path.isfile(path):
            raise ValueError(f"model: no such ONNX file {path!r}")
        try:
            proto = onnx.load(path)
        except Exception as exc:
            raise ValueError(f"model: {path!r} is not an ONNX model or is corrupt "
                             f"({type(exc).__name__}: {exc})") from exc
        source = repr(path)
    else:
        raise TypeError(f"model must be a path (str or os.PathLike) or an onnx.ModelProto, "
                        f"got {type(model).__name__}")
    try:
        onnx.checker.check_model(proto)
    except Exception as exc:
        what = repr(path) if path is not None else "the ModelProto"
        raise ValueError(f"model: {what} is not a valid ONNX model or is corrupt "
                         f"({type(exc).__name__}: {' '.join(str(exc).split())}){_unknown_operator_hint(exc)}") from exc
    if not proto.graph.node:
        raise ValueError("model: the ONNX graph has no nodes")
    return proto, source


def _check_providers(ort, providers) -> list:
    available = list(ort.get_available_providers())
    if providers is None:
        if "CUDAExecutionProvider" in available:
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]
        return ["CPUExecutionProvider"]
    chosen = [providers] if isinstance(providers, str) else list(providers)
    if not chosen:
        raise ValueError(f"providers must name at least one execution provider; available: {available}")
    names = []
    for p in chosen:
        name = p[0] if isinstance(p, tuple) and len(p) == 2 else p
        if not isinstance(name, str):
            raise TypeError(f"providers must be provider names or (name, options) pairs, got {p!r}")
        names.append(name)
    missing = [n for n in names if n not in available]
    if missing:
        raise ValueError(f"providers {missing} are not available in this onnxruntime installation; "
                         f"available providers: {available}")
    return chosen


def _dims(value) -> list | None:
    """Declared dims: int for a fixed one, the parameter name (or None) for a symbolic one."""
    tt = value.type.tensor_type
    if not tt.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else (d.dim_param or None)
            for d in tt.shape.dim]


def _dims_str(dims) -> str:
    return "(" + ", ".join(str(d) if d is not None else "?" for d in dims) + ("," if len(dims) == 1 else "") + ")"


def _type_name(onnx, elem: int) -> str:
    try:
        return onnx.TensorProto.DataType.Name(elem)
    except ValueError:
        return str(elem)


def _graph_inputs(graph) -> list[str]:
    """The graph inputs that must be fed (those without an initializer to default to)."""
    constants = {t.name for t in graph.initializer}
    return [v.name for v in graph.input if v.name not in constants]


def _select_input(graph, input_name, original, output_name: str):
    """``(name, dims, element type)`` of the input to differentiate, among the inputs of ``graph``
    (the model pruned to its class scores ``output_name``): graph inputs of the ``original`` model
    that the scores do not read (tf2onnx leaves folded constants as such inputs) are not fed."""
    real, declared = _graph_inputs(graph), _graph_inputs(original)
    unread = [n for n in declared if n not in real]
    by_name = {v.name: v for v in graph.input}
    if isinstance(input_name, str) and input_name in unread:
        raise ValueError(f"input_name {input_name!r}: the class scores {output_name!r} do not depend on it; "
                         f"they read {real}")
    if unread:
        logger.info("OnnxBackend: graph inputs %s are not read by the class scores %r: not fed", unread, output_name)
    if input_name is None:
        if len(real) != 1:
            if not real:
                raise ValueError(f"model output {output_name!r} depends on no graph input to differentiate")
            raise ValueError(f"model has {len(real)} graph inputs {real}; pass input_name= to choose the "
                             "classifier's input")
        input_name = real[0]
    elif not isinstance(input_name, str) or input_name not in by_name:
        raise ValueError(f"input_name {input_name!r} is not a graph input of the model; its inputs are {declared}")
    others = [n for n in real if n != input_name]
    if others:
        raise ValueError(f"model has graph inputs {others} besides input_name {input_name!r}; OnnxBackend feeds "
                         "one input only: bake the others into the graph as initializers")
    value = by_name[input_name]
    return input_name, _dims(value), value.type.tensor_type.elem_type


def _input_dims(name: str, dims, input_shape) -> tuple[int | None, tuple[int, ...]]:
    """``(fixed batch size or None, input_shape)`` from the declared dims and ``input_shape=``."""
    given = None if input_shape is None else _check_shape(input_shape)
    if dims is None:
        if given is None:
            raise ValueError(f"model input {name!r} declares no shape, so input_shape cannot be inferred: "
                             "pass input_shape= (the shape of one input, without the batch axis)")
        return None, given
    if len(dims) < 2:
        raise ValueError(f"model input {name!r} has shape {_dims_str(dims)}; expected a batch axis followed by "
                         "the shape of one input")
    batch = dims[0] if isinstance(dims[0], int) else None
    rest = dims[1:]
    if given is not None:
        if len(given) != len(rest) or any(isinstance(d, int) and d != g for d, g in zip(rest, given)):
            raise ValueError(f"input_shape {given} disagrees with model input {name!r} of shape {_dims_str(dims)}")
        return batch, given
    dynamic = [(i + 1, d) for i, d in enumerate(rest) if not isinstance(d, int)]
    if dynamic:
        i, d = dynamic[0]
        what = f"{d!r}" if d else "unnamed"
        raise ValueError(f"model input {name!r} has shape {_dims_str(dims)}: dimension {i} ({what}) is dynamic, "
                         "so input_shape cannot be inferred from the graph: pass input_shape= (the shape of one "
                         "input, without the batch axis)")
    return batch, tuple(rest)


def _with_input_dims(onnx, model, input_name: str, dims: Sequence[int | str]):
    """A copy of ``model`` whose input has exactly ``dims`` and whose stale shapes are cleared."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    value = next(v for v in graph.input if v.name == input_name)
    shape = value.type.tensor_type.shape
    shape.ClearField("dim")
    for d in dims:
        dim = shape.dim.add()
        if isinstance(d, str):
            dim.dim_param = d
        else:
            dim.dim_value = int(d)
    del graph.value_info[:]  # intermediate shapes inferred for the old dims
    return out


def _reads(onnx, node) -> set:
    """Names a node reads: its inputs and everything named inside its subgraphs (a superset of
    what they capture from the outer scope, which is all pruning needs)."""
    names = {n for n in node.input if n}
    for attr in node.attribute:
        graphs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
        for g in graphs:
            names.update(v.name for v in g.output)
            for inner in g.node:
                names |= _reads(onnx, inner)
    return names


def _prune(onnx, graph, output: str) -> None:
    """Keep only the nodes, graph inputs and initializers that ``output`` depends on."""
    needed, keep = {output}, []
    for i in range(len(graph.node) - 1, -1, -1):
        node = graph.node[i]
        if any(name in needed for name in node.output if name):
            keep.append(i)
            needed |= _reads(onnx, node)
    nodes = [graph.node[i] for i in reversed(keep)]
    inputs = [v for v in graph.input if v.name in needed]
    inits = [t for t in graph.initializer if t.name in needed]
    nodes, inputs, inits = [_copy(n) for n in nodes], [_copy(v) for v in inputs], [_copy(t) for t in inits]
    del graph.node[:], graph.input[:], graph.initializer[:]
    graph.node.extend(nodes)
    graph.input.extend(inputs)
    graph.initializer.extend(inits)


def _copy(message):
    out = type(message)()
    out.CopyFrom(message)
    return out


def _fresh_name(graph, stem: str) -> str:
    taken = {v.name for v in list(graph.input) + list(graph.output) + list(graph.value_info)}
    taken.update(t.name for t in graph.initializer)
    taken.update(n for node in graph.node for n in node.output)
    name, i = stem, 0
    while name in taken:
        i += 1
        name = f"{stem}_{i}"
    return name


def _ad_error(onnx_ad, exc: Exception, mode: str) -> ValueError:
    """A ValueError naming the operation onnx-ad could not differentiate."""
    node = None
    tb = exc.__traceback__
    while tb is not None:  # the innermost onnx-ad frame that holds the node being differentiated
        candidate = tb.tb_frame.f_locals.get("node")
        if type(candidate).__name__ == "NodeProto":
            node = candidate
        tb = tb.tb_next
    version = getattr(onnx_ad, "__version__", "?")
    kind = "" if isinstance(exc, onnx_ad.UnsupportedOperator) else f"{type(exc).__name__}: "
    if node is not None:
        name = node.name or (node.output[0] if node.output else "")
        return ValueError(f"model: onnx-ad {version} cannot differentiate operator {node.op_type} "
                          f"(node {name!r}) in {mode} mode: {kind}{exc}")
    return ValueError(f"model: onnx-ad {version} cannot differentiate the model in {mode} mode: {kind}{exc}")
