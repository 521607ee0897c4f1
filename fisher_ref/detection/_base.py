"""What the feature maps, the detector and the evaluation share: input checks, chunking, input identity.

Validation goes through scikit-learn's public helpers (:func:`~sklearn.utils.validation.validate_data`,
:func:`~sklearn.utils.validation.check_array`, :func:`~sklearn.utils.multiclass.type_of_target`);
the inputs are batches ``(n, *input_shape)`` of a model, so the shape check against the backend's
``input_shape`` is added here, with scikit-learn's wording ("X has 3 features, but ... is expecting
4 features as input").
"""

from __future__ import annotations

import copy
import hashlib
import math
from typing import Any

import numpy as np
from sklearn.base import clone
from sklearn.utils import assert_all_finite
from sklearn.utils.multiclass import check_classification_targets, type_of_target
from sklearn.utils.validation import check_array, column_or_1d, validate_data

from .._backend import Backend, as_backend
from .._validation import check_rng, shape_str

#: Inputs per backend call when computing features (bounded further by memory, see :func:`chunks`).
CHUNK = 256
#: Memory cap (bytes) of one chunk's float64 eigenvectors / distance matrices.
CHUNK_BYTES = 64 * 2**20


# ---------------------------------------------------------------------------------------------
# inputs


def backend_of(est: Any) -> Backend:
    """``est.backend`` as a :class:`~fisher_ref.Backend` whose ``input_shape`` is known."""
    b = as_backend(est.backend)
    if b.input_shape is None:
        raise ValueError(f"{type(est).__name__}: the backend's input_shape is unknown; construct the backend "
                         "with input_shape= so that a batch X of shape (n, *input_shape) is recognised")
    return b


def check_input_shape(X: np.ndarray, expected: tuple, name: str, owner: str, what: str) -> None:
    """Raise scikit-learn's "X has d features, but ... is expecting d0" unless ``X.shape[1:] == expected``."""
    if X.shape[1:] != tuple(expected):
        shape = "(n, " + ", ".join(str(s) for s in expected) + ")"
        raise ValueError(f"{name} has {math.prod(X.shape[1:])} features, but {owner} is expecting "
                         f"{math.prod(expected)} features as input: {name} has shape {shape_str(X.shape)}, "
                         f"expected {shape}, {what}")


def check_batch(est: Any, X: Any, *, reset: bool) -> np.ndarray:
    """``X`` as a float64 batch ``(n, ...)`` of finite values; feature names recorded or checked.

    :func:`~sklearn.utils.validation.validate_data` with ``allow_nd`` (inputs may be images); the
    number of features of an n-d batch is the product of its trailing axes, which scikit-learn's
    own count (``X.shape[1]``) would get wrong, so that check is done by the callers.
    """
    X = validate_data(est, X, reset=reset, ensure_2d=False, allow_nd=True, dtype=np.float64)
    if X.ndim < 2:
        raise ValueError(f"Expected a batch of inputs (n, *input_shape), got an array of shape "
                         f"{shape_str(X.shape)}. Reshape your data: one input x as x[None], 1-D features as "
                         "X.reshape(-1, 1)")
    return X


def check_reference_inputs(b: Backend, X: Any, name: str, owner: str) -> np.ndarray:
    """Inputs other than the fitted ``X`` (e.g. ``X_train``): a finite batch of the backend's input shape."""
    X = check_array(X, allow_nd=True, dtype=np.float64, input_name=name)
    check_input_shape(X, b.input_shape, name, owner, f"a batch of the backend's input_shape {shape_str(b.input_shape)}")
    return X


def validate_inputs(est: Any, X: Any, *, reset: bool) -> np.ndarray:
    """Validate the ``X`` of a feature map on ``est.backend``; at ``reset`` record its shape."""
    b = backend_of(est)
    if not reset and getattr(est, "input_shape_", b.input_shape) != b.input_shape:
        raise ValueError(f"the backend's input_shape {shape_str(b.input_shape)} differs from the one at fit "
                         f"({shape_str(est.input_shape_)})")
    X = check_batch(est, X, reset=reset)
    check_input_shape(X, b.input_shape, "X", type(est).__name__,
                      f"a batch of the backend's input_shape {shape_str(b.input_shape)}")
    if reset:
        est.n_features_in_ = math.prod(b.input_shape)
        est.input_shape_ = b.input_shape
    return X


