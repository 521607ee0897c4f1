"""fisher_ref: numerical reference for the Fisher information metric of a classifier's input.

For a classifier p(y|x), the input Fisher information matrix (FIM) is
``G_x = sum_i p_i g_i g_i^T`` with ``g_i = grad_x(-log p_i)`` (Zhao et al., AAAI 2019, eq. 4); it is
the Hessian of ``KL(p(x) || p(x + eta))`` at ``eta = 0`` (eq. 3). Its top eigenvector is the
one-step spectral attack (OSSA, Algorithm 1); its top eigenvalues are features of an
adversarial-example detector (Section 4).

The core needs only NumPy and SciPy. Backends for PyTorch and ONNX Runtime live in
:mod:`fisher_ref.backends` and import their framework lazily.
"""

from ._alias import AliasSampler
from ._audit import AuditError, AuditResult, audit
from ._attacks import (
    AttackResult,
    DegenerateSpectrumWarning,
    IterativeAttackResult,
    OSSAResult,
    bim,
    fgm,
    iterative_ossa,
    least_perturbation,
    ossa,
    otcm,
)
from ._backend import CAPABILITIES, Backend, CallableBackend, MissingCapabilityError, as_backend
from ._operators import FisherOperator, MatrixFreeFisherOperator, SampledFisherOperator, fisher_matrix
from ._opt_attack import OptResult, opt
from ._spectrum import NoConvergence, SpectrumInfo, choose_method, fisher_spectrum, top_eigenpairs

# the detectors need scikit-learn: imported on first use, so `import fisher_ref` needs NumPy and SciPy only
_DETECTION = ("FisherSpectrumFeatures", "FisherDetector", "KernelDensityFeatures", "KernelDensityDetector",
              "BayesianUncertaintyFeatures", "BayesianUncertaintyDetector", "KDBUDetector", "LIDFeatures",
              "LIDDetector", "evaluate_detection", "default_detectors", "AUCTable", "DetectionReport",
              "EXTRA_FEATURES")


def __getattr__(name: str):
    if name in _DETECTION:
        try:
            from . import _detection
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError(f"fisher_ref.{name} needs scikit-learn: pip install 'fisher-ref[detect]'") from exc
        return getattr(_detection, name)
    raise AttributeError(f"module 'fisher_ref' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_DETECTION))

__version__ = "0.1.0"

__all__ = [
    "AliasSampler",
    "AttackResult",
    "AuditError",
    "AuditResult",
    "Backend",
    "CAPABILITIES",
    "CallableBackend",
    "DegenerateSpectrumWarning",
    "FisherOperator",
    "IterativeAttackResult",
    "MatrixFreeFisherOperator",
    "MissingCapabilityError",
    "NoConvergence",
    "OSSAResult",
    "OptResult",
    "SampledFisherOperator",
    "SpectrumInfo",
    "as_backend",
    "audit",
    "bim",
    "choose_method",
    "fgm",
    "fisher_matrix",
    "fisher_spectrum",
    "iterative_ossa",
    "least_perturbation",
    "opt",
    "ossa",
    "otcm",
    "top_eigenpairs",
    "__version__",
    *_DETECTION,
]
