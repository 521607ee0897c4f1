"""The argument checks of fisher_ref._validation: one message for every bad scalar."""

import numpy as np
import pytest

import fisher_ref as fr
from fisher_ref._validation import check_int, check_real, check_rng


def _mlp():
    from fisher_ref.backends import MLPModel

    rng = np.random.default_rng(0)
    return MLPModel([(rng.standard_normal((5, 4)), np.zeros(5)), (rng.standard_normal((3, 5)), np.zeros(3))],
                    input_shape=(4,))


@pytest.mark.parametrize("value, kw, exc, match", [
    (0, dict(min_val=1), ValueError, "n must be a positive int, got 0"),
    (2.5, dict(min_val=1), TypeError, "n must be a positive int, got 2.5"),
    (True, dict(min_val=1), TypeError, "n must be a positive int, got True"),
    (-1, dict(min_val=0), ValueError, "n must be a non-negative int, got -1"),
    (11, dict(min_val=1, max_val=10), ValueError, r"n must be an int in \[1, 10\], got 11"),
    ("a", dict(min_val=1, allow_none=True), TypeError, "n must be None or a positive int, got 'a'"),
    (2, dict(min_val=3), ValueError, "n must be an int >= 3, got 2"),
])
def test_check_int_refuses_with_one_message(value, kw, exc, match):
    with pytest.raises(exc, match=match):
        check_int(value, "n", **kw)


@pytest.mark.parametrize("value, kw, exc, match", [
    (0.0, dict(min_val=0, include_boundaries="neither"), ValueError, "t must be a positive number, got 0.0"),
    (-1, dict(min_val=0), ValueError, "t must be a non-negative number, got -1"),
    (1.0, dict(min_val=0, max_val=1, include_boundaries="left"), ValueError, r"t must be a number in \[0, 1\), got 1.0"),
    (float("nan"), dict(), ValueError, "t must be a number, got nan"),
    (float("inf"), dict(min_val=0), ValueError, "t must be a non-negative number, got inf"),
    ("x", dict(min_val=2), TypeError, "t must be a number >= 2, got 'x'"),
    (None, dict(), TypeError, "t must be a number, got None"),
])
def test_check_real_refuses_with_one_message(value, kw, exc, match):
    with pytest.raises(exc, match=match):
        check_real(value, "t", **kw)


def test_check_int_and_check_real_return_plain_values():
    assert check_int(np.int64(3), "n", min_val=1) == 3 and type(check_int(np.int64(3), "n")) is int
    assert check_int(None, "n", allow_none=True) is None
    assert check_real(2, "t", min_val=0, include_boundaries="neither") == 2.0
    assert type(check_real(np.float32(0.5), "t")) is float
    with pytest.raises(ValueError, match="include_boundaries must be"):
        check_real(1.0, "t", include_boundaries="open")


def test_counts_in_messages_have_the_right_plural():
    from fisher_ref._text import count

    assert count(1, "shard") == "1 shard" and count(2, "shard") == "2 shards" and count(0, "case") == "0 cases"
    assert count(3, "matrix") == "3 matrices" and count(2, "batch") == "2 batches" and count(5, "entry") == "5 entries"
    assert count(2, "key") == "2 keys" and count(4, "criterion", "criteria") == "4 criteria"


def test_one_error_names_every_missing_extra(monkeypatch):
    import importlib.util

    from fisher_ref import _extras

    real = importlib.util.find_spec
    monkeypatch.setattr(_extras.importlib.util, "find_spec",
                        lambda name, *a: None if name in ("onnx_ad", "matplotlib", "distributed") else real(name, *a))
    with pytest.raises(ImportError, match=r"the audit needs the optional dependencies distributed, matplotlib, "
                                          r"onnx_ad: pip install 'fisher-ref\[onnx,audit\]'"):
        _extras.require_extras("onnx", "audit", "detect", what="the audit")
    _extras.require_extras("detect", what="detection")  # present: nothing raised
    with pytest.raises(ValueError, match="extras must be among"):
        _extras.require_extras("gpu", what="x")


@pytest.mark.parametrize("call", [
    lambda rng: check_rng(rng),
    lambda rng: fr.fisher_spectrum(np.zeros((1, 4)), _mlp(), k=2, method="lanczos", rng=rng),
    lambda rng: fr.SampledFisherOperator.from_backend(np.zeros((1, 4)), _mlp(), 10, rng=rng),
])
def test_a_negative_seed_is_refused_by_the_library(call):
    with pytest.raises(ValueError, match=r"rng must be a non-negative int seed .* got -1"):
        call(-1)


def test_check_rng_accepts_seeds_generators_and_none():
    assert check_rng(0).integers(10**9) == np.random.default_rng(0).integers(10**9)
    g = np.random.default_rng(3)
    assert check_rng(g) is g and isinstance(check_rng(None), np.random.Generator)
    with pytest.raises(TypeError, match="rng must be None, an int seed"):
        check_rng("seed")
