"""Shards as tasks on a Dask distributed cluster, bounded in failures and in waiting.

A task whose worker dies is retried on another worker at most ``allowed-failures`` times (set
for a ``local:N`` cluster; a remote scheduler uses its own setting), then the audit stops with
one line naming the shard. A watchdog stops the audit when no worker has been alive for
``worker_timeout`` seconds. Either way the shards finished so far are on disk for ``resume``.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Callable

import numpy as np

from ._errors import SchedulerError
from .._text import count, one_line

__all__ = ["dask_results", "ALLOWED_FAILURES"]

#: Deaths of workers running one shard after which its task is given up (Dask's allowed-failures).
ALLOWED_FAILURES = 3


@contextlib.contextmanager
def _quiet_distributed():
    """Dask's own logging of lost workers and retries stays out of the audit's output."""
    loggers = [logging.getLogger(name) for name in ("distributed", "tornado")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


@contextlib.contextmanager
def _client(scheduler: str, say, memory_limit: int | None = None):
    """A Client of the scheduler at ``scheduler``, or of a fresh LocalCluster for ``local:N`` whose
    workers may each hold ``memory_limit`` bytes (Dask pauses a worker at 80% of it and restarts it
    at 95%; the shard is then retried, see ALLOWED_FAILURES)."""
    import dask
    from distributed import Client, LocalCluster

    cluster = None
    with dask.config.set({"distributed.scheduler.allowed-failures": ALLOWED_FAILURES}):
        if scheduler.startswith("local:"):
            n_workers = int(scheduler.split(":", 1)[1])
            try:
                cluster = LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                                       dashboard_address=None, silence_logs=logging.CRITICAL,
                                       memory_limit=memory_limit if memory_limit else "auto")
            except Exception as exc:  # the workers died while starting, no free port, ...
                raise SchedulerError(f"dask: cannot start a LocalCluster of {count(n_workers, 'worker')}: "
                                     f"{one_line(exc)}") from exc
            limit = f", {memory_limit / 2**30:.1f} GB each" if memory_limit else ""
            say(f"dask: LocalCluster of {n_workers} worker processes at {cluster.scheduler_address}{limit}")
        try:
            client = Client(cluster if cluster is not None else scheduler, timeout="20s")
        except (OSError, TimeoutError) as exc:
            if cluster is not None:
                cluster.close()
            raise SchedulerError(f"cannot connect to the Dask scheduler at {scheduler!r}: {one_line(exc)}") from exc
    try:
        if cluster is None:
            say(f"dask: {len(client.scheduler_info().get('workers', {}))} workers at {scheduler}")
        yield client
    finally:
        with contextlib.suppress(Exception):
            client.close(timeout=10)
        if cluster is not None:
            with contextlib.suppress(Exception):
                cluster.close(timeout=10)


def _n_workers(client) -> int:
    try:
        return len(client.nthreads())
    except Exception:  # the scheduler itself is gone: no worker either
        return 0


def _finished(client, futures: dict, slices, worker_timeout: float):
    """Yield ``(i, result)`` of each shard as it completes; stop when workers keep dying or are gone."""
    from distributed import KilledWorker, wait

    remaining = set(futures)
    last_alive = time.monotonic()
    while remaining:
        try:
            done, remaining = wait(remaining, timeout=1.0, return_when="FIRST_COMPLETED")
        except TimeoutError:
            done = set()
        for fut in sorted(done, key=lambda f: futures[f]):
            i = futures[fut]
            try:
                res = fut.result()
            except KilledWorker as exc:
                raise SchedulerError(_lost(i, slices[i], f"the Dask workers running it died {ALLOWED_FAILURES + 1} "
                                                         f"times (allowed-failures = {ALLOWED_FAILURES})")) from exc
            yield i, res
        if not remaining:
            break
        if _n_workers(client):
            last_alive = time.monotonic()
        elif time.monotonic() - last_alive > worker_timeout:
            i = min(futures[f] for f in remaining)
            raise SchedulerError(_lost(i, slices[i], f"no Dask worker has been alive for {worker_timeout:g} s "
                                                     "(--worker-timeout)"))


def _lost(i: int, sl: slice, why: str) -> str:
    return (f"dask: stopped at shard {i} (inputs {sl.start}-{sl.stop - 1}): {why}; the finished shards are kept: "
            "rerun with --resume (resume=True) once the workers are healthy, or without --scheduler")


def dask_results(scheduler: str, worker_timeout: float, compute: Callable, spec, x: np.ndarray,
                 y: np.ndarray | None, slices: list[slice], pending: list[int], tag: str, say,
                 memory_limit: int | None = None):
    """Run the pending shards as tasks ``compute(spec, x, y, index)``; yield ``(i, result)`` as each
    completes. ``memory_limit``: bytes per worker of a LocalCluster (``local:N``)."""
    with _quiet_distributed(), _client(scheduler, say, memory_limit) as client:
        idx_all = np.arange(x.shape[0])
        futures = {}
        for i in pending:
            sl = slices[i]
            fut = client.submit(compute, spec, x[sl], None if y is None else y[sl], idx_all[sl],
                                key=f"fisher-ref-shard-{tag}-{i:05d}", pure=False, retries=0)
            futures[fut] = i
        try:
            yield from _finished(client, futures, slices, worker_timeout)
        finally:
            client.cancel(list(futures))