def check_binary_y(y: Any, n: int | None, owner: str) -> tuple[np.ndarray, np.ndarray]:
    """``(classes (2,), y encoded as 0/1)``; the second class (``classes[1]``) is "adversarial"."""
    if y is None:
        raise ValueError(f"{owner} requires y to be passed, but the target y is None (y = 1 for adversarial "
                         "inputs, 0 for clean or noisy ones)")
    y = column_or_1d(y, warn=True)
    if n is not None and y.shape[0] != n:
        raise ValueError(f"y has {y.shape[0]} labels but X has {n} inputs")
    if y.dtype.kind in "fc":
        assert_all_finite(y, input_name="y")
    if y.shape[0] == 0:
        raise ValueError("y is empty: a detector needs labelled inputs (1 adversarial, 0 clean or noisy)")
    check_classification_targets(y)
    classes = np.unique(y)
    if classes.size < 2:
        raise ValueError(f"y has only one class ({classes[0]!r}); a detector needs both: 1 adversarial, "
                         "0 clean or noisy")
    y_type = type_of_target(y, input_name="y")
    if y_type != "binary":
        raise ValueError(f"Only binary classification is supported (y = 1 adversarial, 0 clean or noisy). "
                         f"The type of the target is {y_type} ({classes.size} classes)")
    return classes, np.searchsorted(classes, y).astype(np.int64)


def check_input_features(est: Any, input_features: Any) -> None:
    """The ``input_features`` of ``get_feature_names_out``: None or one name per input feature."""
    if input_features is not None and len(input_features) != est.n_features_in_:
        raise ValueError(f"input_features should have length equal to number of features "
                         f"({est.n_features_in_}), got {len(input_features)}")


def generator(random_state: Any) -> np.random.Generator:
    """A NumPy Generator from scikit-learn's ``random_state`` (None, int, RandomState or Generator)."""
    if isinstance(random_state, np.random.RandomState):
        return np.random.default_rng(random_state.randint(2**31 - 1))
    return check_rng(random_state, "random_state")


# ---------------------------------------------------------------------------------------------
# chunks, activations, the identity of inputs


def chunks(n: int, per_input_bytes: float) -> range:
    """Starts of chunks of at most :data:`CHUNK` inputs and :data:`CHUNK_BYTES` bytes."""
    size = max(1, min(CHUNK, int(CHUNK_BYTES // max(per_input_bytes, 1.0))))
    return range(0, n, size)


def layer_features(b: Backend, X: np.ndarray, layers: list[str]) -> dict[str, np.ndarray]:
    """The activations of ``layers`` at ``X``, computed by chunks of :data:`CHUNK` inputs."""
    parts = [b.features(X[s:s + CHUNK], layers) for s in range(0, X.shape[0], CHUNK)]
    return {name: np.concatenate([p[name] for p in parts]) for name in layers}


def input_keys(X: np.ndarray) -> list:
    """A digest of each input's float64 bytes: byte-exact identity, independent of batching."""
    X = np.ascontiguousarray(X, dtype=np.float64).reshape(X.shape[0], -1)
    return [hashlib.blake2b(row.tobytes(), digest_size=16).digest() for row in X]


def key_index(keys: list) -> dict:
    """``{key: [positions]}``: where each input occurs among ``keys``."""
    index: dict = {}
    for j, key in enumerate(keys):
        index.setdefault(key, []).append(j)
    return index


def identical(query_keys: list, index: dict, n_ref: int) -> np.ndarray:
    """Boolean (n_query, n_ref): query i is the same input as reference j (left out as a neighbour)."""
    same = np.zeros((len(query_keys), n_ref), dtype=bool)
    for i, key in enumerate(query_keys):
        same[i, index.get(key, [])] = True
    return same


class SharedBackendMixin:
    """Clone shares the backend (and reference data) instead of deep-copying it.

    The backend is a trained model, not a hyper-parameter: :func:`sklearn.base.clone` would
    deep-copy it (a whole network, or an ONNX Runtime session that cannot be copied) for every
    clone. The shared parameters are only read.
    """

    _shared_params: tuple[str, ...] = ("backend",)

    def __sklearn_clone__(self):
        params = self.get_params(deep=False)
        new = {k: (v if k in self._shared_params else clone(v, safe=False)) for k, v in params.items()}
        obj = type(self)(**new)
        if hasattr(self, "_sklearn_output_config"):
            obj._sklearn_output_config = copy.deepcopy(self._sklearn_output_config)
        return obj
