"""Resident memory of this process and of a command: the one home of how fisher_ref measures peaks.

Linux only (``/proc``). Two things to know, both measured by the tests:

- a process's ``ru_maxrss`` starts, at ``exec``, at the resident size its parent had: a command
  started straight from a large process reports that process's size as its own peak. A command's
  own peak is therefore taken by :func:`run_measured` from a small launcher process, and this
  process's own by :func:`resident_kb` ``("VmHWM")`` (the high-water mark since ``exec``);
- :func:`reset_peak` sets ``VmHWM`` back to the current resident size, so that the extra peak of
  one call is ``resident_kb("VmHWM") - base`` with ``base = resident_kb("VmRSS")`` taken just before.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

__all__ = ["resident_kb", "reset_peak", "run_measured"]


def resident_kb(field: str = "VmRSS") -> int:
    """``field`` of ``/proc/self/status`` in kB: ``"VmRSS"`` (now) or ``"VmHWM"`` (peak since exec,
    or since the last :func:`reset_peak`)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise ValueError(f"field must be a memory line of /proc/self/status such as 'VmRSS' or 'VmHWM', got {field!r}")


def reset_peak() -> None:
    """Set this process's peak resident size (``VmHWM``) to its current one; ``OSError`` where the
    kernel does not allow it (no ``/proc/self/clear_refs``)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


#: runs argv[2:] and writes its rusage's ru_maxrss (kB) to argv[1]; started from a small process, so
#: that the peak is the command's own (see run_measured)
_LAUNCHER = ("import os, subprocess, sys; p = subprocess.Popen(sys.argv[2:]); _, s, u = os.wait4(p.pid, 0); "
             "open(sys.argv[1], 'w').write(str(u.ru_maxrss)); sys.exit(os.waitstatus_to_exitcode(s))")


def run_measured(cmd: list[str], log: Path) -> tuple[int, float, int]:
    """Run ``cmd`` (output to ``log``): its exit status, wall seconds and peak resident bytes (with
    any children it waited for).

    Linux keeps, in a process's ``ru_maxrss``, the resident size of the memory it had before
    ``exec``: a copy of its parent's. A command started straight from a large parent (the zoo
    with a 224x224 network loaded) would report the parent's size as its own peak, so the command
    is started from a small launcher process and the launcher reports the command's ``wait4``."""
    with tempfile.TemporaryDirectory(prefix="fisher_ref_peak_") as tmp, open(log, "w") as fh:
        peak_file = Path(tmp) / "peak_kb"
        t0 = time.perf_counter()
        returncode = subprocess.run([sys.executable, "-c", _LAUNCHER, str(peak_file), *cmd],
                                    stdout=fh, stderr=subprocess.STDOUT).returncode
        seconds = time.perf_counter() - t0
        peak_kb = int(peak_file.read_text()) if peak_file.exists() else 0
    return returncode, seconds, peak_kb * 1024
