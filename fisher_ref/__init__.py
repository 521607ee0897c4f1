"""fisher_ref: numerical reference for the Fisher information metric of a classifier's input.

For a classifier p(y|x), the input Fisher information matrix (FIM) is
``G_x = sum_i p_i g_i g_i^T`` with ``g_i = grad_x(-log p_i)`` (Zhao et al., AAAI 2019, eq. 4); it is
the Hessian of ``KL(p(x) || p(x + eta))`` at ``eta = 0`` (eq. 3). Its top eigenvector is the
one-step spectral attack (OSSA, Algorithm 1); its top eigenvalues are features of an
adversarial-example detector (Section 4).

This namespace holds the maths API; it needs only NumPy and SciPy. Elsewhere:
:mod:`fisher_ref.backends` (NumPy reference models, PyTorch, ONNX Runtime; each framework imported
lazily), :mod:`fisher_ref.detection` (the detector and its baselines, scikit-learn),
:mod:`fisher_ref.audit` (the ``fisher-ref audit`` command for ONNX models), :mod:`fisher_ref.datasets`,
:mod:`fisher_ref.testing` (golden cases for other implementations). ``ARCHITECTURE.md`` draws the layers.
"""

# the backend protocol: what the core needs from a classifier
from ._backend import CAPABILITIES, Backend, CallableBackend, MissingCapabilityError, as_backend

# the Fisher information as a matrix and as SciPy operators (eqs. 4 and 6), Walker's alias method
from ._alias import AliasSampler
from ._operators import FisherOperator, MatrixFreeFisherOperator, SampledFisherOperator, fisher_matrix

# its spectrum
from ._spectrum import NoConvergence, SpectrumInfo, fisher_spectrum, top_eigenpairs

# the attacks (Algorithm 1 and the baselines), their directions, the least perturbation
from .attacks import (
    AttackResult,
    DegenerateSpectrumWarning,
    IterativeAttackResult,
    OptResult,
    OSSAResult,
    bim,
    fgm,
    fgm_direction,
    iterative_ossa,
    least_perturbation,
    opt,
    ossa,
    ossa_direction,
    otcm,
    otcm_direction,
)

__version__ = "0.1.0"

# the detectors need scikit-learn: importable from here lazily (their home is fisher_ref.detection),
# so that `import fisher_ref` needs NumPy and SciPy only
_DETECTION = ("Detector", "FisherSpectrumFeatures", "FisherDetector", "KernelDensityFeatures", "KernelDensityDetector",
              "BayesianUncertaintyFeatures", "BayesianUncertaintyDetector", "KDBUDetector", "LIDFeatures",
              "LIDDetector", "evaluate_detection", "default_detectors", "AUCTable", "DetectionReport",
              "EXTRA_FEATURES")


def __getattr__(name: str):
    if name in _DETECTION:
        try:
            from . import detection
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError(f"fisher_ref.{name} needs scikit-learn: pip install 'fisher-ref[detect]'") from exc
        return getattr(detection, name)
    raise AttributeError(f"module 'fisher_ref' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_DETECTION))


__all__ = [
    # backend protocol
    "Backend", "CallableBackend", "as_backend", "CAPABILITIES", "MissingCapabilityError",
    # operators
    "fisher_matrix", "FisherOperator", "SampledFisherOperator", "MatrixFreeFisherOperator", "AliasSampler",
    # spectrum
    "fisher_spectrum", "top_eigenpairs", "SpectrumInfo", "NoConvergence",
    # attacks
    "ossa", "fgm", "otcm", "bim", "iterative_ossa", "opt", "least_perturbation",
    "ossa_direction", "fgm_direction", "otcm_direction",
    "AttackResult", "OSSAResult", "IterativeAttackResult", "OptResult", "DegenerateSpectrumWarning",
    "__version__",
]
