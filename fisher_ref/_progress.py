"""Progress of long jobs: a tqdm bar on a terminal, plain lines in a log (one per step), never both.

A carriage-return progress bar written to a file or a pipe piles up on one line; so when the stream is
not a terminal each finished step is one line: ``"<desc>: 3/10 (30%), 12 s elapsed"``.
"""

from __future__ import annotations

import sys
import time
from typing import Iterable, Iterator, TextIO

__all__ = ["progress", "is_terminal"]


def is_terminal(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or not a real stream
        return False


def progress(iterable: Iterable, *, desc: str, total: int | None = None, enabled: bool = True,
             stream: TextIO | None = None, initial: int = 0) -> Iterator:
    """Iterate over ``iterable`` showing progress on ``stream`` (default stderr).

    On a terminal: a tqdm bar (when tqdm is installed; else the plain lines). Elsewhere (a log file, a
    pipe, CI): one line per step. ``enabled=False`` shows nothing. ``initial`` steps count as done
    already (a resumed job).
    """
    stream = sys.stderr if stream is None else stream
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable) + initial  # type: ignore[arg-type]
    if not enabled:
        yield from iterable
        return
    if is_terminal(stream):
        try:
            from tqdm.auto import tqdm
        except ImportError:
            pass
        else:
            yield from tqdm(iterable, desc=desc, total=total, initial=initial, leave=False, mininterval=1.0,
                            file=stream)
            return
    yield from _lines(iterable, desc, total, stream, initial)


def _lines(iterable: Iterable, desc: str, total: int | None, stream: TextIO, initial: int) -> Iterator:
    t0 = time.perf_counter()
    done = initial
    for item in iterable:
        yield item
        done += 1
        frac = f" ({done / total:.0%})" if total else ""
        of = f"/{total}" if total else ""
        print(f"{desc}: {done}{of}{frac}, {time.perf_counter() - t0:.0f} s elapsed", file=stream, flush=True)
