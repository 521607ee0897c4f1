"""Small text helpers of the audit's messages."""

from __future__ import annotations

from .._validation import shape_str

__all__ = ["one_line", "shape_str", "size_str"]


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (its type name when it has none)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def size_str(n_bytes: float) -> str:
    """``2.79 PiB``, ``12.0 KiB``, ``512 B``."""
    units = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")
    n, i = float(n_bytes), 0
    while n >= 1024 and i < len(units) - 1:
        n, i = n / 1024, i + 1
    return f"{int(n)} B" if i == 0 else f"{n:.3g} {units[i]}"
