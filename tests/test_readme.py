"""Every code block of README.md and paper_results/README.md runs as written and prints what it says.

Rules the documents follow (and this test enforces):

* a ```python block is run on its own, in a fresh interpreter, in an empty temporary folder (so each
  block carries its own imports and leaves nothing in the checkout); a ```bash block is run by bash
  the same way, with the checkout's root in ``$REPO``;
* the printed output of a block is written in it as comment lines that start with ``# `` and follow
  the line that prints, in order (``print(...)`` then ``# 0.46``); comments elsewhere are prose;
  a block without such lines must still run;
* numbers are compared with a relative tolerance of :data:`RTOL` (float32 and BLAS noise between
  machines), everything else exactly (runs of spaces count as one);
* a block preceded by ``<!-- not run: reason -->`` is not run (the install commands, which CI runs
  itself through ``.ci/run``, and commands that take longer than a test may).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = ("README.md", "paper_results/README.md")
#: relative tolerance for numbers in printed output
RTOL = 2e-3
BLOCK = re.compile(r"(?:<!--\s*not run:(?P<skip>[^>]*)-->\s*\n)?```(?P<lang>python|bash)\n(?P<code>.*?)```", re.S)
NUMBER = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?%?")


def blocks(document: str) -> list[tuple[str, int, str, str, str | None]]:
    """``(id, line, language, code, skip reason)`` of each fenced python/bash block."""
    text = (ROOT / document).read_text()
    out = []
    for m in BLOCK.finditer(text):
        line = text.count("\n", 0, m.start("code")) + 1
        out.append((f"{document}:{line}", line, m.group("lang"), m.group("code"), m.group("skip")))
    return out


def expected_output(code: str) -> list[str]:
    """The ``# `` comment lines that follow a printing line (up to the next non-comment line)."""
    lines, out, after_print = code.splitlines(), [], False
    for raw in lines:
        s = raw.strip()
        if s.startswith("#"):
            if after_print:
                out.append(s[1:].strip())
            continue
        after_print = bool(re.search(r"\bprint\(|^\s*echo\b|^fisher-ref\b|^python", s)) and not s.startswith("def ")
    return out


def _tokens(line: str) -> list:
    parts, pos = [], 0
    for m in NUMBER.finditer(line):
        parts.append(line[pos:m.start()])
        parts.append(m.group())
        pos = m.end()
    parts.append(line[pos:])
    return parts


def _same_number(a: str, b: str) -> bool:
    fa, fb = float(a.rstrip("%")), float(b.rstrip("%"))
    return a.endswith("%") == b.endswith("%") and abs(fa - fb) <= RTOL * max(abs(fa), abs(fb)) + 1e-12


def lines_match(got: str, want: str) -> bool:
    g, w = _tokens(" ".join(got.split())), _tokens(" ".join(want.split()))
    if len(g) != len(w):
        return False
    for i, (a, b) in enumerate(zip(g, w)):
        if i % 2:  # a number
            if not _same_number(a, b):
                return False
        elif a != b:
            return False
    return True


def _run(lang: str, code: str, cwd: Path) -> subprocess.CompletedProcess:
    # the interpreter running the tests comes first on PATH, so `fisher-ref` is the one installed with it
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    env = dict(os.environ, REPO=str(ROOT), PATH=path, PYTHONWARNINGS="ignore::FutureWarning", COLUMNS="200")
    cmd = [sys.executable, "-c", code] if lang == "python" else ["bash", "-e", "-o", "pipefail", "-c", code]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


ALL = [b for doc in DOCUMENTS for b in blocks(doc)]


@pytest.mark.parametrize("block", [b for b in ALL if b[4] is None], ids=[b[0] for b in ALL if b[4] is None])
def test_block_runs_and_prints_what_it_says(block, tmp_path):
    ident, _, lang, code, _ = block
    proc = _run(lang, code, tmp_path)
    assert proc.returncode == 0, f"{ident} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    want = expected_output(code)
    got = [line for line in proc.stdout.splitlines() if line.strip()]
    missing, j = [], 0
    for w in want:  # every expected line appears, in order
        while j < len(got) and not lines_match(got[j], w):
            j += 1
        if j == len(got):
            missing.append(w)
            j = 0
        else:
            j += 1
    assert not missing, f"{ident}: these lines were not printed (in order):\n" + "\n".join(missing) + \
        "\n--- printed:\n" + "\n".join(got)


def test_the_documents_have_blocks_and_every_skip_says_why():
    assert len(ALL) >= 5
    for ident, _, _, _, skip in ALL:
        assert skip is None or skip.strip(), f"{ident}: 'not run' without a reason"


def test_the_matcher_can_fail():
    assert lines_match("0.46 [3.90e-06 2.38e-05]", "0.46 [3.9e-06 2.38e-05]")
    assert not lines_match("0.46", "0.47")
    assert not lines_match("accuracy 98.8%", "accuracy 98.8")
    assert expected_output("x = 1\nprint(x)\n# 1\n# (the end)\ny = 2  # prose\n") == ["1", "(the end)"]
