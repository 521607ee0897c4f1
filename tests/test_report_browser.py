"""The audit's report.html in a real headless browser (Debian's chromium; skipped without it).

Chromium loads the page from disk with the network off; the page's own script counts the
``<img>`` elements whose ``naturalWidth`` is 0 and writes the count into ``#image-check``, which
``--dump-dom`` prints after the load event. The links of the page's file list, read from that DOM,
are followed as the browser resolves them, from the folder and from a copy of it elsewhere.
A screenshot of a tall window checks that something was drawn.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx_ad")
pytest.importorskip("matplotlib")

from fisher_ref.audit import audit  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from _report_html import check_file_list  # noqa: E402


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
    res = audit(out=out, limit=20, k=3, shard_size=10, progress=False)  # 2 shards
    return res.files["report.html"]


def dom(tmp_path: Path, report: Path) -> str:
    """The page after its load event, as Chromium built it."""
    proc = chromium(tmp_path, "--dump-dom", report.resolve().as_uri())
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def test_every_image_decodes_in_chromium(report, tmp_path):
    page = dom(tmp_path, report)
    tag = re.search(r'<div id="image-check"[^>]*>', page)
    assert tag, page[-2000:]
    total = re.search(r'data-total="(\d+)"', tag.group(0))
    broken = re.search(r'data-broken="(\d+)"', tag.group(0))
    assert total and broken, f"the page's image check did not run: {tag.group(0)}"
    assert int(total.group(1)) == 5  # fooling rate, histogram, scatter, two image grids
    assert int(broken.group(1)) == 0
    assert "Fisher information audit of" in page and "mnist_lenet.onnx" in page


def test_how_to_read_comes_first(report, tmp_path):
    page = dom(tmp_path, report)
    start = page.index('<section id="how-to-read">')
    assert start < page.index("<img")  # before the first plot
    section = page[start:page.index("</section>", start)]
    assert "How to read this report" in section
    for term in ("top Fisher eigenvalue", "Fooling-rate curve", "Histogram", "Scatter", "Panels",
                 "A vulnerable input"):
        assert f"{term}</dt>" in section, term


def test_every_listed_file_link_resolves(report, tmp_path):
    linked = check_file_list(dom(tmp_path, report), report, n_shards=2)
    assert {"report.html", "results.csv", "summary.json", "manifest.json", "shards/"} <= linked
    assert sum(name.endswith(".png") for name in linked) == 5


def test_links_still_resolve_in_a_copy_of_the_folder(report, tmp_path):
    copy = tmp_path / "elsewhere" / "audit copy"  # a space in the path: the links are URL-quoted
    shutil.copytree(report.parent, copy)
    check_file_list(dom(tmp_path, copy / "report.html"), copy / "report.html", n_shards=2)


def test_screenshot_shows_the_plots(report, tmp_path):
    from PIL import Image

    shot = tmp_path / "report.png"
    proc = chromium(tmp_path, f"--screenshot={shot}", "--window-size=1200,5200", report.resolve().as_uri())
    assert proc.returncode == 0 and shot.is_file(), proc.stderr[-2000:]
    img = np.asarray(Image.open(shot).convert("RGB"), dtype=np.float64)
    assert img.shape == (5200, 1200, 3)  # tall enough for the whole page
    # the plots put saturated colour (the red OSSA curve and points, the blue FGM curve) on the page;
    # a page whose images failed would show only text on white and grey
    r, g, b = img[..., 0], img[..., 1], img[..., 2]
    reddish = (r > 150) & (g < 110) & (b < 110)
    bluish = (b > 120) & (r < 90)
    assert reddish.sum() > 2000 and bluish.sum() > 300
    dark = img.mean(axis=2) < 40  # black MNIST backgrounds in the grids
    assert dark.sum() > 20000
