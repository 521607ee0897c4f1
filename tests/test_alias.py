"""Walker's alias method (Vose's construction)."""

import numpy as np
import pytest
from hypothesis import given
from scipy import stats

from fisher_ref import AliasSampler

from _strategies import probability_vectors


@given(probability_vectors(max_classes=60, allow_zero=True))
def test_table_encodes_the_distribution_exactly(p):
    s = AliasSampler(p, rng=0)
    np.testing.assert_allclose(s.probabilities(), p, atol=1e-14)
    assert np.all((s.prob >= 0) & (s.prob <= 1))
    assert np.all((s.alias >= 0) & (s.alias < p.size))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_chi_square_goodness_of_fit(seed):
    r = np.random.default_rng(seed)
    p = r.dirichlet(np.full(20, 0.7))
    p = np.where(p < 1e-3, 0, p); p /= p.sum()
    n = 200_000
    counts = np.bincount(AliasSampler(p, rng=r).sample(n), minlength=p.size)
    assert np.all(counts[p == 0] == 0)  # impossible classes are never drawn
    nz = p > 0
    chi2, pval = stats.chisquare(counts[nz], n * p[nz])
    assert pval > 1e-3, (chi2, pval)


def test_reproducible_and_o1_draws():
    p = np.array([0.1, 0.2, 0.7])
    a = AliasSampler(p, rng=42).sample(1000)
    b = AliasSampler(p, rng=np.random.default_rng(42)).sample(1000)
    assert np.array_equal(a, b) and a.dtype == np.int64
    assert AliasSampler(p).sample(0).shape == (0,)


def test_errors():
    with pytest.raises(ValueError, match="p rows must sum to 1"):
        AliasSampler([0.2, 0.2])
    with pytest.raises(ValueError, match="p has negative entries"):
        AliasSampler([1.2, -0.2])
    with pytest.raises(ValueError, match="p contains 1 NaN"):
        AliasSampler([np.nan, 1.0])
    with pytest.raises(ValueError, match="p must be one distribution"):
        AliasSampler([[0.5, 0.5], [0.5, 0.5]])
    with pytest.raises(ValueError, match="n must be a non-negative int"):
        AliasSampler([0.5, 0.5]).sample(-1)
    with pytest.raises(TypeError, match="rng must be None, an int seed or a numpy.random.Generator"):
        AliasSampler([0.5, 0.5], rng="seed")
