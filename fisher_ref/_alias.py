"""Walker's alias method with Vose's O(C) table construction."""

from __future__ import annotations

from typing import Any

import numpy as np

from ._validation import check_int, check_probabilities, check_rng

__all__ = ["AliasSampler"]


class AliasSampler:
    """Draw class indices from a discrete distribution in O(1) per draw.

    The table is built once in O(C) by Vose's method (numerically stable variant of Walker's
    alias method): every column ``j`` keeps ``j`` with probability ``prob[j]`` and otherwise
    returns ``alias[j]``.

    Parameters
    ----------
    p : array-like of shape (n_classes,)
        Probabilities: finite, non-negative, summing to 1 (renormalised exactly after the check).
    rng : None, int or numpy.random.Generator, optional
        Source of randomness for :meth:`sample`.

    Attributes
    ----------
    prob : ndarray of shape (n_classes,)
        Probability of keeping the column's own index.
    alias : ndarray of shape (n_classes,)
        The alternative index of each column.

    References
    ----------
    Walker (1977); Vose, "A linear algorithm for generating random numbers with a given
    distribution", IEEE TSE 17(9), 1991. The paper (Zhao et al. 2019, Sec. 3.2, Algorithm 1
    line 2) cites Marsaglia, Tsang and Wang (2004) for the alias method.
    """

    def __init__(self, p: Any, rng: None | int | np.random.Generator = None):
        p = check_probabilities(p, "p")
        if p.ndim != 1:
            raise ValueError(f"p must be one distribution of shape (n_classes,), got shape {p.shape}")
        self.p = p / p.sum()
        self.rng = check_rng(rng)
        self.prob, self.alias = self._build(self.p)

    @staticmethod
    def _build(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n = p.size
        scaled = p * n
        prob = np.zeros(n)
        alias = np.arange(n)
        small = [i for i in range(n) if scaled[i] < 1.0]
        large = [i for i in range(n) if scaled[i] >= 1.0]
        while small and large:
            s, l = small.pop(), large.pop()
            prob[s] = scaled[s]
            alias[s] = l
            scaled[l] = (scaled[l] + scaled[s]) - 1.0
            (small if scaled[l] < 1.0 else large).append(l)
        # what is left is 1 up to rounding (Vose): keep its own index
        for i in large + small:
            prob[i] = 1.0
        return prob, alias

    def sample(self, n: int) -> np.ndarray:
        """Draw ``n`` class indices (int64 array of shape ``(n,)``), O(1) each."""
        n = check_int(n, "n", min_val=0)
        cols = self.rng.integers(0, self.p.size, size=n)
        keep = self.rng.random(n) < self.prob[cols]
        return np.where(keep, cols, self.alias[cols]).astype(np.int64)

    def probabilities(self) -> np.ndarray:
        """The distribution the table encodes, recovered from it (equals ``p`` up to rounding)."""
        n = self.p.size
        out = self.prob / n
        np.add.at(out, self.alias, (1.0 - self.prob) / n)
        return out

    def __repr__(self) -> str:
        return f"AliasSampler(n_classes={self.p.size})"
