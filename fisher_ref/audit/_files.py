"""Writing files so that they are whole or absent, and fingerprints of files and arrays.

Every output of the audit goes through :func:`atomic_write`: a temporary name in the same folder,
``fsync``, ``rename`` (and the folder synced), so a kill or a full disk never leaves a half-written
file under an output's name.
"""

from __future__ import annotations

import errno
import hashlib
import os
import secrets
from pathlib import Path

import numpy as np

from ._errors import DiskFullError, OutputFolderError
from .._text import one_line

__all__ = ["atomic_write", "sha256_file", "sha256_bytes", "sha256_arrays", "TMP_MARK"]

#: Part of every temporary name (``.NAME.fisher-ref-tmp-PID-TOKEN``).
TMP_MARK = ".fisher-ref-tmp-"


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory handles
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some filesystems refuse fsync on a directory
        pass
    finally:
        os.close(fd)


def write_error(exc: OSError, path: Path, what: str = "writing") -> OutputFolderError:
    """The one-line error for an OSError met while writing ``path`` (a full disk says so)."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFullError(f"no space left on device {what} {str(path)!r}; free space and rerun with --resume "
                             "(resume=True): finished shards are kept")
    return OutputFolderError(f"cannot write {str(path)!r}: {exc.strerror or one_line(exc)}")


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path``: temporary file in the same folder, fsync, rename.

    Raises
    ------
    DiskFullError
        When the device is full (the temporary file is removed, ``path`` is untouched).
    OutputFolderError
        For any other failure to write.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}-{secrets.token_hex(4)}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as exc:
        _discard(tmp)
        raise write_error(exc, path) from exc
    except BaseException:
        _discard(tmp)
        raise
    _fsync_dir(path.parent)


def _discard(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError:  # pragma: no cover - the folder became unwritable meanwhile
        pass


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_arrays(*arrays) -> str:
    """One digest of arrays with their dtypes and shapes (None counts as a value)."""
    h = hashlib.sha256()
    for a in arrays:
        if a is None:
            h.update(b"none")
        else:
            a = np.ascontiguousarray(a)
            h.update(str((a.dtype.str, a.shape)).encode())
            h.update(a.tobytes())
    return h.hexdigest()
