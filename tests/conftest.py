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
# library's cache (decoded CIFAR-10 arrays, paper_results chunks) goes into one temporary folder for the
# session, removed at its end; so do the caches that other libraries write under the home folder
# (matplotlib's font list, ONNX Runtime's device id in $XDG_CACHE_HOME, Keras's config) unless the
# user's environment names them. Subprocesses (the CLI) inherit all of them.
_TEMP_HOME = tempfile.mkdtemp(prefix="fisher_ref-tests-")
for _var, _sub in (("FISHER_REF_CACHE", "cache"), ("MPLCONFIGDIR", "matplotlib"), ("XDG_CACHE_HOME", "xdg-cache"),
                   ("KERAS_HOME", "keras")):
    os.environ.setdefault(_var, os.path.join(_TEMP_HOME, _sub))


def pytest_sessionfinish(session, exitstatus):
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
