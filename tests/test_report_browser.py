"""The audit's report.html in a real headless browser (Debian's chromium; skipped without it).

Chromium loads the page from disk with the network off; the page's own script counts the
``<img>`` elements whose ``naturalWidth`` is 0 and writes the count into ``#image-check``, which
``--dump-dom`` prints after the load event. A screenshot checks that something was drawn.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx_ad")
pytest.importorskip("matplotlib")

from fisher_ref.audit import audit  # noqa: E402


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    return "/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None


CHROMIUM = _chromium()
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars"]


def chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
    return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True, text=True,
                          timeout=120, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report") / "audit"
    res = audit(out=out, limit=20, k=3, shard_size=10, progress=False)
    return res.files["report.html"]


def test_every_image_decodes_in_chromium(report, tmp_path):
    proc = chromium(tmp_path, "--dump-dom", report.resolve().as_uri())
    assert proc.returncode == 0, proc.stderr[-2000:]
    tag = re.search(r'<div id="image-check"[^>]*>', proc.stdout)
    assert tag, proc.stdout[-2000:]
    total = re.search(r'data-total="(\d+)"', tag.group(0))
    broken = re.search(r'data-broken="(\d+)"', tag.group(0))
    assert total and broken, f"the page's image check did not run: {tag.group(0)}"
    assert int(total.group(1)) == 5  # fooling rate, histogram, scatter, two image grids
    assert int(broken.group(1)) == 0
    assert "Fisher information audit of" in proc.stdout and "mnist_lenet.onnx" in proc.stdout


def test_screenshot_shows_the_plots(report, tmp_path):
    from PIL import Image

    shot = tmp_path / "report.png"
    proc = chromium(tmp_path, f"--screenshot={shot}", "--window-size=1200,2400", report.resolve().as_uri())
    assert proc.returncode == 0 and shot.is_file(), proc.stderr[-2000:]
    img = np.asarray(Image.open(shot).convert("RGB"), dtype=np.float64)
    assert img.shape == (2400, 1200, 3)
    # the plots put saturated colour (the red OSSA curve and points, the blue FGM curve) on the page;
    # a page whose images failed would show only text on white and grey
    r, g, b = img[..., 0], img[..., 1], img[..., 2]
    reddish = (r > 150) & (g < 110) & (b < 110)
    bluish = (b > 120) & (r < 90)
    assert reddish.sum() > 2000 and bluish.sum() > 300
    dark = img.mean(axis=2) < 40  # black MNIST backgrounds in the grids
    assert dark.sum() > 20000
