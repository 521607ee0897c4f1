"""Which shards of an interrupted audit can be used again: those the manifest proves.

A shard is used when its manifest entry has the expected row range and options fingerprint,
each of its files matches the SHA-256 recorded for it, and its arrays hold exactly its rows.
Any other shard is recomputed, and the log says which and why.
"""

from __future__ import annotations

import numpy as np

from ._outdir import OutputFolder
from ._shards import read_shard_npz, shard_names

__all__ = ["verified_shards"]


def _check_entry(folder: OutputFolder, i: int, rows: tuple[int, int], fingerprint: str) -> tuple[dict | None, str]:
    """The arrays of shard ``i`` when its entry and files prove it, else ``(None, why not)``."""
    entry = folder.manifest["shards"].get(str(i))
    npz, csv = shard_names(i)
    if not isinstance(entry, dict):
        present = any((folder.path / n).exists() for n in (npz, csv))
        return None, "its files are not recorded in the manifest" if present else ""
    if list(entry.get("rows", ())) != list(rows):
        return None, f"the manifest gives it rows {entry.get('rows')}"
    if entry.get("fingerprint") != fingerprint:
        return None, "it was computed with other options"
    files = entry.get("files")
    if not isinstance(files, dict) or set(files) != {npz, csv}:
        return None, "the manifest does not list both of its files"
    blobs = {}
    for name, sha in files.items():
        blobs[name], why = folder.read_listed(name, sha)
        if why:
            return None, why
    try:
        res = read_shard_npz(blobs[npz])
    except (OSError, ValueError, KeyError) as exc:  # pragma: no cover - the checksum matched what we wrote
        return None, f"{npz} cannot be read ({exc})"
    if not np.array_equal(res.get("index"), np.arange(*rows)):
        return None, f"{npz} holds other rows"
    return res, ""


def verified_shards(folder: OutputFolder, slices: list[slice], fingerprint: str) -> dict[int, dict]:
    """Shards of the manifest that can be used as they are, by shard number; logs the others."""
    done = {}
    for i, sl in enumerate(slices):
        res, why = _check_entry(folder, i, (sl.start, sl.stop), fingerprint)
        if res is not None:
            done[i] = res
        elif why:
            folder.log(f"resume: shard {i} (inputs {sl.start}-{sl.stop - 1}) cannot be used: {why}; recomputing it")
    return done
