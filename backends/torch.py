"""PyTorch backend: per-class gradients and matrix-free Fisher-vector products with ``torch.func``.

PyTorch is imported lazily (in the constructor), so ``import fisher_ref.backends.torch`` needs
only NumPy; constructing :class:`TorchBackend` without PyTorch raises ImportError naming the
extra to install.
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import math
import warnings
from typing import Any, Sequence

import numpy as np

from .._backend import Backend, MissingCapabilityError
from .._text import one_line
from .._validation import PROB_SUM_RTOL, check_int, check_method, shape_str

__all__ = ["TorchBackend"]

_OUTPUTS = ("logits", "probabilities", "log_probabilities")

#: Memory budget (bytes) for one vectorised block: the ``(chunk, n, ...)`` tangents, cotangents
#: and gradients of a vmapped JVP/VJP, or the activations of an inference batch.
_MEMORY_BUDGET = 256 * 2**20
#: From this many activation elements per batch slice (inputs x elements of one forward), the C
#: backward passes of a Jacobian run as a loop on the retained graph, faster on the CPU than
#: ``torch.func.vmap`` over them (measured, one thread: LeNet-5 at 8 inputs 13 against 16 ms, at
#: 32 inputs 37 against 55 ms; the CIFAR VGG at 8 inputs 121 against 161 ms); below, vmap's single
#: call saves the per-pass overhead (LeNet-5, one input: 2.6 against 4.3 ms).
_LOOP_ELEMS = 2**16


def _import_torch():
    try:
        return importlib.import_module("torch")
    except ImportError as exc:
        raise ImportError("TorchBackend needs PyTorch: pip install 'fisher-ref[torch]'") from exc


class TorchBackend(Backend):
    """Backend for a PyTorch classifier ``model(x) -> (n, C)`` class scores.

    Parameters
    ----------
    model : torch.nn.Module
        Maps a batch ``(n, *input_shape)`` to ``(n, C)`` scores, ``C >= 2``, each row depending on
        its own input only (no mixing across the batch: BatchNorm in eval mode is fine). The
        caller's model is never modified: the backend works on a deep copy, moved to ``device``
        and ``dtype``, in eval mode, with ``requires_grad=False`` on its parameters.
    input_shape : tuple of int, optional
        Shape of one input. Without it, the first input seen fixes it with a probe (see Notes);
        passing it removes the ambiguity between a batch of one input and a single input (an
        image of shape ``(1, 28, 28)`` could be either).
    device : str or torch.device, optional
        Where to compute; default ``"cuda"`` when available, else ``"cpu"``.
    dtype : torch.dtype, optional
        Precision of the computation; default the model's parameter dtype (float32 typically).
        ``torch.float64`` is the validation mode: results then agree with float64 NumPy
        references to about 1e-10.
    output : {"logits", "probabilities", "log_probabilities"}
        What the model returns. Everything is done in log space: ``log p = log_softmax(s)`` with
        ``s`` the logits, the log-probabilities, or the log of the probabilities the model returns.
    chunk_size : int, optional
        How many classes (per-class gradients) or vectors (Fisher-vector products) are vmapped at
        once. Default: as many as keep a block under about 256 MB; the batch is split as well
        when one input per class already exceeds that.
    feature_layers : sequence of str, optional
        Names from ``model.named_modules()`` whose outputs :meth:`features` returns (KD and LID
        detectors). Without it, the backend does not declare ``"features"``.

    Attributes
    ----------
    model : torch.nn.Module
        The backend's private eval-mode copy of the model.
    device : torch.device
    torch_dtype : torch.dtype
    dtype : numpy.dtype
        NumPy counterpart of ``torch_dtype``; results are float64 but carry this accuracy.
    output : str
    capabilities : frozenset of str
        ``probabilities``, ``class_gradients``, ``fisher_vector_product``, ``loss_gradient``;
        ``features`` with ``feature_layers``; ``stochastic_probabilities`` when the model has a
        dropout layer.

    Raises
    ------
    ImportError
        If PyTorch is not installed.
    ValueError
        On an unknown ``output``, a bad ``chunk_size``, device or dtype, or an unknown layer name.
    TypeError
        If ``model`` is not a ``torch.nn.Module``.

    Notes
    -----
    With scores :math:`s(x) \\in \\mathbb{R}^C`, their Jacobian :math:`J = \\partial s/\\partial x`
    and :math:`p = \\mathrm{softmax}(s)`, the class gradients are
    :math:`g_i = \\nabla_x(-\\log p_i) = J^T(p - e_i)` and the Fisher information matrix is
    :math:`G = \\sum_i p_i g_i g_i^T = J^T(\\mathrm{diag}\\, p - p p^T) J` (Zhao et al. 2019, eq. 4).

    * Class gradients: one forward with ``torch.func.vjp`` of the scores over the whole batch, then
      ``torch.func.vmap`` of the VJP over the seeds :math:`p - e_i` (shape ``(m, n, C)``, class
      :math:`i` selected for every input). The seeds are formed in float64 from the scores with
      :math:`p_i - 1 = \\mathrm{expm1}(\\log p_i)` and a log-softmax that keeps full relative
      accuracy for a dominant class, as the NumPy reference models do.
    * Fisher-vector products: :math:`u = J v` with ``torch.func.jvp`` (vmapped over the k vectors),
      :math:`w = p \\odot (u - p^T u)` in float64 (after subtracting the top class's entry, which
      leaves :math:`w` unchanged and avoids cancellation when :math:`p` is nearly one-hot), and
      :math:`J^T w` with the VJP of the same forward. The cost does not depend on C.
    * Because the batch is differentiated as a whole, ``model`` must treat inputs independently.

    Shape probe (``input_shape=None``): if ``x.ndim >= 2`` and ``model(x)`` has shape
    ``(x.shape[0], C)``, ``x`` is a batch; otherwise, if ``model(x[None])`` has shape ``(1, C)``,
    ``x`` is one input; else ValueError.

    References
    ----------
    C. Zhao, P. T. Fletcher, M. Yu, Y. Peng, G. Zhang, C. Shen. The adversarial attack and
    detection under the Fisher information metric. AAAI 2019 (eqs. 4 and 6).
    """

    capabilities = frozenset({"probabilities", "class_gradients", "fisher_vector_product", "loss_gradient"})

    def __init__(self, model: Any, *, input_shape: Sequence[int] | None = None, device: Any = None,
                 dtype: Any = None, output: str = "logits", chunk_size: int | None = None,
                 feature_layers: Sequence[str] | None = None):
        torch = _import_torch()
        self._torch = torch
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        output = check_method(output, _OUTPUTS, "output")
        chunk_size = check_int(chunk_size, "chunk_size", min_val=1, allow_none=True)
        super().__init__(input_shape)
        self.output = output
        self.chunk_size = None if chunk_size is None else int(chunk_size)
        self.device = self._check_device(device)
        self.torch_dtype = self._check_dtype(dtype, model)
        self.dtype = np.dtype(str(self.torch_dtype).replace("torch.", ""))
        # float64 for the softmax algebra on (n, C) arrays, except where the device has none
        self._red_dtype = torch.float32 if self.device.type == "mps" else torch.float64
        self._lin_cache = None  # (key, linearization) of the last Fisher-vector-product input

        m = copy.deepcopy(model).to(device=self.device, dtype=self.torch_dtype).eval()
        for prm in m.parameters():
            prm.requires_grad_(False)
        self.model = m
        self._dropouts = [mod for mod in m.modules() if isinstance(mod, torch.nn.modules.dropout._DropoutNd)]
        self._elems_per_input: int | None = None  # activation elements per input, measured once

        caps = set(type(self).capabilities)
        modules = dict(m.named_modules())
        if feature_layers is not None:
            names = (feature_layers,) if isinstance(feature_layers, str) else tuple(feature_layers)
            valid = [n for n in modules if n]
            unknown = [n for n in names if not isinstance(n, str) or n not in modules or not n]
            if unknown or not names:
                raise ValueError(f"feature_layers must be names from model.named_modules(): {valid}; "
                                 f"got {list(names)!r} (unknown: {unknown!r})")
            self.feature_layers = names
            caps.add("features")
        if self._dropouts:
            caps.add("stochastic_probabilities")
        self.capabilities = frozenset(caps)
        if self.input_shape is not None:
            self._check_input_shape()

    # ------------------------------------------------------------------ construction helpers
    def _check_device(self, device: Any):
        torch = self._torch
        if device is None:
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        try:
            dev = torch.device(device)
        except (RuntimeError, TypeError) as exc:
            raise ValueError(f"device must be a torch.device or a device string such as 'cpu' or "
                             f"'cuda:0', got {device!r}") from exc
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {device!r} asked for, but CUDA is not available")
        return dev

    def _check_dtype(self, dtype: Any, model: Any):
        torch = self._torch
        allowed = (torch.float16, torch.float32, torch.float64)
        if dtype is None:
            floats = [t.dtype for t in list(model.parameters()) + list(model.buffers()) if t.is_floating_point()]
            dtype = floats[0] if floats else torch.get_default_dtype()
            if dtype not in allowed:
                raise ValueError(f"the model's parameters are {dtype}, which has no NumPy counterpart: "
                                 f"pass dtype= one of {allowed}")
            return dtype
        if isinstance(dtype, torch.dtype):
            if dtype not in allowed:
                raise ValueError(f"dtype must be one of {allowed}, got {dtype}")
            return dtype
        try:
            nd = np.dtype(dtype)
        except TypeError as exc:
            raise ValueError(f"dtype must be one of {allowed}, got {dtype!r}") from exc
        table = {np.dtype(np.float16): torch.float16, np.dtype(np.float32): torch.float32,
                 np.dtype(np.float64): torch.float64}
        if nd not in table:
            raise ValueError(f"dtype must be one of {allowed}, got {dtype!r}")
        return table[nd]

    # ------------------------------------------------------------------ forward
    def _to_tensor(self, a: np.ndarray):
        # a copy, never a view of the caller's array (a model may work in place on its input)
        return self._torch.tensor(a, dtype=self.torch_dtype, device=self.device)

    def _scores(self, x):
        """Scores ``s`` with ``log p = log_softmax(s)``, and the raw model output (aux).

        Runs inside torch.func transforms: only shape checks here, value checks in _check_output.
        """
        # the clone lets a model work in place on its input (autograd refuses that on the primal)
        return self._scores_of(self.model(x.clone()), x.shape[0])

    def _scores_of(self, out, n: int):
        """``(s, out)`` of ``_scores`` from the model's output ``out`` for a batch of ``n`` inputs."""
        if not isinstance(out, self._torch.Tensor) or out.ndim != 2 or out.shape[0] != n or out.shape[1] < 2:
            got = shape_str(out.shape) if isinstance(out, self._torch.Tensor) else type(out).__name__
            raise ValueError(f"model output has shape {got} for a batch of {n} inputs, expected "
                             f"(n, n_classes) class scores with n = {n} and n_classes >= 2")
        s = self._torch.log(out) if self.output == "probabilities" else out
        return s, out

    def _check_output(self, out, offset: int = 0) -> None:
        """ValueError naming the first input whose model output is not finite or not a distribution."""
        torch = self._torch
        what = {"logits": "logits", "probabilities": "probabilities",
                "log_probabilities": "log-probabilities"}[self.output]
        bad = ~torch.isfinite(out).all(dim=1)
        if bool(bad.any()):
            j = int(torch.nonzero(bad)[0, 0])
            n_nan, n_inf = int(torch.isnan(out[j]).sum()), int(torch.isinf(out[j]).sum())
            raise ValueError(f"the model returned non-finite {what} for input {offset + j} ({n_nan} NaN and "
                             f"{n_inf} Inf of {out.shape[1]} outputs)")
        if self.output == "logits":
            return
        o = out.detach().to(self._red_dtype)
        if self.output == "probabilities":
            bad = (o <= 0).any(dim=1)
            if bool(bad.any()):
                j = int(torch.nonzero(bad)[0, 0])
                raise ValueError(f"the model returned a zero or negative probability for input {offset + j} "
                                 f"(min {float(o[j].min()):.3g}); log p would be -inf or NaN. With "
                                 "output='probabilities' every probability must be > 0: have the model "
                                 "return logits or log-probabilities instead")
            total = o.sum(dim=1)
        else:
            total = torch.exp(o).sum(dim=1)
        tol = PROB_SUM_RTOL + o.shape[1] * float(np.finfo(np.float32).eps)
        bad = (total - 1).abs() > tol
        if bool(bad.any()):
            j = int(torch.nonzero(bad)[0, 0])
            raise ValueError(f"output={self.output!r} but the model's {what} for input {offset + j} do not "
                             f"sum to one (sum of probabilities {float(total[j]):.8g}); are these logits? "
                             "Pass output='logits'")

    def _log_softmax(self, s):
        """Log-softmax in float64 with full relative accuracy for a dominant class; also the top class."""
        return log_softmax_t(self._torch, s.detach().to(self._red_dtype))

    def _probs_from_logp(self, logp) -> np.ndarray:
        p = np.exp(logp.cpu().numpy().astype(np.float64))
        return p / p.sum(axis=1, keepdims=True)

    # ------------------------------------------------------------------ memory and chunking
    def _elems(self) -> int:
        """Elements per input held by one forward (input plus all leaf-module outputs), measured once."""
        if self._elems_per_input is None:
            torch = self._torch
            count = [0]

            def hook(_mod, _inp, out):
                if isinstance(out, torch.Tensor):
                    count[0] += out.numel()

            leaves = [mod for mod in self.model.modules() if not list(mod.children())]
            handles = [mod.register_forward_hook(hook) for mod in leaves]
            try:
                with torch.inference_mode():
                    self.model(torch.zeros((1, *self.input_shape), dtype=self.torch_dtype, device=self.device))
            finally:
                for h in handles:
                    h.remove()
            self._elems_per_input = int(math.prod(self.input_shape)) + count[0]
        return self._elems_per_input

    def _blocks(self, n: int, m: int) -> tuple[int, int]:
        """(batch chunk, vmap chunk) for n inputs and m vmapped seeds/tangents under the budget."""
        per = self._elems() * self.dtype.itemsize  # bytes per (seed, input)
        if self.chunk_size is not None:
            ck = min(self.chunk_size, m)
        else:
            ck = max(1, min(m, _MEMORY_BUDGET // (per * n)))
        nb = max(1, min(n, _MEMORY_BUDGET // (per * ck)))
        return nb, ck

    def _batch_slices(self, n: int, nb: int):
        return [slice(i, min(i + nb, n)) for i in range(0, n, nb)]

    def _count_classes(self, x: np.ndarray) -> int:
        """Number of classes C (one forward of one input the first time), to size the blocks."""
        if self.n_classes is None:
            with self._torch.inference_mode():
                _, out = self._scores(self._to_tensor(x[:1]))
            self.n_classes = int(out.shape[1])
        return self.n_classes

    # ------------------------------------------------------------------ shape probe
    def _probe_scores(self, a: np.ndarray, what: str) -> tuple[int | None, str]:
        """``(C, "")`` if the model maps the batch ``a`` to ``(len(a), C)`` scores with C >= 2, else
        ``(None, why not)``."""
        torch = self._torch
        try:
            with torch.inference_mode():
                out = self.model(self._to_tensor(a))
        except Exception as exc:  # the model refuses this shape
            return None, f"{what} raised {type(exc).__name__}: {one_line(exc)}"
        shp = tuple(out.shape) if isinstance(out, torch.Tensor) else None
        if shp is not None and len(shp) == 2 and shp[0] == a.shape[0] and shp[1] >= 2:
            self._warn_if_probabilities(out)
            return int(shp[1]), ""
        return None, f"{what} returned {type(out).__name__ if shp is None else shape_str(shp)}"

    def _check_input_shape(self) -> None:
        """One forward of a zero input of ``input_shape``: a shape the model cannot take is refused
        here, naming ``input_shape``, rather than as the model's own error in the first call. (An
        output of the wrong shape is reported by the calls, on the caller's inputs.)"""
        torch = self._torch
        try:
            with torch.inference_mode():
                out = self.model(self._to_tensor(np.zeros((1, *self.input_shape), dtype=self.dtype)))
        except Exception as exc:
            raise ValueError(f"input_shape {tuple(self.input_shape)} does not fit the model: "
                             f"model(torch.zeros((1, *input_shape))) raised {type(exc).__name__}: {one_line(exc)}; "
                             "pass the shape of one input, without the batch axis") from exc
        if isinstance(out, torch.Tensor) and out.ndim == 2 and out.shape[1] >= 2:
            self._warn_if_probabilities(out)

    def _warn_if_probabilities(self, out) -> None:
        """Warn when ``output="logits"`` but the probe's outputs are probabilities (a softmax head):
        read as logits they would give a wrong Fisher matrix, silently."""
        if self.output != "logits":
            return
        z = out.detach().double().cpu().numpy()
        tol = 10 * z.shape[1] * float(np.finfo(np.float32).eps)
        if np.all(z >= 0) and np.all(np.abs(z.sum(axis=1) - 1) <= tol):
            warnings.warn("TorchBackend: on a probe input the model's outputs are non-negative and sum to 1, as "
                          "probabilities do, but output='logits' (the default) reads them as logits; pass "
                          "output='probabilities' if the model ends in a softmax (or "
                          "output='log_probabilities' for a log-softmax)", UserWarning, stacklevel=4)

    def _infer_input_shape(self, x: np.ndarray) -> tuple[int, ...]:
        """Probe the model: ``x`` is a batch if ``model(x[:2])`` has shape ``(len(x[:2]), C)``, one
        input if ``model(x[None])`` has shape ``(1, C)``; else ValueError asking for ``input_shape=``.

        Only the first two rows of a candidate batch are run (the model treats inputs independently).
        """
        if x.ndim == 0:
            raise ValueError("x must have at least one dimension, got a scalar")
        why = []

        def probe(a: np.ndarray, what: str) -> int | None:
            C, reason = self._probe_scores(a, what)
            if C is None:
                why.append(reason)
            return C

        if x.ndim >= 2:
            a = x[:2]
            C = probe(a, f"as a batch, model(x[:{a.shape[0]}])")
            if C is not None:
                self.n_classes = self.n_classes or C
                return tuple(int(s) for s in x.shape[1:])
        C = probe(x[None], "as one input, model(x[None])")
        if C is not None:
            self.n_classes = self.n_classes or C
            return tuple(int(s) for s in x.shape)
        raise ValueError(f"cannot tell the input shape from x of shape {shape_str(x.shape)}: the model does "
                         "not map it to (n, n_classes) class scores, neither as a batch nor as one input ("
                         + "; ".join(why) + "). Pass input_shape= to TorchBackend")

    # ------------------------------------------------------------------ protocol
    def _probabilities(self, x: np.ndarray) -> np.ndarray:
        torch = self._torch
        n = x.shape[0]
        nb = max(1, min(n, _MEMORY_BUDGET // (self._elems() * self.dtype.itemsize)))
        parts = []
        with torch.inference_mode():
            for sl in self._batch_slices(n, nb):
                s, out = self._scores(self._to_tensor(x[sl]))
                self._check_output(out, sl.start)
                parts.append(self._probs_from_logp(self._log_softmax(s)[0]))
        return np.concatenate(parts)

    def _class_gradients(self, x: np.ndarray, classes: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        torch = self._torch
        n = x.shape[0]
        C = self._count_classes(x)
        cls = np.arange(C) if classes is None else classes
        if cls.max() >= C:
            raise ValueError(f"classes must lie in [0, {C - 1}], got max {cls.max()}")
        m = cls.size
        cls_t = torch.as_tensor(cls, device=self.device)
        nb, ck = self._blocks(n, m)
        probs, grads = [], []
        for sl in self._batch_slices(n, nb):
            s, xs = self._recorded_scores(x[sl], sl.start)
            logp, _ = self._log_softmax(s)
            # seeds[i, j] = p(x_j) - e_{cls[i]}: the score-gradient of -log p_{cls[i]}(x_j), class-major
            seeds = softmax_seeds_t(torch, logp, cls_t).transpose(0, 1).contiguous().to(self.torch_dtype)
            g = self._vjps(s, xs, seeds, ck)  # (m, nj, *shape)
            grads.append(g.transpose(0, 1).to(torch.float64).cpu().numpy())
            probs.append(self._probs_from_logp(logp))
        return np.concatenate(probs), np.concatenate(grads)

    def _recorded_scores(self, x: np.ndarray, offset: int):
        """The forward pass at ``x`` recorded by autograd: ``(scores, input tensor)``, output checked."""
        torch = self._torch
        xs = self._to_tensor(x).requires_grad_(True)
        with torch.enable_grad():
            s, out = self._scores(xs)
        self._check_output(out, offset)
        return s, xs

    def _vjps(self, s, xs, seeds, ck: int):
        """``J^T seeds[i]`` on the recorded graph ``s(xs)`` for each of the m seeds (m, nj, C):
        a loop of backward passes on the retained graph for large slices (see ``_LOOP_ELEMS``),
        else ``torch.func.vmap`` over blocks of ``ck`` seeds. Returns (m, nj, *input_shape)."""
        torch = self._torch

        def vjp(t):
            return torch.autograd.grad(s, xs, t, retain_graph=True)[0]

        m = seeds.shape[0]
        if xs.shape[0] * self._elems() >= _LOOP_ELEMS:
            out = torch.empty((m,) + tuple(xs.shape), dtype=xs.dtype, device=xs.device)
            for i in range(m):
                out[i] = vjp(seeds[i])
            return out
        return torch.cat([torch.func.vmap(vjp)(seeds[i:i + ck]) for i in range(0, m, ck)])

    def _linearization(self, x: np.ndarray, cache: bool):
        """The forward pass at ``x`` recorded for reverse mode: ``(xs, vjp_fn, p, top, jv_fn)``.

        ``vjp_fn(w)`` is ``J^T w``; ``jv_fn(v)`` is ``J v`` for one tangent, as the reverse-mode
        derivative of the linear map ``u -> J^T u`` (a second backward pass through the recorded
        graph: no forward-mode overhead, no repeated forward). With ``cache``, the last one is kept
        (keyed by the bytes of ``x``), so that the products of one eigensolve at a fixed input, as
        :class:`~fisher_ref.MatrixFreeFisherOperator` makes them, share one forward pass; the cache
        holds one recorded graph and is replaced by the next input's.
        """
        torch, func = self._torch, self._torch.func
        key = None
        if cache:
            key = (x.shape, x.dtype.str, hashlib.blake2b(np.ascontiguousarray(x).tobytes(), digest_size=16).digest())
            hit = self._lin_cache
            if hit is not None and hit[0] == key:
                return hit[1]
        self._lin_cache = None  # free the previous graph before recording the next
        xs = self._to_tensor(x)
        s, vjp_fn, out = func.vjp(self._scores, xs, has_aux=True)
        self._check_output(out, 0)
        logp, top = self._log_softmax(s)
        p = torch.exp(logp)
        jv = []  # built on first use: recording the backward pass costs one backward pass

        def jv_fn(t):
            if not jv:
                jv.append(func.vjp(lambda u: vjp_fn(u)[0], torch.zeros_like(s))[1])
            return jv[0](t)[0]

        lin = (xs, vjp_fn, p, top, jv_fn)
        if cache:
            self._lin_cache = (key, lin)
        return lin

    def _fisher_vector_product(self, x: np.ndarray, v: np.ndarray) -> np.ndarray:
        torch, func = self._torch, self._torch.func
        n, k = v.shape[:2]
        nb, ck = self._blocks(n, k)
        res = np.empty(v.shape, dtype=np.float64)

        def scores_only(a):
            return self._scores(a)[0]

        slices = self._batch_slices(n, nb)
        for sl in slices:
            # one slice (the batch fits the memory budget): keep its recorded forward for the next call
            xs, vjp_fn, p, top, jv_fn = self._linearization(x[sl], cache=len(slices) == 1)
            vs = self._to_tensor(v[sl].swapaxes(0, 1))  # (k, nj, *shape)
            for i in range(0, k, ck):
                if min(ck, k - i) == 1:
                    # one tangent: reverse-over-reverse on the recorded graph (about 2 backward passes)
                    u = jv_fn(vs[i]).unsqueeze(0)
                else:
                    # a block: forward mode vmapped over the tangents (cheaper per vector than the above)
                    u = func.vmap(lambda t: func.jvp(scores_only, (xs,), (t,))[1])(vs[i:i + ck])  # (c, nj, C)
                # w = (diag p - pp^T) u in float64 (input-major for the twin, back to tangent-major)
                w = fisher_weights_t(torch, p, top, u.to(self._red_dtype).transpose(0, 1)).transpose(0, 1)
                w = w.to(self.torch_dtype)
                # one cotangent: a plain backward pass (vmap over a batch of one is slower for convolutions)
                gv = vjp_fn(w[0])[0].unsqueeze(0) if w.shape[0] == 1 else func.vmap(vjp_fn)(w)[0]  # (c, nj, *shape)
                res[sl, i:i + ck] = gv.transpose(0, 1).to(torch.float64).cpu().numpy()
        return res

    def _loss_gradient(self, x: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        torch = self._torch
        n = x.shape[0]
        nb, _ = self._blocks(n, 1)
        probs, grads = [], []
        for sl in self._batch_slices(n, nb):
            # plain autograd, one forward and one backward pass (torch.func.vjp's wrappers cost more
            # than the backward pass itself on a small model)
            s, xs = self._recorded_scores(x[sl], sl.start)
            logp, _ = self._log_softmax(s)
            y = torch.as_tensor(labels[sl], device=self.device).view(-1, 1)
            seeds = softmax_seeds_t(torch, logp, y)[:, 0]  # p - e_y
            g = torch.autograd.grad(s, xs, seeds.to(self.torch_dtype))[0]
            grads.append(g.to(torch.float64).cpu().numpy())
            probs.append(self._probs_from_logp(logp))
        return np.concatenate(probs), np.concatenate(grads)

    # ------------------------------------------------------------------ features and MC dropout
    def _features(self, x: np.ndarray, layers: list[str]) -> dict[str, np.ndarray]:
        torch = self._torch
        modules = dict(self.model.named_modules())
        n = x.shape[0]
        nb = max(1, min(n, _MEMORY_BUDGET // (self._elems() * self.dtype.itemsize)))
        acts: dict[str, list] = {name: [] for name in layers}

        def make_hook(name):
            def hook(_mod, _inp, out):
                if not isinstance(out, torch.Tensor):
                    raise ValueError(f"layer {name!r} returned {type(out).__name__}, not a tensor; "
                                     "choose a layer whose output is a single tensor")
                acts[name].append(out.detach().to(torch.float64).cpu().numpy().copy())
            return hook

        handles = [modules[name].register_forward_hook(make_hook(name)) for name in layers]
        try:
            with torch.inference_mode():
                for sl in self._batch_slices(n, nb):
                    _, out = self._scores(self._to_tensor(x[sl]))
                    self._check_output(out, sl.start)
        finally:
            for h in handles:
                h.remove()
        return {name: np.concatenate(acts[name]) for name in layers}

    def stochastic_probabilities(self, x: Any, n_samples: int, *, rng=None) -> np.ndarray:
        """Monte-Carlo dropout predictions, shape ``(n_samples, n, C)`` (for the BU detector).

        Only the dropout layers (``torch.nn.Dropout*``) of the backend's copy are put in training
        mode; BatchNorm keeps its running statistics.

        Parameters
        ----------
        x : array-like of shape (n, *input_shape) or input_shape
        n_samples : int
            Number of dropout masks (forward passes).
        rng : None, int or numpy.random.Generator
            Seeds torch's RNG (in a forked RNG state, so the global one is left as it was): the
            same seed gives the same samples.

        Returns
        -------
        ndarray of shape (n_samples, n, C), float64

        Raises
        ------
        MissingCapabilityError
            If the model has no dropout layer.
        """
        if not self._dropouts:
            raise MissingCapabilityError(
                "the model has no dropout layer (torch.nn.Dropout and the like): Monte-Carlo dropout "
                "predictions, which the BU (Bayesian uncertainty) detector needs, are not available")
        return super().stochastic_probabilities(x, n_samples, rng=rng)

    def _dropout_parts(self):
        """``(deterministic, stochastic)`` parts of the model (see ``_torch_dropout``), or None; traced once."""
        if not hasattr(self, "_dropout_split"):
            from ._torch_dropout import split_at_dropout

            self._dropout_split = split_at_dropout(self._torch, self.model, self._dropouts)
        return self._dropout_split

    def _dropout_forwards(self, x: np.ndarray, nb: int) -> list:
        """One callable per batch slice of ``x``, each a forward pass under fresh dropout masks.

        Where the model splits at its dropout layers and the deterministic part's outputs for all of
        ``x`` fit in the memory budget, that part runs once here and each call runs only the rest.
        """
        slices = self._batch_slices(x.shape[0], nb)
        whole = [lambda sl=sl: self._scores(self._to_tensor(x[sl])) for sl in slices]
        parts = self._dropout_parts()
        if parts is None:
            return whole
        det, sto = parts
        cached, size = [], 0
        with self._torch.inference_mode():
            for sl in slices:
                cached.append(det(self._to_tensor(x[sl])))
                size += sum(t.numel() * t.element_size() for t in cached[-1] if isinstance(t, self._torch.Tensor))
                if size > _MEMORY_BUDGET:
                    return whole
        return [lambda f=f, sl=sl: self._scores_of(sto(*f), sl.stop - sl.start) for f, sl in zip(cached, slices)]

    def _stochastic_probabilities(self, x: np.ndarray, n_samples: int, rng: np.random.Generator) -> np.ndarray:
        torch = self._torch
        n = x.shape[0]
        nb = max(1, min(n, _MEMORY_BUDGET // (self._elems() * self.dtype.itemsize)))
        seed = int(rng.integers(0, 2**63 - 1))
        devices = []
        if self.device.type == "cuda":
            devices = [self.device.index if self.device.index is not None else torch.cuda.current_device()]
        out_arr = np.empty((n_samples, n, 0))
        try:
            forwards = self._dropout_forwards(x, nb)
            for mod in self._dropouts:
                mod.train()
            with torch.random.fork_rng(devices=devices), torch.inference_mode():
                torch.manual_seed(seed)
                samples = []
                for _ in range(n_samples):
                    parts = []
                    for sl, forward in zip(self._batch_slices(n, nb), forwards):
                        s, out = forward()
                        self._check_output(out, sl.start)
                        parts.append(self._probs_from_logp(self._log_softmax(s)[0]))
                    samples.append(np.concatenate(parts))
                out_arr = np.stack(samples)
        finally:
            for mod in self._dropouts:
                mod.eval()
        return out_arr

    def __repr__(self) -> str:
        shp = None if self.input_shape is None else shape_str(self.input_shape)
        return (f"TorchBackend({type(self.model).__name__}, output={self.output!r}, device='{self.device}', "
                f"dtype={self.torch_dtype}, input_shape={shp}, n_classes={self.n_classes})")


# ---------------------------------------------------------------------- softmax algebra, torch twin
# The torch counterparts of fisher_ref._softmax (log_softmax, softmax_seeds, fisher_weights), run on
# the device in float64; tests/test_softmax.py pins them to the NumPy versions on random and
# saturated logits.


def log_softmax_t(torch, s):
    """``(log softmax(s), top class)`` of ``s`` (n, C), ``log(sum exp)`` as ``log1p`` of the
    non-maximal terms (a dominant class's log p keeps its relative accuracy)."""
    top = s.argmax(dim=1, keepdim=True)
    z = s - s.gather(1, top)
    e = torch.exp(z).scatter(1, top, 0.0)
    return z - torch.log1p(e.sum(dim=1, keepdim=True)), top


def softmax_seeds_t(torch, logp, classes):
    """``p - e_c`` of shape (n, m, C) for classes of shape (m,) (all inputs) or (n, m) (per input),
    with the diagonal ``p_c - 1`` as ``expm1(log p_c)``."""
    n, C = logp.shape
    cls = classes.view(1, -1).expand(n, -1) if classes.dim() == 1 else classes
    m = cls.shape[1]
    seeds = torch.exp(logp).unsqueeze(1).repeat(1, m, 1)
    seeds.scatter_(2, cls.unsqueeze(2), torch.expm1(logp.gather(1, cls)).unsqueeze(2))
    return seeds


def fisher_weights_t(torch, p, top, u):
    """``(diag p - pp^T) u`` for ``u`` of shape (n, k, C), shifted by the top class's entry first
    (exact since sum p = 1; no cancellation for a nearly one-hot p)."""
    pk = p.unsqueeze(1)
    du = u - u.gather(2, top.unsqueeze(1).expand(-1, u.shape[1], 1))
    return pk * (du - (pk * du).sum(dim=2, keepdim=True))


def export_onnx(model: Any, input_shape: Sequence[int], path: Any = None, *, dtype: Any = None,
                opset: int | None = None, batch: int | None = None, exporter: str = "torchscript"):
    """Export a torch classifier to ONNX for :class:`~fisher_ref.backends.OnnxBackend` (and ``fisher-ref audit``).

    Parameters
    ----------
    model : torch.nn.Module
        Put in eval mode on a copy; the caller's model is not modified.
    input_shape : tuple of int
        Shape of one input, without the batch axis.
    path : str or os.PathLike, optional
        Where to write the .onnx file; without it the ``onnx.ModelProto`` is returned.
    dtype : torch.dtype, optional
        Export precision (default: the model's).
    opset : int, optional
        ONNX opset; default 17 for the TorchScript exporter, 18 for dynamo (its lowest).
    batch : int, optional
        A fixed batch size; default a dynamic batch axis named "batch". Input "x", output "y".
    exporter : {"torchscript", "dynamo"}, default "torchscript"
        ``"torchscript"``: ``torch.onnx.export(..., dynamo=False)`` with ``do_constant_folding=False``,
        so BatchNorm stays its own node; needs nothing beyond torch and onnx. ``"dynamo"``: the
        ``torch.export`` based exporter (torch's default since 2.9), which needs ``onnxscript``
        (``pip install 'fisher-ref[export]'``); its progress lines are not printed.

    Returns
    -------
    onnx.ModelProto, or the path written.

    Examples
    --------
    >>> export_onnx(net, (3, 32, 32), "net.onnx")                    # doctest: +SKIP
    >>> OnnxBackend("net.onnx")                                      # doctest: +SKIP
    """
    import os

    exporter = check_method(exporter, ("torchscript", "dynamo"), "exporter")
    torch = _import_torch()
    onnx = importlib.import_module("onnx")
    m = copy.deepcopy(model).eval()
    if dtype is not None:
        m = m.to(dtype)
    dt = dtype or next((p.dtype for p in m.parameters()), torch.float32)
    x = torch.zeros((batch or 2,) + tuple(int(s) for s in input_shape), dtype=dt)
    if exporter == "dynamo":
        proto = _export_dynamo(torch, m, x, batch, 18 if opset is None else opset)
    else:
        proto = _export_torchscript(torch, onnx, m, x, batch, 17 if opset is None else opset)
    if path is None:
        return proto
    onnx.save(proto, os.fspath(path))
    return path


def _export_torchscript(torch, onnx, m, x, batch, opset: int):
    import io

    dynamic = None if batch is not None else {"x": {0: "batch"}, "y": {0: "batch"}}
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter is deprecated in torch >= 2.9
        torch.onnx.export(m, (x,), buf, dynamo=False, opset_version=opset, input_names=["x"], output_names=["y"],
                          dynamic_axes=dynamic, do_constant_folding=False)
    return onnx.load_from_string(buf.getvalue())


def _export_dynamo(torch, m, x, batch, opset: int):
    import contextlib
    import importlib.util
    import io
    import logging

    if importlib.util.find_spec("onnxscript") is None:
        raise ImportError("export_onnx(exporter='dynamo') needs onnxscript: pip install 'fisher-ref[export]' "
                          "(or exporter='torchscript', which needs only torch and onnx)")
    dynamic = None if batch is not None else ({0: torch.export.Dim("batch")},)
    quiet = logging.getLogger("torch.onnx")  # "torchvision is not installed. Skipping ..." lines
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(m, (x,), dynamo=True, opset_version=opset, input_names=["x"],
                                        output_names=["y"], dynamic_shapes=dynamic, verbose=False)
    finally:
        quiet.setLevel(level)
    return program.model_proto
