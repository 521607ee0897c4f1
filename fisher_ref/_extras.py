"""Optional dependencies: which extra provides which module, and ONE error naming every missing extra.

A call that needs several optional frameworks (the audit: ONNX Runtime, onnx-ad, matplotlib, ...) checks
them all before it starts, so a core-only install (``pip install fisher-ref``) gets one message with
the one command that installs everything the call needs, not one error per missing package.
"""

from __future__ import annotations

import importlib.util

__all__ = ["EXTRAS", "missing_extras", "require_extras"]

#: extra name -> the modules it provides (as imported)
EXTRAS: dict[str, tuple[str, ...]] = {
    "torch": ("torch", "threadpoolctl"),
    "onnx": ("onnx", "onnxruntime", "onnx_ad"),
    "detect": ("sklearn",),
    "plot": ("matplotlib",),
    "progress": ("tqdm",),
    "audit": ("matplotlib", "tqdm", "distributed"),
}


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing, or a broken module spec
        return False


def missing_extras(*extras: str) -> dict[str, list[str]]:
    """``{extra: [missing modules]}`` for the extras whose modules are not all importable."""
    unknown = [e for e in extras if e not in EXTRAS]
    if unknown:
        raise ValueError(f"extras must be among {sorted(EXTRAS)}, got {unknown}")
    out = {}
    for e in extras:
        gone = [m for m in EXTRAS[e] if not _importable(m)]
        if gone:
            out[e] = gone
    return out


def require_extras(*extras: str, what: str) -> None:
    """Raise one ImportError naming every extra of ``extras`` that is not installed, for ``what``."""
    gone = missing_extras(*extras)
    if gone:
        modules = sorted({m for ms in gone.values() for m in ms})
        raise ImportError(f"{what} needs the optional dependencies {', '.join(modules)}: "
                          f"pip install 'fisher-ref[{','.join(gone)}]'")
