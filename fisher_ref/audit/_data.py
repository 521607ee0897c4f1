"""Reading the audit's data: files and folders (``load_data``) or arrays, and their labels.

Every failure to read becomes a one-line :class:`~fisher_ref.audit.DataError`; a ``.npy``
header is checked against the file's size before anything is allocated.
"""

from __future__ import annotations

import gzip
import math
import os
import pickle
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ._config import DATA_FORMATS
from ._errors import DataError
from .._text import one_line, size_str
from .._validation import shape_str

__all__ = ["load_data", "RawData", "raw_from_arrays", "read_labels"]

_NPZ_KEYS = ("x", "images", "X", "data", "inputs")
_NPZ_LABEL_KEYS = ("y", "labels", "Y", "targets", "label")
#: What reading a file may raise besides our own errors (numpy, zip, gzip, pickle, the OS).
_READ_ERRORS = (ValueError, OSError, EOFError, pickle.UnpicklingError, KeyError, zipfile.BadZipFile, zlib.error)


@dataclass
class RawData:
    """Inputs as read, before the model's layout and scale: ``raw`` (n, ...), labels or None."""

    raw: np.ndarray
    labels: np.ndarray | None
    description: dict
    class_names: list | None = None
    resized: bool = False  # ImageFolder images are resized while decoding


# ---------------------------------------------------------------------------------- .npy / .npz
def _check_npy_stream(fp, n_bytes: int, what: str) -> None:
    """Refuse a ``.npy`` stream whose header claims more data than the stream holds, or objects."""
    fmt = np.lib.format
    try:
        version = fmt.read_magic(fp)
        if version == (1, 0):
            shape, _, dtype = fmt.read_array_header_1_0(fp)
        elif version == (2, 0):
            shape, _, dtype = fmt.read_array_header_2_0(fp)
        else:  # (3, 0): a UTF-8 header numpy checks itself; no public reader to look ahead
            return
    except ValueError as exc:
        raise DataError(f"{what} is not a readable .npy array ({one_line(exc)})") from exc
    if dtype.hasobject:
        raise DataError(f"{what} holds Python objects (dtype {dtype}); expected numbers (pickles are not loaded)")
    need = math.prod(shape) * dtype.itemsize
    have = n_bytes - fp.tell()
    if need > have:
        raise DataError(f"{what}: its header claims shape {shape_str(shape)} of {dtype} ({size_str(need)}), but the "
                        f"file holds {size_str(max(have, 0))} of data: it is truncated or corrupt")


def _load_npy(path: Path) -> np.ndarray:
    with open(path, "rb") as f:
        _check_npy_stream(f, os.fstat(f.fileno()).st_size, f"data: {str(path)!r}")
    return np.load(path, allow_pickle=False)


def _npz_member(f, key: str, what: str) -> np.ndarray:
    name = key if key in f.zip.namelist() else f"{key}.npy"
    with f.zip.open(name) as fp:
        _check_npy_stream(fp, f.zip.getinfo(name).file_size, f"{what} (array {key!r})")
    return f[key]


def _npz_pick(files: list, keys: Sequence[str]) -> str | None:
    key = next((k for k in keys if k in files), None)
    return files[0] if key is None and len(files) == 1 else key


