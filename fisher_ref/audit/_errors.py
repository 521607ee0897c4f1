"""The audit's errors: one type per kind of bad input, all under :class:`AuditError`.

Every message is one line; the command line prints it after ``fisher-ref audit: error:`` and
exits with status 2. Code decides by the type of the error, never by its text.
"""

from __future__ import annotations

__all__ = ["AuditError", "ConfigError", "DataError", "ModelError", "OutputFolderError", "FolderLockedError",
           "NotResumableError", "DiskFullError", "DependencyError", "SchedulerError"]


class AuditError(ValueError):
    """Bad input to an audit (model, data, options or output folder); the message is one line."""


class ConfigError(AuditError):
    """An option has the wrong type or value; ``option`` is its keyword (the CLI flag is ``--`` + it)."""

    def __init__(self, message: str, option: str | None = None):
        super().__init__(message)
        self.option = option


class DataError(AuditError):
    """The data (or its labels) cannot be read, or does not fit the model or the declared bounds."""


class ModelError(AuditError):
    """The ONNX model cannot be loaded, differentiated or evaluated (including NaN it produces)."""


class OutputFolderError(AuditError):
    """The output folder cannot be used: not writable, not ours to overwrite, a symbolic link out of it."""


class FolderLockedError(OutputFolderError):
    """Another audit holds the output folder's lock (or a dead one left it behind)."""


class NotResumableError(OutputFolderError):
    """``resume`` asked for, but what is in the output folder cannot be proven to be this audit's."""


class DiskFullError(OutputFolderError):
    """No space left on the device while writing an output; finished shards are kept for ``resume``."""


class DependencyError(AuditError):
    """An optional package the requested work needs is not installed."""


class SchedulerError(AuditError):
    """The Dask cluster cannot be reached, keeps losing the workers of a shard, or has no live worker."""
