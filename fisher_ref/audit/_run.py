"""Computing the shards an audit still needs, here or on Dask, writing each as it is done."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .._progress import progress
from .._text import count
from . import _shards
from ._dask import dask_results
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


def plan_shards(prep: Prepared, folder: OutputFolder, cfg, continued: bool, say) -> ShardRun:
    """The shard slices and, when continuing, the shards the manifest proves done."""
    n, size = prep.n, cfg.shard_size
    run = ShardRun([slice(i * size, min(n, (i + 1) * size)) for i in range(-(-n // size))])
    if continued:
        run.done = verified_shards(folder, run.slices, prep.fingerprint_id)
        run.skipped = sorted(run.done)
    return run


def _local_results(prep: Prepared, run: ShardRun, pending: list[int]):
    index = np.arange(prep.n)
    for i in pending:
        sl = run.slices[i]
        yield i, _shards.compute_shard(prep.spec, prep.x[sl], None if prep.y is None else prep.y[sl], index[sl])


def run_shards(prep: Prepared, folder: OutputFolder, cfg, run: ShardRun, say) -> None:
    """Compute the shards not done (at most ``cfg.max_shards``); each is written as soon as it is done."""
    pending = [i for i in range(len(run.slices)) if i not in run.done]
    if cfg.max_shards is not None:
        pending = pending[:cfg.max_shards]
    if run.skipped:
        say(f"resuming: {len(run.skipped)} of {count(len(run.slices), 'shard')} already done, {len(pending)} to "
            "compute")
    if cfg.scheduler is None:
        results = _local_results(prep, run, pending)
    else:
        budget = prep.memory_budget  # a local worker holds its derivative runs and the model besides
        results = dask_results(cfg.scheduler, cfg.worker_timeout, _shards.compute_shard, prep.spec, prep.x, prep.y,
                               run.slices, pending, prep.fingerprint["data_sha256"][:10], say,
                               memory_limit=max(2 * budget, 2**30) if budget else None)
    spec, fingerprint = prep.spec, prep.fingerprint_id
    for i, res in progress(results, desc="fisher-ref audit: shards", total=len(run.slices), initial=len(run.skipped),
                           enabled=cfg.progress):
        sl = run.slices[i]
        entry = {"rows": [sl.start, sl.stop], "fingerprint": fingerprint, "files": {}}
        folder.manifest["shards"][str(i)] = entry
        folder.write_group(dict(shard_files(i, res, spec.k, spec.epsilons)), entry["files"])
        run.done[i] = res
        run.computed.append(i)
