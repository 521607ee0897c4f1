"""The output folder, owned by its manifest.

``OUT/manifest.json`` lists every file the audit wrote (or was about to write: a file is listed
before it is written), each shard's row range, options fingerprint and the SHA-256 of its files.
So ``force`` removes exactly what an audit wrote, ``resume`` uses only shards it can prove, and
nothing is followed out of the folder through a symbolic link.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import secrets
from pathlib import Path

from ._errors import NotResumableError, OutputFolderError
from ._files import TMP_MARK, atomic_write, sha256_bytes, write_error
from ._lock import LOCK_NAME, FolderLock
from .._text import count, one_line

__all__ = ["OutputFolder", "default_out", "precheck", "MANIFEST", "REPORT_FILES", "DEFAULT_OUT_ROOT"]

#: Where an audit without ``out`` writes: a fresh ``run-YYYYmmdd-HHMMSS`` folder inside it.
DEFAULT_OUT_ROOT = Path("fisher-ref-audit")
MANIFEST = "manifest.json"
FORMAT_VERSION = 2
SHARD_DIR = "shards"
#: What an audit writes at the top of its folder (``force_any`` removes these names and the shards).
REPORT_FILES = ("results.csv", "summary.json", "report.html", "fooling_rate.png", "eigenvalues.png",
                "scatter.png", "vulnerable_least_perturbation.png", "vulnerable_top_eigenvalue.png")
_LEGACY_MANIFEST = "shards/manifest.json"  # fisher-ref 0.1 kept its manifest (format 1) with the shards


def default_out() -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out, i = DEFAULT_OUT_ROOT / f"run-{stamp}", 1
    while out.exists():
        i += 1
        out = DEFAULT_OUT_ROOT / f"run-{stamp}-{i}"
    return out


def _ours(name: str) -> bool:
    """The lock, probes and temporary files: what a running audit itself puts in the folder."""
    return name == LOCK_NAME or name.startswith(".fisher-ref-write-test") or TMP_MARK in name


def _entries(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if not _ours(p.name)) if out.is_dir() else []


def _contents(out: Path) -> list[str]:
    """What the folder holds besides a running audit's own files (an empty ``shards/`` counts as nothing)."""
    shards = [] if (out / SHARD_DIR).is_symlink() else [f"{SHARD_DIR}/{n}" for n in _entries(out / SHARD_DIR)]
    top = [n for n in _entries(out) if n != SHARD_DIR or shards or (out / SHARD_DIR).is_symlink()]
    return top + shards


def precheck(out: Path, cfg) -> None:
    """Refuse, before any work, a folder that cannot be written or holds files and no flag says what to do."""
    anc = out
    while not anc.exists() and anc.parent != anc:
        anc = anc.parent
    if anc.exists() and not anc.is_dir():
        raise OutputFolderError(f"cannot write to output folder {str(out)!r}: {str(anc)!r} is a file, not a folder")
    if not os.access(anc, os.W_OK | os.X_OK):
        raise OutputFolderError(f"cannot write to output folder {str(out)!r}: permission denied on {str(anc)!r}")
    if _contents(out) and not (cfg.resume or cfg.force or cfg.force_any):
        raise OutputFolderError(f"output folder {str(out)!r} already exists and is not empty: pass --force to "
                                "overwrite the audit there (force=True), or --resume to continue an interrupted audit "
                                "there (resume=True)")


def _regular_inside(out: Path, rel: str) -> Path | None:
    """``out / rel`` when it is a regular file inside ``out`` reached without a symbolic link, else None
    (a name from a manifest someone edited could point anywhere: ``..`` and absolute paths are refused)."""
    if not isinstance(rel, str) or Path(rel).is_absolute() or ".." in Path(rel).parts:
        return None
    path = out
    for part in Path(rel).parts:
        path = path / part
        if path.is_symlink():
            return None
    return path if path.is_file() else None


