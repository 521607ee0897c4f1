"""The output folder's lock: one audit at a time writes into a folder.

The lock is a file created atomically (``O_CREAT | O_EXCL``) holding the owner's PID, host and
process start time. A lock whose process is gone (on this host) is stale: it is reported and
removed only when asked (``break_lock=True``, ``--break-lock``).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import socket
from pathlib import Path

from ._errors import FolderLockedError, OutputFolderError

__all__ = ["FolderLock", "LOCK_NAME"]

LOCK_NAME = ".fisher-ref-audit.lock"


def _proc_start(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (Linux), which tells a reused PID from the owner."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode("ascii", "replace")
    except OSError:
        return None
    return stat.rsplit(")", 1)[-1].split()[19]


def _alive(pid: int, start: str | None) -> bool:
    if os.name == "nt":  # os.kill would terminate it there: a lock on Windows is taken as held
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        pass
    now = _proc_start(pid)
    return start is None or now is None or now == start


class FolderLock:
    """The lock of ``folder``; ``acquire()`` and ``release()``, or use it as a context manager."""

    def __init__(self, folder: Path, *, break_stale: bool = False, log=None):
        self.path = Path(folder) / LOCK_NAME
        self.break_stale = break_stale
        self.log = log or (lambda s: None)
        self.held = False
        self._content = {"pid": os.getpid(), "host": socket.gethostname(), "proc_start": _proc_start(os.getpid()),
                         "since": _dt.datetime.now().isoformat(timespec="seconds")}

    def _create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        except OSError as exc:
            raise OutputFolderError(f"cannot write to output folder {str(self.path.parent)!r}: cannot create its "
                                    f"lock file ({exc.strerror})") from exc
        with os.fdopen(fd, "w") as f:
            json.dump(self._content, f)
            f.flush()
            os.fsync(f.fileno())
        return True

    def _owner(self) -> dict:
        try:
            owner = json.loads(self.path.read_text())
            int(owner["pid"])
            return owner
        except (OSError, ValueError, KeyError, TypeError):
            return {}

    def _refuse(self, owner: dict) -> None:
        folder, pid = str(self.path.parent), owner.get("pid")
        if not owner and self.break_stale:  # a lock file its owner had no time to fill in
            self.log(f"removed an unreadable lock file on {folder}")
            self.path.unlink(missing_ok=True)
            return
        if not owner:
            raise FolderLockedError(f"output folder {folder!r} holds an unreadable lock file {LOCK_NAME}: if no other "
                                    "audit writes there, pass --break-lock (break_lock=True) to remove it")
        here = owner.get("host") == socket.gethostname()
        if here and not _alive(int(pid), owner.get("proc_start")):
            if self.break_stale:
                self.log(f"removed the stale lock of process {pid} (no longer running) on {folder}")
                self.path.unlink(missing_ok=True)
                return
            raise FolderLockedError(f"output folder {folder!r} holds a stale lock of process {pid}, which is no longer "
                                    "running (killed?): pass --break-lock (break_lock=True) to remove it, then "
                                    "--resume continues its audit")
        where = "" if here else f" on host {owner.get('host')}, which cannot be checked from here"
        raise FolderLockedError(f"output folder {folder!r} is in use by another audit (process {pid}{where}, since "
                                f"{owner.get('since')}); wait for it to finish or choose another --out (if no audit "
                                f"runs there any more, delete {LOCK_NAME} in it)")

    def acquire(self) -> "FolderLock":
        for _ in range(2):  # a second try after a stale lock was broken
            if self._create():
                self.held = True
                return self
            self._refuse(self._owner())
        raise FolderLockedError(f"output folder {str(self.path.parent)!r}: another audit took the lock meanwhile")

    def release(self) -> None:
        if self.held and self._owner().get("pid") == os.getpid():
            self.path.unlink(missing_ok=True)
        self.held = False

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
