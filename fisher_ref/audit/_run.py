"""Computing the shards an audit still needs, here or on Dask, writing each as it is done."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import numpy as np

from . import _shards
from ._dask import run_dask
from ._inputs import Prepared
from ._outdir import OutputFolder
from ._resume import verified_shards
from ._shards import shard_files

__all__ = ["ShardRun", "plan_shards", "run_shards"]


@dataclass
class ShardRun:
    """The shards of an audit: their row slices, those found done, those computed now."""

    slices: list
    done: dict = field(default_factory=dict)
    skipped: list = field(default_factory=list)
    computed: list = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return len(self.done) == len(self.slices)


class _NoBar:
    def update(self, n):
        pass

    def close(self):
        pass


def _progress(enabled: bool, total: int, initial: int):
    if not enabled:
        return _NoBar()
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is in the audit extra
        return _NoBar()
    return tqdm(total=total, initial=initial, unit="input", desc="fisher-ref audit", file=sys.stderr,
                dynamic_ncols=True, leave=True)


def plan_shards(prep: Prepared, folder: OutputFolder, cfg, continued: bool, say) -> ShardRun:
    """The shard slices and, when continuing, the shards the manifest proves done."""
    n, size = prep.n, cfg.shard_size
    run = ShardRun([slice(i * size, min(n, (i + 1) * size)) for i in range(-(-n // size))])
    if continued:
        run.done = verified_shards(folder, run.slices, prep.fingerprint_id)
        run.skipped = sorted(run.done)
    return run


def run_shards(prep: Prepared, folder: OutputFolder, cfg, run: ShardRun, say) -> None:
    """Compute the shards not done (at most ``cfg.max_shards``); each is written as soon as it is done."""
    pending = [i for i in range(len(run.slices)) if i not in run.done]
    if cfg.max_shards is not None:
        pending = pending[:cfg.max_shards]
    if run.skipped:
        say(f"resuming: {len(run.skipped)} of {len(run.slices)} shards already done, {len(pending)} to compute")
    bar = _progress(cfg.progress, prep.n, sum(run.slices[i].stop - run.slices[i].start for i in run.skipped))
    fingerprint = prep.fingerprint_id
    spec = prep.spec

    def done(i: int, res: dict) -> None:
        sl = run.slices[i]
        entry = {"rows": [sl.start, sl.stop], "fingerprint": fingerprint, "files": {}}
        folder.manifest["shards"][str(i)] = entry
        folder.write_group(dict(shard_files(i, res, spec.k, spec.epsilons)), entry["files"])
        run.done[i] = res
        run.computed.append(i)
        bar.update(sl.stop - sl.start)

    try:
        if cfg.scheduler is None:
            index = np.arange(prep.n)
            for i in pending:
                sl = run.slices[i]
                done(i, _shards.compute_shard(spec, prep.x[sl], None if prep.y is None else prep.y[sl], index[sl]))
        else:
            run_dask(cfg.scheduler, cfg.worker_timeout, _shards.compute_shard, spec, prep.x, prep.y, run.slices,
                     pending, done, prep.fingerprint["data_sha256"][:10], say)
    finally:
        bar.close()