def _load_npz(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    what = f"data: {str(path)!r}"
    with np.load(path, allow_pickle=False) as f:
        key = _npz_pick(f.files, _NPZ_KEYS)
        if key is None:
            raise DataError(f"{what} holds arrays {f.files}; expected the inputs under one of {list(_NPZ_KEYS)} "
                            f"(and labels under one of {list(_NPZ_LABEL_KEYS)})")
        ykey = next((k for k in _NPZ_LABEL_KEYS if k in f.files), None)
        return _npz_member(f, key, what), (None if ykey is None else _npz_member(f, ykey, what))


# ---------------------------------------------------------------------------------- labels
def _labels_file(path: Path) -> np.ndarray:
    """Labels from .npy, .npz, IDX, or a text file with one integer per line."""
    if path.suffix == ".npy":
        return _load_npy(path)
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as f:
            key = _npz_pick(f.files, _NPZ_LABEL_KEYS)
            if key is None:
                raise DataError(f"labels: {str(path)!r} holds arrays {f.files}; expected one of "
                                f"{list(_NPZ_LABEL_KEYS)}")
            return _npz_member(f, key, f"labels: {str(path)!r}")
    if _looks_like_idx(path):
        from ..datasets import read_idx

        return read_idx(path)
    return np.array([int(t) for t in path.read_text().split()], dtype=np.int64)


def read_labels(labels: Any) -> np.ndarray:
    """Integer labels ``(n,)`` from a path (.npy, .npz, IDX, text) or an array-like."""
    if isinstance(labels, (str, os.PathLike)):
        path = Path(labels)
        if not path.is_file():
            raise DataError(f"labels: no such file {str(path)!r}")
        try:
            labels = _labels_file(path)
        except DataError:
            raise
        except _READ_ERRORS as exc:
            raise DataError(f"labels: cannot read {str(path)!r} ({type(exc).__name__}: {one_line(exc)})") from exc
    return check_label_values(labels)


def check_label_values(labels: Any) -> np.ndarray:
    try:
        y = np.asarray(labels)
    except ValueError as exc:  # ragged
        raise DataError(f"labels must be a flat sequence of integers ({one_line(exc)})") from exc
    if y.dtype.kind not in "iu" and not (y.dtype.kind == "f" and np.all(np.isfinite(y)) and np.all(y == np.round(y))):
        raise DataError(f"labels must be integers, got an array of dtype {y.dtype}")
    return y.astype(np.int64).reshape(-1)


# ---------------------------------------------------------------------------------- formats
def _head(path: Path, n: int = 4) -> bytes:
    with open(path, "rb") as f:
        raw = f.read(64)
    if raw[:2] == b"\x1f\x8b":
        try:
            with gzip.open(path, "rb") as g:
                return g.read(n)
        except (OSError, EOFError):
            return b""
    return raw[:n]


def _looks_like_idx(path: Path) -> bool:
    h = _head(path)
    return len(h) == 4 and h[0] == 0 and h[1] == 0 and h[2] in (0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E) and 1 <= h[3] <= 8


def _folder_format(path: Path) -> str:
    if (path / "cifar-10-batches-py").is_dir() or (path / "test_batch").is_file() or (path / "data_batch_1").is_file():
        return "cifar"
    if any(p.name.startswith(("t10k-images", "train-images")) for p in path.iterdir()) or (path / "mnist").is_dir():
        return "idx"
    if any(p.is_dir() and not p.name.startswith(".") for p in path.iterdir()):
        return "imagefolder"
    raise DataError(f"data: cannot tell the format of folder {str(path)!r}: expected an ImageFolder "
                    "(root/<class>/<image>), CIFAR-10 pickle batches or MNIST IDX files (pass --format)")


def _detect_format(path: Path) -> str:
    if path.is_dir():
        return _folder_format(path)
    if path.suffix in (".npy", ".npz"):
        return path.suffix[1:]
    if path.name.endswith((".tar.gz", ".tgz", ".tar")):
        return "cifar"
    if _looks_like_idx(path):
        return "idx"
    if _head(path, 1) == b"\x80":
        return "cifar"
    raise DataError(f"data: cannot tell the format of {str(path)!r}: expected .npy, .npz, an IDX file, a CIFAR-10 "
                    "pickle batch or a folder (pass --format)")


def _read_idx_pair(p: Path, split: str, labels_given: bool) -> tuple[np.ndarray, np.ndarray | None, str]:
    from .. import datasets

    if p.is_dir():
        x, y = datasets.load_mnist(p, split)
        return x, y, str(p)
    x = datasets.read_idx(p)
    guess = p.with_name(p.name.replace("images", "labels").replace("idx3", "idx1"))
    if not labels_given and guess != p and guess.is_file():
        return x, datasets.read_idx(guess), f"{p} + {guess.name}"
    return x, None, str(p)


def _read_cifar(p: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    from .. import datasets

    if p.is_dir():
        return datasets.load_cifar10(p, split)
    if p.name.endswith((".tar.gz", ".tgz", ".tar")):
        return datasets._load_cifar_pickle_tar(p, split, None)
    with open(p, "rb") as f:
        return datasets._read_cifar_batch(f, p)


def _read(p: Path, fmt: str, split: str, labels_given: bool, resize) -> tuple:
    """``(x, y, source, class_names)`` of one file or folder in format ``fmt``."""
    from .. import datasets

    if fmt == "npy":
        return _load_npy(p), None, str(p), None
    if fmt == "npz":
        return (*_load_npz(p), str(p), None)
    if fmt == "idx":
        return (*_read_idx_pair(p, split, labels_given), None)
    if fmt == "imagefolder":
        x, y, names = datasets.load_image_folder(p, size=resize)
        return x, y, str(p), names
    return (*_read_cifar(p, split), str(p), list(datasets.CIFAR10_CLASSES))


def load_data(path: str | os.PathLike, *, data_format: str = "auto", labels: Any = None,
              split: str = "test", resize: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray | None, dict, list | None]:
    """Read raw inputs (and labels when the data has them) from a file or folder.

    Parameters
    ----------
    path : path
        ``.npy`` (inputs only), ``.npz`` (inputs under ``x``/``images``, labels under
        ``y``/``labels``), an IDX images file (its labels file is found by replacing ``images``
        with ``labels`` and ``idx3`` with ``idx1`` in the name), a folder in MNIST's four-file IDX
        layout, an ImageFolder (``root/<class>/<image>``), CIFAR-10 pickle batches (a folder, one
        batch file, or ``cifar-10-python.tar.gz``).
    data_format : {"auto", "npy", "npz", "idx", "imagefolder", "cifar"}
    labels : path or array-like of int, optional
        Labels for data that has none (or to replace those it has).
    split : {"test", "train"}
        For MNIST and CIFAR-10 folders.
    resize : (height, width), optional
        For ImageFolder: resize while decoding (other formats are resized later by the audit).

    Returns
    -------
    raw : ndarray (n, ...)
    labels : ndarray of int64 or None
    description : dict
    class_names : list of str or None

    Raises
    ------
    DataError
        For a missing, truncated or unreadable file (a ``.npy`` header claiming more data than the
        file holds is refused before anything is allocated), an unknown format, labels that are
        not integers.
    """
    p = Path(path)
    if not p.exists():
        raise DataError(f"data: no such file or folder {str(p)!r}")
    if data_format not in DATA_FORMATS:
        raise DataError(f"data format must be one of {DATA_FORMATS}, got {data_format!r}")
    fmt = _detect_format(p) if data_format == "auto" else data_format
    try:
        x, y, source, class_names = _read(p, fmt, split, labels is not None, resize)
    except DataError:
        raise
    except _READ_ERRORS as exc:
        raise DataError(f"data: cannot read {str(p)!r} as {fmt} ({type(exc).__name__}: {one_line(exc)})") from exc
    x = np.asarray(x)
    y = read_labels(labels) if labels is not None else (None if y is None else check_label_values(y))
    desc = {"path": str(p), "format": fmt, "source": source, "raw_shape": list(x.shape), "raw_dtype": str(x.dtype)}
    return x, y, desc, class_names


def raw_from_arrays(data: Any, labels: Any) -> RawData:
    """Inputs given as an array-like ``(n, ...)`` or a pair ``(x, labels)``."""
    if isinstance(data, tuple) and len(data) == 2:
        data, own = data
        labels = own if labels is None else labels
    try:
        raw = np.asarray(data)
    except ValueError as exc:  # numpy refuses ragged nested sequences
        raise DataError(f"data must be an array of shape (n, *input_shape); got a ragged sequence, inputs of "
                        f"different shapes ({one_line(exc)})") from exc
    if raw.dtype == object:
        raise DataError("data must be an array of shape (n, *input_shape) of numbers; got Python objects "
                        "(a ragged sequence, inputs of different shapes?)")
    y = None if labels is None else read_labels(labels)
    desc = {"path": None, "format": "array", "source": "array", "raw_shape": list(raw.shape),
            "raw_dtype": str(raw.dtype)}
    return RawData(raw, y, desc)


def raw_from_path(path: Any, labels: Any, *, data_format: str, split: str, resize) -> RawData:
    x, y, desc, names = load_data(path, data_format=data_format, labels=labels, split=split, resize=resize)
    return RawData(x, y, desc, names, resized=desc["format"] == "imagefolder" and resize is not None)