class OutputFolder:
    """The output folder of one audit while it runs: lock, manifest, writes, cleaning, verification.

    Parameters
    ----------
    path : pathlib.Path
    log : callable
        Called with one line for what it does that the user should know (cleaning, recomputing).
    """

    def __init__(self, path: Path, log):
        self.path = Path(path)
        self.log = log
        self.manifest: dict = {}
        self._lock: FolderLock | None = None

    # ------------------------------------------------------------------ open and close
    def open(self, cfg, header: dict) -> bool:
        """Lock the folder, clean it (force), check what is there, and start or continue the manifest.

        ``header`` holds ``fingerprint``, ``spec`` and ``data``. Returns True when an earlier
        manifest of the same audit is continued (``resume``).
        """
        precheck(self.path, cfg)
        created = not self.path.exists()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise write_error(exc, self.path, "creating") from exc
        try:
            self._lock = FolderLock(self.path, break_stale=cfg.break_lock, log=self.log).acquire()
            precheck(self.path, cfg)  # again, now that no other audit can change it
            self._refuse_links()
            old = self._read_manifest(cfg)
            if cfg.force or cfg.force_any:
                self._clean(old, cfg.force_any)
                old = None
            continued = self._continue(old, header, cfg.resume)
            self._probe()
        except BaseException:
            self.close()
            if created:  # refused before anything was written: leave no empty folder behind
                with contextlib.suppress(OSError):
                    self.path.rmdir()
            raise
        return continued

    def close(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def _probe(self) -> None:
        shards = self.path / SHARD_DIR
        probe = shards / f".fisher-ref-write-test-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            shards.mkdir(exist_ok=True)
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise OutputFolderError(f"cannot write to output folder {str(self.path)!r}: "
                                    f"{exc.strerror or one_line(exc)}") from exc

    def _refuse_links(self) -> None:
        for rel in (SHARD_DIR, MANIFEST, *REPORT_FILES):
            p = self.path / rel
            if p.is_symlink():
                raise OutputFolderError(f"output folder {str(self.path)!r}: {rel} is a symbolic link (to "
                                        f"{os.readlink(p)!r}); the audit writes only inside its folder and does not "
                                        "replace what it did not write: remove the link or choose another --out")

    # ------------------------------------------------------------------ manifest
    def _read_manifest(self, cfg) -> dict | None:
        """The folder's manifest; None when there is none. ``{"legacy": True}`` for a format-1 audit."""
        path = self.path / MANIFEST
        if not path.exists():
            legacy = _regular_inside(self.path, _LEGACY_MANIFEST)
            return {"legacy": True} if legacy is not None else None
        try:
            old = json.loads(path.read_bytes())
            if not all(isinstance(old.get(key), dict) for key in ("fingerprint", "files", "shards")):
                raise ValueError("it has no fingerprint, files or shards")
            return old
        except (OSError, ValueError, AttributeError) as exc:
            if cfg.force_any:
                return None
            raise NotResumableError(f"output folder {str(self.path)!r}: {MANIFEST} is unreadable ({one_line(exc)}), "
                                    "so what the folder holds cannot be verified: not resumable; pass --force-any "
                                    "(force_any=True) to start over there") from exc

    def save_manifest(self) -> None:
        atomic_write(self.path / MANIFEST, json.dumps(self.manifest, indent=1, sort_keys=True).encode())

    def _continue(self, old: dict | None, header: dict, resume: bool) -> bool:
        if resume:
            if old is not None and not old.get("legacy"):
                self._check_same_audit(old["fingerprint"], header["fingerprint"])
                self.manifest = old
                return True
            self._refuse_unprovable(old)
            self.log(f"nothing to resume in {self.path}: starting a new audit")
        self.manifest = {"format_version": FORMAT_VERSION, **header, "shards": {}, "files": {}}
        self.save_manifest()
        return False

    def _refuse_unprovable(self, old: dict | None) -> None:
        if old is not None:
            raise NotResumableError(f"cannot resume in {str(self.path)!r}: it holds an audit of an older fisher-ref "
                                    "(manifest format 1) whose shards cannot be verified: not resumable; start over "
                                    "with --force (force=True)")
        if _contents(self.path):
            raise NotResumableError(f"cannot resume in {str(self.path)!r}: it holds files but no {MANIFEST}, so they "
                                    "cannot be proven to be this audit's: not resumable; start over with --force-any "
                                    "(force_any=True; it overwrites only the audit's files), or choose another --out")

    def _check_same_audit(self, old: dict, new: dict) -> None:
        diff = sorted(key for key in set(old) | set(new) if old.get(key) != new.get(key))
        if diff:
            raise NotResumableError(f"cannot resume the audit in {str(self.path)!r}: {', '.join(diff)} "
                                    f"differ{'s' if len(diff) == 1 else ''} from the interrupted run's; use the same "
                                    "model, data and options, or --force to start over")

    # ------------------------------------------------------------------ cleaning (force)
    def _clean(self, old: dict | None, force_any: bool) -> None:
        if old is not None and not old.get("legacy"):
            listed = [name for entry in old["shards"].values() if isinstance(entry, dict)
                      for name in entry.get("files", {})] + list(old["files"])
            names = listed + [MANIFEST]
        elif old is not None or force_any or not _contents(self.path):
            shards = self.path / SHARD_DIR
            names = [*REPORT_FILES, MANIFEST, _LEGACY_MANIFEST]
            names += [f"{SHARD_DIR}/{p.name}" for p in (shards.iterdir() if shards.is_dir() else ())
                      if p.name.startswith("shard-") and p.suffix in (".csv", ".npz")]
        else:
            raise OutputFolderError(f"output folder {str(self.path)!r} is not empty and holds no audit manifest "
                                    f"({MANIFEST}): --force removes only what an audit's manifest lists; pass "
                                    "--force-any (force_any=True) to overwrite the audit's files there (others are kept)")
        removed = 0
        for name in names:
            path = _regular_inside(self.path, name)
            if path is not None:
                path.unlink()
                removed += 1
        if removed:
            self.log(f"force: removed {count(removed, 'file')} of the previous audit in {self.path}")

    # ------------------------------------------------------------------ writing
    def write(self, name: str, data: bytes) -> None:
        """Write one output (``name`` relative to the folder), listed in the manifest first."""
        self.write_group({name: data}, self.manifest["files"])

    def write_group(self, files: dict, listing: dict) -> None:
        """Write ``files`` (name -> bytes), each listed in ``listing`` (a part of the manifest)
        before it is written and given its SHA-256 after."""
        for name in files:
            listing[name] = None
        self.save_manifest()
        for name, data in files.items():
            atomic_write(self.path / name, data)
            listing[name] = sha256_bytes(data)
        self.save_manifest()

    def read_listed(self, name: str, sha: str | None) -> tuple[bytes | None, str | None]:
        """``(bytes, None)`` of a listed file whose SHA-256 matches, else ``(None, why not)``."""
        if sha is None:
            return None, f"{name} was being written when the audit stopped"
        path = _regular_inside(self.path, name)
        if path is None:
            return None, f"{name} is missing"
        data = path.read_bytes()
        if sha256_bytes(data) != sha:
            return None, f"{name} does not match its SHA-256 in the manifest"
        return data, None
