"""``fisher-ref paper`` finds the checkout from any folder inside it, and says what to do outside one."""

import subprocess
import sys
from pathlib import Path

from fisher_ref._paper import find_checkout

ROOT = Path(__file__).resolve().parents[1]


def test_the_checkout_is_found_from_a_subfolder_and_from_the_package():
    assert find_checkout(ROOT / "fisher_ref" / "attacks") == ROOT
    assert find_checkout(ROOT) == ROOT


def test_paper_list_runs_from_a_subfolder(tmp_path):
    code = "import sys; from fisher_ref._paper import main; sys.exit(main(['list']))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT / "fisher_ref", capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "table4_detection.py" in out.stdout and "Table 4: AUC of detecting" in out.stdout


def test_outside_a_checkout_the_message_says_what_to_do(tmp_path, monkeypatch, capsys):
    import fisher_ref._paper as paper

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(paper, "_is_checkout", lambda folder: False)
    assert paper.main(["list"]) == 2
    assert "no checkout of the fisher_ref repository here" in capsys.readouterr().err
