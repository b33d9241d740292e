"""Independent tasks run in this process, in a joblib process pool or on a dask cluster, surviving dead workers.

One runner for the group fits (`gpsfast.groups`) and the ROIs of a survey
(`gpsfast.pipeline.survey`): `run_tasks` yields each task's outcome as it
finishes, whatever runs it, and turns the death of a worker process into a
`WorkerDied` outcome for the task it was running instead of an error that loses
the others.

- In this process (``n_jobs == 1``, no dask client): in order; an exception
  of a task propagates, and nothing survives a crash of the process itself.
- On a dask cluster (a ``client``): one future per task, collected as they
  complete; dask re-runs a task whose worker died on another worker, and a task
  that keeps killing workers ends as a `WorkerDied` (``KilledWorker``) without
  affecting the others.
- In a joblib pool (``backend`` loky, multiprocessing or threading): a dead
  worker breaks the pool. The finished outcomes are kept; the unfinished tasks
  are run again in a new pool, up to ``pool_attempts`` pools in all, then each
  alone in a pool of its own (`run_alone`), where a dead worker is that task's
  `WorkerDied`.

Pool and dask workers end within a second of the death of the process that
dispatched them (`gpsfast.utils.exit_with_parent`).
"""
import logging
import os
from dataclasses import dataclass

import joblib

from .errors import GpsfastError
from .utils import exit_with_parent

__all__ = ["WorkerDied", "run_alone", "run_tasks"]

log = logging.getLogger(__name__)

_ALONE = 2
"""joblib pool size of `run_alone`: with ``n_jobs=1`` joblib would run the task in this process."""


@dataclass(frozen=True)
class WorkerDied:
    """The outcome of a task whose worker process died (or that the dask cluster gave up on).

    Attributes
    ----------
    error : Exception
        What the pool or the cluster raised (``TerminatedWorkerError``, ``KilledWorker``, ...).
    """

    error: BaseException

    @property
    def message(self):
        """``worker died: <error type>: <error>``."""
        return f"worker died: {type(self.error).__name__}: {self.error}"


def _call(function, key, task, parent):
    """In a worker: ``(key, function(task))``, the worker ending with the dispatching process ``parent``."""
    exit_with_parent(parent)
    return key, function(task)


def _in_pool(function, keys, task_of, n_jobs, backend):
    """``(key, outcome)`` from a joblib pool, as the tasks finish; a dead worker raises from the pool."""
    parent = os.getpid()
    parallel = joblib.Parallel(n_jobs=n_jobs, backend=backend, return_as="generator_unordered")
    yield from parallel(joblib.delayed(_call)(function, key, task_of(key), parent) for key in keys)


def _on_dask(function, keys, task_of, client):
    """``(key, outcome)`` from a dask cluster, as the futures complete; a failed future is a `WorkerDied`."""
    import distributed

    parent = os.getpid()
    futures = {client.submit(_call, function, key, task_of(key), parent, pure=False): key for key in keys}
    for future in distributed.as_completed(list(futures)):
        try:
            yield future.result()
        except Exception as exc:  # noqa: BLE001  KilledWorker and other cluster errors
            yield futures[future], WorkerDied(exc)


def run_alone(function, task, backend="loky", client=None):
    """``function(task)`` alone in a worker process (a dask future with ``client``).

    Returns
    -------
    outcome : object or `WorkerDied`
        What ``function`` returned, or a `WorkerDied` when the worker died (or
        the pool failed in any other way).
    """
    try:
        if client is not None:
            ((_, outcome),) = _on_dask(function, [None], lambda _: task, client)
        else:
            ((_, outcome),) = _in_pool(function, [None], lambda _: task, _ALONE, backend)
    except Exception as exc:  # noqa: BLE001  pool errors: the worker died
        return WorkerDied(exc)
    return outcome


def run_tasks(function, keys, task_of, n_jobs=1, backend="loky", client=None, pool_attempts=1,
              on_pool_failure=None):
    """Run ``function(task_of(key))`` for every key; yield ``(key, outcome)`` as each task finishes.

    Parameters
    ----------
    function : callable
        Runs one task; picklable by reference for worker pools.
    keys : iterable
        One hashable, picklable key per task.
    task_of : callable
        ``task_of(key)``: the task, built in this process when it is dispatched
        (and again if it must be run again).
    n_jobs : int or None
        joblib pool size (-1: one per CPU core); 1 runs in this process.
    backend : {"loky", "multiprocessing", "threading"}
        joblib backend of the pool.
    client : `distributed.Client`, optional
        Run on this dask cluster instead (``n_jobs`` and ``backend`` unused).
    pool_attempts : int
        Pools tried on the unfinished tasks before each runs alone.
    on_pool_failure : callable, optional
        ``on_pool_failure(error, n_unfinished, last)`` at each pool failure
        (``last``: the unfinished tasks run alone next).

    Yields
    ------
    key, outcome
        ``outcome``: what ``function`` returned, or a `WorkerDied`.

    Raises
    ------
    GpsfastError
        Raised by ``task_of`` or a task: errors of the inputs propagate in every mode.
    """
    keys = list(keys)
    if client is not None:
        yield from _on_dask(function, keys, task_of, client)
        return
    if n_jobs == 1:
        for key in keys:
            yield key, function(task_of(key))
        return
    pending = dict.fromkeys(keys)
    for attempt in range(1, pool_attempts + 1):
        try:
            for key, outcome in _in_pool(function, list(pending), task_of, n_jobs, backend):
                del pending[key]
                yield key, outcome
            return
        except GpsfastError:
            raise
        except Exception as exc:  # noqa: BLE001  a dead worker: its pool is broken
            log.debug("worker pool failed: %s: %s", type(exc).__name__, exc)
            if on_pool_failure is not None:
                on_pool_failure(exc, len(pending), attempt == pool_attempts)
    for key in list(pending):
        yield key, run_alone(function, task_of(key), backend)
