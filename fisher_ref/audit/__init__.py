"""``fisher-ref audit``: the Fisher-information vulnerability audit of an ONNX classifier.

For every input of a data set the audit records the top-k eigenvalues of the input Fisher
information matrix ``G_x`` (paper eq. 4), whether the one-step spectral attack (OSSA, Algorithm 1)
and the fast gradient method (FGM) change the prediction at each l2 budget epsilon, the least l2
budget at which OSSA does (binary search, :func:`~fisher_ref.least_perturbation`; the paper's
Table 2 and Figure 3), the prediction and its confidence. It then summarises: fooling-rate curves,
the most vulnerable inputs with their adversarial examples, the eigenvalue histogram, and the
Spearman rank correlation between the top eigenvalue and the least perturbation (the paper's
observation: a larger eigenvalue, a smaller perturbation).

The pipeline, one module a step::

    _config    AuditConfig: every option, validated once
    _data      reading files and arrays (load_data), _prepare: layout, scale, bounds
    _model     the ONNX backend (NormalizedBackend for mean/std)
    _inputs    model + data -> Prepared (backend, inputs, fingerprint)
    _outdir    the output folder: lock (_lock), manifest, force, atomic writes (_files)
    _resume    which shards on disk the manifest proves
    _shards    one shard: compute_shard and its two files
    _run       the pending shards, here or on Dask (_dask: bounded retries, watchdog)
    _summary   summary.json;  _report: plots and report.html
    _pipeline  audit(): the steps in order

Work is split into shards of consecutive inputs, each written to ``OUT/shards/shard-NNNNN.csv``
(+ ``.npz`` with the exact arrays and the adversarial examples) as soon as it is done, so an
interrupted audit resumes where it stopped (``resume=True``). ONNX Runtime, onnx-ad, matplotlib,
tqdm and dask are imported when needed, never at import time.
"""

from ._config import AuditConfig
from ._data import load_data
from ._errors import (
    AuditError,
    ConfigError,
    DataError,
    DependencyError,
    DiskFullError,
    FolderLockedError,
    ModelError,
    NotResumableError,
    OutputFolderError,
    SchedulerError,
)
from ._outdir import DEFAULT_OUT_ROOT
from ._pipeline import AuditResult, audit
from ._prepare import prepare_data
from ._shards import ShardSpec, compute_shard

__all__ = [
    "audit",
    "AuditConfig",
    "AuditResult",
    "AuditError",
    "ConfigError",
    "DataError",
    "ModelError",
    "OutputFolderError",
    "FolderLockedError",
    "NotResumableError",
    "DiskFullError",
    "DependencyError",
    "SchedulerError",
    "load_data",
    "prepare_data",
    "compute_shard",
    "ShardSpec",
    "DEFAULT_OUT_ROOT",
]
