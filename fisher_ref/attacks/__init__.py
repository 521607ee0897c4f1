"""Attacks on the backend protocol: OSSA (paper Algorithm 1) and the baselines, batched over inputs.

* one-step: :func:`ossa`, :func:`fgm`, :func:`otcm`, each with its direction as a value of its own
  (:func:`ossa_direction`, :func:`fgm_direction`, :func:`otcm_direction`), reusable through the
  attacks' ``direction=`` argument;
* iterative: :func:`bim`, :func:`iterative_ossa`;
* optimisation-based: :func:`opt` (Liu et al. 2016, Carlini and Wagner 2017);
* the least l2 perturbation that fools the model: :func:`least_perturbation`.

Modules: ``_base`` (results, input preparation, clipping, the epsilon sweep), ``_directions``
(the directions, OSSA's sign rule, the registry of one-step attacks), ``_one_step``,
``_iterative``, ``_opt``, ``_search``.
"""

from ._base import AttackResult, DegenerateSpectrumWarning, IterativeAttackResult, OSSAResult
from ._directions import fgm_direction, ossa_direction, otcm_direction
from ._iterative import bim, iterative_ossa
from ._one_step import fgm, ossa, otcm
from ._opt import OptResult, opt
from ._search import least_perturbation

#: The attacks :func:`least_perturbation` knows by name.
_ATTACKS = {"ossa": ossa, "fgm": fgm, "otcm": otcm, "bim": bim, "iterative_ossa": iterative_ossa}

__all__ = [
    "AttackResult",
    "DegenerateSpectrumWarning",
    "IterativeAttackResult",
    "OSSAResult",
    "OptResult",
    "bim",
    "fgm",
    "fgm_direction",
    "iterative_ossa",
    "least_perturbation",
    "opt",
    "ossa",
    "ossa_direction",
    "otcm",
    "otcm_direction",
]
