"""The audit's options: one frozen :class:`AuditConfig`, validated once when it is made."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .._validation import check_int, check_real
from ._errors import ConfigError

__all__ = ["AuditConfig", "DATA_FORMATS", "LAYOUTS", "SCALES", "SPLITS", "DEFAULT_WORKER_TIMEOUT"]

#: Data formats :func:`~fisher_ref.audit.load_data` reads (``"auto"`` tells them apart).
DATA_FORMATS = ("auto", "npy", "npz", "idx", "imagefolder", "cifar")
LAYOUTS = ("auto", "nchw", "nhwc")
SCALES = ("auto", "255", "none")
SPLITS = ("test", "train")
#: Seconds a Dask audit waits with no live worker before it stops (``worker_timeout``).
DEFAULT_WORKER_TIMEOUT = 60.0


def _int(value: Any, name: str, **kw) -> int | None:
    try:
        return check_int(value, name, **kw)
    except (TypeError, ValueError) as exc:
        raise ConfigError(str(exc), name) from exc


def _real(value: Any, name: str, **kw) -> float | None:
    try:
        return check_real(value, name, **kw)
    except (TypeError, ValueError) as exc:
        raise ConfigError(str(exc), name) from exc


_UNITS = {"": 1, "b": 1, "k": 2**10, "kb": 2**10, "kib": 2**10, "m": 2**20, "mb": 2**20, "mib": 2**20,
          "g": 2**30, "gb": 2**30, "gib": 2**30, "t": 2**40, "tb": 2**40, "tib": 2**40}


def parse_memory(value: Any, name: str = "max_memory") -> int | None:
    """Bytes from an int or a size such as ``"2G"``, ``"512MB"``, ``"1.5GiB"`` (binary units); None stays None."""
    if value is None:
        return None
    if isinstance(value, str):
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", value)
        if m is None or m.group(2).lower() not in _UNITS:
            raise ConfigError(f"{name} must be a size such as 2G, 512M or a number of bytes, got {value!r}", name)
        value = float(m.group(1)) * _UNITS[m.group(2).lower()]
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    got = _int(value, name)
    if got < 2**20:
        raise ConfigError(f"{name} must be at least 1M (1048576 bytes), got {value!r}", name)
    return got


def default_max_memory(workers: int = 1) -> int | None:
    """A quarter of the memory available now, shared by ``workers`` worker processes (None if unknown)."""
    try:
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        try:
            import psutil

            available = psutil.virtual_memory().available
        except ImportError:
            return None
    return max(2**28, int(available) // (4 * max(1, workers)))


def _choice(value: Any, name: str, allowed: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise ConfigError(f"{name} must be one of {tuple(allowed)}, got {value!r}", name)
    return value


def _epsilons(epsilons: Any) -> tuple[float, ...]:
    try:
        eps = np.atleast_1d(np.asarray(epsilons, dtype=np.float64))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"epsilons must be numbers, got {epsilons!r}", "epsilons") from exc
    if eps.ndim != 1 or eps.size == 0 or not np.all(np.isfinite(eps)) or np.any(eps <= 0):
        raise ConfigError(f"epsilons must be one or more positive numbers, got {epsilons!r}", "epsilons")
    return tuple(sorted(set(float(e) for e in eps)))


def _floats(values: Any, name: str) -> tuple[float, ...] | None:
    if values is None:
        return None
    try:
        a = np.atleast_1d(np.asarray(values, dtype=np.float64)).ravel()
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{name} must be numbers, got {values!r}", name) from exc
    if a.size == 0 or not np.all(np.isfinite(a)):
        raise ConfigError(f"{name} must be one or more finite numbers, got {values!r}", name)
    return tuple(float(v) for v in a)


def _resize(resize: Any) -> tuple[int, int] | None:
    if resize is None:
        return None
    try:
        size = tuple(int(s) for s in resize)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"resize must be (height, width), got {resize!r}", "resize") from exc
    if len(size) != 2 or min(size) < 1:
        raise ConfigError(f"resize must be (height, width) with positive sizes, got {resize!r}", "resize")
    return size  # type: ignore[return-value]


def _bounds(bounds: Any) -> str | tuple[float, float] | None:
    if bounds is None or (isinstance(bounds, str) and bounds == "auto"):
        return bounds
    try:
        lo, hi = (float(v) for v in bounds)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"bounds must be 'auto', (lo, hi) or None, got {bounds!r}", "bounds") from exc
    if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
        raise ConfigError(f"bounds must satisfy lo < hi (both finite), got {bounds!r}", "bounds")
    return lo, hi


def _out(out: Any) -> Path | None:
    if out is None:
        return None
    if not isinstance(out, (str, os.PathLike)):
        raise ConfigError(f"out must be a path (str or os.PathLike), got {type(out).__name__}", "out")
    text = os.fspath(out)
    if not str(text).strip():
        raise ConfigError(f"out must name a folder, got {text!r} (an empty path would write into the current "
                          "folder)", "out")
    return Path(text)


def _scheduler(scheduler: Any) -> str | None:
    if scheduler is None:
        return None
    if not isinstance(scheduler, str) or not scheduler.strip():
        raise ConfigError(f"scheduler must be an address or local:N, got {scheduler!r}", "scheduler")
    if scheduler.startswith("local:"):
        n = scheduler.split(":", 1)[1]
        if not (n.isdigit() and int(n) >= 1):
            raise ConfigError(f"scheduler must be an address or local:N with N >= 1 workers, got {scheduler!r}",
                              "scheduler")
    return scheduler


def _name(value: Any, name: str) -> str | None:
    if value is not None and not isinstance(value, str):
        raise ConfigError(f"{name} must be a graph {name.split('_')[0]} name (str), got {type(value).__name__}", name)
    return value


@dataclass(frozen=True, eq=False)
class AuditConfig:
    """Every option of :func:`~fisher_ref.audit.audit`, validated and normalised on construction.

    The fields are the keyword arguments of :func:`~fisher_ref.audit.audit` (see there); after
    construction ``epsilons`` is a sorted tuple of distinct floats, ``mean`` / ``std`` / ``resize``
    tuples, ``out`` a :class:`pathlib.Path` (or None) and ``bounds`` ``"auto"``, ``(lo, hi)`` or None.

    Raises
    ------
    ConfigError
        For any option of the wrong type or out of range; ``option`` names it.
    """

    out: Path | None = None
    k: int = 10
    epsilons: tuple = (0.5, 1.0, 2.0, 3.0)
    limit: int | None = None
    providers: Any = None
    batch_size: int = 64
    max_memory: Any = None
    input_name: str | None = None
    output_name: str | None = None
    data_format: str = "auto"
    split: str = "test"
    layout: str = "auto"
    scale: str = "auto"
    mean: tuple | None = None
    std: tuple | None = None
    resize: tuple | None = None
    bounds: Any = "auto"
    max_epsilon: float = 6.0
    tol: float = 1e-3
    shard_size: int = 50
    n_vulnerable: int = 8
    resume: bool = False
    force: bool = False
    force_any: bool = False
    break_lock: bool = False
    scheduler: str | None = None
    worker_timeout: float = DEFAULT_WORKER_TIMEOUT
    max_shards: int | None = None
    progress: bool = True
    report: bool = True

    def __post_init__(self) -> None:
        for key, value in self._normalised().items():
            object.__setattr__(self, key, value)
        if self.resume and (self.force or self.force_any):
            raise ConfigError("resume and force exclude each other: continue the audit (resume) or start it "
                              "over (force)", "resume")
        if (self.mean is None) != (self.std is None):
            raise ConfigError("mean and std go together (--mean and --std): give both or neither")
        if self.std is not None and min(self.std) <= 0:
            raise ConfigError(f"std must be positive, got {list(self.std)}", "std")
        if self.resume and self.out is None:
            raise ConfigError("resume needs the output folder of the audit to continue (--out DIR)", "out")

    def _normalised(self) -> dict:
        return {
            "out": _out(self.out),
            "k": _int(self.k, "k", min_val=1),
            "epsilons": _epsilons(self.epsilons),
            "limit": _int(self.limit, "limit", min_val=1, allow_none=True),
            "batch_size": _int(self.batch_size, "batch_size", min_val=1),
            "max_memory": parse_memory(self.max_memory),
            "input_name": _name(self.input_name, "input_name"),
            "output_name": _name(self.output_name, "output_name"),
            "data_format": _choice(self.data_format, "data_format", DATA_FORMATS),
            "split": _choice(self.split, "split", SPLITS),
            "layout": _choice(self.layout, "layout", LAYOUTS),
            "scale": _choice(self.scale, "scale", SCALES),
            "mean": _floats(self.mean, "mean"),
            "std": _floats(self.std, "std"),
            "resize": _resize(self.resize),
            "bounds": _bounds(self.bounds),
            "max_epsilon": _real(self.max_epsilon, "max_epsilon", min_val=0, include_boundaries="neither"),
            "tol": _real(self.tol, "tol", min_val=0, include_boundaries="neither"),
            "shard_size": _int(self.shard_size, "shard_size", min_val=1),
            "n_vulnerable": _int(self.n_vulnerable, "n_vulnerable", min_val=1),
            "worker_timeout": _real(self.worker_timeout, "worker_timeout", min_val=0, include_boundaries="neither"),
            "max_shards": _int(self.max_shards, "max_shards", min_val=1, allow_none=True),
            "scheduler": _scheduler(self.scheduler),
            **{key: bool(getattr(self, key)) for key in ("resume", "force", "force_any", "break_lock", "progress",
                                                        "report")},
        }
