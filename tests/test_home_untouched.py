"""The test suite writes nothing under the user's home folder: run a few tests that use every library
that keeps a cache there (ONNX Runtime's device id, matplotlib's font list, the library's own CIFAR-10
cache, torch) in a child pytest whose HOME is an empty folder and whose environment names no cache."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# an audit with its report (ONNX Runtime, matplotlib), the decoded CIFAR-10 cache, a torch backend
TESTS = ["tests/test_audit.py::test_cli_small_run_prints_where_it_wrote",
         "tests/test_audit.py::test_report_lists_and_links_every_file",
         "tests/test_datasets.py::test_cifar_original_tarball_read_in_place",
         "tests/test_datasets.py::test_bundled_mnist_sample",
         "tests/test_cross_backend.py"]
CACHE_VARIABLES = ("FISHER_REF_CACHE", "MPLCONFIGDIR", "XDG_CACHE_HOME", "KERAS_HOME", "TORCH_HOME")


def _files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if not p.is_dir())


@pytest.mark.skipif(os.environ.get("FISHER_REF_IN_HOME_TEST") == "1", reason="already the child run")
def test_tests_leave_the_home_folder_empty(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in CACHE_VARIABLES}
    env.update(HOME=str(home), FISHER_REF_IN_HOME_TEST="1")
    tests = [t for t in TESTS if (REPO / t.split("::")[0]).exists()]
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert _files_under(home) == []
