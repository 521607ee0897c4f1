"""The audit's model: an :class:`~fisher_ref.backends.OnnxBackend`, normalised when asked.

Shards (here or on a Dask worker) rebuild the backend from the model's path; each process keeps
the last one it built.
"""

from __future__ import annotations

import json
import os
import socket
from typing import Any

import numpy as np

from .._backend import Backend
from ._config import default_max_memory
from ._errors import DependencyError, ModelError
from ._prepare import channel_shape
from .._text import one_line

__all__ = ["open_model", "backend_for"]

#: How the CLI names the backend's keywords in a message about the model.
_FLAGS = {"input_name=": "--input-name (input_name=)", "output_name=": "--output-name (output_name=)"}


def _model_message(model: str, exc: BaseException) -> str:
    msg = one_line(exc)
    for keyword, flag in _FLAGS.items():
        msg = msg.replace(f"pass {keyword}", f"pass {flag}")
    for stem in ("model: ", "model "):  # the backend says "model ..." of a model it does not name
        if msg.startswith(stem):
            msg = msg[len(stem):]
            break
    return f"model {model}: {msg}"


def _onnx_backend(model: str, *, providers, input_name, output_name, batch_size, input_shape=None,
                  max_memory=None) -> Backend:
    try:
        from ..backends.onnxruntime import OnnxBackend

        return OnnxBackend(model, providers=_providers(providers), input_name=input_name, output_name=output_name,
                           batch_size=batch_size, input_shape=input_shape, max_memory=max_memory)
    except ImportError as exc:
        raise DependencyError(one_line(exc)) from exc
    except (ValueError, TypeError, RuntimeError) as exc:
        raise ModelError(_model_message(model, exc)) from exc


def _providers(providers):
    """Providers as OnnxBackend takes them (JSON turned ``(name, options)`` pairs into lists)."""
    if providers is None or isinstance(providers, str):
        return providers
    return [tuple(p) if isinstance(p, list) else p for p in providers]


def with_normalization(backend: Backend, mean, std) -> Backend:
    if mean is None:
        return backend
    from ..backends import NormalizedBackend

    shape = tuple(backend.input_shape)
    return NormalizedBackend(backend, channel_shape(mean, shape, "mean"), channel_shape(std, shape, "std"))


def open_model(model: str, cfg, raw: np.ndarray, max_memory: int | None = None) -> Backend:
    """The backend of the audit (before normalisation), its derivative runs within ``max_memory``
    bytes; a graph whose input dimensions are symbolic takes the shape of one input of the data."""
    kw = dict(providers=cfg.providers, input_name=cfg.input_name, output_name=cfg.output_name,
              batch_size=cfg.batch_size, max_memory=max_memory)
    try:
        return _onnx_backend(model, **kw)
    except ModelError as first:
        if raw.ndim < 2:
            raise
        try:  # a fixed shape that disagrees with the data fails again: the first error stands
            return _onnx_backend(model, input_shape=tuple(raw.shape[1:]), **kw)
        except ModelError:
            raise first from None


def memory_budget(cfg) -> int | None:
    """Bytes one worker's derivative runs may hold: ``max_memory``, or a quarter of the memory
    available now shared by the local workers of ``scheduler="local:N"``."""
    if cfg.max_memory is not None:
        return cfg.max_memory
    workers = 1
    if cfg.scheduler and cfg.scheduler.startswith("local:"):
        try:
            workers = int(cfg.scheduler.split(":", 1)[1])
        except ValueError:  # the scheduler's own check reports it
            pass
    return default_max_memory(workers)


def jsonable_providers(providers):
    if providers is None:
        return None
    if isinstance(providers, str):
        return [providers]
    return [p if isinstance(p, str) else [p[0], dict(p[1])] for p in providers]


_CACHE: dict = {}


def backend_for(spec) -> Backend:
    """The backend a shard computes with, built from the model's path (cached per process)."""
    path = spec.model
    try:
        st = os.stat(path)
    except OSError as exc:
        raise ModelError(f"model {path}: cannot read it on host {socket.gethostname()} ({exc.strerror}); every "
                         "Dask worker loads the model from this path") from exc
    key = (path, st.st_mtime_ns, st.st_size, json.dumps(spec.providers), spec.input_name, spec.output_name,
           spec.batch_size, tuple(spec.input_shape), json.dumps(spec.mean), json.dumps(spec.std))
    b = _CACHE.get(key)
    if b is None:
        b = _onnx_backend(path, providers=spec.providers, input_name=spec.input_name, output_name=spec.output_name,
                          batch_size=spec.batch_size, input_shape=tuple(spec.input_shape))
        b = with_normalization(b, spec.mean, spec.std)
        _CACHE.clear()  # one model per process is enough
        _CACHE[key] = b
    return b


def describe(backend: Any) -> dict:
    """What summary.json says of the model's backend (seen through a normalisation)."""
    inner = getattr(backend, "inner", backend)
    return {"input_name": inner.input_name, "output_name": inner.output_name, "output_kind": inner.output_kind_,
            "input_shape": list(backend.input_shape), "n_classes": int(backend.n_classes),
            "dtype": backend.dtype.name, "providers": [p if isinstance(p, str) else p[0] for p in inner.providers]}
