import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

# the reproduction scripts (paper_results/) are imported from the checkout, not installed
_REPO = str(Path(__file__).resolve().parents[1])
if _REPO not in sys.path:
    sys.path.insert(0, _REPO)

# Tests write only into temporary folders: unless the user names a cache (FISHER_REF_CACHE), the
# library's cache (decoded CIFAR-10 arrays, paper_results chunks) and matplotlib's font cache go into
# one temporary folder for the session, removed at its end. Subprocesses (the CLI) inherit both.
_TEMP_HOME = None
if not os.environ.get("FISHER_REF_CACHE") or not os.environ.get("MPLCONFIGDIR"):
    _TEMP_HOME = tempfile.mkdtemp(prefix="fisher_ref-tests-")
    os.environ.setdefault("FISHER_REF_CACHE", os.path.join(_TEMP_HOME, "cache"))
    os.environ.setdefault("MPLCONFIGDIR", os.path.join(_TEMP_HOME, "matplotlib"))


def pytest_sessionfinish(session, exitstatus):
    if _TEMP_HOME is not None:
        shutil.rmtree(_TEMP_HOME, ignore_errors=True)


settings.register_profile("default", max_examples=30, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("ci", max_examples=30, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", max_examples=300, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "default"))


@pytest.fixture
def rng():
    return np.random.default_rng(12345)
