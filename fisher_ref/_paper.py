"""``fisher-ref paper``: run the paper reproduction (``paper_results/``) from anywhere in a checkout.

``paper_results/`` is a folder of scripts beside the package, not part of it (a wheel does not
install it). This finds the checkout the package was installed from (an editable install) or the
one around the current folder, and runs ``python -m paper_results`` there.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

__all__ = ["find_checkout", "main"]


def _is_checkout(folder: Path) -> bool:
    return (folder / "paper_results" / "__main__.py").is_file() and (folder / "fisher_ref" / "__init__.py").is_file()


def find_checkout(start: str | os.PathLike | None = None) -> Path | None:
    """The repository root holding ``paper_results/``: the current folder or one of its parents,
    else the checkout this package was imported from; None when neither is one."""
    here = Path(start or os.getcwd()).resolve()
    for folder in (here, *here.parents):
        if _is_checkout(folder):
            return folder
    package_root = Path(__file__).resolve().parents[1]
    return package_root if _is_checkout(package_root) else None


def main(argv: list[str] | None = None) -> int:
    root = find_checkout()
    if root is None:
        print("fisher-ref paper: no checkout of the fisher_ref repository here: paper_results/ is not "
              "installed with the package. Run it inside a checkout (git clone the repository, then "
              "pip install -e '.[all]'), or from that checkout: python -m paper_results", file=sys.stderr)
        return 2
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    from paper_results.__main__ import main as paper_main

    return paper_main(list(sys.argv[2:] if argv is None else argv))
