"""Words in messages: counts with the right plural, one home for it."""

from __future__ import annotations

__all__ = ["count", "plural_of", "one_line", "size_str"]

_IRREGULAR = {"matrix": "matrices", "index": "indices", "vertex": "vertices", "axis": "axes", "was": "were",
              "is": "are", "has": "have", "this": "these"}


def count(n: int, noun: str, plural: str | None = None) -> str:
    """``"1 shard"``, ``"2 shards"``, ``"0 cases"``, ``"3 matrices"``: ``n`` and the noun in the right number.

    ``plural`` overrides the rule (default: the irregular forms above, ``-es`` after s/x/z/ch/sh,
    ``-ies`` after a consonant + y, else ``-s``).
    """
    return f"{n} {noun if n == 1 else (plural or plural_of(noun))}"


def plural_of(noun: str) -> str:
    if noun in _IRREGULAR:
        return _IRREGULAR[noun]
    if noun.endswith(("s", "x", "z", "ch", "sh")):
        return noun + "es"
    if noun.endswith("y") and len(noun) > 1 and noun[-2] not in "aeiou":
        return noun[:-1] + "ies"
    return noun + "s"


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
