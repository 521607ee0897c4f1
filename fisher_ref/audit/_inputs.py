"""The first step of an audit: what to audit (model, data, labels), checked and prepared.

Its result, :class:`Prepared`, holds the backend, the inputs in the model's space, the clipping
bounds, the shard task's :class:`~fisher_ref.audit._shards.ShardSpec` and the fingerprint that
ties shards on disk to these inputs and options.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._backend import Backend
from ._data import RawData, raw_from_arrays, raw_from_path
from ._errors import DataError, DependencyError, ModelError
from ._files import sha256_arrays, sha256_bytes, sha256_file
from ._model import jsonable_providers, memory_budget, open_model, with_normalization
from ._outdir import FORMAT_VERSION
from ._prepare import prepare_data, resolve_bounds
from ._shards import ShardSpec
from .._text import count
from .._validation import shape_str

__all__ = ["Prepared", "prepare_inputs", "check_dependencies"]

_BUNDLED_SOURCE = "bundled MNIST sample (500 MNIST test images, fisher_ref/data/mnist_sample.npz)"


@dataclass
class Prepared:
    """Everything an audit computes from, after the checks."""

    model_path: str
    bundled: bool
    backend: Backend
    x: np.ndarray
    y: np.ndarray | None
    raw: RawData
    spec: ShardSpec
    fingerprint: dict
    memory_budget: int | None = None  # bytes one worker's derivative runs may hold (memory_budget(cfg))

    @property
    def n(self) -> int:
        return int(self.x.shape[0])

    @property
    def fingerprint_id(self) -> str:
        """SHA-256 of the fingerprint: what each shard's manifest entry records."""
        return sha256_bytes(json.dumps(self.fingerprint, sort_keys=True).encode())


def check_dependencies(cfg) -> None:
    """Refuse, before any work, an install that lacks what the options need: one line naming every extra."""
    from .._extras import require_extras

    extras = ["onnx", *(["plot"] if cfg.report else []), *(["audit"] if cfg.scheduler is not None else [])]
    what = "fisher-ref audit" + (" (pass --no-report to do without matplotlib)" if cfg.report else "")
    try:
        require_extras(*extras, what=what)
    except ImportError as exc:
        raise DependencyError(str(exc)) from exc


def resolve_model_and_data(model: Any, data: Any) -> tuple[str, Any, bool]:
    """``(absolute model path, data, bundled?)``: no model means the bundled LeNet-5 (and its data)."""
    from ..backends import bundled_path

    bundled = model is None
    if bundled:
        model = bundled_path("mnist_lenet.onnx")
        data = bundled_path("mnist_sample.npz") if data is None else data
    if data is None:
        raise DataError("data is required when a model is given (--data PATH)")
    path = os.path.abspath(os.fspath(model))
    if not os.path.isfile(path):
        raise ModelError(f"model {path}: no such ONNX file")
    return path, data, bundled


def _read(data: Any, labels: Any, cfg) -> RawData:
    if isinstance(data, (str, os.PathLike)):
        return raw_from_path(data, labels, data_format=cfg.data_format, split=cfg.split, resize=cfg.resize)
    return raw_from_arrays(data, labels)


def effective_k(k: int, d: int, n_classes: int, say) -> int:
    """``k`` clamped to the input dimension and to the rank bound C - 1 of the Fisher matrix, said in a line."""
    bound = min(d, n_classes - 1)
    if k <= bound:
        return k
    why = (f"the input dimension is {d}" if d <= n_classes - 1 else
           f"a {n_classes}-class model's Fisher matrix has rank <= {n_classes - 1}, the rest are exact zeros")
    say(f"k = {k} is more eigenvalues than can be nonzero ({why}): using k = {bound}")
    return bound


def _fingerprint(model_path: str, x: np.ndarray, y, spec: ShardSpec, shard_size: int) -> dict:
    n = int(x.shape[0])
    keys = ("input_name", "output_name", "input_shape", "mean", "std", "k", "epsilons", "bounds", "max_epsilon", "tol")
    return {"format_version": FORMAT_VERSION, "model_sha256": sha256_file(model_path),
            "data_sha256": sha256_arrays(x, y), "n_inputs": n, "shard_size": shard_size,
            "n_shards": -(-n // shard_size), **{key: spec.to_json()[key] for key in keys}}


def _size(n: int) -> str:
    for unit, scale in (("GB", 2**30), ("MB", 2**20)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def prepare_inputs(model: Any, data: Any, labels: Any, cfg, say) -> Prepared:
    """Read and check the model and the data, bring the data to the model's space, fix k and bounds."""
    model_path, data, bundled = resolve_model_and_data(model, data)
    raw = _read(data, labels, cfg)
    if bundled:
        raw.description["source"] = _BUNDLED_SOURCE
    say(f"model: {model_path}")
    budget = memory_budget(cfg)  # once: the default reads the memory available now
    backend = open_model(model_path, cfg, raw.raw, budget)
    input_shape = tuple(backend.input_shape)
    x, y, prep = prepare_data(raw.raw, raw.labels, input_shape, limit=cfg.limit, layout=cfg.layout, scale=cfg.scale,
                              resize=None if raw.resized else cfg.resize, n_classes=backend.n_classes)
    if cfg.resize is not None:
        prep["resize"] = list(cfg.resize)
    raw.description.update(prep)
    bounds = resolve_bounds(x, cfg.bounds, scaled=prep["scale"] != "none")
    backend = with_normalization(backend, cfg.mean, cfg.std)
    k = effective_k(cfg.k, math.prod(input_shape), int(backend.n_classes), say)
    say(f"data:  {count(x.shape[0], 'input')} of shape {shape_str(input_shape)} from {raw.description['source']} "
        f"({'labels given' if y is not None else 'no labels: attacking the predictions'})")
    inner = getattr(backend, "inner", backend)
    if inner.batch_size < cfg.batch_size and getattr(inner, "row_bytes_", None):
        say(f"batch: {count(inner.batch_size, 'row')} per ONNX Runtime run instead of {cfg.batch_size}, to stay "
            f"within --max-memory {_size(budget)} (about {_size(inner.row_bytes_)} per row)")
    spec = ShardSpec(model=model_path, providers=jsonable_providers(cfg.providers), input_name=inner.input_name,
                     output_name=inner.output_name, batch_size=inner.batch_size, input_shape=input_shape,
                     mean=None if cfg.mean is None else list(cfg.mean), std=None if cfg.std is None else list(cfg.std),
                     k=k, epsilons=tuple(cfg.epsilons), bounds=bounds, max_epsilon=cfg.max_epsilon, tol=cfg.tol)
    return Prepared(model_path, bundled, backend, x, y, raw, spec, _fingerprint(model_path, x, y, spec, cfg.shard_size),
                    budget)
